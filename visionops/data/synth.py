"""A synthetic VISION-like dataset: the same layout and class names, generated in seconds.

Each product gets its own textured surface (cable strands, capacitor tops, wood grain, PCB traces,
...) and each of its classes its own kind of defect, drawn so that the kinds look different from
each other: scratches are thin bright lines, cracks dark jagged lines, dents shaded ellipses, holes
dark discs with a bright rim, blotches tinted irregular stains, chips bright irregular facets.
Boxes are the tight bounds of the drawn pixels and polygons their outline, so a detector trained on
the data can learn it exactly. Class names follow the real dataset where it is known (Capacitor's
single class is literally "0", Screw has "defect", Electronics "damage").

Every image is drawn from its own random stream, seeded by (seed, product, split, index): the same
seed gives byte-identical files, and adding products or images never changes the existing ones.

This module holds the catalog and renders splits; the product surfaces are drawn by
`synth_surfaces`, the defects by `synth_defects`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2  # heavy; the generator draws with it
import numpy as np

from visionops.data.coco import ANNOTATIONS_FILE, BACKGROUND_KEY, empty_coco, write_coco
from visionops.data.files import atomic_write_text, dir_is_empty, read_json_object, staging_dir
from visionops.data.synth_defects import place_defect
from visionops.data.synth_surfaces import SURFACES, finish
from visionops.data.vision import PRODUCTS, SPLITS, normalize_products
from visionops.errors import UsageError
from visionops.progress import ProgressCallback, no_progress

log = logging.getLogger(__name__)

MARKER_FILE = ".visionops-synth.json"
GENERATOR_VERSION = 1

# product -> (surface, ((class name, defect kind), ...)); kinds are drawn by _DEFECTS below.
CATALOG: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    "Cable": ("cable", (("break", "chip"), ("thunderbolt", "crack"), ("torn-apart", "blotch"))),
    "Capacitor": ("capacitor", (("0", "dent"),)),
    "Casting": ("casting", (("inclusion", "blotch"), ("other", "dent"), ("scratch", "scratch"))),
    "Console": (
        "console",
        (("collision", "dent"), ("dirty", "blotch"), ("gap", "crack"), ("scratch", "scratch")),
    ),
    "Cylinder": ("cylinder", (("chip", "chip"), ("pit", "hole"), ("scratch", "scratch"))),
    "Electronics": ("electronics", (("damage", "crack"),)),
    "Groove": ("groove", (("scratch", "scratch"),)),
    "Hemisphere": ("hemisphere", (("crack", "crack"), ("dent", "dent"), ("spot", "blotch"))),
    "Lens": (
        "lens",
        (
            ("fiber", "scratch"),
            ("flash particle", "blotch"),
            ("hole", "hole"),
            ("surface damage", "dent"),
            ("tear", "crack"),
        ),
    ),
    "PCB_1": (
        "pcb",
        (
            ("missing_hole", "hole"),
            ("mouse_bite", "chip"),
            ("open_circuit", "crack"),
            ("short", "scratch"),
        ),
    ),
    "PCB_2": (
        "pcb_dark",
        (("mouse_bite", "chip"), ("spur", "scratch"), ("spurious_copper", "blotch")),
    ),
    "Ring": ("ring", (("pit", "hole"), ("scratch", "scratch"), ("unfinished", "dent"))),
    "Screw": ("screw", (("defect", "chip"),)),
    "Wood": ("wood", (("crack", "crack"), ("knot", "dent"), ("stain", "blotch"))),
}
# Image height as a fraction of the width (imgsz); the real products are not all square.
_ASPECT = {"Cable": 0.75, "Console": 0.75, "Screw": 0.75, "Wood": 0.75}
_DEFECT_FREE_EVERY = 8  # one image in eight has no defect
_MAX_DEFECTS = 3


@dataclass
class SynthResult:
    """What `synthesize` wrote: the root, the products and per-split image/box counts."""

    root: Path
    products: list[str]
    images: dict[str, dict[str, int]] = field(default_factory=dict)
    annotations: dict[str, dict[str, int]] = field(default_factory=dict)
    reused: bool = False

    @property
    def total_images(self) -> int:
        return sum(sum(s.values()) for s in self.images.values())

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["root"] = str(self.root)
        return data


def class_names(product: str) -> list[str]:
    """The generator's class names for `product`, in COCO id order (ids start at 1)."""
    return [name for name, _ in CATALOG[product][1]]


def resolve_products(products: int | Sequence[str] | None) -> list[str]:
    """A product count (the first N of PRODUCTS) or names; None means all 14."""
    if products is None:
        return list(PRODUCTS)
    if isinstance(products, int):
        if not 1 <= products <= len(PRODUCTS):
            raise UsageError(f"--products must be between 1 and {len(PRODUCTS)}, got {products}")
        return list(PRODUCTS[:products])
    names = normalize_products(products)
    assert names is not None
    return names


