"""Labelled images back into a VISION root: the one way labels re-enter training.

Whatever tool the labels come from (a COCO file from CVAT, Label Studio), the importer turns them
into `LabeledImage`s and `write_vision_root` writes the layout `visionops.data.vision.open_vision`
reads, which `visionops data convert BASE --include ROOT` merges under the base's class map:

    ROOT/<Product>/train/<sha256>.<ext>, _annotations.coco.json
    ROOT/<Product>/val/...
    ROOT/vision_root.json          what went in (content hash, counts); marks the folder as ours

Classes are VISION class names, `<Product>/<category>` ("Cable/break"): the prefix says which
product's folder an image goes to, and an image whose boxes name two products is an error. An
image without boxes is a background image (marked `visionops_background`, which trains the
detector not to fire) of the product its `product` names (the importer takes it from the
model's predictions or the annotation file); with no product known it cannot be placed and is
left out and counted (`unplaced`).

The split is seeded and stable: an image goes to val when its rank by SHA-256(seed, image digest)
is among the first `val_fraction` of its product (at least one when the product has two images),
so the same images and seed always give the same split. The root is built in a hidden sibling and
renamed into place (whole or nothing); the same input again finds its content hash in
`vision_root.json` and writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visionops.data.coco import ANNOTATIONS_FILE, BACKGROUND_KEY, empty_coco, write_coco
from visionops.data.files import (
    atomic_write_text,
    dir_is_empty,
    read_json_object,
    sha256_file,
    staging_dir,
)
from visionops.data.vision import LABELED_SPLITS, PRODUCTS
from visionops.errors import DataError, UsageError

log = logging.getLogger(__name__)

ROOT_FILE = "vision_root.json"
EDGE_TOLERANCE = 1.0  # px a box may cross the image border (as `data validate` allows)
_FORMATS = {"JPEG": "jpg", "PNG": "png", "BMP": "bmp", "TIFF": "tif", "WEBP": "webp"}


@dataclass(frozen=True)
class LabeledBox:
    """One box: a VISION class name and `(x, y, w, h)` in image pixels (COCO order)."""

    class_name: str
    bbox: tuple[float, float, float, float]


@dataclass(frozen=True)
class LabeledImage:
    """An image file and its boxes. `product` places an image without boxes (a background image);
    `width`/`height`, when given, must match the file; `source` names the item in errors."""

    path: Path
    boxes: tuple[LabeledBox, ...] = ()
    product: str | None = None
    width: int | None = None
    height: int | None = None
    source: str = ""

    @property
    def name(self) -> str:
        return self.source or str(self.path)


@dataclass
class VisionRootSummary:
    """What a VISION root holds: per product and split, images; boxes, backgrounds, left out."""

    root: Path
    content_hash: str
    images: dict[str, dict[str, int]] = field(default_factory=dict)
    boxes: int = 0
    background: int = 0
    unplaced: int = 0  # images without boxes and without a product: not written
    duplicates: int = 0  # the same bytes given twice (with the same boxes): written once
    reused: bool = False

    @property
    def total(self) -> int:
        return sum(sum(splits.values()) for splits in self.images.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "content_hash": self.content_hash,
            "images": self.images,
            "total_images": self.total,
            "boxes": self.boxes,
            "background": self.background,
            "unplaced": self.unplaced,
            "duplicates": self.duplicates,
            "reused": self.reused,
        }


def split_class_name(name: str) -> tuple[str, str]:
    """`("Cable", "break")` for "Cable/break"; DataError when the prefix is not a VISION product."""
    product, sep, category = str(name).partition("/")
    if not sep or product not in PRODUCTS or not category:
        raise DataError(
            f"class {name!r} is not <Product>/<category> with a VISION product "
            f"({', '.join(PRODUCTS)})"
        )
    return product, category


def class_product(name: str) -> str | None:
    """The product prefix of a class name, None when it is not a VISION class name."""
    try:
        return split_class_name(name)[0]
    except DataError:
        return None


@dataclass(frozen=True)
class _Checked:
    """An item after its file was read: digest, file extension, size, product."""

    item: LabeledImage
    sha256: str
    ext: str
    width: int
    height: int
    product: str

    @property
    def file_name(self) -> str:
        return f"{self.sha256}.{self.ext}"


def write_vision_root(
    items: Iterable[LabeledImage],
    class_names: Sequence[str],
    out: Path,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> VisionRootSummary:
    """Write labelled images as a VISION root at `out` (train and val splits, seeded).

    `class_names` are every class the annotators could use (each product's COCO files list its
    own). DataError for a missing or unreadable image, a size that does not match the file, a box
    of an unknown class, outside its image or of no size, an image naming two products, or the
    same bytes given twice with different boxes: nothing is written then. UsageError for a
    `val_fraction` outside [0, 1) or an `out` that holds something else.
    """
    if not 0 <= val_fraction < 1:
        raise UsageError(f"val_fraction must be in [0, 1), got {val_fraction}")
    names = list(dict.fromkeys(class_names))
    for name in names:
        split_class_name(name)
    out = Path(out).expanduser().absolute()
    marker = read_json_object(out / ROOT_FILE)
    if marker is None and out.exists() and not dir_is_empty(out):
        raise UsageError(
            f"{out} exists and is not a VISION root written by VisionOps; choose another --out"
        )

    checked, unplaced, duplicates = _check_all(items, set(names))
    content_hash = _content_hash(checked, names, val_fraction, seed)
    by_product: dict[str, list[_Checked]] = defaultdict(list)
    for entry in checked:
        by_product[entry.product].append(entry)
    splits = {p: _split(entries, val_fraction, seed) for p, entries in sorted(by_product.items())}
    summary = VisionRootSummary(
        root=out,
        content_hash=content_hash,
        images={p: {s: len(chosen[s]) for s in LABELED_SPLITS} for p, chosen in splits.items()},
        boxes=sum(len(e.item.boxes) for e in checked),
        background=sum(not e.item.boxes for e in checked),
        unplaced=unplaced,
        duplicates=duplicates,
    )
    if marker is not None and marker.get("content_hash") == content_hash and _complete(out, splits):
        log.info("%s already holds labels %s; nothing to do", out, content_hash[:12])
        summary.reused = True
        return summary
    with staging_dir(out) as staging:
        for product, chosen in splits.items():
            categories = [
                {"id": i, "name": split_class_name(n)[1]}
                for i, n in enumerate((n for n in names if class_product(n) == product), 1)
            ]
            for split_name, entries in chosen.items():
                folder = staging / product / split_name
                folder.mkdir(parents=True)
                coco = empty_coco(categories)
                coco["info"]["description"] = "VisionOps labels"
                ids = {c["name"]: c["id"] for c in categories}
                for entry in entries:
                    _copy(entry.item.path, folder / entry.file_name)
                    _add_image(coco, entry, ids)
                write_coco(folder / ANNOTATIONS_FILE, coco)
        text = json.dumps({"version": 1, **summary.to_dict()}, indent=2) + "\n"
        atomic_write_text(staging / ROOT_FILE, text)
    log.info("wrote %d labelled images (%d boxes) to %s", summary.total, summary.boxes, out)
    return summary


def _check_all(items: Iterable[LabeledImage], known: set[str]) -> tuple[list[_Checked], int, int]:
    """Every item read and checked, in digest order, duplicates once; and the counts left out."""
    by_digest: dict[str, _Checked] = {}
    unplaced = duplicates = 0
    for item in items:
        entry = _check(item, known)
        if entry is None:
            unplaced += 1
            continue
        first = by_digest.get(entry.sha256)
        if first is None:
            by_digest[entry.sha256] = entry
            continue
        if (first.item.boxes, first.product) != (entry.item.boxes, entry.product):
            raise DataError(
                f"{first.item.name} and {item.name} are the same image with different boxes"
            )
        duplicates += 1
    return [by_digest[d] for d in sorted(by_digest)], unplaced, duplicates


def _check(item: LabeledImage, known: set[str]) -> _Checked | None:
    """The checked item, or None for an image without boxes whose product is unknown."""
    path = Path(item.path)
    if not path.is_file():
        raise DataError(f"image of {item.name} not found: {path}")
    width, height, fmt = _image_size(path, item.name)
    if (item.width is not None and item.width != width) or (
        item.height is not None and item.height != height
    ):
        raise DataError(
            f"{item.name}: declared size {item.width}x{item.height}, but the image is "
            f"{width}x{height}"
        )
    products = set()
    for box in item.boxes:
        if box.class_name not in known:
            raise DataError(
                f"{item.name}: unknown class {box.class_name!r} (not in the class list)"
            )
        products.add(split_class_name(box.class_name)[0])
        x, y, w, h = box.bbox
        if not all(math.isfinite(v) for v in box.bbox) or w <= 0 or h <= 0:
            raise DataError(f"{item.name}: box {list(box.bbox)} of {box.class_name} has no size")
        if (
            x < -EDGE_TOLERANCE
            or y < -EDGE_TOLERANCE
            or x + w > width + EDGE_TOLERANCE
            or y + h > height + EDGE_TOLERANCE
        ):
            raise DataError(
                f"{item.name}: box {list(box.bbox)} of {box.class_name} falls outside its "
                f"{width}x{height} image"
            )
    if item.product is not None and item.product not in PRODUCTS:
        raise DataError(f"{item.name}: unknown product {item.product!r}")
    if item.product is not None and item.boxes:
        products.add(item.product)
    if len(products) > 1:
        raise DataError(f"{item.name}: boxes name two products ({', '.join(sorted(products))})")
    product = next(iter(products), item.product)
    if product is None:
        return None
    ext = _FORMATS.get(fmt) or path.suffix.lower().lstrip(".") or "bin"
    return _Checked(item, sha256_file(path), ext, width, height, product)


def _image_size(path: Path, name: str) -> tuple[int, int, str]:
    """(width, height, PIL format) from the image's header, as the image is shown (EXIF
    orientation applied, like OpenCV's decoder in the predictor and Ultralytics' `exif_size`);
    DataError when it is not an image."""
    from PIL import UnidentifiedImageError  # only where label images are read

    from visionops.inference.images import open_pil, shown_size

    try:
        with open_pil(path) as image:
            width, height = shown_size(image)
            return width, height, str(image.format or "")
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise DataError(f"{name}: {path} cannot be read as an image: {error}") from error


def _split(entries: list[_Checked], val_fraction: float, seed: int) -> dict[str, list[_Checked]]:
    """train/val of one product: val is the first `val_fraction` by SHA-256(seed, digest)."""
    ranked = sorted(entries, key=lambda e: hashlib.sha256(f"{seed}:{e.sha256}".encode()).digest())
    count = round(len(ranked) * val_fraction)
    if val_fraction > 0 and len(ranked) >= 2:
        count = min(max(count, 1), len(ranked) - 1)
    val = {e.sha256 for e in ranked[:count]}
    return {
        "train": [e for e in entries if e.sha256 not in val],
        "val": [e for e in entries if e.sha256 in val],
    }


def _content_hash(entries: list[_Checked], names: list[str], val_fraction: float, seed: int) -> str:
    """SHA-256 over everything that shapes the root: classes, split settings, images, boxes."""
    total = hashlib.sha256()
    total.update(json.dumps([names, val_fraction, seed]).encode())
    for e in entries:
        boxes = [[b.class_name, list(b.bbox)] for b in e.item.boxes]
        total.update(json.dumps([e.file_name, e.product, e.width, e.height, boxes]).encode())
    return total.hexdigest()


def _complete(out: Path, splits: dict[str, dict[str, list[_Checked]]]) -> bool:
    """Whether every file the root should hold is there (nobody deleted part of it)."""
    for product, chosen in splits.items():
        for split_name, entries in chosen.items():
            folder = out / product / split_name
            if not (folder / ANNOTATIONS_FILE).is_file():
                return False
            if not all((folder / e.file_name).is_file() for e in entries):
                return False
    return True


def _copy(source: Path, target: Path) -> None:
    """A hard link where the filesystem allows (same bytes, no copy), else a copy: never a
    symbolic link, so the root outlives the folder the labels came in."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _add_image(coco: dict[str, Any], entry: _Checked, ids: dict[str, int]) -> None:
    image_id = len(coco["images"]) + 1
    image: dict[str, Any] = {
        "id": image_id,
        "file_name": entry.file_name,
        "width": entry.width,
        "height": entry.height,
    }
    if not entry.item.boxes:
        image[BACKGROUND_KEY] = True
    coco["images"].append(image)
    for box in entry.item.boxes:
        x, y, w, h = box.bbox
        coco["annotations"].append(
            {
                "id": len(coco["annotations"]) + 1,
                "image_id": image_id,
                "category_id": ids[split_class_name(box.class_name)[1]],
                "bbox": [x, y, w, h],
                "area": w * h,
                "iscrowd": 0,
            }
        )
