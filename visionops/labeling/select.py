"""`visionops label select`: the images of a prediction-log window most worth labelling.

The window is read once, through the log's own reader (`visionops.monitoring.collect.iter_window`:
JSON lines and compacted parts, a bounded chunk at a time), for the columns a choice needs: the
record's identity, `image_key`, the feature columns and the detections. No image is read then.
Memory stays bounded whatever the window: the candidates are a pool of at most `POOL_ROWS`
distinct images (by the SHA-256 the key names): the most useful half and a seeded uniform half
(bottom-k of a hash of the seed and the digest), pruned as batches arrive, so the pool does not
depend on the order the files are read in. The batch is then picked from the pool
(`visionops.labeling.scoring`), and only the picked images are fetched, one at a time, straight
into the batch folder.

Records that name no kept image are skipped and counted; an image gone from the store (retention
deleted its day) is skipped and counted and the next best taken instead; the same bytes are never
picked twice. The batch folder is built in a hidden sibling and renamed whole.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from visionops.config import get_settings
from visionops.data.files import dir_is_empty, staging_dir
from visionops.errors import DataError, StorageError, UsageError
from visionops.labeling.batch import (
    MANIFEST_FILE,
    BatchItem,
    Prediction,
    SelectionBatch,
    Window,
    image_path,
    write_manifest,
)
from visionops.labeling.scoring import (
    NO_DETECTION_UNCERTAINTY,
    NUMERIC_COLUMNS,
    Confusion,
    DriftFocus,
    Greedy,
    box_uncertainty,
    confusion,
    standardise,
)
from visionops.monitoring.collect import iter_window
from visionops.monitoring.log_files import CollectSummary
from visionops.monitoring.log_layout import (
    COLLECTED_COLUMNS,
    DETECTIONS,
    MODEL_NAME,
    MODEL_VERSION,
    REQUEST_ID,
    TIMESTAMP,
    open_log,
    resolve_window,
)

if TYPE_CHECKING:
    import pyarrow as pa  # pyarrow: loaded only where the log is read

    from visionops.progress import ProgressCallback

log = logging.getLogger(__name__)

IMAGE_KEY = "image_key"  # the record's kept image (data-loop contract, point 1)
POOL_ROWS = 20_000
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_EXTENSIONS = {"jpg", "jpeg", "png", "bmp", "tif", "tiff", "webp"}


@dataclass
class SelectSummary:
    """What a selection read, skipped and wrote; `to_dict()` is what the CLI prints."""

    out: str
    log: str
    start: str
    end: str
    budget: int
    seed: int
    threshold: float
    rows: int = 0  # records in the window
    without_image: int = 0  # records that name no kept image: skipped
    candidates: int = 0  # distinct images the pick was made from
    repeated: int = 0  # records of an image another record already gave
    near_duplicates: int = 0  # images left out as too close to a picked one
    missing_images: int = 0  # picked, but gone from the store or unreadable: skipped
    selected: int = 0
    drifted_columns: list[str] = field(default_factory=list)
    collect: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class _Candidate:
    key: str
    sha256: str
    request_id: str
    timestamp: str
    detections: list[dict[str, Any]]
    confusion: Confusion


class _Pool:
    """At most `capacity` distinct images: the most useful half and a seeded uniform half."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.items: list[_Candidate] = []
        self.features = np.zeros((0, len(NUMERIC_COLUMNS)))
        self.usefulness = np.zeros(0)
        self.tiebreak = np.zeros(0)
        self.repeated = 0

    def add(self, items: list[_Candidate], features: np.ndarray, usefulness: np.ndarray,
            tiebreak: np.ndarray) -> None:  # fmt: skip
        self.items.extend(items)
        self.features = np.vstack([self.features, features])
        self.usefulness = np.concatenate([self.usefulness, usefulness])
        self.tiebreak = np.concatenate([self.tiebreak, tiebreak])
        if len(self.items) > 2 * self.capacity:
            self.prune()

    def prune(self) -> None:
        """One row per image (its most useful record), then the two halves."""
        order = sorted(
            range(len(self.items)),
            key=lambda i: (self.items[i].sha256, -self.usefulness[i], self.items[i].timestamp,
                           self.items[i].request_id),
        )  # fmt: skip
        keep: list[int] = []
        for i in order:
            if keep and self.items[keep[-1]].sha256 == self.items[i].sha256:
                self.repeated += 1
            else:
                keep.append(i)
        index = np.array(keep, np.int64)
        if len(index) > self.capacity:
            half = self.capacity // 2
            useful = index[np.lexsort((self.tiebreak[index], -self.usefulness[index]))][:half]
            uniform = index[np.argsort(self.tiebreak[index], kind="stable")][: self.capacity - half]
            index = np.union1d(useful, uniform)
        ordered = sorted(index.tolist(), key=lambda i: self.items[i].sha256)  # not read order
        self.items = [self.items[i] for i in ordered]
        self.features = self.features[ordered]
        self.usefulness = self.usefulness[ordered]
        self.tiebreak = self.tiebreak[ordered]


