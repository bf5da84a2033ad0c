"""A model that actually detects, for tests that compare detections (engines, INT8, serving).

An untrained YOLOv8n finds nothing at confidence 0.25, and a 2-epoch training barely more. Here a
YOLOv8n is trained from scratch with `visionops.training.train` (so the export step, INT8
quantisation and the accuracy guard all run) on a generated set of two kinds of bold shapes at
64 px: about 20 s of CPU for val mAP50 around 0.6-0.8, and boxes well above 0.25.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from visionops.config import Settings
from visionops.detections import Detections
from visionops.training.train import TrainResult, train

IMGSZ = 64
NAMES = ("Part/square", "Part/disc")
EPOCHS = 30
TRAIN_IMAGES, VAL_IMAGES = 32, 16


def shapes_dataset(root: Path, *, train: int = TRAIN_IMAGES, val: int = VAL_IMAGES) -> Path:
    """White squares and red discs on a grey noisy background, 1-2 per image; data.yaml."""
    for split, count, seed in (("train", train, 0), ("val", val, 1)):
        rng = np.random.default_rng(seed)
        images, labels = root / "images" / split, root / "labels" / split
        images.mkdir(parents=True, exist_ok=True)
        labels.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            image = rng.integers(60, 110, (IMGSZ, IMGSZ, 3), dtype=np.uint8)
            rows = []
            for _ in range(int(rng.integers(1, 3))):
                cls = int(rng.integers(0, len(NAMES)))
                w, h = (int(v) for v in rng.integers(IMGSZ // 5, IMGSZ // 2, 2))
                x, y = int(rng.integers(0, IMGSZ - w)), int(rng.integers(0, IMGSZ - h))
                if cls == 0:
                    cv2.rectangle(image, (x, y), (x + w - 1, y + h - 1), (230, 230, 230), -1)
                else:
                    center, axes = (x + w // 2, y + h // 2), (w // 2, h // 2)
                    cv2.ellipse(image, center, axes, 0, 0, 360, (20, 20, 200), -1)
                rows.append(
                    f"{cls} {(x + w / 2) / IMGSZ:.6f} {(y + h / 2) / IMGSZ:.6f} "
                    f"{w / IMGSZ:.6f} {h / IMGSZ:.6f}"
                )
            cv2.imwrite(str(images / f"{index:03d}.jpg"), image)
            (labels / f"{index:03d}.txt").write_text("\n".join(rows) + "\n")
    names = "".join(f"  {i}: {name}\n" for i, name in enumerate(NAMES))
    data_yaml = root / "data.yaml"
    data_yaml.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n{names}")
    return data_yaml


def train_detector(data_yaml: Path, settings: Settings) -> TrainResult:
    """YOLOv8n from scratch on `shapes_dataset`: one optimizer step per batch, no warmup, no
    mosaic (which only makes 64-px shapes harder to learn in a few epochs)."""
    return train(
        data_yaml, epochs=EPOCHS, imgsz=IMGSZ, batch=8, device="cpu", seed=0,
        overrides={"warmup_epochs": 0, "nbs": 8, "mosaic": 0.0}, settings=settings,
    )  # fmt: skip


def matched_ious(reference: Detections, other: Detections) -> tuple[list[float], int]:
    """Pair each reference box, best score first, with the same-class box of `other` it overlaps
    most (IoU > 0.5, each box used once). Returns the pairs' IoUs and how many boxes of either
    side stayed unpaired."""
    from visionops.training.metrics import box_iou

    ious = box_iou(reference.boxes, other.boxes)
    same_class = reference.class_ids[:, None] == other.class_ids[None, :]
    ious = np.where(same_class, ious, 0.0)
    taken: set[int] = set()
    pairs: list[float] = []
    for row in np.argsort(-reference.scores, kind="stable"):
        candidates = [(ious[row, j], j) for j in range(len(other)) if j not in taken]
        best = max(candidates, default=(0.0, -1))
        if best[0] > 0.5:
            taken.add(best[1])
            pairs.append(float(best[0]))
    return pairs, len(reference) + len(other) - 2 * len(pairs)
