"""The defect painters of the generated data: one kind of defect per class, each drawn so that the
kinds look different from each other (scratches thin bright lines, cracks dark jagged lines, dents
shaded ellipses, holes dark discs with a bright rim, blotches tinted stains, chips bright facets).
`place_defect` puts one where it overlaps no other and returns its box and outline.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2  # heavy; the painters draw with it
import numpy as np

Painter = Callable[[np.random.Generator, np.ndarray, np.ndarray], None]


def place_defect(
    rng: np.random.Generator,
    image: np.ndarray,
    region: np.ndarray | None,
    kind: str,
    boxes: list[tuple[int, int, int, int]],
) -> tuple[list[int], list[list[int]], int] | None:
    """Draw one defect of `kind` where it overlaps no earlier one; its bbox, polygons, area.

    The defect's centre lies in `region` (the product's own pixels) when one is given.
    """
    height, width = image.shape[:2]
    size = min(height, width)
    for _ in range(40):
        center = np.array(
            [rng.uniform(0.15, 0.85) * width, rng.uniform(0.15, 0.85) * height], np.float64
        )
        if region is not None and not region[int(center[1]), int(center[0])]:
            continue
        mask = np.zeros((height, width), np.uint8)
        paint = DEFECTS[kind](rng, mask, center, size)
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


def _blend(roi: np.ndarray, where: np.ndarray, color: Sequence[float], alpha: float) -> None:
    roi[where] = roi[where] * (1.0 - alpha) + np.asarray(color, np.float32) * alpha


def _curve(rng: np.random.Generator, center: np.ndarray, length: float, bend: float) -> np.ndarray:
    """Points of a gently bent line of `length` through `center` (a quadratic Bezier)."""
    angle = rng.uniform(0, np.pi)
    direction = np.array([np.cos(angle), np.sin(angle)])
    normal = np.array([-direction[1], direction[0]])
    start, end = center - direction * length / 2, center + direction * length / 2
    control = center + normal * rng.uniform(-bend, bend) * length
    t = np.linspace(0, 1, 24)[:, None]
    return (1 - t) ** 2 * start + 2 * (1 - t) * t * control + t**2 * end


def _scratch(rng: np.random.Generator, mask: np.ndarray, center: np.ndarray, size: int) -> Painter:
    """A thin bright line, slightly curved, with a fainter parallel twin."""
    points = _curve(rng, center, rng.uniform(0.3, 0.6) * size, 0.15)
    thickness = max(2, round(size / 90))
    cv2.polylines(mask, [np.round(points).astype(np.int32)], False, 255, thickness, cv2.LINE_8)
    tone = rng.uniform(225, 250)

    def paint(rng: np.random.Generator, roi: np.ndarray, where: np.ndarray) -> None:
        _blend(roi, where, (tone, tone, tone + 5), 0.9)

    return paint


def _crack(rng: np.random.Generator, mask: np.ndarray, center: np.ndarray, size: int) -> Painter:
    """A dark jagged random walk with a side branch."""
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


DEFECTS: dict[str, Callable[..., Painter]] = {
    "scratch": _scratch,
    "crack": _crack,
    "dent": _dent,
    "hole": _hole,
    "blotch": _blotch,
    "chip": _chip,
}
