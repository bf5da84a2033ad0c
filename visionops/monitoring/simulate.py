"""The drift simulator: a VISION split as a camera, lamp or encoder would change it.

`drift_image` applies one kind of drift to one image at a severity in [0, 1]; `simulate_split`
applies it to a fraction of a split's images and writes a complete VISION-layout split (images and
`_annotations.coco.json`), with boxes and polygons transformed for geometric kinds, so the drifted
data can be evaluated on and trained on. Severity maps to strength linearly (`STRENGTHS`, also
in the README):

| kind | strength at severity s |
| --- | --- |
| brightness | intensities x (1 - 0.5 s) (darker: s=0.5 -> x0.75) |
| contrast | deviations from the image mean x (1 - 0.6 s) |
| noise | Gaussian noise, sigma 25 s grey levels per pixel and channel |
| blur | Gaussian blur, sigma 3 s pixels at 640 px (scaled with the longer side) |
| jpeg | re-encoded with quantization steps s of the way (log scale) from the source's to q10's |
| occlusion | one flat grey rectangle over 40 s % of the image; boxes over half hidden dropped |
| rotation | turned 45 s degrees (random sign) about the centre, nearest pixel, mirrored borders |
| color-shift | white balance: red x (1 + 0.3 s), blue x (1 - 0.3 s) |
| mixed | each drifted image gets one of the kinds above at random, same severity |
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2  # heavy; every drift kind is drawn with it
import numpy as np
from PIL import UnidentifiedImageError

from visionops.data.coco import ANNOTATIONS_FILE, load_coco, write_coco
from visionops.data.features import read_image
from visionops.data.files import link_file, staging_dir
from visionops.errors import DataError, InvalidImage, UsageError
from visionops.inference.images import open_pil

if TYPE_CHECKING:
    from visionops.progress import ProgressCallback

log = logging.getLogger(__name__)

SINGLE_KINDS: tuple[str, ...] = (
    "brightness",
    "contrast",
    "noise",
    "blur",
    "jpeg",
    "occlusion",
    "rotation",
    "color-shift",
)
KINDS: tuple[str, ...] = (*SINGLE_KINDS, "mixed")
STRENGTHS: dict[str, str] = {
    "brightness": "intensities x (1 - 0.5 s)",
    "contrast": "deviations from the mean x (1 - 0.6 s)",
    "noise": "Gaussian noise sigma 25 s grey levels",
    "blur": "Gaussian blur sigma 3 s px at 640 px",
    "jpeg": "quantization step s of the way (log scale) from the source's to quality 10's",
    "occlusion": "flat rectangle over 40 s % of the area",
    "rotation": "+/- 45 s degrees, nearest pixel, reflected borders",
    "color-shift": "red x (1 + 0.3 s), blue x (1 - 0.3 s)",
    "mixed": "one of the above per image, same s",
}
JPEG_WRITE_QUALITY = 95
JPEG_MIN_QUALITY = 10
"""The jpeg kind's quality at severity 1."""
"""Quality of drifted .jpg images when the source's quality cannot be read from its tables."""
OCCLUDED_DROP = 0.5
"""An annotation whose box is hidden by at least this share of the occluder is dropped."""


@dataclass(frozen=True)
class Drifted:
    """One drifted image: its pixels, the kind applied, and the affine map of its geometry (2x3)
    or the occluder rectangle (x0, y0, x1, y1)."""

    image: np.ndarray
    kind: str
    matrix: np.ndarray | None = None
    occluder: tuple[int, int, int, int] | None = None


def check_kind(kind: str, severity: float) -> str:
    """The canonical kind name; UsageError for an unknown kind or a severity outside [0, 1]."""
    canonical = kind.strip().lower().replace("_", "-")
    if canonical in ("gaussian-noise", "gaussian"):
        canonical = "noise"
    elif canonical in ("color", "colour", "colour-shift"):
        canonical = "color-shift"
    elif canonical in ("jpeg-compression", "compression"):
        canonical = "jpeg"
    if canonical not in KINDS:
        raise UsageError(f"unknown drift kind {kind!r}; choose from {', '.join(KINDS)}")
    if not (0.0 <= severity <= 1.0) or math.isnan(severity):
        raise UsageError(f"severity must be between 0 and 1, got {severity}")
    return canonical