def select_window(
    location: str,
    out: Path,
    *,
    budget: int,
    start: str | datetime | None = None,
    end: str | datetime | None = None,
    hours: float = 24.0,
    seed: int = 0,
    drift: DriftFocus | None = None,
    threshold: float | None = None,
    class_names: Sequence[str] = (),
    progress: ProgressCallback | None = None,
) -> SelectSummary:
    """Pick at most `budget` images of the window of the log at `location` (empty: the
    configured log) and write them as a selection batch at `out`.

    `threshold` is the confidence threshold the predictor applied (default VISIONOPS_SERVE_CONF);
    `drift` the drifted columns of a drift check (`read_drift_result`), which steer the pick;
    `class_names` the model's classes (the classes its detections in the window name are added).
    UsageError for a bad budget, threshold or `out` (`check_selection`); StorageError when no
    file of the window could be read.
    """
    out, threshold = check_selection(out, budget, threshold)
    begin, stop = resolve_window(start, end, hours)
    focus = drift or DriftFocus()
    store = open_log(location)
    collected = CollectSummary(store.uri(), begin, stop)
    summary = SelectSummary(
        str(out), store.uri(), begin.isoformat(), stop.isoformat(), budget, seed, threshold,
        drifted_columns=focus.columns,
    )  # fmt: skip

    pool = _Pool(max(POOL_ROWS, 4 * budget))
    names: dict[int, str] = {}
    models: Counter[tuple[str, str]] = Counter()
    columns = list(dict.fromkeys([*COLLECTED_COLUMNS, DETECTIONS, IMAGE_KEY]))
    for batch in iter_window(store, begin, stop, collected, columns=columns, progress=progress):
        _add_batch(batch, pool, summary, focus, threshold, seed, names, models)
    if collected.unreadable and not collected.raw_files + collected.parts:
        raise StorageError(
            f"none of the {len(collected.unreadable)} files of the window could be read: "
            + "; ".join(f"{k}: {why}" for k, why in list(collected.unreadable.items())[:3])
        )
    pool.prune()
    summary.repeated = pool.repeated
    summary.candidates = len(pool.items)
    summary.collect = collected.to_dict()
    for line in collected.problems():
        log.warning("prediction log %s: %s", store.uri(), line)

    classes = list(dict.fromkeys([*class_names, *(names[i] for i in sorted(names))]))
    model_name, model_version = max(models, key=lambda m: (models[m], m), default=("", ""))
    batch_meta = SelectionBatch(
        model_name, model_version, classes, Window(begin.isoformat(), stop.isoformat(),
        store.uri()), seed, budget,
    )  # fmt: skip
    with staging_dir(out) as staging:
        (staging / "images").mkdir()
        batch_meta.items = _pick(pool, store, staging, summary, focus, threshold)
        write_manifest(staging, batch_meta)
    summary.selected = len(batch_meta.items)
    log.info("selected %d of %d candidate images into %s", summary.selected,
             summary.candidates, out)  # fmt: skip
    return summary


def check_selection(out: Path, budget: int, threshold: float | None) -> tuple[Path, float]:
    """The absolute `out` and the threshold in effect, once the flags are known to be usable:
    UsageError for a budget below 1, a threshold outside (0, 1) or an `out` that holds
    something else than a selection batch."""
    if budget < 1:
        raise UsageError(f"--budget must be at least 1, got {budget}")
    threshold = get_settings().serve_conf if threshold is None else threshold
    if not 0 < threshold < 1:
        raise UsageError(f"--threshold must be between 0 and 1, got {threshold}")
    out = Path(out).expanduser().absolute()
    if out.exists() and not dir_is_empty(out) and not (out / MANIFEST_FILE).is_file():
        raise UsageError(f"{out} exists and is not a selection batch; choose another --out")
    return out, threshold


