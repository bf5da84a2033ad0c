"""Validate a VISION dataset before anything trains on it: the checks.

Every check has a name (`CHECKS`), a severity and a one-line description. A finding names its
check, the file involved and the ids (first few, plus how many in all), so a report points at what
to fix. Errors fail validation (CLI exit 1, the KFP step fails); warnings are reported only. The
report itself (JSON, Markdown) is `visionops.data.validation_report`.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import UnidentifiedImageError

from visionops.data.classmap import product_categories
from visionops.data.coco import BACKGROUND_KEY
from visionops.data.validation_report import (
    BBOX_TOLERANCE,
    FindingCollector,
    ValidationReport,
)
from visionops.data.vision import Split, VisionDataset, open_vision
from visionops.errors import DataError
from visionops.inference.images import open_pil, shown_size
from visionops.progress import ProgressCallback, no_progress

log = logging.getLogger(__name__)


def validate(
    root: Path,
    *,
    products: Sequence[str] | None = None,
    progress: ProgressCallback | None = None,
) -> ValidationReport:
    """Run every check of `CHECKS` over the selected products of a VISION root.

    Raises DataError/UsageError only when the root cannot be opened at all (missing, empty, a
    broken archive, an unknown product); everything else becomes a finding in the report.
    """
    dataset = open_vision(root, products)
    findings = FindingCollector()
    stats: dict[str, dict[str, dict[str, int]]] = {}
    images_to_read: list[tuple[Split, dict[str, Any]]] = []
    for split in dataset.splits():
        counts = _check_split(split, findings, images_to_read)
        if counts is not None:
            stats.setdefault(split.product, {})[split.name] = counts
    _check_image_files(images_to_read, findings, progress or no_progress)
    _check_train_classes(dataset, findings)
    return ValidationReport(str(dataset.root), dataset.names, findings.findings(), stats)


def _display(split: Split, name: str) -> str:
    return f"{split.product}/{split.name}/{name}"


def _check_split(
    split: Split, findings: FindingCollector, images_to_read: list[tuple[Split, dict[str, Any]]]
) -> dict[str, int] | None:
    """Structure, schema and annotation checks of one split; queues its images for reading."""
    ann_file = _display(split, split.annotations_path.name)
    if not split.dir.is_dir():
        findings.add("missing_split", _display(split, ""), "split folder missing", split=split.name)
        return None
    if not split.annotations_path.is_file():
        findings.add("missing_split", ann_file, "annotations file missing", split=split.name)
        return None
    try:
        coco = split.coco
    except DataError as error:
        check = "json_syntax" if "invalid JSON" in str(error) else "coco_schema"
        findings.add(check, ann_file, str(error))
        return None
    lists = {}
    for key in ("images", "annotations", "categories"):
        value = coco.get(key)
        if not isinstance(value, list):
            got = "missing" if value is None else type(value).__name__
            findings.add("coco_schema", ann_file, f"'{key}' must be a list ({got})", [key])
        lists[key] = value if isinstance(value, list) else None
    if any(v is None for v in lists.values()):
        return None

    images = _valid_records(lists["images"], _image_problem, "image", ann_file, findings)
    annotations = _valid_records(
        lists["annotations"], _annotation_problem, "annotation", ann_file, findings
    )
    categories = _valid_records(
        lists["categories"], _category_problem, "category", ann_file, findings
    )
    _check_duplicates(images, "duplicate_image_id", "image", ann_file, findings)
    _check_duplicates(annotations, "duplicate_annotation_id", "annotation", ann_file, findings)
    _check_duplicates(categories, "duplicate_category_id", "category", ann_file, findings)

    image_by_id = {image["id"]: image for image in images}
    category_ids = {category["id"] for category in categories}
    # ids of records the schema rejected: already reported, not "missing" on top of that
    rejected_images = _ids(lists["images"]) - set(image_by_id)
    known_categories = category_ids | _ids(lists["categories"])
    annotated: set[Any] = set()
    for ann in annotations:
        image = image_by_id.get(ann["image_id"])
        if image is None and ann["image_id"] not in rejected_images:
            findings.add(
                "annotation_missing_image",
                ann_file,
                "annotation image_id not among the images",
                [ann["id"]],
            )
        if ann["category_id"] not in known_categories:
            findings.add(
                "annotation_missing_category",
                ann_file,
                "annotation category_id not among the categories",
                [ann["id"]],
            )
        if image is None:
            continue
        annotated.add(image["id"])
        _check_geometry(ann, image, ann_file, findings)

    if not images:
        findings.add("empty_split", ann_file, "no images listed", split=split.name)
    background = 0
    for image in images:
        name = str(image["file_name"])
        posix = PurePosixPath(name.replace("\\", "/"))
        if posix.is_absolute() or ".." in posix.parts or (len(name) > 1 and name[1] == ":"):
            findings.add("file_name_escapes", ann_file, "file_name leaves the split folder", [name])
            continue
        images_to_read.append((split, image))
        if split.labeled and image["id"] not in annotated:
            if image.get(BACKGROUND_KEY) is True:
                background += 1  # marked defect-free: expected, counted, not a finding
                continue
            findings.add(
                "image_without_annotations", ann_file, "image has no annotation", [image["id"]]
            )
    return {
        "images": len(images), "annotations": len(annotations), "categories": len(categories),
        "background": background,
    }  # fmt: skip


def _ids(records: list[Any]) -> set[Any]:
    return {r["id"] for r in records if isinstance(r, dict) and _is_int(r.get("id"))}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def _image_problem(image: dict[str, Any]) -> str | None:
    if not _is_int(image.get("id")):
        return "'id' must be an integer"
    if not isinstance(image.get("file_name"), str) or not image["file_name"]:
        return "'file_name' must be a non-empty string"
    for key in ("width", "height"):
        if not _is_int(image.get(key)) or image[key] <= 0:
            return f"'{key}' must be a positive integer"
    return None


def _annotation_problem(ann: dict[str, Any]) -> str | None:
    for key in ("id", "image_id", "category_id"):
        if not _is_int(ann.get(key)):
            return f"'{key}' must be an integer"
    bbox = ann.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        return "'bbox' must be 4 finite numbers [x, y, width, height]"
    if "segmentation" in ann and not isinstance(ann["segmentation"], (list, dict)):
        return "'segmentation' must be a list of polygons or an RLE object"
    if "iscrowd" in ann and ann["iscrowd"] not in (0, 1, True, False):
        return "'iscrowd' must be 0 or 1"
    if "area" in ann and not _is_number(ann["area"]):
        return "'area' must be a number"
    return None


def _category_problem(category: dict[str, Any]) -> str | None:
    if not _is_int(category.get("id")):
        return "'id' must be an integer"
    if not isinstance(category.get("name"), str):
        return "'name' must be a string"
    return None


def _valid_records(
    records: list[Any],
    problem: Any,
    kind: str,
    ann_file: str,
    findings: FindingCollector,
) -> list[dict[str, Any]]:
    """The records that pass the schema; each failure is a `coco_schema` finding."""
    valid = []
    for position, record in enumerate(records):
        reason = (
            f"each {kind} must be an object" if not isinstance(record, dict) else problem(record)
        )
        if reason is None:
            valid.append(record)
            continue
        ident = record.get("id", f"#{position}") if isinstance(record, dict) else f"#{position}"
        findings.add("coco_schema", ann_file, f"{kind}: {reason}", [ident])
    return valid


def _check_duplicates(
    records: list[dict[str, Any]], check: str, kind: str, ann_file: str, findings: FindingCollector
) -> None:
    seen: set[Any] = set()
    for record in records:
        if record["id"] in seen:
            findings.add(check, ann_file, f"{kind} id used more than once", [record["id"]])
        seen.add(record["id"])


def _check_geometry(
    ann: dict[str, Any], image: dict[str, Any], ann_file: str, findings: FindingCollector
) -> None:
    x, y, w, h = (float(v) for v in ann["bbox"])
    width, height = image["width"], image["height"]
    tol = BBOX_TOLERANCE
    if w <= 0 or h <= 0:
        findings.add("bbox_nonpositive", ann_file, "bbox width or height <= 0", [ann["id"]])
    elif x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
        findings.add("bbox_outside_image", ann_file, "bbox extends beyond the image", [ann["id"]])
    problem = _polygon_problem(ann.get("segmentation"), width, height)
    if problem:
        findings.add("invalid_polygon", ann_file, problem, [ann["id"]])


def _polygon_problem(segmentation: Any, width: int, height: int) -> str | None:
    """Why a COCO segmentation is unusable, or None (an absent one is fine)."""
    if segmentation is None or segmentation == []:
        return None
    if isinstance(segmentation, dict):  # RLE
        if "counts" not in segmentation or segmentation.get("size") != [height, width]:
            return "RLE segmentation needs 'counts' and 'size' == [height, width]"
        return None
    for polygon in segmentation:
        if not isinstance(polygon, list) or not all(_is_number(v) for v in polygon):
            return "a polygon must be a list of finite numbers"
        if len(polygon) < 6 or len(polygon) % 2:
            return "a polygon needs an even number (>= 6) of coordinates"
        xs, ys = polygon[0::2], polygon[1::2]
        tol = BBOX_TOLERANCE
        if min(xs) < -tol or min(ys) < -tol or max(xs) > width + tol or max(ys) > height + tol:
            return "polygon points lie outside the image"
        area = 0.5 * abs(sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(xs))))
        if area <= 0:
            return "polygon has zero area"
    return None


def _inspect(path: Path) -> tuple[str | None, tuple[int, int] | None, str | None]:
    """(problem check or None, size as shown (EXIF orientation applied), content digest)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return "image_file_missing", None, None
    except OSError:
        return "image_unreadable", None, None
    digest = hashlib.sha256(data).hexdigest()
    try:
        with open_pil(data) as image:
            size, stored = shown_size(image), image.size
            if image.format == "JPEG":
                image.draft("RGB", (max(1, stored[0] // 8), max(1, stored[1] // 8)))
                if not data.rstrip(b"\0").endswith(b"\xff\xd9"):
                    return "image_truncated", size, digest
            elif image.format == "PNG" and not data.endswith(b"IEND\xaeB`\x82"):
                return "image_truncated", size, digest
            image.load()
    except UnidentifiedImageError:
        return "image_unreadable", None, digest
    except (OSError, SyntaxError, ValueError) as error:
        check = "image_truncated" if "truncated" in str(error) else "image_unreadable"
        return check, None, digest
    return None, size, digest


def _check_image_files(
    queue: list[tuple[Split, dict[str, Any]]],
    findings: FindingCollector,
    progress: ProgressCallback,
) -> None:
    """Read every listed image once: existence, decoding, size, and leakage between splits."""
    messages = {
        "image_file_missing": "listed image file not found",
        "image_unreadable": "image cannot be decoded",
        "image_truncated": "image file is truncated",
    }
    owners: dict[str, set[tuple[str, str]]] = defaultdict(set)
    names: dict[tuple[str, str, str], str] = {}
    total = len(queue)
    progress(0, total)
    with ThreadPoolExecutor(2) as pool:  # PIL decodes without the GIL
        results = pool.map(lambda item: _inspect(item[0].image_path(item[1]["file_name"])), queue)
        for done, ((split, image), (problem, size, digest)) in enumerate(
            zip(queue, results, strict=True), 1
        ):
            name = str(image["file_name"])
            file = _display(split, name)
            if problem is not None:
                findings.add(problem, file, messages[problem], [image["id"]])
            elif size != (image["width"], image["height"]):
                findings.add(
                    "image_size_mismatch",
                    file,
                    f"declared {image['width']}x{image['height']}, file is {size[0]}x{size[1]}"
                    if size
                    else "size unknown",
                    [image["id"]],
                )
            if digest is not None:
                place = (split.product, split.name)
                owners[digest].add(place)
                names.setdefault((digest, *place), name)
            if done % 64 == 0 or done == total:
                progress(done, total)
    leaks: dict[tuple[str, str], list[str]] = defaultdict(list)
    for digest, places in owners.items():
        if len(places) < 2:
            continue
        ordered = sorted(places)
        first = ordered[0]
        for other in ordered[1:]:
            pair = (f"{first[0]}/{first[1]}", f"{other[0]}/{other[1]}")
            leaks[pair].append(names[(digest, *other)])
    for (a, b), leaked in sorted(leaks.items()):
        findings.add("split_leakage", b, f"same image content also in {a}", sorted(leaked))


def _check_train_classes(dataset: VisionDataset, findings: FindingCollector) -> None:
    """Every class of the class map needs at least one training annotation."""
    for product in dataset:
        train = product.split("train")
        if not train.exists:
            continue
        try:
            categories = product_categories(dataset, product.name)
            coco = train.coco
            train_ids = {c.get("id"): c.get("name") for c in coco.get("categories") or []}
            used = {
                str(train_ids.get(a.get("category_id")))
                for a in coco.get("annotations") or []
                if isinstance(a, dict)
            }
        except (DataError, AttributeError, TypeError):
            continue  # the schema findings already explain why
        missing = sorted(name for name in categories if name not in used)
        if missing:
            findings.add(
                "class_without_train_instances",
                _display(train, train.annotations_path.name),
                "class has no annotation in train",
                missing,
            )
