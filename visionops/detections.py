"""Detections for one image: what the engine returns, evaluation scores and the log records."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Detections:
    """Boxes in original-image pixels (x1, y1, x2, y2), scores and class ids, sorted by score."""

    boxes: np.ndarray  # float32 [N, 4]
    scores: np.ndarray  # float32 [N]
    class_ids: np.ndarray  # int64 [N]

    def __post_init__(self) -> None:
        n = len(self.scores)
        if self.boxes.shape != (n, 4) or self.class_ids.shape != (n,):
            raise ValueError(
                f"inconsistent detections: boxes {self.boxes.shape}, scores {self.scores.shape}, "
                f"class_ids {self.class_ids.shape}"
            )

    @classmethod
    def empty(cls) -> Detections:
        return cls(
            np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.int64)
        )

    def __len__(self) -> int:
        return len(self.scores)

    def to_records(self, names: Sequence[str]) -> list[dict[str, object]]:
        """One JSON-ready dict per detection: box, class id, class name, score."""
        return [
            {
                "box": [round(float(v), 2) for v in box],
                "class_id": int(cid),
                "class_name": names[int(cid)] if 0 <= int(cid) < len(names) else str(int(cid)),
                "score": round(float(score), 5),
            }
            for box, score, cid in zip(self.boxes, self.scores, self.class_ids, strict=True)
        ]