def _add_batch(
    batch: pa.RecordBatch,
    pool: _Pool,
    summary: SelectSummary,
    focus: DriftFocus,
    threshold: float,
    seed: int,
    names: dict[int, str],
    models: Counter[tuple[str, str]],
) -> None:
    """The batch's records that name a kept image, scored, into the pool."""
    import pyarrow as pa  # pyarrow: loaded only where the log is read

    rows = len(batch)
    summary.rows += rows
    present = set(batch.schema.names)

    def texts(column: str) -> list[Any]:
        return batch.column(column).to_pylist() if column in present else [None] * rows

    keys = [_plain_key(k) for k in texts(IMAGE_KEY)]
    models.update(zip(map(str, texts(MODEL_NAME)), map(str, texts(MODEL_VERSION)), strict=True))
    kept = [i for i, key in enumerate(keys) if key]
    summary.without_image += rows - len(kept)
    if not kept:
        return
    take = pa.array(kept, pa.int64())
    frame = {
        c: batch.column(c).take(take).cast(pa.float64()).to_numpy(zero_copy_only=False)
        for c in NUMERIC_COLUMNS
        if c in present
    }
    features = np.column_stack([frame.get(c, np.full(len(kept), np.nan)) for c in NUMERIC_COLUMNS])
    request_ids, stamps, detections = texts(REQUEST_ID), texts(TIMESTAMP), texts(DETECTIONS)
    items, usefulness, tiebreak = [], np.zeros(len(kept)), np.zeros(len(kept))
    for j, i in enumerate(kept):
        found = [d for d in detections[i] or [] if d is not None]
        for d in found:
            names.setdefault(int(d["class_id"]), str(d["class_name"]))
        mix = confusion(found) if len(found) > 1 else Confusion()
        sure = max((box_uncertainty(float(d["score"]), threshold) for d in found),
                   default=NO_DETECTION_UNCERTAINTY)  # fmt: skip
        usefulness[j] = max(sure, mix.value)
        digest = _digest(str(keys[i]))
        tiebreak[j] = _uniform(seed, digest)
        stamp = stamps[i].isoformat() if isinstance(stamps[i], datetime) else str(stamps[i])
        items.append(_Candidate(str(keys[i]), digest, str(request_ids[i]), stamp, found, mix))
    if focus.weights:
        drift = focus.scores(focus.distances(frame, len(kept)))
        usefulness = 0.5 * usefulness + 0.5 * drift
    pool.add(items, features, usefulness, tiebreak)


def _pick(
    pool: _Pool,
    store: Any,
    staging: Path,
    summary: SelectSummary,
    focus: DriftFocus,
    threshold: float,
) -> list[BatchItem]:
    """Picked images, fetched one at a time into `staging/images`, with why each was picked."""
    if not pool.items:
        return []
    weights = focus.column_weights(NUMERIC_COLUMNS)
    greedy = Greedy(standardise(pool.features, weights), pool.usefulness, pool.tiebreak)
    index = {c: j for j, c in enumerate(NUMERIC_COLUMNS)}
    chosen: list[BatchItem] = []
    digests: set[str] = set()
    while len(chosen) < summary.budget and (pick := greedy.propose()) is not None:
        candidate = pool.items[pick.row]
        try:
            data = store.read_bytes(candidate.key)
        except (StorageError, OSError) as error:
            log.warning("image %s of request %s is gone: %s", candidate.key,
                        candidate.request_id, error)  # fmt: skip
            summary.missing_images += 1
            continue
        digest = hashlib.sha256(data).hexdigest()
        if digest in digests:
            summary.repeated += 1
            continue
        size = _size(pool.features[pick.row], index, data)
        if size is None:
            log.warning("image %s of request %s cannot be read", candidate.key,
                        candidate.request_id)  # fmt: skip
            summary.missing_images += 1
            continue
        relative = image_path(digest, _extension(candidate.key))
        (staging / relative).write_bytes(data)
        greedy.accept(pick.row)
        digests.add(digest)
        drift = dict(zip(focus.columns, focus.distances(
            {c: pool.features[pick.row : pick.row + 1, index[c]] for c in focus.columns}, 1
        )[0], strict=True))  # fmt: skip
        chosen.append(
            BatchItem(
                image=relative,
                image_key=candidate.key,
                request_id=candidate.request_id,
                timestamp=candidate.timestamp,
                width=size[0],
                height=size[1],
                reasons=tuple(_reasons(candidate, threshold, drift, pick.distance, not chosen)),
                score=round(pick.value, 6),
                predictions=tuple(_predictions(candidate.detections, *size)),
            )
        )
    summary.near_duplicates = greedy.near_duplicates
    return chosen


