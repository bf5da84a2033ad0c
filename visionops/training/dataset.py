"""An Ultralytics YOLO dataset as training and evaluation read it: data.yaml, images, labels.

`load_data_yaml` checks the file before anything expensive starts (a missing split or an empty
class list fails here with the path, not deep inside Ultralytics). The split hash identifies the
evaluation data: the gate compares two models only on splits with the same hash.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from visionops.errors import DataError, UsageError

IMAGE_SUFFIXES = frozenset({".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"})
MANIFEST_FILE = "manifest.json"  # written beside data.yaml by `visionops data convert`


@dataclass(frozen=True)
class LabeledImage:
    """One image of a split and its ground truth in pixels (x1, y1, x2, y2)."""

    path: Path
    relative: str
    boxes: np.ndarray  # float64 [N, 4], normalised cx, cy, w, h
    class_ids: np.ndarray  # int64 [N]

    def pixel_boxes(self, width: int, height: int) -> np.ndarray:
        """Boxes as x1, y1, x2, y2 in pixels of an image of `width` x `height`."""
        cx, cy, w, h = (self.boxes[:, i] for i in range(4))
        scale = np.array([width, height, width, height], np.float64)
        return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1) * scale


@dataclass(frozen=True)
class YoloDataset:
    """A parsed data.yaml: class names and the image sources of each split."""

    data_yaml: Path
    root: Path
    names: list[str]
    sources: dict[str, list[Path]]

    @property
    def products(self) -> list[str]:
        """Products named by the class names (`Product/category`), in first-seen order."""
        return list(dict.fromkeys(name.split("/", 1)[0] for name in self.names if "/" in name))

    def images(self, split: str) -> list[Path]:
        """Every image of `split`, sorted; DataError if the split is unknown or empty."""
        if split not in self.sources:
            known = ", ".join(sorted(self.sources))
            raise UsageError(f"{self.data_yaml} has no split {split!r} (it has: {known})")
        found: set[Path] = set()
        for source in self.sources[split]:
            if source.is_dir():
                found.update(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            elif source.suffix == ".txt":
                found.update(_listed_images(source, self.root))
            elif source.suffix.lower() in IMAGE_SUFFIXES:
                found.add(source)
        if not found:
            raise DataError(f"split {split!r} of {self.data_yaml} holds no images")
        return sorted(found)

    def labeled(self, split: str) -> list[LabeledImage]:
        """Every image of `split` with its boxes (polygons are reduced to their boxes)."""
        return [self._labeled(path) for path in self.images(split)]

    def _labeled(self, image: Path) -> LabeledImage:
        label = label_path(image)
        rows: list[list[float]] = []
        if label.is_file():
            for number, line in enumerate(label.read_text().splitlines(), 1):
                values = line.split()
                if not values:
                    continue
                try:
                    rows.append(_row_to_box([float(v) for v in values]))
                except ValueError as error:
                    raise DataError(f"{label}:{number}: {error}") from error
        array = np.array(rows, np.float64).reshape(-1, 5)
        class_ids = array[:, 0].astype(np.int64)
        if len(class_ids) and (class_ids.min() < 0 or class_ids.max() >= len(self.names)):
            raise DataError(f"{label}: class id out of range 0..{len(self.names) - 1}")
        return LabeledImage(image, _relative(image, self.root), array[:, 1:], class_ids)

    def split_hash(self, split: str) -> str:
        """SHA-256 over the class names and every image and label of `split` (paths and bytes)."""
        digest = hashlib.sha256(json.dumps(self.names).encode())
        for image in self.images(split):
            digest.update(f"\n{_relative(image, self.root)}\0".encode())
            digest.update(hashlib.sha256(image.read_bytes()).digest())
            label = label_path(image)
            digest.update(label.read_bytes() if label.is_file() else b"\0no-label")
        return digest.hexdigest()

    @cached_property
    def dataset_hash(self) -> str:
        """The converter's content hash (manifest.json), or a hash of every split."""
        manifest = self.data_yaml.parent / MANIFEST_FILE
        if manifest.is_file():
            try:
                value = json.loads(manifest.read_text()).get("dataset_hash")
            except (OSError, json.JSONDecodeError, AttributeError):
                value = None
            if isinstance(value, str) and value:
                return value
        digest = hashlib.sha256()
        for split in sorted(self.sources):
            digest.update(f"{split}:{self.split_hash(split)}\n".encode())
        return digest.hexdigest()

    def label_statistics(self) -> dict[str, Any]:
        """Per split: images, background images, boxes per class, box size quantiles."""
        stats: dict[str, Any] = {"names": self.names, "splits": {}}
        for split in sorted(self.sources):
            images = self.labeled(split)
            per_class: Counter[str] = Counter()
            sizes = [img.boxes[:, 2:4] for img in images if len(img.boxes)]
            for img in images:
                per_class.update(self.names[int(c)] for c in img.class_ids)
            wh = np.concatenate(sizes) if sizes else np.zeros((0, 2))
            area = wh[:, 0] * wh[:, 1]
            stats["splits"][split] = {
                "images": len(images),
                "background_images": sum(1 for img in images if not len(img.boxes)),
                "boxes": int(sum(per_class.values())),
                "boxes_per_class": {name: per_class.get(name, 0) for name in self.names},
                "box_area_quantiles": (
                    {f"p{q}": float(np.quantile(area, q / 100)) for q in (5, 50, 95)}
                    if len(area)
                    else {}
                ),
            }
        return stats