def drift_image(
    image_bgr: np.ndarray,
    kind: str,
    severity: float,
    rng: np.random.Generator,
    source_quality: int | None = None,
) -> Drifted:
    """`image_bgr` (uint8 BGR) with one kind of drift at `severity`; see the module table.
    `source_quality`: the JPEG quality the image was decoded from (None: lossless), which the jpeg
    kind's quality is relative to."""
    kind = check_kind(kind, severity)
    if kind == "mixed":
        kind = SINGLE_KINDS[int(rng.integers(len(SINGLE_KINDS)))]
    s = float(severity)
    image = np.ascontiguousarray(image_bgr)
    height, width = image.shape[:2]
    pixels = image.astype(np.float32)
    if kind == "brightness":
        out = pixels * (1.0 - 0.5 * s)
    elif kind == "contrast":
        mean = pixels.mean(axis=(0, 1), keepdims=True)
        out = mean + (pixels - mean) * (1.0 - 0.6 * s)
    elif kind == "noise":
        out = pixels + rng.normal(0.0, 25.0 * s, pixels.shape).astype(np.float32)
    elif kind == "blur":
        sigma = 3.0 * s * max(height, width) / 640.0
        out = cv2.GaussianBlur(pixels, (0, 0), sigma) if sigma > 0.05 else pixels
    elif kind == "jpeg":
        quality = jpeg_drift_quality(source_quality, s)
        ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise InvalidImage("JPEG encoding failed")
        return Drifted(cv2.imdecode(encoded, cv2.IMREAD_COLOR), kind)
    elif kind == "occlusion":
        area = 0.4 * s * height * width
        aspect = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))
        box_w = min(width, max(1, round(math.sqrt(area * aspect))))
        box_h = min(height, max(1, round(area / max(box_w, 1))))
        x0 = int(rng.integers(0, width - box_w + 1))
        y0 = int(rng.integers(0, height - box_h + 1))
        out = pixels.copy()
        if area >= 1:
            out[y0 : y0 + box_h, x0 : x0 + box_w] = float(rng.uniform(20, 235))
            occluder = (x0, y0, x0 + box_w, y0 + box_h)
            return Drifted(out.astype(np.uint8), kind, occluder=occluder)
        return Drifted(image.copy(), kind)
    elif kind == "rotation":
        # s=1 is 45 degrees, the turn furthest from every axis. Each output pixel is the nearest
        # source pixel: a turned camera samples the turned scene with its own noise and
        # sharpness, while interpolating between pixels (bilinear) is a low-pass filter that blurs
        # at every angle, 1 degree as much as 15 (README "Calibration").
        angle = 45.0 * s * (1 if rng.random() < 0.5 else -1)
        matrix = cv2.getRotationMatrix2D((width / 2.0, height / 2.0), angle, 1.0)
        out = cv2.warpAffine(
            image, matrix, (width, height), flags=cv2.INTER_NEAREST,
            borderMode=cv2.BORDER_REFLECT_101,
        )  # fmt: skip
        return Drifted(out, kind, matrix=matrix)
    else:  # color-shift
        gains = np.array([1.0 - 0.3 * s, 1.0, 1.0 + 0.3 * s], np.float32)  # B, G, R
        out = pixels * gains
    return Drifted(np.clip(out, 0, 255).astype(np.uint8), kind)


_IJG_LUMINANCE = np.array(
    [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
     14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
     18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
     49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99],
    np.float64,
)  # fmt: skip


def _ijg_scale(quality: float) -> float:
    """libjpeg's scale (percent) of its standard quantization tables at a quality."""
    return 5000.0 / quality if quality < 50 else max(1.0, 200.0 - 2.0 * quality)


def jpeg_drift_quality(source_quality: int | None, severity: float) -> int:
    """The jpeg kind's quality: quantization steps `severity` of the way from the source's own
    (None: a lossless source, quality 100) to quality 10's, on a log scale.

    Relative to the source, so that a small severity is a re-encode near the source's quality
    and harmless: on quality-92 sources, a fixed round(90 - 80 s) made s=0.05 quality 86, which
    moved the noise estimate by 1.3 reference standard deviations (README "Calibration"). On a log
    scale because the steps multiply: s=0.05 makes them 19% coarser (quality 92 -> 90).
    """
    start = _ijg_scale(100 if source_quality is None else source_quality)
    scale = start * (_ijg_scale(JPEG_MIN_QUALITY) / start) ** severity
    quality = 5000.0 / scale if scale > 100 else (200.0 - scale) / 2.0
    return int(min(100, max(1, round(quality))))


