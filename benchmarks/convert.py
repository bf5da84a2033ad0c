"""COCO -> YOLO conversion: `visionops.data.convert` against Ultralytics' `convert_coco`.

The input is one VISION product with 10,000 images and 50,000 boxes (train 9,000 / val 1,000
images), including crowd boxes, zero-size boxes and exact duplicates, which both converters must
skip. The image files are 64 random bytes each: neither converter decodes images, so what is
measured is label conversion plus, for VisionOps, hashing and hard-linking every image (which
convert_coco does not do). Both read the same JSON files from a warm page cache and write into
fresh output folders, alternating, `--repeat` times.

VisionOps is reported twice: its first run hashes every image (cold), later runs find the image
digests in its digest cache (files unchanged since: same inode, size and mtime), which is what
re-converting a dataset costs. Wall time and process CPU time (user + system) are both printed:
on a machine shared with other jobs the CPU time is the steadier figure. The boxes of both are
asserted equal within 1e-6 after mapping convert_coco's `category_id - 1` through our class map.

    .venv/bin/python benchmarks/convert.py [--images 10000] [--boxes 50000] [--repeat 7] [--dir D]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from visionops.bootstrap import bootstrap
from visionops.data.coco import ANNOTATIONS_FILE, write_coco

CATEGORIES = ["crack", "dent", "hole", "scratch", "stain"]


def build_dataset(root: Path, n_images: int, n_boxes: int, seed: int = 0) -> Path:
    """A one-product VISION root (`Cable`) with tiny fake image files; returns the JSON folder."""
    rng = np.random.default_rng(seed)
    n_val = n_images // 10
    json_dir = root.parent / "coco_json"
    json_dir.mkdir(parents=True)
    image_split = np.where(np.arange(n_images) < n_images - n_val, "train", "val")
    widths = rng.choice([640, 800, 1024], n_images)
    heights = rng.choice([480, 600, 768], n_images)
    owner = rng.integers(0, n_images, n_boxes)
    for split in ("train", "val"):
        folder = root / "Cable" / split
        folder.mkdir(parents=True)
        ids = np.flatnonzero(image_split == split)
        images = []
        for i in ids:
            name = f"img_{i:06d}.jpg"
            (folder / name).write_bytes(rng.bytes(64))
            images.append(
                {
                    "id": int(i),
                    "file_name": name,
                    "width": int(widths[i]),
                    "height": int(heights[i]),
                }
            )
        annotations = []
        for j in np.flatnonzero(np.isin(owner, ids)):
            i = owner[j]
            w, h = rng.uniform(4, widths[i] / 3), rng.uniform(4, heights[i] / 3)
            x, y = rng.uniform(0, widths[i] - w), rng.uniform(0, heights[i] - h)
            roll = rng.uniform()
            if roll < 0.005:
                w = 0.0  # zero-size: skipped by both
            annotations.append(
                {
                    "id": int(j),
                    "image_id": int(i),
                    "category_id": int(rng.integers(1, len(CATEGORIES) + 1)),
                    "bbox": [round(x, 2), round(y, 2), round(w, 2), round(h, 2)],
                    "area": round(w * h, 2),
                    "segmentation": [],
                    "iscrowd": int(0.005 <= roll < 0.015),  # crowd: skipped by both
                }
            )
            if 0.015 <= roll < 0.02:  # an exact duplicate: written once by both
                annotations.append({**annotations[-1], "id": int(j) + n_boxes})
        categories = [
            {"id": k + 1, "name": name, "supercategory": "cable"}
            for k, name in enumerate(CATEGORIES)
        ]
        coco = {"images": images, "annotations": annotations, "categories": categories}
        write_coco(folder / ANNOTATIONS_FILE, coco)
        shutil.copyfile(folder / ANNOTATIONS_FILE, json_dir / f"{split}.json")
    return json_dir


def read_rows(path: Path) -> list[tuple[float, ...]]:
    if not path.exists():
        return []
    return sorted(tuple(map(float, line.split())) for line in path.read_text().splitlines())


def assert_same_boxes(ours: Path, theirs: Path, lookup: dict[int, int]) -> int:
    """Every label file of convert_coco equals ours (classes mapped); returns boxes compared."""
    compared = 0
    for split in ("train", "val"):
        for mine in sorted((ours / "labels" / split / "Cable").glob("*.txt")):
            other = read_rows(theirs / "labels" / split / mine.name)
            other = sorted((float(lookup[int(r[0]) + 1]), *r[1:]) for r in other)
            rows = read_rows(mine)
            assert len(rows) == len(other), f"{mine.name}: {len(rows)} rows vs {len(other)}"
            if rows:
                diff = np.abs(np.array(rows) - np.array(other)).max()
                assert diff <= 1e-6, f"{mine.name}: boxes differ by {diff}"
            compared += len(rows)
    return compared


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--boxes", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--dir", type=Path, default=None, help="scratch folder (default: $TMPDIR)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-convert-", dir=args.dir) as tmp:
        work = Path(tmp)
        # A private data dir: the digest cache starts empty, so the first run is a cold one.
        os.environ["VISIONOPS_DATA_DIR"] = str(work / "data")
        bootstrap()
        import logging

        from ultralytics.data.converter import convert_coco
        from ultralytics.utils import LOGGER

        from visionops.data.convert import convert

        LOGGER.setLevel(logging.WARNING)
        root = work / "vision"
        started = time.perf_counter()
        json_dir = build_dataset(root, args.images, args.boxes)
        built = time.perf_counter() - started
        print(f"built {args.images} images / {args.boxes} boxes in {built:.1f} s under {work}")

        ours: list[tuple[float, float]] = []  # (wall, cpu) seconds per run
        theirs: list[tuple[float, float]] = []
        result = None
        for run in range(args.repeat):
            os.sync()  # start each run without the previous one's dirty pages being flushed
            with timed(ours):
                result = convert(root, work / f"ours{run}")
            os.sync()
            with timed(theirs):
                convert_coco(str(json_dir), str(work / f"theirs{run}"), cls91to80=False)
        assert result is not None
        lookup = {e.category_id: e.id for e in result.class_map.entries}
        compared = assert_same_boxes(result.root, work / f"theirs{args.repeat - 1}", lookup)

    print(f"boxes compared: {compared} (equal within 1e-6)")
    print("                                 wall s    cpu s   speed-up (wall / cpu)")
    base = [statistics.median(t[i] for t in theirs) for i in (0, 1)]
    rows = {
        "ultralytics convert_coco, median": base,
        "visionops, first run (cold)": list(ours[0]),
        "visionops, re-runs, median": [statistics.median(t[i] for t in ours[1:]) for i in (0, 1)],
    }
    for name, (wall, cpu) in rows.items():
        print(f"{name:<33}{wall:7.3f}  {cpu:7.3f}   {base[0] / wall:4.2f}x / {base[1] / cpu:4.2f}x")
    print(f"runs (wall): ours {[round(t[0], 3) for t in ours]}")
    print(f"             theirs {[round(t[0], 3) for t in theirs]}")
    sys.stdout.flush()


@contextmanager
def timed(into: list[tuple[float, float]]) -> Iterator[None]:
    """Append (wall, CPU) seconds of the block: CPU time is what a loaded machine leaves intact."""
    wall, cpu = time.perf_counter(), time.process_time()
    yield
    into.append((time.perf_counter() - wall, time.process_time() - cpu))


if __name__ == "__main__":
    main()
