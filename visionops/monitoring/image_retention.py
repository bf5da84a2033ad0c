"""Which request images the prediction log keeps, where, and for how long.

The predictor's prediction log (`visionops.monitoring.prediction_log`) can keep the ORIGINAL
encoded bytes a request sent (never the decoded array: PNG, 16-bit and grey images stay exactly as
sent), so the images of a drifted window can be labelled and trained on. `ImagePolicy` decides per
image (`VISIONOPS_LOG_IMAGES`): `none`, `all`, `sample:<fraction>`, or `uncertain` (a detection
score inside `VISIONOPS_LOG_IMAGES_UNCERTAIN_BAND`, or no detection at or above its upper end:
the model hesitated, or found nothing it is sure of, which is where a missed defect hides).

Kept images are content-addressed, one folder per UTC day of the record, beside the log's hour
partitions (the data-loop contract):

    <store>/images/dt=YYYY-MM-DD/<sha256 of the bytes>.<ext>

so a repeated image is stored once a day, and retention (`prune_images`,
`VISIONOPS_LOG_IMAGES_RETENTION_DAYS`) deletes whole expired days.
"""

from __future__ import annotations

import hashlib
import logging
import random
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING

from visionops.config import parse_image_policy, parse_score_band
from visionops.errors import UsageError
from visionops.monitoring.log_layout import IMAGES_PREFIX

if TYPE_CHECKING:
    from visionops.config import Settings
    from visionops.detections import Detections
    from visionops.storage import ObjectStore

log = logging.getLogger(__name__)

NONE, ALL, SAMPLE, UNCERTAIN = "none", "all", "sample", "uncertain"

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "jpg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"BM", "bmp"),
    (b"II*\x00", "tif"),
    (b"MM\x00*", "tif"),
)


@dataclass
class ImagePolicy:
    """Whether the log keeps a request's image, decided from its detections (cheap: the request
    path calls it). `rng` draws the `sample` policy's coin (seeded in tests)."""

    kind: str = NONE
    fraction: float = 0.0
    band: tuple[float, float] = (0.25, 0.6)
    rng: random.Random = field(default_factory=random.Random, repr=False)

    @classmethod
    def parse(cls, policy: str, band: str = "0.25,0.6") -> ImagePolicy:
        """From the settings' text; UsageError naming a bad value."""
        try:
            kind, fraction = parse_image_policy(policy)
            return cls(kind, fraction, parse_score_band(band))
        except ValueError as error:
            raise UsageError(f"image retention: {error}") from error

    @classmethod
    def from_settings(cls, settings: Settings) -> ImagePolicy:
        return cls.parse(settings.log_images, settings.log_images_uncertain_band)

    @property
    def enabled(self) -> bool:
        return self.kind != NONE and not (self.kind == SAMPLE and self.fraction <= 0.0)

    def wants(self, detections: Detections | None) -> bool:
        """True when this image is to be kept."""
        if self.kind == ALL:
            return True
        if self.kind == SAMPLE:
            return self.fraction > 0.0 and self.rng.random() < self.fraction
        if self.kind == UNCERTAIN:
            low, high = self.band
            scores = [] if detections is None else [float(s) for s in detections.scores]
            return any(low <= s < high for s in scores) or not any(s >= high for s in scores)
        return False


def sniff_extension(data: bytes) -> str:
    """The file extension of encoded image bytes (`bin` when not recognised)."""
    for magic, ext in _MAGIC:
        if data.startswith(magic):
            return ext
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return "bin"


def image_day_prefix(day: date) -> str:
    """`images/dt=YYYY-MM-DD`: one day's kept images (what retention deletes whole)."""
    return f"{IMAGES_PREFIX}/dt={day:%Y-%m-%d}"


def image_key(data: bytes, moment: datetime) -> str:
    """`images/dt=<UTC day of moment>/<sha256>.<ext>`: the key of kept bytes, relative to the
    log's store root. The same bytes on the same day always get the same key."""
    digest = hashlib.sha256(data).hexdigest()
    return f"{image_day_prefix(moment.astimezone(UTC).date())}/{digest}.{sniff_extension(data)}"


# ---------------------------------------------------------------- retention


@dataclass
class PruneSummary:
    """What `prune_images` found and deleted; `to_dict()` is what the CLI and component print."""

    store: str
    retention_days: int
    cutoff: str  # days before this one were expired
    days_kept: list[str] = field(default_factory=list)
    days_deleted: list[str] = field(default_factory=list)
    objects_deleted: int = 0
    dry_run: bool = False

    def to_dict(self) -> dict[str, object]:
        return {
            "store": self.store,
            "retention_days": self.retention_days,
            "cutoff": self.cutoff,
            "days_kept": list(self.days_kept),
            "days_deleted": list(self.days_deleted),
            "objects_deleted": self.objects_deleted,
            "dry_run": self.dry_run,
        }


def _day_of(folder: str) -> date | None:
    """The day of an `images/dt=YYYY-MM-DD` folder name, None for anything else."""
    name = folder.rstrip("/").rsplit("/", 1)[-1]
    if not name.startswith("dt="):
        return None
    try:
        return date.fromisoformat(name[3:])
    except ValueError:
        return None


def prune_images(
    store: ObjectStore,
    retention_days: int,
    *,
    now: datetime | None = None,
    dry_run: bool = False,
) -> PruneSummary:
    """Delete the kept images of every UTC day older than `retention_days` days: whole
    `images/dt=<day>/` folders, so no day is left half-deleted by design (a failure part way is
    finished by the next run). `retention_days` 0 keeps everything. Records are never touched.
    Other names under `images/` are left alone."""
    if retention_days < 0:
        raise UsageError(
            f"the retention must be 0 (keep forever) or more days, got {retention_days}"
        )
    today = (now or datetime.now(UTC)).astimezone(UTC).date()
    cutoff = today - timedelta(days=retention_days)
    summary = PruneSummary(store.uri(IMAGES_PREFIX), retention_days, cutoff.isoformat(),
                           dry_run=dry_run)  # fmt: skip
    for folder in store.list_folders(IMAGES_PREFIX):
        day = _day_of(folder)
        if day is None:
            continue
        if retention_days == 0 or day >= cutoff:
            summary.days_kept.append(day.isoformat())
            continue
        prefix = image_day_prefix(day)
        deleted = len(store.list_keys(prefix)) if dry_run else store.delete_prefix(prefix)
        if not deleted:  # an empty folder some S3 servers (SeaweedFS) keep listing
            continue
        summary.days_deleted.append(day.isoformat())
        summary.objects_deleted += deleted
        if dry_run:
            continue
        log.info("image retention: deleted %d images of %s from %s", deleted, day,
                 store.uri(image_day_prefix(day)))  # fmt: skip
    return summary
