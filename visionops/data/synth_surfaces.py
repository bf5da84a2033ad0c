"""The product surfaces of the generated data: each VISION product its own texture (copper cable
strands, capacitor tops, cast metal, PCB traces, wood grain, ...), and where on it defects may sit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2  # heavy; the surfaces are drawn with it
import numpy as np

Surface = tuple[np.ndarray, np.ndarray | None]  # the image, and where defects may sit


def _noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Smooth noise in about [-1, 1]: a coarse random grid upsampled with cubic interpolation."""
    grid = rng.uniform(-1, 1, (cells + 1, cells + 1)).astype(np.float32)
    return cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)


def _grid(height: int, width: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates centred on a slightly jittered centre, in units of the short side."""
    size = min(height, width)
    cy = height / 2 + rng.uniform(-0.05, 0.05) * size
    cx = width / 2 + rng.uniform(-0.05, 0.05) * size
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return (xs - cx) / size, (ys - cy) / size


def _colorize(value: np.ndarray, dark: Sequence[float], light: Sequence[float]) -> np.ndarray:
    """Map a [0, 1] field to a BGR gradient between two colours."""
    v = np.clip(value, 0, 1)[..., None]
    return np.asarray(dark, np.float32) * (1 - v) + np.asarray(light, np.float32) * v


def _cable(rng: np.random.Generator, height: int, width: int) -> Surface:
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
    x, _ = _grid(height, width, rng)
    streaks = _noise(rng, height, 1, 64)  # one column: constant along each row
    value = 0.35 + 0.45 * np.cos(np.clip(x * 2.2, -1.5, 1.5)) + 0.08 * streaks
    return _colorize(value, (40, 45, 50), (200, 200, 205)), None


def _electronics(rng: np.random.Generator, height: int, width: int) -> Surface:
    image = _colorize(0.4 + 0.1 * _noise(rng, height, width, 8), (20, 60, 20), (60, 130, 60))
    for _ in range(int(rng.integers(4, 8))):
        x0, y0 = int(rng.integers(0, width - 20)), int(rng.integers(0, height - 20))
        w, h = int(rng.integers(15, width // 4)), int(rng.integers(10, height // 5))
        tone = float(rng.uniform(30, 70))
        cv2.rectangle(image, (x0, y0), (x0 + w, y0 + h), (tone, tone, tone), -1)
    return image, None


def _groove(rng: np.random.Generator, height: int, width: int) -> Surface:
    x, y = _grid(height, width, rng)
    angle = rng.uniform(0, np.pi)
    lines = 0.5 + 0.5 * np.sin(
        2 * np.pi * rng.uniform(10, 16) * (x * np.cos(angle) + y * np.sin(angle))
    )
    value = 0.3 + 0.35 * lines + 0.05 * _noise(rng, height, width, 6)
    return _colorize(value, (60, 60, 65), (185, 185, 190)), None


def _hemisphere(rng: np.random.Generator, height: int, width: int) -> Surface:
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
    x, y = _grid(height, width, rng)
    image = _colorize(0.85 + 0.05 * _noise(rng, height, width, 5), (180, 180, 180), (245, 245, 245))
    thread = 0.5 + 0.5 * np.sin(2 * np.pi * (x * 14 + y * 5))
    shank = np.abs(y) < 0.18
    body = _colorize(0.2 + 0.5 * thread * (1 - (y / 0.18) ** 2), (40, 45, 50), (170, 175, 180))
    image[shank] = body[shank]
    return image, shank


def _wood(rng: np.random.Generator, height: int, width: int) -> Surface:
    x, y = _grid(height, width, rng)
    warp = 0.25 * _noise(rng, height, width, 4)
    grain = 0.5 + 0.5 * np.sin(2 * np.pi * (y * rng.uniform(8, 12) + warp + 0.1 * x))
    value = 0.45 + 0.3 * grain + 0.05 * _noise(rng, height, width, 40)
    return _colorize(value, (40, 80, 130), (120, 175, 220)), None


def finish(rng: np.random.Generator, image: np.ndarray) -> None:
    """Camera effects on the whole frame: uneven lighting, exposure and sensor noise."""
    height, width = image.shape[:2]
    gain = rng.uniform(0.85, 1.15) * (1 + 0.12 * _noise(rng, height, width, 2))[..., None]
    image *= gain
    image += rng.normal(0, 4, image.shape).astype(np.float32)


SURFACES: dict[str, Callable[[np.random.Generator, int, int], Surface]] = {
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
