"""`visionops label select`: the images of a prediction-log window most worth labelling.

The window is read once, through the log's own reader (`visionops.monitoring.collect.iter_window`:
JSON lines and compacted parts, a bounded chunk at a time), for the columns a choice needs: the
record's identity, `image_key`, the feature columns and the detections. No image is read then.
Memory stays bounded whatever the window: the candidates are a pool of at most `POOL_ROWS`
distinct images (`visionops.labeling.candidates`), and the records become Python objects a slice
of `SLICE_ROWS` at a time. The batch is then picked from the pool
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
from visionops.labeling.candidates import (
    NO_BOXES,
    Candidate,
    CandidatePool,
    flat_boxes,
    image_digest,
    plain_key,
    uniform_key,
)
from visionops.labeling.scoring import (
    NUMERIC_COLUMNS,
    DriftFocus,
    Greedy,
    box_uncertainty,
    confusion,
    confusions,
    standardise,
    uncertainties,
)
from visionops.monitoring.collect import iter_window
from visionops.monitoring.log_files import CollectSummary
from visionops.monitoring.log_layout import (
    COLLECTED_COLUMNS,
    DETECTIONS,
    IMAGE_KEY,
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

POOL_ROWS = 20_000
SLICE_ROWS = 8192  # records turned into Python objects at once
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

    pool = CandidatePool(max(POOL_ROWS, 4 * budget))
    names: dict[int, str] = {}
    models: Counter[tuple[str, str]] = Counter()
    columns = list(dict.fromkeys([*COLLECTED_COLUMNS, DETECTIONS, IMAGE_KEY]))
    for batch in iter_window(store, begin, stop, collected, columns=columns, progress=progress):
        for offset in range(0, len(batch), SLICE_ROWS):  # Python objects for a slice at a time
            part = batch.slice(offset, SLICE_ROWS)
            _add_batch(part, pool, summary, focus, threshold, seed, names, models)
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
    pool: CandidatePool,
    summary: SelectSummary,
    focus: DriftFocus,
    threshold: float,
    seed: int,
    names: dict[int, str],
    models: Counter[tuple[str, str]],
) -> None:
    """The batch's records that name a kept image, scored (vectorised), into the pool."""
    import pyarrow as pa  # pyarrow: loaded only where the log is read

    summary.rows += len(batch)
    present = set(batch.schema.names)
    _count_models(batch, models)
    raw = batch.column(IMAGE_KEY).to_pylist() if IMAGE_KEY in present else [None] * len(batch)
    keys = [plain_key(k) for k in raw]
    kept = [i for i, key in enumerate(keys) if key]
    summary.without_image += len(batch) - len(kept)
    if not kept:
        return
    rows = batch.take(pa.array(kept, pa.int64()))
    frame = {
        c: rows.column(c).cast(pa.float64()).to_numpy(zero_copy_only=False)
        for c in NUMERIC_COLUMNS
        if c in present
    }
    features = np.column_stack([frame.get(c, np.full(len(kept), np.nan)) for c in NUMERIC_COLUMNS])
    boxes, counts = flat_boxes(rows.column(DETECTIONS)) if DETECTIONS in present else (
        NO_BOXES, np.zeros(len(kept), np.int64))  # fmt: skip
    for class_id, index in {(int(c), int(n)) for c, n in zip(boxes.class_ids, boxes.name_index,
                                                                strict=True)}:  # fmt: skip
        names.setdefault(class_id, boxes.names[index])
    owner = np.repeat(np.arange(len(kept)), counts)
    usefulness = np.maximum(
        uncertainties(boxes.scores, owner, len(kept), threshold),
        confusions(boxes.class_ids, boxes.scores, boxes.boxes, owner, len(kept)),
    )
    if focus.weights:
        usefulness = 0.5 * usefulness + 0.5 * focus.scores(focus.distances(frame, len(kept)))
    stamps = rows.column(TIMESTAMP).cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
    micros = stamps.to_numpy(zero_copy_only=False)
    requests = rows.column(REQUEST_ID).to_pylist() if REQUEST_ID in present else [""] * len(kept)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    items, tiebreak = [], np.zeros(len(kept))
    for j, i in enumerate(kept):
        key = str(keys[i])
        digest = image_digest(key)
        tiebreak[j] = uniform_key(seed, digest)
        items.append(Candidate(key, digest, str(requests[j]), int(micros[j]), boxes,
                                int(starts[j]), int(counts[j])))  # fmt: skip
    pool.add(items, features, usefulness, tiebreak)


def _count_models(batch: pa.RecordBatch, models: Counter[tuple[str, str]]) -> None:
    """Records per (model name, version): the batch is labelled with the most frequent."""
    import pyarrow as pa  # pyarrow: loaded only where the log is read

    present = set(batch.schema.names)
    if not {MODEL_NAME, MODEL_VERSION} <= present:
        models[("", "")] += len(batch)
        return
    table = pa.Table.from_batches([batch.select([MODEL_NAME, MODEL_VERSION])])
    counted = table.group_by([MODEL_NAME, MODEL_VERSION]).aggregate([([], "count_all")])
    columns = (counted.column(c).to_pylist() for c in (MODEL_NAME, MODEL_VERSION, "count_all"))
    for name, version, count in zip(*columns, strict=True):
        models[(str(name or ""), str(version or ""))] += int(count)


def _pick(
    pool: CandidatePool,
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
    candidate: Candidate, threshold: float, drift: dict[str, float], distance: float, first: bool
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
    mix = confusion(candidate.detections)
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


def _extension(key: str) -> str:
    name = key.rsplit("/", 1)[-1]
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return ext if ext in _EXTENSIONS else "bin"


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
