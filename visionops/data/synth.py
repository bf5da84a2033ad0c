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
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from visionops.data.coco import ANNOTATIONS_FILE, empty_coco, write_coco
from visionops.data.files import atomic_write_text, dir_is_empty, read_json_object, staging_dir
from visionops.data.vision import PRODUCTS, SPLITS, normalize_products
from visionops.errors import UsageError
from visionops.progress import ProgressCallback, no_progress

if TYPE_CHECKING:
    import numpy as np

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
    import cv2
    import numpy as np

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
        image, region = _SURFACES[surface](rng, height, width)
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
            drawn = _place_defect(rng, image, region, kind, boxes)
            if drawn is not None:
                objects.append((class_index, *drawn))
        _finish(rng, image)
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
        coco["images"].append(
            {"id": image_id, "file_name": file_name, "width": width, "height": height}
        )
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


# ---------------------------------------------------------------- defects


def _place_defect(
    rng: np.random.Generator,
    image: np.ndarray,
    region: np.ndarray | None,
    kind: str,
    boxes: list[tuple[int, int, int, int]],
) -> tuple[list[int], list[list[int]], int] | None:
    """Draw one defect of `kind` where it overlaps no earlier one; its bbox, polygons, area.

    The defect's centre lies in `region` (the product's own pixels) when one is given.
    """
    import cv2
    import numpy as np

    height, width = image.shape[:2]
    size = min(height, width)
    for _ in range(40):
        center = np.array(
            [rng.uniform(0.15, 0.85) * width, rng.uniform(0.15, 0.85) * height], np.float64
        )
        if region is not None and not region[int(center[1]), int(center[0])]:
            continue
        mask = np.zeros((height, width), np.uint8)
        paint = _DEFECTS[kind](rng, mask, center, size)
        ys, xs = np.nonzero(mask)
        if len(xs) < 12:
            continue
        box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        if box[0] < 2 or box[1] < 2 or box[2] > width - 2 or box[3] > height - 2:
            continue
        if any(_overlaps(box, other, margin=4) for other in boxes):
            continue
        x0, y0, x1, y1 = box
        paint(rng, image[y0:y1, x0:x1], mask[y0:y1, x0:x1] > 0)
        boxes.append(box)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        polygons = []
        for contour in contours:
            simplified = cv2.approxPolyDP(contour, 0.7, True).reshape(-1, 2)
            if len(simplified) >= 3:
                polygons.append([int(v) for v in simplified.reshape(-1)])
        if not polygons:
            polygons = [[x0, y0, x1 - 1, y0, x1 - 1, y1 - 1, x0, y1 - 1]]
        return [x0, y0, x1 - x0, y1 - y0], polygons, len(xs)
    return None


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int], margin: int) -> bool:
    return not (
        a[2] + margin <= b[0]
        or b[2] + margin <= a[0]
        or a[3] + margin <= b[1]
        or b[3] + margin <= a[1]
    )


Painter = Callable[["np.random.Generator", "np.ndarray", "np.ndarray"], None]
Surface = tuple["np.ndarray", "np.ndarray | None"]  # the image, and where defects may sit


def _blend(roi: np.ndarray, where: np.ndarray, color: Sequence[float], alpha: float) -> None:
    import numpy as np

    roi[where] = roi[where] * (1.0 - alpha) + np.asarray(color, np.float32) * alpha


def _curve(rng: np.random.Generator, center: np.ndarray, length: float, bend: float) -> np.ndarray:
    """Points of a gently bent line of `length` through `center` (a quadratic Bezier)."""
    import numpy as np

    angle = rng.uniform(0, np.pi)
    direction = np.array([np.cos(angle), np.sin(angle)])
    normal = np.array([-direction[1], direction[0]])
    start, end = center - direction * length / 2, center + direction * length / 2
    control = center + normal * rng.uniform(-bend, bend) * length
    t = np.linspace(0, 1, 24)[:, None]
    return (1 - t) ** 2 * start + 2 * (1 - t) * t * control + t**2 * end


