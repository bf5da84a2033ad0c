"""A selection batch out as a COCO file (for CVAT and other tools), and COCO labels back in.

Export writes what CVAT's "COCO 1.0" format reads, the model's boxes as the annotations people
correct (each with its `score`):

    OUT/annotations/instances_default.json   categories = the batch's class names ("Cable/break")
    OUT/images/<sha256>.<ext>                the batch's images (linked, else copied)

Import reads such a file back (categories matched by name, whatever their ids), finds each image
under `--images` by its `file_name` (or its base name, as CVAT exports it) and hands everything to
`write_vision_root`. Bad input stops it before anything is written: a file that is not COCO, an
annotation of an unknown category or class (not `<Product>/<category>`, or not in the base's class
map when a base is given), a box outside its image, a missing image; each as one line naming it.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from visionops.data.classmap import build_class_map
from visionops.data.coco import load_coco, write_coco
from visionops.data.files import dir_is_empty, staging_dir
from visionops.data.vision import open_vision
from visionops.errors import DataError, UsageError
from visionops.labeling.batch import read_batch
from visionops.labeling.vision_root import (
    LabeledBox,
    LabeledImage,
    VisionRootSummary,
    class_product,
    split_class_name,
    write_vision_root,
)

log = logging.getLogger(__name__)

COCO_FILE = "annotations/instances_default.json"
PRODUCT_KEY = "visionops_product"
"""Image entry key: the product an image shows, from the model's predictions (places an image
that ends up without boxes)."""


def export_coco(batch_dir: Path, out: Path) -> dict[str, Any]:
    """Write the batch at `batch_dir` as a COCO file with its images at `out` (whole or nothing).

    Returns counts. DataError for a batch that does not hold together; UsageError for an `out`
    that holds something else.
    """
    batch = read_batch(batch_dir)
    out = Path(out).expanduser().absolute()
    if out.exists() and not dir_is_empty(out) and not (out / COCO_FILE).is_file():
        raise UsageError(f"{out} exists and is not a COCO export; choose another --out")
    ids = {name: i for i, name in enumerate(batch.class_names, 1)}
    coco: dict[str, Any] = {
        "info": {
            "description": f"VisionOps selection of {batch.model_name} v{batch.model_version}",
            "version": "1.0",
            "visionops_window": {"start": batch.window.start, "end": batch.window.end},
        },
        "licenses": [],
        "categories": [
            {"id": i, "name": name, "supercategory": class_product(name) or ""}
            for name, i in ids.items()
        ],
        "images": [],
        "annotations": [],
    }
    with staging_dir(out) as staging:
        (staging / "images").mkdir()
        for image_id, item in enumerate(batch.items, 1):
            _link(Path(batch_dir) / item.image, staging / "images" / item.file_name)
            entry: dict[str, Any] = {
                "id": image_id,
                "file_name": item.file_name,
                "width": item.width,
                "height": item.height,
                "visionops_image_key": item.image_key,
                "visionops_request_id": item.request_id,
            }
            products = {class_product(p.class_name) for p in item.predictions} - {None}
            if len(products) == 1:
                entry[PRODUCT_KEY] = products.pop()
            coco["images"].append(entry)
            for prediction in item.predictions:
                x, y, w, h = prediction.bbox
                coco["annotations"].append(
                    {
                        "id": len(coco["annotations"]) + 1,
                        "image_id": image_id,
                        "category_id": ids[prediction.class_name],
                        "bbox": [x, y, w, h],
                        "area": w * h,
                        "iscrowd": 0,
                        "segmentation": [],
                        "score": prediction.score,
                    }
                )
        write_coco(staging / COCO_FILE, coco)
    log.info("exported %d images to %s", len(batch.items), out)
    return {"out": str(out), "coco": str(out / COCO_FILE), "images": len(coco["images"]),
            "boxes": len(coco["annotations"]), "classes": len(ids)}  # fmt: skip


def import_coco(
    coco_file: Path,
    images: Path,
    out: Path,
    *,
    seed: int = 0,
    val_fraction: float = 0.2,
    base: Path | None = None,
) -> VisionRootSummary:
    """Labels in a COCO file, with their images under `images`, as a VISION root at `out`.

    With `base` (a VISION root), every class must be one of its class map and each product's
    COCO lists the base's classes. DataError for bad input (nothing written), UsageError for an
    `out` that holds something else.
    """
    coco_file, images = Path(coco_file), Path(images)
    if not images.is_dir():
        raise DataError(f"image folder not found: {images}")
    coco = load_coco(coco_file)
    where = str(coco_file)
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            raise DataError(f"{where}: not a COCO file: '{key}' must be a list")
    categories = _categories(coco["categories"], where)
    allowed = _base_classes(base) if base is not None else None
    by_image: dict[Any, list[LabeledBox]] = {}
    for index, annotation in enumerate(coco["annotations"]):
        box = _box(annotation, index, categories, allowed, where)
        by_image.setdefault(annotation.get("image_id"), []).append(box)
    image_ids = {entry.get("id") for entry in coco["images"] if isinstance(entry, dict)}
    orphans = [i for i in by_image if i not in image_ids]
    if orphans:
        raise DataError(f"{where}: annotations name image id {orphans[0]!r}, which is not listed")

    labelled = {split_class_name(b.class_name)[0] for boxes in by_image.values() for b in boxes}
    only_product = next(iter(labelled)) if len(labelled) == 1 else None
    items = []
    for index, entry in enumerate(coco["images"]):
        if not isinstance(entry, dict) or "file_name" not in entry:
            raise DataError(f"{where}: image {index} has no file_name")
        file_name = str(entry["file_name"])
        boxes = tuple(by_image.get(entry.get("id"), ()))
        product = entry.get(PRODUCT_KEY) or (None if boxes else only_product)
        items.append(
            LabeledImage(
                _find_image(images, file_name, where),
                boxes,
                product=str(product) if product and not boxes else None,
                width=_size(entry.get("width"), "width", file_name, where),
                height=_size(entry.get("height"), "height", file_name, where),
                source=f"{where}: image {file_name}",
            )
        )
    if allowed is not None:
        names = sorted(allowed)
    else:  # a category nothing is annotated with may be named anyhow
        names = [n for n in categories.values() if class_product(n)]
    return write_vision_root(items, names, out, val_fraction=val_fraction, seed=seed)


def _categories(raw: list[Any], where: str) -> dict[int, str]:
    categories: dict[int, str] = {}
    for category in raw:
        try:
            categories[int(category["id"])] = str(category["name"])
        except (KeyError, TypeError, ValueError) as error:
            raise DataError(f"{where}: malformed category {category!r}") from error
    return categories


def _base_classes(base: Path) -> set[str]:
    """The class names of a base VISION root's class map."""
    return set(build_class_map(open_vision(base)).names)