def _reasons(
    candidate: _Candidate, threshold: float, drift: dict[str, float], distance: float, first: bool
) -> list[str]:
    """Why an image was picked, in words a labeller's lead can check."""
    reasons = []
    if candidate.detections:
        least = max(candidate.detections,
                    key=lambda d: box_uncertainty(float(d["score"]), threshold))  # fmt: skip
        score = float(least["score"])
        reasons.append(
            f"least sure box: {least['class_name']} at {score:.3f}, "
            f"{abs(score - threshold):.3f} from the threshold {threshold:g}"
        )
    else:
        reasons.append("no detection: a missed defect would hide here")
    mix = candidate.confusion
    if mix.value > 0:
        reasons.append(
            f"class confusion: {mix.classes[0]} {mix.scores[0]:.2f} and {mix.classes[1]} "
            f"{mix.scores[1]:.2f} on one region (IoU {mix.overlap:.2f})"
        )
    far = sorted(((z, c) for c, z in drift.items() if z >= 1), reverse=True)[:3]
    if far:
        reasons.append(
            "drifted: " + ", ".join(f"{c} {z:.1f} sd from the reference" for z, c in far)
        )
    if first:
        reasons.append("the most useful image of the window")
    else:
        reasons.append(f"{distance:.2f} sd from the nearest image picked before it")
    return reasons


def _predictions(detections: list[dict[str, Any]], width: int, height: int) -> list[Prediction]:
    """The model's boxes in COCO order (x, y, w, h), clipped to the image."""
    boxes = []
    for d in detections:
        x1, y1, x2, y2 = (float(v) for v in d["box"])
        x1, x2 = min(max(x1, 0.0), width), min(max(x2, 0.0), width)
        y1, y2 = min(max(y1, 0.0), height), min(max(y2, 0.0), height)
        boxes.append(Prediction(str(d["class_name"]), round(float(d["score"]), 5),
                                (round(x1, 2), round(y1, 2), round(x2 - x1, 2),
                                 round(y2 - y1, 2))))  # fmt: skip
    return boxes


def _size(features: np.ndarray, index: dict[str, int], data: bytes) -> tuple[int, int] | None:
    """(width, height) from the feature row, else from the image's header; None if unreadable."""
    width, height = features[index["img_width"]], features[index["img_height"]]
    if math.isfinite(width) and math.isfinite(height) and width >= 1 and height >= 1:
        return int(width), int(height)
    from PIL import Image, UnidentifiedImageError  # only for a record without its size

    try:
        with Image.open(io.BytesIO(data)) as image:
            return int(image.width), int(image.height)
    except (UnidentifiedImageError, OSError, ValueError):
        return None


def _digest(key: str) -> str:
    """The SHA-256 an image key names (`.../<sha256>.<ext>`), else one of the key itself."""
    stem = key.rsplit("/", 1)[-1].split(".", 1)[0]
    return stem if _DIGEST.match(stem) else hashlib.sha256(key.encode()).hexdigest()


def _plain_key(value: Any) -> str | None:
    """An image key as text: a part compacted by a version that did not know the column holds
    it as JSON text (`"images/..."`)."""
    if not value:
        return None
    text = str(value)
    if text.startswith('"'):
        try:
            text = str(json.loads(text))
        except ValueError:
            return None
    return text or None


def _extension(key: str) -> str:
    name = key.rsplit("/", 1)[-1]
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return ext if ext in _EXTENSIONS else "bin"


def _uniform(seed: int, digest: str) -> float:
    """A number in [0, 1) fixed by the seed and the image: the uniform half's sampling key."""
    value = hashlib.sha256(f"{seed}:{digest}".encode()).digest()[:8]
    return int.from_bytes(value, "big") / 2**64


def read_class_names(path: Path) -> list[str]:
    """Class names from a model's `metadata.json` (`names`), a dataset's `class_map.json`, or a
    JSON list. DataError for anything else."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"cannot read class names from {path}: {error}") from error
    if isinstance(data, dict) and isinstance(data.get("names"), list):
        data = data["names"]
    elif isinstance(data, dict) and isinstance(data.get("classes"), list):
        data = [c.get("name") if isinstance(c, dict) else None for c in data["classes"]]
    if not isinstance(data, list) or not data or not all(isinstance(n, str) for n in data):
        raise DataError(
            f"{path} holds no class names (a metadata.json, a class_map.json or a JSON list)"
        )
    return list(data)