def jpeg_quality(path: Path) -> int | None:
    """The IJG quality (1-100) whose luminance table is closest to the file's, None if not a JPEG.

    Drifted images are re-encoded at their source's quality: re-encoding a decoded JPEG with its
    own tables changes almost nothing, so only the simulated drift reaches the features (a fixed
    quality 95 over quality-92 sources alone shifted the noise estimate by 0.6 standard deviations,
    enough for the check to flag it).
    """
    try:
        with open_pil(path) as image:
            tables = getattr(image, "quantization", None) or {}
    except (OSError, UnidentifiedImageError):
        return None
    if 0 not in tables or len(tables[0]) != 64:
        return None
    found = np.asarray(tables[0], np.float64)
    qualities = np.arange(1, 101)
    scales = np.where(qualities < 50, 5000.0 / qualities, 200.0 - 2.0 * qualities)
    expected = np.clip(np.floor((_IJG_LUMINANCE[None, :] * scales[:, None] + 50) / 100), 1, 255)
    return int(qualities[np.argmin(np.abs(expected - found).sum(axis=1))])


def encode_image(image_bgr: np.ndarray, suffix: str, quality: int | None = None) -> bytes:
    """Encode like `simulate_split` writes: JPEG at `quality` (default `JPEG_WRITE_QUALITY`),
    other formats lossless."""
    ext = suffix.lower() if suffix.startswith(".") else f".{suffix.lower()}"
    jpeg = [cv2.IMWRITE_JPEG_QUALITY, quality or JPEG_WRITE_QUALITY]
    params = jpeg if ext in (".jpg", ".jpeg") else []
    ok, encoded = cv2.imencode(ext, image_bgr, params)
    if not ok:
        raise InvalidImage(f"cannot encode an image as {ext}")
    return encoded.tobytes()


# ---------------------------------------------------------------- annotations


def _clip_points(points: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.stack([np.clip(points[:, 0], 0, width), np.clip(points[:, 1], 0, height)], axis=1)


def _polygon_area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return float(abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))) / 2.0)


def transform_annotation(
    annotation: dict[str, Any], drifted: Drifted, width: int, height: int
) -> dict[str, Any] | None:
    """The annotation as it applies to the drifted image, or None when it no longer applies.

    Rotation maps polygons (or, without them, the box corners) and takes the box as their clipped
    bounds; an annotation rotated out of the image is dropped. Occlusion drops annotations whose
    box is hidden by at least `OCCLUDED_DROP`. Other kinds keep annotations as they are.
    """
    bbox = [float(v) for v in annotation.get("bbox", [])]
    if len(bbox) != 4:
        return dict(annotation)
    x, y, w, h = bbox
    if drifted.occluder is not None:
        ox0, oy0, ox1, oy1 = drifted.occluder
        hidden_w = max(0.0, min(x + w, ox1) - max(x, ox0))
        hidden_h = max(0.0, min(y + h, oy1) - max(y, oy0))
        if w * h > 0 and hidden_w * hidden_h / (w * h) >= OCCLUDED_DROP:
            return None
        return dict(annotation)
    if drifted.matrix is None:
        return dict(annotation)

    matrix = drifted.matrix
    segmentation = annotation.get("segmentation")
    polygons = (
        [np.asarray(p, np.float64).reshape(-1, 2) for p in segmentation if len(p) >= 6]
        if isinstance(segmentation, list)
        else []
    )
    if not polygons:
        corners = np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], np.float64)
        polygons = [corners]
    moved = [_clip_points(p @ matrix[:, :2].T + matrix[:, 2], width, height) for p in polygons]
    points = np.concatenate(moved)
    x0, y0 = points.min(axis=0)
    x1, y1 = points.max(axis=0)
    if x1 - x0 < 1 or y1 - y0 < 1:
        return None
    result = dict(annotation)
    result["bbox"] = [round(float(x0), 2), round(float(y0), 2),
                      round(float(x1 - x0), 2), round(float(y1 - y0), 2)]  # fmt: skip
    if isinstance(segmentation, list) and segmentation:
        result["segmentation"] = [[round(float(v), 2) for v in p.reshape(-1)] for p in moved]
        result["area"] = round(sum(_polygon_area(p) for p in moved), 2)
    else:
        result["segmentation"] = []  # an RLE mask cannot be rotated as a list of points
        result["area"] = round(float((x1 - x0) * (y1 - y0)), 2)
    return result


# ---------------------------------------------------------------- splits


@dataclass
class SimulationResult:
    """What `simulate_split` wrote."""

    out_dir: Path
    kind: str
    severity: float
    fraction: float
    seed: int
    images: int = 0
    drifted: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    annotations: int = 0
    annotations_dropped: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "kind": self.kind,
            "severity": self.severity,
            "fraction": self.fraction,
            "seed": self.seed,
            "images": self.images,
            "drifted": self.drifted,
            "kinds": dict(self.kinds),
            "annotations": self.annotations,
            "annotations_dropped": self.annotations_dropped,
            "skipped": [{"file": f, "reason": r} for f, r in self.skipped],
        }