def _scratch(rng: np.random.Generator, mask: np.ndarray, center: np.ndarray, size: int) -> Painter:
    """A thin bright line, slightly curved, with a fainter parallel twin."""
    import cv2
    import numpy as np

    points = _curve(rng, center, rng.uniform(0.3, 0.6) * size, 0.15)
    thickness = max(2, round(size / 90))
    cv2.polylines(mask, [np.round(points).astype(np.int32)], False, 255, thickness, cv2.LINE_8)
    tone = rng.uniform(225, 250)

    def paint(rng: np.random.Generator, roi: np.ndarray, where: np.ndarray) -> None:
        _blend(roi, where, (tone, tone, tone + 5), 0.9)

    return paint


def _crack(rng: np.random.Generator, mask: np.ndarray, center: np.ndarray, size: int) -> Painter:
    """A dark jagged random walk with a side branch."""
    import cv2
    import numpy as np

    length = rng.uniform(0.25, 0.45) * size
    steps = 14
    angle = rng.uniform(0, 2 * np.pi)
    turns = angle + np.cumsum(rng.normal(0, 0.55, steps))
    step = length / steps
    walk = np.cumsum(np.stack([np.cos(turns), np.sin(turns)], 1) * step, 0)
    walk = walk - walk.mean(0) + center
    thickness = max(2, round(size / 100))
    cv2.polylines(mask, [np.round(walk).astype(np.int32)], False, 255, thickness, cv2.LINE_8)
    branch_at = walk[int(rng.integers(3, steps - 3))]
    branch_angle = turns.mean() + rng.choice([-1, 1]) * rng.uniform(0.6, 1.2)
    branch = branch_at + np.outer(np.arange(5), [np.cos(branch_angle), np.sin(branch_angle)]) * step
    cv2.polylines(mask, [np.round(branch).astype(np.int32)], False, 255, max(1, thickness - 1))

    def paint(rng: np.random.Generator, roi: np.ndarray, where: np.ndarray) -> None:
        _blend(roi, where, (18, 18, 22), 0.92)

    return paint


def _dent(rng: np.random.Generator, mask: np.ndarray, center: np.ndarray, size: int) -> Painter:
    """A shaded ellipse: lit on one side, in shadow on the other, with a dark rim."""
    import cv2
    import numpy as np

    axes = (rng.uniform(0.07, 0.14) * size, rng.uniform(0.05, 0.1) * size)
    angle = rng.uniform(0, 180)
    c = (round(center[0]), round(center[1]))
    ax = (round(axes[0]), round(axes[1]))
    cv2.ellipse(mask, c, ax, angle, 0, 360, 255, -1)
    light = rng.uniform(0, 2 * np.pi)

    def paint(rng: np.random.Generator, roi: np.ndarray, where: np.ndarray) -> None:
        ys, xs = np.nonzero(where)
        dx, dy = xs - xs.mean(), ys - ys.mean()
        reach = max(float(np.hypot(dx, dy).max()), 1.0)
        shade = (dx * np.cos(light) + dy * np.sin(light)) / reach
        roi[ys, xs] = np.clip(roi[ys, xs] * 0.55 + 60 + (shade * 85)[:, None], 0, 255)
        rim = where & ~cv2.erode(where.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        _blend(roi, rim, (35, 35, 35), 0.7)

    return paint


def _hole(rng: np.random.Generator, mask: np.ndarray, center: np.ndarray, size: int) -> Painter:
    """A dark disc with a bright rim."""
    import cv2
    import numpy as np

    radius = round(rng.uniform(0.04, 0.075) * size)
    c = (round(center[0]), round(center[1]))
    cv2.circle(mask, c, radius, 255, -1)
    rim = max(2, round(size / 110))

    def paint(rng: np.random.Generator, roi: np.ndarray, where: np.ndarray) -> None:
        _blend(roi, where, (230, 230, 225), 0.85)
        inner = cv2.erode(where.astype(np.uint8), np.ones((2 * rim + 1, 2 * rim + 1), np.uint8))
        _blend(roi, inner.astype(bool), (8, 8, 10), 0.95)

    return paint


def _blotch(rng: np.random.Generator, mask: np.ndarray, center: np.ndarray, size: int) -> Painter:
    """An irregular tinted stain (contamination)."""
    import cv2
    import numpy as np

    radius = rng.uniform(0.07, 0.13) * size
    angles = np.sort(rng.uniform(0, 2 * np.pi, 11))
    radii = radius * rng.uniform(0.55, 1.0, 11)
    points = center + np.stack([np.cos(angles), np.sin(angles)], 1) * radii[:, None]
    cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 255)
    # BGR: rust, ochre, maroon; darker than every surface's mid-tone
    tint = rng.choice([(20, 70, 140), (30, 110, 150), (40, 40, 110)])

    def paint(rng: np.random.Generator, roi: np.ndarray, where: np.ndarray) -> None:
        speckle = rng.normal(0, 12, (int(where.sum()), 1)).astype(np.float32)
        roi[where] = roi[where] * 0.25 + (np.asarray(tint, np.float32) + speckle) * 0.75

    return paint


