"""COCO (VISION layout) to a YOLO dataset that Ultralytics trains on directly.

Output layout::

    OUT/images/{train,val}/<Product>/<file>     linked to the source images, not copied
    OUT/labels/{train,val}/<Product>/<stem>.txt one row per box: class cx cy w h (normalised)
    OUT/data.yaml                                Ultralytics dataset file (path, train, val, names)
    OUT/class_map.json                           YOLO class id <-> (product, COCO category)
    OUT/manifest.json                            content hash, counts, sources

Rows are those of `ultralytics.data.converter.convert_coco` (crowd and zero-size boxes skipped,
duplicate rows dropped), with class ids from the class map and 8 significant digits instead of 6.
Extra roots (for example drifted images collected in production) are merged into the same
dataset and class map; their files go under `<Product>/extra<k>/`.

The dataset hash covers the image bytes, the label bytes, their paths and the class map, and is
computed before anything is written: converting the same input again finds the same hash in the
manifest and writes nothing. A new dataset is built in a hidden sibling folder and renamed into
place, so a failure leaves either the previous dataset or none.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import yaml

from visionops import __version__
from visionops.bootstrap import bootstrap
from visionops.data.classmap import CLASS_MAP_FILE, ClassMap, build_class_map
from visionops.data.files import (
    atomic_write_text,
    dir_is_empty,
    link_file,
    read_json_object,
    staging_dir,
)
from visionops.data.hashing import default_digest_cache, file_digests
from visionops.data.vision import LABELED_SPLITS, Split, VisionDataset, open_vision
from visionops.errors import DataError, UsageError
from visionops.progress import ProgressCallback, no_progress

log = logging.getLogger(__name__)
_T = TypeVar("_T")

MANIFEST_FILE = "manifest.json"
DATA_YAML = "data.yaml"


@dataclass
class ConversionResult:
    """A YOLO dataset on disk and what went into it."""

    root: Path
    data_yaml: Path
    class_map: ClassMap
    dataset_hash: str
    images: dict[str, int]
    boxes: dict[str, int]
    background: dict[str, int]
    segments: bool = False
    link_mode: str = "hardlink"
    sources: list[str] = field(default_factory=list)
    reused: bool = False

    @property
    def names(self) -> list[str]:
        return self.class_map.names

    def to_dict(self) -> dict[str, Any]:
        """The manifest content (JSON-ready)."""
        return {
            "version": 1,
            "generator": f"visionops {__version__}",
            "dataset_hash": self.dataset_hash,
            "names": self.names,
            "segments": self.segments,
            "images": self.images,
            "boxes": self.boxes,
            "background": self.background,
            "link_mode": self.link_mode,
            "sources": self.sources,
        }


@dataclass(slots=True)
class _Item:
    """One image to place in the output: its source, its output path and its label text.

    Paths are plain strings: this runs once per image and pathlib costs more than the I/O.
    """

    source: str
    relative: str  # POSIX path under images/<split>/
    label_relative: str  # the same under labels/<split>/, with .txt
    split: str
    label: str
    boxes: int


def convert(
    root: Path | Sequence[Path],
    out_dir: Path,
    *,
    products: Sequence[str] | None = None,
    segments: bool = False,
    progress: ProgressCallback | None = None,
) -> ConversionResult:
    """Convert a VISION root (or several, merged) into a YOLO dataset at `out_dir`.

    `root` may be a list: the first is the main dataset, the others are extra data (same layout,
    any subset of the products) merged under one class map. `products` selects products of the
    main root (the extra roots contribute those products only). `segments` writes polygons
    instead of boxes. Returns the result; raises DataError for unreadable input and UsageError
    for an `out_dir` that holds something else.

    The cyclic garbage collector is paused meanwhile: parsing COCO and planning every label
    allocates hundreds of thousands of objects and no cycles, and its passes over that heap were
    a quarter of the conversion time.
    """
    with _gc_paused():
        return _convert(root, out_dir, products=products, segments=segments, progress=progress)


@contextmanager
def _gc_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _convert(
    root: Path | Sequence[Path],
    out_dir: Path,
    *,
    products: Sequence[str] | None,
    segments: bool,
    progress: ProgressCallback | None,
) -> ConversionResult:
    """`convert`, with the garbage collector paused."""
    roots = [Path(root)] if isinstance(root, (str, Path)) else [Path(r) for r in root]
    if not roots:
        raise UsageError("no dataset folder given")
    out_dir = Path(out_dir).expanduser().resolve()
    for r in roots:
        if out_dir == r.expanduser().resolve():
            raise UsageError(f"--out must differ from the dataset folder {r}")
    manifest = read_json_object(out_dir / MANIFEST_FILE)
    if manifest is None and out_dir.exists() and not dir_is_empty(out_dir):
        raise UsageError(
            f"{out_dir} exists and is not a VisionOps YOLO dataset; choose another --out"
        )

    datasets = _open_all(roots, products)
    class_map = build_class_map(datasets)
    items = _plan(datasets, class_map, segments)
    done = _Progress(progress or no_progress, 2 * len(items))
    sources = [item.source for item in items]

    def summary(digests: list[str]) -> ConversionResult:
        return ConversionResult(
            root=out_dir,
            data_yaml=out_dir / DATA_YAML,
            class_map=class_map,
            dataset_hash=_dataset_hash(items, digests, class_map, segments),
            images=_count(items, lambda i: 1),
            boxes=_count(items, lambda i: i.boxes),
            background=_count(items, lambda i: int(i.boxes == 0)),
            segments=segments,
            sources=[str(r.expanduser().resolve()) for r in roots],
        )

    def hash_images() -> list[str]:
        return file_digests(sources, cache=default_digest_cache(), progress=done.hashed)

    if manifest is None:
        # A new output: nothing to reuse, so the labels are written while the images are hashed.
        with staging_dir(out_dir) as staging:
            modes, digests = _write_items(staging, items, done.written, meanwhile=hash_images)
            result = summary(digests)
            _finish(staging, result, modes)
        return result

    result = summary(hash_images())
    if manifest.get("dataset_hash") == result.dataset_hash and (out_dir / DATA_YAML).is_file():
        log.info("%s already holds dataset %s; nothing to do", out_dir, result.dataset_hash[:12])
        result.link_mode = str(manifest.get("link_mode", "hardlink"))
        result.reused = True
        done.written(len(items))
        return result
    with staging_dir(out_dir) as staging:
        modes, _ = _write_items(staging, items, done.written, meanwhile=lambda: None)
        _finish(staging, result, modes)
    return result


class _Progress:
    """Progress of hashing and writing, which run in two threads, reported as one count."""

    def __init__(self, report: ProgressCallback, total: int) -> None:
        self._report, self._total = report, total
        self._hashed = self._written = 0
        self._lock = threading.Lock()
        report(0, total)

    def hashed(self, done: int) -> None:
        with self._lock:
            self._hashed = done
            self._report(self._hashed + self._written, self._total)

    def written(self, done: int) -> None:
        with self._lock:
            self._written = done
            self._report(self._hashed + self._written, self._total)


def _finish(staging: Path, result: ConversionResult, modes: set[str]) -> None:
    """The files besides images and labels; the manifest last."""
    result.link_mode = ",".join(sorted(modes)) or "none"
    atomic_write_text(staging / CLASS_MAP_FILE, result.class_map.to_json())
    atomic_write_text(staging / DATA_YAML, data_yaml_text(result.root, result.names))
    manifest_text = json.dumps(result.to_dict(), indent=2, ensure_ascii=False) + "\n"
    atomic_write_text(staging / MANIFEST_FILE, manifest_text)
    log.info("wrote YOLO dataset %s to %s", result.dataset_hash[:12], result.root)


def data_yaml_text(root: Path, names: Sequence[str]) -> str:
    """An Ultralytics dataset YAML for a dataset at `root`."""
    data = {
        "path": str(root),
        "train": "images/train",
        "val": "images/val",
        "nc": len(names),
        "names": dict(enumerate(names)),
    }
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def read_manifest(out_dir: Path) -> dict[str, Any]:
    """The manifest of a converted dataset (DataError if absent or unreadable)."""
    manifest = read_json_object(Path(out_dir) / MANIFEST_FILE)
    if manifest is None:
        raise DataError(f"no VisionOps YOLO dataset at {out_dir} ({MANIFEST_FILE} missing)")
    return manifest


def _open_all(roots: list[Path], products: Sequence[str] | None) -> list[VisionDataset]:
    main = open_vision(roots[0], products)
    datasets = [main]
    for extra_root in roots[1:]:
        extra = open_vision(extra_root)
        keep = {name: p for name, p in extra.products.items() if name in main.products}
        if not keep:
            raise DataError(
                f"extra dataset {extra_root} holds none of the products {', '.join(main.names)}"
            )
        datasets.append(VisionDataset(extra.root, keep))
    return datasets


def _plan(datasets: list[VisionDataset], class_map: ClassMap, segments: bool) -> list[_Item]:
    """Every output image with its label text, in a stable order; nothing is written yet."""
    items: list[_Item] = []
    seen: dict[tuple[str, str], str] = {}
    for index, dataset in enumerate(datasets):
        for split in dataset.splits(LABELED_SPLITS):
            if not split.exists:
                raise DataError(f"missing split: {split.annotations_path} not found")
            prefix = f"{split.product}/extra{index}/" if index else f"{split.product}/"
            for item in _split_items(split, class_map, segments, prefix):
                key = (item.split, item.label_relative)
                if key in seen:
                    raise DataError(
                        f"two images map to one label file {key[1]}: {seen[key]} and {item.source}"
                    )
                seen[key] = item.source
                items.append(item)
    return items


def _split_items(split: Split, class_map: ClassMap, segments: bool, prefix: str) -> list[_Item]:
    """The output items of one split, label text included."""
    coco = split.coco
    path = split.annotations_path
    try:
        images = coco["images"]
        rows = _label_rows(
            coco, class_map.coco_lookup(split.product, coco["categories"]), segments, path
        )
        items = []
        folder = f"{split.dir}{os.sep}"
        for image, image_rows in zip(images, rows, strict=True):
            file_name = str(image["file_name"])
            if file_name.startswith(("/", "\\")) or ".." in re.split(r"[/\\]", file_name):
                raise DataError(f"{path}: file_name {file_name!r} escapes the split folder")
            relative = prefix + file_name
            items.append(
                _Item(
                    folder + file_name,
                    relative,
                    os.path.splitext(relative)[0] + ".txt",  # noqa: PTH122 - hot path
                    split.name,
                    "".join(image_rows),
                    len(image_rows),
                )
            )
    except DataError:
        raise
    except (KeyError, TypeError, ValueError, IndexError) as error:
        raise DataError(
            f"{path}: malformed COCO ({error!r}); `visionops data validate` explains"
        ) from error
    return items


def _label_rows(
    coco: dict[str, Any], lookup: dict[int, int], segments: bool, path: Path
) -> list[dict[str, None]]:
    """Label lines per image (in COCO image order), computed as convert_coco does.

    Same float64 arithmetic (centre = corner + size / 2, then divided by the image size), crowd
    and zero-size boxes skipped, duplicate lines written once, annotation order kept. Vectorised:
    the per-annotation work is only the string formatting.
    """
    images = coco["images"]
    index = {image["id"]: i for i, image in enumerate(images)}
    annotations = [a for a in coco["annotations"] if not a.get("iscrowd", False)]
    labels: list[dict[str, None]] = [{} for _ in images]
    if not annotations:
        return labels
    sizes = np.array([(image["width"], image["height"]) for image in images], np.float64)
    owners = np.array([index.get(a["image_id"], -1) for a in annotations], np.int64)
    classes = np.array([lookup.get(a["category_id"], -1) for a in annotations], np.int64)
    for bad, what, key in (
        (owners < 0, "image_id", "image_id"),
        (classes < 0, "category_id", "category_id"),
    ):
        if bad.any():
            first = annotations[int(np.flatnonzero(bad)[0])]
            raise DataError(
                f"{path}: annotation {first.get('id')} has unknown {what} {first[key]}"
                f" ({int(bad.sum())} such)"
            )
    boxes = np.array([a["bbox"] for a in annotations], np.float64).reshape(len(annotations), 4)
    boxes[:, :2] += boxes[:, 2:] / 2
    boxes[:, [0, 2]] /= sizes[owners, :1]
    boxes[:, [1, 3]] /= sizes[owners, 1:]
    keep = np.flatnonzero((boxes[:, 2] > 0) & (boxes[:, 3] > 0))
    owner_list, class_list = owners[keep].tolist(), classes[keep].tolist()
    if segments:
        lines = []
        for i, cls, (cx, cy, w, h) in zip(
            keep.tolist(), class_list, boxes[keep].tolist(), strict=True
        ):
            width, height = sizes[owners[i]]
            points = _polygon(annotations[i].get("segmentation"), width, height)
            if points is None:  # no usable polygon: the box as one, as convert_coco does
                x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
                points = [x1, y1, x2, y1, x2, y2, x1, y2]
            lines.append(f"{cls} " + " ".join(f"{v:.8g}" for v in points) + "\n")
    else:
        lines = [
            f"{cls} {cx:.8g} {cy:.8g} {w:.8g} {h:.8g}\n"
            for cls, (cx, cy, w, h) in zip(class_list, boxes[keep].tolist(), strict=True)
        ]
    for owner, line in zip(owner_list, lines, strict=True):
        labels[owner][line] = None
    return labels


def _polygon(segmentation: Any, width: float, height: float) -> list[float] | None:
    """Normalised points of a COCO polygon segmentation; several parts are joined like Ultralytics.

    None when there is no usable polygon (missing, RLE, degenerate): the caller uses the box.
    """
    if not isinstance(segmentation, list):
        return None
    parts = [
        [float(v) for v in p]
        for p in segmentation
        if isinstance(p, list) and len(p) >= 6 and not len(p) % 2
    ]
    if not parts:
        return None
    if len(parts) > 1:
        bootstrap()
        # Ultralytics: heavy, with import-time side effects; only for multi-part polygons.
        from ultralytics.data.converter import merge_multi_segment

        merged = np.concatenate(merge_multi_segment(parts), axis=0).reshape(-1).tolist()
        parts = [merged]
    points = parts[0]
    return [v / (width if i % 2 == 0 else height) for i, v in enumerate(points)]


def _count(items: list[_Item], value: Any) -> dict[str, int]:
    counts = dict.fromkeys(LABELED_SPLITS, 0)
    for item in items:
        counts[item.split] += value(item)
    return counts


def _dataset_hash(
    items: list[_Item], digests: list[str], class_map: ClassMap, segments: bool
) -> str:
    total = hashlib.sha256()
    total.update(class_map.to_json().encode())
    total.update(b"segments" if segments else b"boxes")
    for item, image_digest in sorted(
        zip(items, digests, strict=True), key=lambda pair: (pair[0].split, pair[0].relative)
    ):
        total.update(f"\n{item.split}/{item.relative}\0{image_digest}\0".encode())
        total.update(item.label.encode())
    return total.hexdigest()


def _write_items(
    staging: Path,
    items: list[_Item],
    progress: Callable[[int], None],
    *,
    meanwhile: Callable[[], _T],
) -> tuple[set[str], _T]:
    """Write every label file in a second thread while this one runs `meanwhile` (e.g. hashing
    the images), then links every image; returns the link modes used and what `meanwhile` did.

    The two threads create entries in different folders: on ext4 (2 cores) 10,000 of each took
    0.25 s instead of 0.38 s one after the other. Progress counts label files.
    """
    base = str(staging)
    folders = {f"{base}/images/{split}" for split in LABELED_SPLITS}
    folders |= {f"{base}/labels/{split}" for split in LABELED_SPLITS}
    for item in items:
        parent = item.relative.rpartition("/")[0]
        if parent:
            folders.add(f"{base}/images/{item.split}/{parent}")
            folders.add(f"{base}/labels/{item.split}/{parent}")
    for folder in sorted(folders):
        os.makedirs(folder, exist_ok=True)  # noqa: PTH103 - strings throughout

    # Names relative to open folder descriptors: the kernel walks the long path once per folder,
    # not once per file.
    descriptors = {folder: os.open(folder, os.O_RDONLY | os.O_DIRECTORY) for folder in folders}

    def write_labels() -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        for done, item in enumerate(items, 1):
            label_dir, _, label_name = (
                f"{base}/labels/{item.split}/{item.label_relative}".rpartition("/")
            )
            fd = os.open(label_name, flags, 0o644, dir_fd=descriptors[label_dir])
            try:
                os.write(fd, item.label.encode())
            finally:
                os.close(fd)
            if done % 512 == 0 or done == len(items):
                progress(done)

    modes: set[str] = set()
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="convert-labels") as pool:
            labels = pool.submit(write_labels)
            outcome = meanwhile()
            for item in items:
                image_dir, _, image_name = f"{base}/images/{item.split}/{item.relative}".rpartition(
                    "/"
                )
                try:
                    os.link(item.source, image_name, dst_dir_fd=descriptors[image_dir])
                    modes.add("hardlink")
                except OSError:  # another filesystem: a symlink, else a copy
                    modes.add(link_file(item.source, f"{image_dir}/{image_name}"))
            labels.result()  # raises what writing the labels raised
    finally:
        for descriptor in descriptors.values():
            os.close(descriptor)
    return modes, outcome