def _chosen(count: int, fraction: float, seed: int) -> set[int]:
    """Indices of the images to drift: round(fraction * count) of them, seeded."""
    rng = np.random.default_rng([seed, 0x5EED])
    return {int(i) for i in rng.permutation(count)[: round(fraction * count)]}


def simulate_split(
    src: Path,
    out: Path,
    *,
    kind: str,
    severity: float,
    fraction: float = 1.0,
    seed: int = 0,
    progress: ProgressCallback | None = None,
) -> SimulationResult:
    """Write a drifted copy of the split folder `src` (images + `_annotations.coco.json`) to `out`.

    `fraction` of the images (chosen with `seed`) get the drift; the others are copied unchanged.
    Each image draws its random parameters from (seed, index), so the same call gives the same
    output. Unreadable images are skipped with their annotations and listed in the result; the
    output appears whole or not at all. DataError when `src` is not a split folder or no image in
    it can be read; UsageError for a bad kind, severity or fraction, or `out` inside `src`.
    """
    kind = check_kind(kind, severity)
    if not 0.0 <= fraction <= 1.0:
        raise UsageError(f"fraction must be between 0 and 1, got {fraction}")
    src, out = Path(src).expanduser().resolve(), Path(out).expanduser().resolve()
    if out == src or out.is_relative_to(src):
        raise UsageError(f"--out {out} must not be the source split or inside it")
    annotations_path = src / ANNOTATIONS_FILE
    if not annotations_path.is_file():
        hint = ""
        if src.is_dir() and any(p.is_dir() and (p / ANNOTATIONS_FILE).is_file()
                                for p in src.iterdir()):  # fmt: skip
            hint = " (this looks like a product folder: pass one of its split folders)"
        raise DataError(f"{src} is not a split folder: no {ANNOTATIONS_FILE}{hint}")
    coco = load_coco(annotations_path)
    images: Sequence[dict[str, Any]] = coco.get("images") or []
    if not isinstance(images, list) or not images:
        raise DataError(f"{annotations_path} lists no images")

    result = SimulationResult(out, kind, float(severity), float(fraction), seed)
    chosen = _chosen(len(images), fraction, seed)
    by_image: dict[Any, list[dict[str, Any]]] = {}
    for annotation in coco.get("annotations") or []:
        by_image.setdefault(annotation.get("image_id"), []).append(annotation)
    out_images: list[dict[str, Any]] = []
    out_annotations: list[dict[str, Any]] = []
    progress = progress or (lambda done, total: None)
    progress(0, len(images))
    with staging_dir(out) as staging:
        for index, entry in enumerate(images):
            file_name = str(entry.get("file_name", ""))
            source = (src / file_name).resolve()
            target = staging / file_name
            if not file_name or not source.is_relative_to(src) or not source.is_file():
                result.skipped.append((file_name, "file missing"))
                progress(index + 1, len(images))
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            annotations = by_image.get(entry.get("id"), [])
            new_entry = dict(entry)
            if index in chosen:
                try:
                    image = read_image(source)
                except InvalidImage as error:
                    result.skipped.append((file_name, str(error)))
                    log.warning("skipped %s: %s", file_name, error)
                    progress(index + 1, len(images))
                    continue
                height, width = image.shape[:2]
                quality = jpeg_quality(source)
                rng = np.random.default_rng([seed, index])
                drifted = drift_image(image, kind, severity, rng, source_quality=quality)
                encoded = encode_image(drifted.image, source.suffix or ".png", quality)
                target.write_bytes(encoded)
                kept = [transform_annotation(a, drifted, width, height) for a in annotations]
                result.annotations_dropped += sum(a is None for a in kept)
                annotations = [a for a in kept if a is not None]
                new_entry.update(width=width, height=height, visionops_drift=drifted.kind)
                result.drifted += 1
                result.kinds[drifted.kind] = result.kinds.get(drifted.kind, 0) + 1
            else:
                link_file(source, target)
            out_images.append(new_entry)
            out_annotations.extend(annotations)
            progress(index + 1, len(images))
        if not out_images:
            raise DataError(f"no image of {src} could be read ({len(result.skipped)} skipped)")
        result.images = len(out_images)
        result.annotations = len(out_annotations)
        info = dict(coco.get("info") or {})
        info["visionops_drift"] = {k: v for k, v in result.to_dict().items() if k != "out_dir"}
        write_coco(
            staging / ANNOTATIONS_FILE,
            {**coco, "info": info, "images": out_images, "annotations": out_annotations},
        )
    if result.skipped:
        log.warning("%d of %d images were skipped", len(result.skipped), len(images))
    return result
