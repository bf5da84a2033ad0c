"""The selection batch folder: the images `visionops label select` picked, and why.

    DIR/images/<sha256>.<ext>     the kept bytes, as the predictor received them
    DIR/manifest.json             model, class names, window, seed, budget, and per image: where
                                  it came from, its size, why it was picked, the model's boxes

Selection writes it; every exporter (COCO, Label Studio) reads it, only through this module, so
the format is checked in one place. Boxes are in pixels, COCO order `[x, y, w, h]`. A manifest
that does not hold together (a box of an unknown class, an image listed twice, a file missing)
is a DataError naming the item, never a half-exported batch.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visionops.data.files import atomic_write_text
from visionops.errors import DataError

MANIFEST_FILE = "manifest.json"
IMAGES_DIR = "images"
BATCH_VERSION = 1
_IMAGE_PATH = re.compile(r"^images/([0-9a-f]{64})\.([a-z0-9]{1,5})$")


@dataclass(frozen=True)
class Prediction:
    """One box of the model: class name, score, `(x, y, w, h)` in original-image pixels."""

    class_name: str
    score: float
    bbox: tuple[float, float, float, float]

    def to_dict(self) -> dict[str, Any]:
        return {"class_name": self.class_name, "score": self.score, "bbox": list(self.bbox)}


@dataclass(frozen=True)
class BatchItem:
    """One picked image: its file in the batch, its origin in the log, and why it was picked."""

    image: str  # "images/<sha256>.<ext>", relative to the batch folder
    image_key: str | None  # the object key in the prediction log's store
    request_id: str
    timestamp: str  # ISO-8601, UTC
    width: int
    height: int
    reasons: tuple[str, ...]
    score: float  # the selection's value of the image (higher: picked earlier)
    predictions: tuple[Prediction, ...] = ()

    @property
    def sha256(self) -> str:
        return image_sha256(self.image)

    @property
    def file_name(self) -> str:
        return self.image.rsplit("/", 1)[1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "image_key": self.image_key,
            "request_id": self.request_id,
            "timestamp": self.timestamp,
            "width": self.width,
            "height": self.height,
            "reasons": list(self.reasons),
            "score": self.score,
            "predictions": [p.to_dict() for p in self.predictions],
        }


@dataclass(frozen=True)
class Window:
    """The prediction log window the batch was picked from."""

    start: str
    end: str
    log: str


@dataclass
class SelectionBatch:
    """A batch folder's manifest, in memory."""

    model_name: str
    model_version: str
    class_names: list[str]
    window: Window
    seed: int
    budget: int
    items: list[BatchItem] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": BATCH_VERSION,
            "model": {"name": self.model_name, "version": self.model_version},
            "class_names": list(self.class_names),
            "window": {"start": self.window.start, "end": self.window.end, "log": self.window.log},
            "seed": self.seed,
            "budget": self.budget,
            "items": [item.to_dict() for item in self.items],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = MANIFEST_FILE) -> SelectionBatch:
        """The batch a manifest describes; DataError naming the first thing that is wrong."""
        return _parse(data, source)

    def validate(self, source: str = MANIFEST_FILE) -> None:
        """Check the batch holds together (what `from_dict` checks), e.g. before writing it."""
        _parse(self.to_dict(), source)


def image_sha256(image: str) -> str:
    """The SHA-256 in an item's `images/<sha256>.<ext>` path; DataError for another form."""
    match = _IMAGE_PATH.match(image)
    if match is None:
        raise DataError(f"image path {image!r} is not images/<sha256 hex>.<ext>")
    return match.group(1)


def image_path(sha256: str, ext: str) -> str:
    """The batch-relative path of an image with this digest and extension."""
    path = f"{IMAGES_DIR}/{sha256}.{ext.lower().lstrip('.')}"
    image_sha256(path)
    return path


def write_manifest(folder: Path, batch: SelectionBatch) -> Path:
    """Validate `batch` and write `folder/manifest.json` atomically (same batch, same bytes)."""
    batch.validate(str(Path(folder) / MANIFEST_FILE))
    text = json.dumps(batch.to_dict(), indent=2, ensure_ascii=False) + "\n"
    return atomic_write_text(Path(folder) / MANIFEST_FILE, text)


def read_batch(folder: Path, *, check_images: bool = True) -> SelectionBatch:
    """The batch in `folder`: its manifest parsed and checked, and (by default) every image file
    present. DataError naming the folder, the item and the problem otherwise."""
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not folder.is_dir():
        raise DataError(f"selection batch not found: {folder} is not a folder")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise DataError(f"{folder} is not a selection batch: {MANIFEST_FILE} missing") from error
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read {path}: {error}") from error
    except json.JSONDecodeError as error:
        raise DataError(f"invalid JSON in {path} (line {error.lineno}): {error.msg}") from error
    if not isinstance(data, dict):
        raise DataError(f"{path}: a manifest must hold a JSON object")
    batch = _parse(data, str(path))
    if check_images:
        for item in batch.items:
            if not (folder / item.image).is_file():
                raise DataError(f"{path}: image {item.image} is missing from the batch folder")
    return batch