def synthesize(
    out_dir: Path,
    *,
    products: int | Sequence[str] | None = 2,
    n_train: int = 48,
    n_val: int = 16,
    n_inference: int = 16,
    imgsz: int = 320,
    seed: int = 0,
    progress: ProgressCallback | None = None,
) -> SynthResult:
    """Write a VISION-layout dataset to `out_dir` (atomically) and return what was written.

    `out_dir` must be absent, empty, or an earlier output of this function (which is replaced; if
    it was made with the same parameters it is kept as is, so re-running changes nothing).
    """
    names = resolve_products(products)
    for flag, value in (("--train", n_train), ("--val", n_val), ("--inference", n_inference)):
        if value < 1:
            raise UsageError(f"{flag} must be at least 1, got {value}")
    if not 64 <= imgsz <= 4096:
        raise UsageError(f"--imgsz must be between 64 and 4096, got {imgsz}")
    out_dir = Path(out_dir).expanduser().resolve()
    params = {
        "version": GENERATOR_VERSION,
        "products": names,
        "n_train": n_train,
        "n_val": n_val,
        "n_inference": n_inference,
        "imgsz": imgsz,
        "seed": seed,
    }
    previous = read_json_object(out_dir / MARKER_FILE)
    if out_dir.exists() and previous is None and not dir_is_empty(out_dir):
        raise UsageError(
            f"{out_dir} exists and was not written by `visionops data synth`; choose another --out"
        )
    if previous is not None and previous.get("params") == params:
        log.info("%s already holds this synthetic dataset; nothing to do", out_dir)
        result = _result_from_marker(out_dir, previous)
        result.reused = True
        return result

    progress = progress or no_progress
    counts = {"train": n_train, "val": n_val, "inference": n_inference}
    total = len(names) * sum(counts.values())
    result = SynthResult(out_dir, names)
    done = 0
    progress(0, total)
    with staging_dir(out_dir) as staging:
        for product in names:
            result.images[product] = {}
            result.annotations[product] = {}
            for split in SPLITS:
                split_dir = staging / product / split
                split_dir.mkdir(parents=True)
                coco = _render_split(product, split, counts[split], imgsz, seed, split_dir)
                write_coco(split_dir / ANNOTATIONS_FILE, coco)
                result.images[product][split] = len(coco["images"])
                result.annotations[product][split] = len(coco["annotations"])
                done += counts[split]
                progress(done, total)
        marker = {"params": params, "images": result.images, "annotations": result.annotations}
        atomic_write_text(staging / MARKER_FILE, json.dumps(marker, indent=2) + "\n")
    return result


def _result_from_marker(out_dir: Path, marker: dict[str, Any]) -> SynthResult:
    return SynthResult(
        out_dir, list(marker["params"]["products"]), marker["images"], marker["annotations"]
    )


def _render_split(
    product: str, split: str, count: int, imgsz: int, seed: int, split_dir: Path
) -> dict[str, Any]:
    """Draw `count` images of one split into `split_dir`; return its COCO dict."""
    surface, classes = CATALOG[product]
    categories = [
        {"id": i + 1, "name": name, "supercategory": product.lower()}
        for i, (name, _) in enumerate(classes)
    ]
    coco = empty_coco(categories)
    width, height = imgsz, round(imgsz * _ASPECT.get(product, 1.0))
    product_index, split_index = PRODUCTS.index(product), SPLITS.index(split)
    labeled = split != "inference"
    defective = 0
    for i in range(count):
        rng = np.random.default_rng([seed, product_index, split_index, i])
        image, region = SURFACES[surface](rng, height, width)
        planned: list[int] = []
        if i % _DEFECT_FREE_EVERY != _DEFECT_FREE_EVERY - 1:
            # Cycle the first defect's class so every class appears even in a small split.
            planned = [defective % len(classes)]
            planned += [
                int(c) for c in rng.integers(0, len(classes), rng.integers(0, _MAX_DEFECTS))
            ]
            defective += 1
        boxes: list[tuple[int, int, int, int]] = []
        objects = []
        for class_index in planned:
            kind = classes[class_index][1]
            drawn = place_defect(rng, image, region, kind, boxes)
            if drawn is not None:
                objects.append((class_index, *drawn))
        finish(rng, image)
        ext = ".png" if i % 5 == 4 else ".jpg"
        file_name = f"{product.lower()}_{split}_{i:05d}{ext}"
        pixels = np.clip(image, 0, 255).astype(np.uint8)
        params = (
            [cv2.IMWRITE_JPEG_QUALITY, 92] if ext == ".jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 3]
        )
        ok, encoded = cv2.imencode(ext, pixels, params)
        if not ok:  # pragma: no cover - cv2 always encodes a uint8 BGR array
            raise RuntimeError(f"could not encode {file_name}")
        (split_dir / file_name).write_bytes(encoded.tobytes())
        image_id = i
        entry: dict[str, Any] = {
            "id": image_id, "file_name": file_name, "width": width, "height": height
        }  # fmt: skip
        if labeled and not planned:
            entry[BACKGROUND_KEY] = True  # defect-free on purpose: validation expects no boxes
        coco["images"].append(entry)
        if not labeled:
            continue
        for class_index, bbox, polygons, area in objects:
            coco["annotations"].append(
                {
                    "id": len(coco["annotations"]),
                    "image_id": image_id,
                    "category_id": class_index + 1,
                    "bbox": bbox,
                    "area": area,
                    "segmentation": polygons,
                    "iscrowd": 0,
                }
            )
    return coco
