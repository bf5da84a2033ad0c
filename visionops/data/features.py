"""Image and prediction features: the one definition of every column the drift check compares.

The predictor's prediction log, the evaluation reference table, the calibration and the drift
check all call these functions, so a column means the same thing everywhere. Global statistics
(brightness, colour, saturation, contrast) are computed on a copy downscaled to at most
`SMALL_SIDE` pixels, texture statistics (sharpness, noise, edges, orientation) on a grey copy of at
most `DETAIL_SIDE` pixels (the resolution the drift thresholds were calibrated at, and a third of
the cost of 512 px: the predictor computes a row for every image it serves), and JPEG blockiness on
a crop at native resolution, because the 8x8 block grid only exists there. Everything is
vectorised numpy/OpenCV; cv2 releases the GIL, so `image_feature_rows` runs images in parallel
threads.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import cv2  # heavy; every image feature is computed with it
import numpy as np

from visionops.errors import InvalidImage

if TYPE_CHECKING:
    from visionops.detections import Detections
    from visionops.progress import ProgressCallback

log = logging.getLogger(__name__)

SMALL_SIDE = 128
DETAIL_SIDE = 320
BLOCK_CROP = 256
EDGE_THRESHOLD = 64.0  # Sobel magnitude (about 16 grey levels per pixel) that counts as an edge

# Image columns.
IMG_WIDTH = "img_width"
IMG_HEIGHT = "img_height"
BRIGHTNESS_MEAN = "brightness_mean"
BRIGHTNESS_STD = "brightness_std"
CONTRAST = "contrast"
RED_MEAN = "red_mean"
GREEN_MEAN = "green_mean"
BLUE_MEAN = "blue_mean"
SATURATION_MEAN = "saturation_mean"
SHARPNESS = "sharpness"
NOISE_SIGMA = "noise_sigma"
EDGE_DENSITY = "edge_density"
AXIS_ALIGNMENT = "axis_alignment"
JPEG_BLOCKINESS = "jpeg_blockiness"

IMAGE_COLUMNS: tuple[str, ...] = (
    IMG_WIDTH,
    IMG_HEIGHT,
    BRIGHTNESS_MEAN,
    BRIGHTNESS_STD,
    CONTRAST,
    RED_MEAN,
    GREEN_MEAN,
    BLUE_MEAN,
    SATURATION_MEAN,
    SHARPNESS,
    NOISE_SIGMA,
    EDGE_DENSITY,
    AXIS_ALIGNMENT,
    JPEG_BLOCKINESS,
)

# Prediction columns.
DET_COUNT = "det_count"
CONF_MEAN = "conf_mean"
CONF_MIN = "conf_min"
CONF_MAX = "conf_max"
BOX_AREA_MEAN = "box_area_mean"
BOX_AREA_MIN = "box_area_min"
BOX_AREA_MAX = "box_area_max"
BOX_ASPECT_MEAN = "box_aspect_mean"
CLASS_ENTROPY = "class_entropy"
TOP_CLASS = "top_class"

PREDICTION_COLUMNS: tuple[str, ...] = (
    DET_COUNT,
    CONF_MEAN,
    CONF_MIN,
    CONF_MAX,
    BOX_AREA_MEAN,
    BOX_AREA_MIN,
    BOX_AREA_MAX,
    BOX_ASPECT_MEAN,
    CLASS_ENTROPY,
    TOP_CLASS,
)
CATEGORICAL_COLUMNS: frozenset[str] = frozenset({TOP_CLASS})
"""Columns whose values are labels (compared as categories, not as numbers)."""

FEATURE_COLUMNS: tuple[str, ...] = IMAGE_COLUMNS + PREDICTION_COLUMNS

NO_CLASS = -1
"""`top_class` of an image without detections."""

_IMMERKAER = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)


def as_bgr_uint8(image: np.ndarray) -> np.ndarray:
    """The image as contiguous 8-bit BGR; grey, BGRA and 16-bit inputs are converted.

    Raises InvalidImage for anything that is not a non-empty 2-D image array.
    """
    if not isinstance(image, np.ndarray):
        raise InvalidImage(f"expected an image array, got {type(image).__name__}")
    if image.ndim not in (2, 3) or image.shape[0] < 1 or image.shape[1] < 1:
        raise InvalidImage(f"expected an HxW or HxWxC image, got shape {image.shape}")
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        if not np.issubdtype(image.dtype, np.number) or not np.isfinite(image).all():
            raise InvalidImage(f"image values must be finite numbers, got dtype {image.dtype}")
        image = np.clip(image, 0, 255).astype(np.uint8)
    if image.ndim == 2 or image.shape[2] == 1:
        return cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.shape[2] != 3:
        raise InvalidImage(f"expected 1, 3 or 4 channels, got {image.shape[2]}")
    return np.ascontiguousarray(image)


def _fit(image: np.ndarray, side: int) -> np.ndarray:
    """Downscale (area interpolation) so the longer side is at most `side`; never upscale."""
    h, w = image.shape[:2]
    scale = side / max(h, w)
    if scale >= 1.0:
        return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _percentile_range(grey: np.ndarray, low: float, high: float) -> float:
    """`p_high - p_low` of a uint8 image through its histogram (faster than np.percentile)."""
    cdf = np.bincount(grey.ravel(), minlength=256).cumsum()
    n = cdf[-1]
    lo = int(np.searchsorted(cdf, low * n))
    hi = int(np.searchsorted(cdf, high * n))
    return float(hi - lo)


def _noise_sigma(grey: np.ndarray) -> float:
    """Immerkaer's fast noise estimate (1996): the image convolved with a Laplacian difference
    mask that cancels first- and second-order structure, so mostly noise remains."""
    h, w = grey.shape
    if h < 3 or w < 3:
        return 0.0
    response = cv2.filter2D(grey, cv2.CV_16S, _IMMERKAER)[1:-1, 1:-1]  # exact: |sum| <= 4080
    return float(math.sqrt(math.pi / 2.0) * cv2.norm(response, cv2.NORM_L1) / response.size / 6.0)


def _blockiness(grey: np.ndarray) -> float:
    """Mean step across 8x8 block borders over the mean step inside blocks (1.0: no blocks).

    Computed on a native-resolution centre crop aligned to the 8-pixel JPEG grid.
    """
    h, w = grey.shape
    y0 = max(0, (h - BLOCK_CROP) // 2) // 8 * 8
    x0 = max(0, (w - BLOCK_CROP) // 2) // 8 * 8
    crop = grey[y0 : y0 + BLOCK_CROP, x0 : x0 + BLOCK_CROP].astype(np.int16)
    if crop.shape[0] < 16 or crop.shape[1] < 16:
        return 1.0
    ratios = []
    for steps in (np.abs(np.diff(crop, axis=1)), np.abs(np.diff(crop, axis=0)).T):
        border = (np.arange(steps.shape[1]) % 8) == 7
        inside = steps[:, ~border].mean()
        ratios.append((steps[:, border].mean() + 1.0) / (inside + 1.0))
    return float(np.mean(ratios))


def image_features(image_bgr: np.ndarray) -> dict[str, float]:
    """Every column of `IMAGE_COLUMNS` for one decoded image (BGR, as OpenCV reads it).

    Intensities are in grey levels 0-255: brightness is the luma mean and its standard deviation,
    contrast the 5th-95th percentile range of luma, saturation the HSV S mean, sharpness the
    variance of the Laplacian, noise the Immerkaer sigma, edge density the share of pixels whose
    Sobel magnitude exceeds `EDGE_THRESHOLD`, axis alignment the gradient-energy-weighted mean of
    cos(4*theta) (1: edges along the image axes, -1: along diagonals; rotation lowers it) and JPEG
    blockiness the border/inside step ratio of the 8x8 grid.
    """
    image = as_bgr_uint8(image_bgr)
    height, width = image.shape[:2]

    small = _fit(image, SMALL_SIDE)
    small_grey = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
    blue, green, red = cv2.mean(small)[:3]
    luma_mean, luma_std = (float(v.item()) for v in cv2.meanStdDev(small_grey))
    saturation = cv2.mean(cv2.cvtColor(small, cv2.COLOR_BGR2HSV))[1]

    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    detail = _fit(grey, DETAIL_SIDE)
    _, lap_std = cv2.meanStdDev(cv2.Laplacian(detail, cv2.CV_16S, ksize=1))  # exact integers
    gx = cv2.Sobel(detail, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(detail, cv2.CV_32F, 0, 1, ksize=3)
    gx2, gy2 = cv2.multiply(gx, gx), cv2.multiply(gy, gy)
    energy = cv2.add(gx2, gy2)
    total = cv2.sumElems(energy)[0]
    # cos(4 theta) * |g|^2 = ((gx^2 - gy^2)^2 - 4 gx^2 gy^2) / |g|^2 (OpenCV: one pass each)
    diff = cv2.subtract(gx2, gy2)
    aligned = cv2.divide(
        cv2.subtract(cv2.multiply(diff, diff), cv2.multiply(gx2, gy2, scale=4.0)),
        cv2.max(energy, 1e-6),
    )
    alignment = cv2.sumElems(aligned)[0] / total if total > 0 else 0.0
    edges = cv2.countNonZero(cv2.compare(energy, EDGE_THRESHOLD**2, cv2.CMP_GT)) / energy.size

    return {
        IMG_WIDTH: float(width),
        IMG_HEIGHT: float(height),
        BRIGHTNESS_MEAN: luma_mean,
        BRIGHTNESS_STD: luma_std,
        CONTRAST: _percentile_range(small_grey, 0.05, 0.95),
        RED_MEAN: float(red),
        GREEN_MEAN: float(green),
        BLUE_MEAN: float(blue),
        SATURATION_MEAN: float(saturation),
        SHARPNESS: float(lap_std.item()) ** 2,
        NOISE_SIGMA: _noise_sigma(detail),
        EDGE_DENSITY: edges,
        AXIS_ALIGNMENT: alignment,
        JPEG_BLOCKINESS: _blockiness(grey),
    }


def prediction_features(
    detections: Detections, image_shape: tuple[int, int], num_classes: int
) -> dict[str, float]:
    """Every column of `PREDICTION_COLUMNS` for one image's detections.

    `image_shape` is (height, width) of the original image; box areas are fractions of it and
    aspects are width/height. An image without detections has count 0, every statistic 0 and
    `top_class` -1, so the columns never hold NaN. `class_entropy` is the entropy of the class
    histogram divided by log(num_classes) (0: one class, 1: all classes equally).
    """
    height, width = int(image_shape[0]), int(image_shape[1])
    if height <= 0 or width <= 0:
        raise InvalidImage(f"image shape must be positive (height, width), got {image_shape}")
    n = len(detections)
    if n == 0:
        return {**dict.fromkeys(PREDICTION_COLUMNS, 0.0), TOP_CLASS: float(NO_CLASS)}
    scores = detections.scores.astype(np.float64)
    boxes = detections.boxes.astype(np.float64)
    box_w = np.clip(boxes[:, 2] - boxes[:, 0], 0.0, None)
    box_h = np.clip(boxes[:, 3] - boxes[:, 1], 0.0, None)
    areas = box_w * box_h / float(height * width)
    aspects = box_w / np.maximum(box_h, 1e-6)
    classes = detections.class_ids.astype(np.int64)
    _, counts = np.unique(classes, return_counts=True)
    share = counts / n
    entropy = float(-(share * np.log(share)).sum())
    entropy = entropy / math.log(num_classes) if num_classes > 1 else 0.0
    return {
        DET_COUNT: float(n),
        CONF_MEAN: float(scores.mean()),
        CONF_MIN: float(scores.min()),
        CONF_MAX: float(scores.max()),
        BOX_AREA_MEAN: float(areas.mean()),
        BOX_AREA_MIN: float(areas.min()),
        BOX_AREA_MAX: float(areas.max()),
        BOX_ASPECT_MEAN: float(aspects.mean()),
        CLASS_ENTROPY: entropy,
        TOP_CLASS: float(classes[int(np.argmax(scores))]),
    }


def feature_row(
    image_bgr: np.ndarray, detections: Detections | None = None, num_classes: int = 0
) -> dict[str, float]:
    """Image features, plus prediction features when `detections` are given: one table row."""
    row = image_features(image_bgr)
    if detections is not None:
        shape = (int(row[IMG_HEIGHT]), int(row[IMG_WIDTH]))
        row.update(prediction_features(detections, shape, num_classes))
    return row


def read_image(path: Path) -> np.ndarray:
    """Decode an image file as BGR uint8; InvalidImage naming the file when it cannot."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as error:
        raise InvalidImage(f"cannot read image {path}: {error}") from error
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise InvalidImage(f"not a decodable image: {path}")
    return image


def image_feature_rows(
    paths: Sequence[Path],
    *,
    workers: int = 2,
    progress: ProgressCallback | None = None,
    extra: Callable[[Path], dict[str, object]] | None = None,
) -> tuple[list[dict[str, object]], list[tuple[Path, str]]]:
    """Image features of many files, in `workers` threads, in input order.

    Returns (rows, failures): an unreadable image is skipped and reported as (path, reason), never
    raised. `extra(path)` adds columns (e.g. the file name) to each row.
    """

    def one(path: Path) -> dict[str, object] | str:
        try:
            row: dict[str, object] = dict(image_features(read_image(path)))
        except InvalidImage as error:
            return str(error)
        if extra is not None:
            row.update(extra(path))
        return row

    rows: list[dict[str, object]] = []
    failures: list[tuple[Path, str]] = []
    total = len(paths)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for done, (path, result) in enumerate(zip(paths, pool.map(one, paths), strict=True), 1):
            if isinstance(result, str):
                log.warning("skipped %s: %s", path, result)
                failures.append((path, result))
            else:
                rows.append(result)
            if progress is not None:
                progress(done, total)
    return rows, failures