def label_path(image: Path) -> Path:
    """Ultralytics' rule: the last `images` folder becomes `labels`, the suffix `.txt`."""
    parts = list(image.parts)
    for index in range(len(parts) - 2, -1, -1):
        if parts[index] == "images":
            parts[index] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def _row_to_box(values: list[float]) -> list[float]:
    """`cls cx cy w h` as is; `cls x1 y1 x2 y2 ...` (a polygon) as its bounding box."""
    if len(values) == 5:
        return values
    if len(values) >= 7 and len(values) % 2 == 1:
        xs, ys = np.array(values[1::2]), np.array(values[2::2])
        x1, x2, y1, y2 = xs.min(), xs.max(), ys.min(), ys.max()
        return [values[0], (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]
    raise ValueError(f"expected 'class cx cy w h' or a polygon, got {len(values)} numbers")


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _listed_images(listing: Path, root: Path) -> list[Path]:
    images = []
    for line in listing.read_text().splitlines():
        line = line.strip()
        if line:
            path = Path(line)
            images.append(path if path.is_absolute() else (root / path).resolve())
    return images


def load_data_yaml(path: Path) -> YoloDataset:
    """Parse and check an Ultralytics data.yaml; DataError naming the file and the problem."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise DataError(f"data.yaml not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise DataError(f"{path} is not valid YAML: {error}") from error
    if not isinstance(data, dict):
        raise DataError(f"{path} must be a mapping with path, train, val and names")
    names = _names(data.get("names"), path)
    if "nc" in data and data["nc"] != len(names):
        raise DataError(f"{path}: nc is {data['nc']} but names lists {len(names)} classes")
    base = Path(str(data.get("path") or path.parent)).expanduser()
    root = (base if base.is_absolute() else path.parent / base).resolve()
    sources: dict[str, list[Path]] = {}
    for split in ("train", "val", "test"):
        entry = data.get(split)
        if entry in (None, ""):
            if split in ("train", "val"):
                raise DataError(f"{path}: the {split!r} split is missing")
            continue
        entries = entry if isinstance(entry, list) else [entry]
        resolved = [_source(root, str(e)) for e in entries]
        missing = [str(p) for p in resolved if not p.exists()]
        if missing:
            raise DataError(f"{path}: {split} images not found: {', '.join(missing)}")
        sources[split] = resolved
    return YoloDataset(path, root, names, sources)


def _source(root: Path, entry: str) -> Path:
    candidate = Path(entry).expanduser()
    return candidate if candidate.is_absolute() else (root / candidate).resolve()


def _names(value: Any, path: Path) -> list[str]:
    if isinstance(value, dict):
        try:
            ordered = [str(value[i]) for i in range(len(value))]
        except KeyError as error:
            raise DataError(f"{path}: names must be numbered 0..n-1") from error
    elif isinstance(value, list):
        ordered = [str(v) for v in value]
    else:
        raise DataError(f"{path}: names must be a list or a mapping of class names")
    if not ordered:
        raise DataError(f"{path}: names lists no classes")
    if len(set(ordered)) != len(ordered):
        raise DataError(f"{path}: class names must be unique")
    return ordered
