"""From the raw YOLOv8 output to `Detections`: best class, confidence filter, class-aware NMS.

The YOLOv8 detection head exported to ONNX gives, per image, `[4 + nc, anchors]`: box centre and
size in network-input pixels, then one sigmoid score per class (no objectness). The steps and their
order follow Ultralytics' `non_max_suppression` (strict `> conf`, boxes offset by class so one NMS
pass never suppresses across classes, at most `MAX_NMS` candidates, `max_det` kept).
"""

from __future__ import annotations

import numpy as np

from visionops.detections import Detections
from visionops.inference.letterbox import scale_boxes

MAX_WH = 7680  # per-class coordinate offset for class-aware NMS (Ultralytics' value)
MAX_NMS = 30000  # candidates kept for NMS, by score


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, max_keep: int) -> np.ndarray:
    """Greedy NMS on xyxy boxes; indices kept, best first. Stops once `max_keep` are kept."""
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1) * (y2 - y1)
    keep: list[int] = []
    while order.size and len(keep) < max_keep:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        inter_w = (np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest])).clip(0)
        inter_h = (np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest])).clip(0)
        inter = inter_w * inter_h
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = inter / (areas[best] + areas[rest] - inter)
        order = rest[~(iou > iou_threshold)]
    return np.asarray(keep, dtype=np.int64)


def detections_from_output(
    output: np.ndarray,
    *,
    input_shape: tuple[int, int],
    image_shape: tuple[int, int],
    conf: float,
    iou: float,
    max_det: int,
) -> Detections:
    """One image's head output `[4 + nc, anchors]` -> detections in original-image pixels."""
    class_scores = output[4:]
    scores = class_scores.max(axis=0)
    candidates = np.flatnonzero(scores > conf)
    if candidates.size == 0:
        return Detections.empty()
    if candidates.size > MAX_NMS:
        candidates = candidates[np.argsort(-scores[candidates], kind="stable")[:MAX_NMS]]
    scores = scores[candidates].astype(np.float32)
    class_ids = class_scores[:, candidates].argmax(axis=0).astype(np.int64)
    cx, cy, w, h = output[:4, candidates].astype(np.float32)
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    keep = nms(boxes + (class_ids * MAX_WH)[:, None], scores, iou, max_det)
    return Detections(
        boxes=scale_boxes(boxes[keep], input_shape, image_shape).astype(np.float32),
        scores=scores[keep],
        class_ids=class_ids[keep],
    )
