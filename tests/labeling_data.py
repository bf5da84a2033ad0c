"""A prediction log with kept images, written by the real writer with image retention on (`all`),
for the data-loop tests: each record names its image's key (`images/dt=<day>/<sha256>.png`) and
the writer stores the bytes there, as the predictor does.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import cv2
import numpy as np

from visionops.detections import Detections
from visionops.monitoring.image_retention import ImagePolicy, image_key
from visionops.monitoring.prediction_log import PredictionLogWriter
from visionops.storage import ObjectStore

T0 = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
T1 = T0 + timedelta(hours=1)
NAMES = ("Cable/break", "Cable/thunderbolt", "Cable/torn-apart", "Capacitor/0")
SIZE = (64, 48)  # width, height


@dataclass
class LogContents:
    """What the log holds, by role, as image digests."""

    uncertain: dict[str, float] = field(default_factory=dict)  # digest -> its box's score
    dark: set[str] = field(default_factory=set)
    confused: str = ""
    repeated: str = ""
    near: tuple[str, str] = ("", "")
    gone: str = ""
    empty: set[str] = field(default_factory=set)
    without_image: int = 0
    boxes: dict[str, list[tuple[str, list[float]]]] = field(default_factory=dict)  # x, y, w, h


def _texture(seed: int, gain: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(60, 200, (SIZE[1] // 8, SIZE[0] // 8, 3)).astype(np.float32)
    image = cv2.resize(base, SIZE, interpolation=cv2.INTER_CUBIC)
    image += rng.normal(0, 6, image.shape)
    return np.clip(image * gain, 0, 255).astype(np.uint8)


def write_log(store: ObjectStore) -> LogContents:
    """About 35 records over an hour: uncertain and sure boxes, dark (drifted) images, a class
    confusion, an image sent three times, two near-identical images, an image retention lost,
    images without a detection and records that kept no image."""
    contents = LogContents()
    writer = PredictionLogWriter(
        store, names=NAMES, model_name="defects", model_version="4", batch_size=8,
        max_queue=512, images=ImagePolicy.parse("all"),
    )  # fmt: skip
    moment = [T0]

    def send(
        pixels: np.ndarray, boxes: list[tuple[int, float, list[float]]], *, keep: bool = True
    ) -> str:
        data = cv2.imencode(".png", pixels)[1].tobytes()
        detections = Detections(
            np.array([b[2] for b in boxes], np.float32).reshape(len(boxes), 4),
            np.array([b[1] for b in boxes], np.float32),
            np.array([b[0] for b in boxes], np.int64),
        )
        moment[0] += timedelta(seconds=60)
        encoded = data if keep else None  # a request whose image was not kept
        assert writer.submit(pixels, detections, timestamp=moment[0], encoded=encoded)
        digest = hashlib.sha256(data).hexdigest()
        contents.boxes[digest] = [
            (NAMES[c], [x1, y1, x2 - x1, y2 - y1]) for c, _, (x1, y1, x2, y2) in boxes
        ]
        return digest

    scores = [0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5, 0.45, 0.4, 0.35, 0.3, 0.28]
    for i, score in enumerate(scores):
        box = [4.0 + i, 3.0, 30.5 + i, 20.25]
        contents.uncertain[send(_texture(i), [(i % 3, score, box)])] = score
    for i in range(6):
        contents.dark.add(send(_texture(100 + i, gain=0.3), [(0, 0.93, [10.0, 10.0, 40.0, 30.0])]))
    contents.confused = send(
        _texture(200), [(0, 0.6, [5.0, 5.0, 45.0, 35.0]), (1, 0.58, [6.0, 5.0, 46.0, 36.0])]
    )
    repeated = _texture(300)
    for _ in range(3):
        contents.repeated = send(repeated, [(0, 0.27, [1.0, 1.0, 20.0, 20.0])])
    near = _texture(400)
    twin = near.copy()
    twin[0, 0] = (twin[0, 0].astype(int) + 1) % 256
    contents.near = (
        send(near, [(1, 0.255, [2.0, 2.0, 22.0, 22.0])]),
        send(twin, [(1, 0.255, [2.0, 2.0, 22.0, 22.0])]),
    )
    gone = _texture(500)
    contents.gone = send(gone, [(0, 0.25, [1.0, 1.0, 9.0, 9.0])])
    for i in range(2):
        contents.empty.add(send(_texture(600 + i), []))
    for i in range(4):
        send(_texture(700 + i), [(0, 0.25, [1.0, 1.0, 9.0, 9.0])], keep=False)
        contents.without_image += 1
    writer.close()
    assert writer.written == 15 + 6 + 1 + 3 + 2 + 1 + 2 + 4
    assert not sum(writer.images_lost.values())
    # Retention deleted this one's bytes (its record stays): select must skip it and go on.
    store.delete(image_key(cv2.imencode(".png", gone)[1].tobytes(), T0))
    return contents