def _box(
    annotation: Any,
    index: int,
    categories: dict[int, str],
    allowed: set[str] | None,
    where: str,
) -> LabeledBox:
    if not isinstance(annotation, dict):
        raise DataError(f"{where}: annotation {index} is not an object")
    ident = annotation.get("id", index)
    try:
        category_id = int(annotation["category_id"])
        bbox = tuple(float(v) for v in annotation["bbox"])
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(f"{where}: annotation {ident} lacks a category_id or bbox") from error
    if category_id not in categories:
        raise DataError(f"{where}: annotation {ident} names unknown category id {category_id}")
    name = categories[category_id]
    if class_product(name) is None:
        raise DataError(
            f"{where}: annotation {ident}: unknown class {name!r} (classes are "
            "<Product>/<category> with a VISION product, e.g. Cable/break)"
        )
    if allowed is not None and name not in allowed:
        raise DataError(f"{where}: annotation {ident}: unknown class {name!r} (not in the base)")
    if len(bbox) != 4:
        raise DataError(f"{where}: annotation {ident}: bbox must be [x, y, w, h]")
    return LabeledBox(name, (bbox[0], bbox[1], bbox[2], bbox[3]))


def _find_image(images: Path, file_name: str, where: str) -> Path:
    """The image a COCO entry names: `images/file_name`, else `images/<its base name>`."""
    parts = re.split(r"[/\\]", file_name)
    if file_name.startswith(("/", "\\")) or ".." in parts:
        raise DataError(f"{where}: file_name {file_name!r} escapes the image folder")
    for candidate in (images / file_name, images / parts[-1]):
        if candidate.is_file():
            return candidate
    raise DataError(f"{where}: image {file_name} not found in {images}")


def _size(value: Any, name: str, file_name: str, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise DataError(f"{where}: image {file_name}: {name} {value!r} is not a whole number")
    return int(value)


def _link(source: Path, target: Path) -> None:
    """A hard link where possible, else a copy (the export outlives the batch folder)."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