def _chip(rng: np.random.Generator, mask: np.ndarray, center: np.ndarray, size: int) -> Painter:
    """A bright irregular facet (exposed material) outlined in dark."""
    import cv2
    import numpy as np

    radius = rng.uniform(0.07, 0.12) * size
    count = int(rng.integers(4, 7))
    angles = np.sort(rng.uniform(0, 2 * np.pi, count))
    points = center + np.stack([np.cos(angles), np.sin(angles)], 1) * radius
    cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 255)

    def paint(rng: np.random.Generator, roi: np.ndarray, where: np.ndarray) -> None:
        grain = rng.normal(0, 8, (int(where.sum()), 1)).astype(np.float32)
        roi[where] = np.float32(215) + grain
        edge = where & ~cv2.erode(where.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        _blend(roi, edge, (25, 25, 30), 0.85)

    return paint


_DEFECTS: dict[str, Callable[..., Painter]] = {
    "scratch": _scratch,
    "crack": _crack,
    "dent": _dent,
    "hole": _hole,
    "blotch": _blotch,
    "chip": _chip,
}

# ---------------------------------------------------------------- surfaces


def _noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Smooth noise in about [-1, 1]: a coarse random grid upsampled with cubic interpolation."""
    import cv2
    import numpy as np

    grid = rng.uniform(-1, 1, (cells + 1, cells + 1)).astype(np.float32)
    return cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)


def _grid(height: int, width: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates centred on a slightly jittered centre, in units of the short side."""
    import numpy as np

    size = min(height, width)
    cy = height / 2 + rng.uniform(-0.05, 0.05) * size
    cx = width / 2 + rng.uniform(-0.05, 0.05) * size
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return (xs - cx) / size, (ys - cy) / size


def _colorize(value: np.ndarray, dark: Sequence[float], light: Sequence[float]) -> np.ndarray:
    """Map a [0, 1] field to a BGR gradient between two colours."""
    import numpy as np

    v = np.clip(value, 0, 1)[..., None]
    return np.asarray(dark, np.float32) * (1 - v) + np.asarray(light, np.float32) * v


def _cable(rng: np.random.Generator, height: int, width: int) -> Surface:
    import numpy as np

    x, y = _grid(height, width, rng)
    angle = rng.uniform(-0.35, 0.35)
    across = -x * np.sin(angle) + y * np.cos(angle)
    along = x * np.cos(angle) + y * np.sin(angle)
    strands = 0.5 + 0.5 * np.sin(2 * np.pi * (along * 9 + across * 5))
    band = np.abs(across) < 0.24
    shade = 1 - (across / 0.24) ** 2
    image = _colorize(0.2 + 0.1 * _noise(rng, height, width, 6), (25, 25, 30), (90, 90, 95))
    body = _colorize(0.35 + 0.35 * shade * strands, (20, 60, 110), (90, 170, 230))  # copper
    image[band] = body[band]
    return image, band


def _capacitor(rng: np.random.Generator, height: int, width: int) -> Surface:
    import numpy as np

    x, y = _grid(height, width, rng)
    r = np.hypot(x, y)
    image = _colorize(0.15 + 0.05 * _noise(rng, height, width, 8), (20, 20, 20), (80, 80, 80))
    top = _colorize(
        0.75 - 0.35 * r + 0.05 * _noise(rng, height, width, 12), (90, 90, 95), (220, 215, 210)
    )
    vent = (np.abs(x) < 0.012) | (np.abs(y) < 0.012)
    top[vent & (r < 0.3)] *= 0.6
    disc = r < 0.4
    image[disc] = top[disc]
    return image, disc


def _casting(rng: np.random.Generator, height: int, width: int) -> Surface:
    import numpy as np

    x, y = _grid(height, width, rng)
    boss = 0.12 * (np.hypot(x, y) < 0.3)  # a raised round face in the middle of the part
    rough = (
        0.45 + boss + 0.25 * _noise(rng, height, width, 10) + 0.12 * _noise(rng, height, width, 48)
    )
    return _colorize(rough, (70, 70, 75), (170, 170, 175)), None


def _console(rng: np.random.Generator, height: int, width: int) -> Surface:
    x, y = _grid(height, width, rng)
    value = 0.6 + 0.15 * x + 0.1 * y + 0.04 * _noise(rng, height, width, 5)
    return _colorize(value, (60, 70, 80), (190, 205, 215)), None


def _cylinder(rng: np.random.Generator, height: int, width: int) -> Surface:
    import numpy as np

    x, _ = _grid(height, width, rng)
    streaks = _noise(rng, height, 1, 64)  # one column: constant along each row
    value = 0.35 + 0.45 * np.cos(np.clip(x * 2.2, -1.5, 1.5)) + 0.08 * streaks
    return _colorize(value, (40, 45, 50), (200, 200, 205)), None


def _electronics(rng: np.random.Generator, height: int, width: int) -> Surface:
    import cv2

    image = _colorize(0.4 + 0.1 * _noise(rng, height, width, 8), (20, 60, 20), (60, 130, 60))
    for _ in range(int(rng.integers(4, 8))):
        x0, y0 = int(rng.integers(0, width - 20)), int(rng.integers(0, height - 20))
        w, h = int(rng.integers(15, width // 4)), int(rng.integers(10, height // 5))
        tone = float(rng.uniform(30, 70))
        cv2.rectangle(image, (x0, y0), (x0 + w, y0 + h), (tone, tone, tone), -1)
    return image, None


def _groove(rng: np.random.Generator, height: int, width: int) -> Surface:
    import numpy as np

    x, y = _grid(height, width, rng)
    angle = rng.uniform(0, np.pi)
    lines = 0.5 + 0.5 * np.sin(
        2 * np.pi * rng.uniform(10, 16) * (x * np.cos(angle) + y * np.sin(angle))
    )
    value = 0.3 + 0.35 * lines + 0.05 * _noise(rng, height, width, 6)
    return _colorize(value, (60, 60, 65), (185, 185, 190)), None


def _hemisphere(rng: np.random.Generator, height: int, width: int) -> Surface:
    import numpy as np

    x, y = _grid(height, width, rng)
    r2 = (x**2 + y**2) / 0.42**2
    z = np.sqrt(np.clip(1 - r2, 0, 1))
    lit = np.clip((-x * 0.5 - y * 0.5) / 0.42 * 0.6 + z * 0.8, 0, 1)
    image = _colorize(0.25 + 0.05 * _noise(rng, height, width, 6), (30, 35, 40), (110, 115, 120))
    ball = _colorize(0.25 + 0.7 * lit, (60, 65, 70), (215, 220, 225))
    inside = r2 < 1
    image[inside] = ball[inside]
    return image, inside


def _lens(rng: np.random.Generator, height: int, width: int) -> Surface:
    import numpy as np

    x, y = _grid(height, width, rng)
    r = np.hypot(x, y)
    image = _colorize(0.1 + 0.04 * _noise(rng, height, width, 6), (15, 15, 15), (60, 60, 60))
    glass = _colorize(
        0.35 + 0.25 * np.cos(r * 40) * np.exp(-r * 3) + 0.1 * (1 - r), (70, 80, 60), (200, 220, 190)
    )
    inside = r < 0.44
    image[inside] = glass[inside]
    return image, inside


def _pcb(
    rng: np.random.Generator,
    height: int,
    width: int,
    board: tuple[float, float, float],
    copper: tuple[float, float, float],
) -> Surface:
    import cv2

    image = _colorize(
        0.4 + 0.08 * _noise(rng, height, width, 10), board, tuple(c * 1.6 for c in board)
    )
    thickness = max(2, round(min(height, width) / 70))
    for _ in range(int(rng.integers(4, 7))):
        if rng.uniform() < 0.5:
            y = int(rng.integers(5, height - 5))
            cv2.line(image, (0, y), (width, y), copper, thickness)
        else:
            x = int(rng.integers(5, width - 5))
            cv2.line(image, (x, 0), (x, height), copper, thickness)
    for _ in range(int(rng.integers(4, 9))):
        c = (int(rng.integers(5, width - 5)), int(rng.integers(5, height - 5)))
        cv2.circle(image, c, thickness * 2, copper, -1)
    return image, None


def _pcb_green(rng: np.random.Generator, height: int, width: int) -> Surface:
    return _pcb(rng, height, width, (30, 80, 20), (60, 170, 200))


def _pcb_dark(rng: np.random.Generator, height: int, width: int) -> Surface:
    return _pcb(rng, height, width, (60, 35, 25), (150, 190, 200))


def _ring(rng: np.random.Generator, height: int, width: int) -> Surface:
    import numpy as np

    x, y = _grid(height, width, rng)
    r = np.hypot(x, y)
    image = _colorize(0.3 + 0.05 * _noise(rng, height, width, 6), (50, 50, 50), (140, 140, 140))
    metal = _colorize(
        0.5 + 0.3 * np.cos((r - 0.32) * 25) + 0.1 * np.cos(np.arctan2(y, x)),
        (70, 75, 80),
        (220, 220, 225),
    )
    band = (r > 0.2) & (r < 0.45)
    image[band] = metal[band]
    return image, band


def _screw(rng: np.random.Generator, height: int, width: int) -> Surface:
    import numpy as np

    x, y = _grid(height, width, rng)
    image = _colorize(0.85 + 0.05 * _noise(rng, height, width, 5), (180, 180, 180), (245, 245, 245))
    thread = 0.5 + 0.5 * np.sin(2 * np.pi * (x * 14 + y * 5))
    shank = np.abs(y) < 0.18
    body = _colorize(0.2 + 0.5 * thread * (1 - (y / 0.18) ** 2), (40, 45, 50), (170, 175, 180))
    image[shank] = body[shank]
    return image, shank


def _wood(rng: np.random.Generator, height: int, width: int) -> Surface:
    import numpy as np

    x, y = _grid(height, width, rng)
    warp = 0.25 * _noise(rng, height, width, 4)
    grain = 0.5 + 0.5 * np.sin(2 * np.pi * (y * rng.uniform(8, 12) + warp + 0.1 * x))
    value = 0.45 + 0.3 * grain + 0.05 * _noise(rng, height, width, 40)
    return _colorize(value, (40, 80, 130), (120, 175, 220)), None


def _finish(rng: np.random.Generator, image: np.ndarray) -> None:
    """Camera effects on the whole frame: uneven lighting, exposure and sensor noise."""
    import numpy as np

    height, width = image.shape[:2]
    gain = rng.uniform(0.85, 1.15) * (1 + 0.12 * _noise(rng, height, width, 2))[..., None]
    image *= gain
    image += rng.normal(0, 4, image.shape).astype(np.float32)


_SURFACES: dict[str, Callable[[np.random.Generator, int, int], Surface]] = {
    "cable": _cable,
    "capacitor": _capacitor,
    "casting": _casting,
    "console": _console,
    "cylinder": _cylinder,
    "electronics": _electronics,
    "groove": _groove,
    "hemisphere": _hemisphere,
    "lens": _lens,
    "pcb": _pcb_green,
    "pcb_dark": _pcb_dark,
    "ring": _ring,
    "screw": _screw,
    "wood": _wood,
}