# ---------------------------------------------------------------- parsing


def _parse(data: Mapping[str, Any], source: str) -> SelectionBatch:
    version = data.get("version")
    if version != BATCH_VERSION:
        raise DataError(f"{source}: manifest version {version!r}; this VisionOps reads version 1")
    try:
        model = _mapping(data, "model", source)
        window = _mapping(data, "window", source)
        class_names = data["class_names"]
        if not isinstance(class_names, list) or not all(isinstance(c, str) for c in class_names):
            raise DataError(f"{source}: class_names must be a list of strings")
        if len(set(class_names)) != len(class_names):
            raise DataError(f"{source}: class_names repeat a name")
        batch = SelectionBatch(
            model_name=str(model["name"]),
            model_version=str(model["version"]),
            class_names=list(class_names),
            window=Window(str(window["start"]), str(window["end"]), str(window["log"])),
            seed=_integer(data["seed"], "seed", source),
            budget=_integer(data["budget"], "budget", source),
        )
        items = data["items"]
        if not isinstance(items, list):
            raise DataError(f"{source}: items must be a list")
    except KeyError as error:
        raise DataError(f"{source}: manifest lacks {error}") from error
    if batch.budget < 0:
        raise DataError(f"{source}: budget must be >= 0, got {batch.budget}")
    if len(items) > batch.budget:
        raise DataError(f"{source}: {len(items)} items exceed the budget of {batch.budget}")
    known = set(batch.class_names)
    seen: set[str] = set()
    for index, raw in enumerate(items):
        item = _item(raw, f"{source}: item {index}", known)
        if item.sha256 in seen:
            raise DataError(f"{source}: item {index} repeats image {item.image}")
        seen.add(item.sha256)
        batch.items.append(item)
    return batch


def _item(raw: Any, where: str, known: set[str]) -> BatchItem:
    if not isinstance(raw, dict):
        raise DataError(f"{where}: must be a JSON object")
    try:
        image = str(raw["image"])
        image_sha256(image)
        width = _integer(raw["width"], "width", where)
        height = _integer(raw["height"], "height", where)
        if width < 1 or height < 1:
            raise DataError(f"{where}: image size {width}x{height} must be positive")
        reasons = raw["reasons"]
        if not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons):
            raise DataError(f"{where}: reasons must be a list of strings")
        key = raw.get("image_key")
        predictions = [
            _prediction(p, f"{where}, prediction {i}", known, width, height)
            for i, p in enumerate(_list(raw["predictions"], "predictions", where))
        ]
        return BatchItem(
            image=image,
            image_key=None if key is None else str(key),
            request_id=str(raw["request_id"]),
            timestamp=str(raw["timestamp"]),
            width=width,
            height=height,
            reasons=tuple(reasons),
            score=_number(raw["score"], "score", where),
            predictions=tuple(predictions),
        )
    except KeyError as error:
        raise DataError(f"{where}: lacks {error}") from error
    except DataError as error:
        if str(error).startswith(where):
            raise
        raise DataError(f"{where}: {error}") from error


def _prediction(raw: Any, where: str, known: set[str], width: int, height: int) -> Prediction:
    if not isinstance(raw, dict):
        raise DataError(f"{where}: must be a JSON object")
    try:
        name = str(raw["class_name"])
        bbox = _list(raw["bbox"], "bbox", where)
        score = _number(raw["score"], "score", where)
    except KeyError as error:
        raise DataError(f"{where}: lacks {error}") from error
    if name not in known:
        raise DataError(f"{where}: class {name!r} is not in class_names")
    if len(bbox) != 4:
        raise DataError(f"{where}: bbox must be [x, y, w, h], got {bbox!r}")
    x, y, w, h = (_number(v, "bbox", where) for v in bbox)
    if w < 0 or h < 0:
        raise DataError(f"{where}: bbox {bbox!r} has a negative size")
    if x < -1 or y < -1 or x + w > width + 1 or y + h > height + 1:
        raise DataError(f"{where}: bbox {bbox!r} falls outside the {width}x{height} image")
    return Prediction(name, score, (x, y, w, h))


def _mapping(data: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = data[key]
    if not isinstance(value, dict):
        raise DataError(f"{where}: {key} must be a JSON object")
    return value


def _list(value: Any, name: str, where: str) -> Sequence[Any]:
    if not isinstance(value, list):
        raise DataError(f"{where}: {name} must be a list")
    return value


def _integer(value: Any, name: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(f"{where}: {name} must be an integer, got {value!r}")
    return value


def _number(value: Any, name: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataError(f"{where}: {name} must be a finite number, got {value!r}")
    return float(value)
