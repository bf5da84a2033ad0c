"""Detection metrics in numpy, computed the way pycocotools' COCOeval computes them.

Matching, the 10 IoU thresholds, the 101 recall points, the precision envelope and the 100
detections per image and class are COCOeval's, so our mAP50-95 is the number any COCO tool gives
for the same `detections.json` (a test holds us to it). Precision, recall and the confusion matrix
are taken at the confidence threshold the predictor serves with, so they describe what users get.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from visionops.detections import Detections

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
MAX_DETS = 100
BACKGROUND = "background"


@dataclass(frozen=True)
class GroundTruth:
    """One image's boxes (x1, y1, x2, y2 in pixels) and class ids."""

    boxes: np.ndarray
    class_ids: np.ndarray


@dataclass(frozen=True)
class DetectionMetrics:
    """Headline numbers, per-class AP (None: no ground truth of that class) and the confusion."""

    map50: float
    map50_95: float
    precision: float
    recall: float
    ap50: dict[str, float | None]
    ap50_95: dict[str, float | None]
    instances: dict[str, int]
    confusion_labels: list[str]  # class names, then "background"
    confusion: list[list[int]]  # [true][predicted]
    # Per class with ground truth: COCO's interpolated precision at `RECALL_POINTS`, IoU 0.5 (its
    # mean is the class's AP50): the precision-recall curve the evaluation report draws.
    pr_curves: dict[str, list[float]] = field(default_factory=dict)

    def summary(self) -> dict[str, float]:
        return {
            "map50": self.map50,
            "map50_95": self.map50_95,
            "precision": self.precision,
            "recall": self.recall,
        }


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in `a` [N, 4] with every box in `b` [M, 4] (x1, y1, x2, y2): [N, M]."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    a = a.astype(np.float64)[:, None, :]
    b = b.astype(np.float64)[None, :, :]
    w = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    h = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = w * h
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / (area_a + area_b - inter)


def _match(ious: np.ndarray, threshold: float) -> np.ndarray:
    """COCOeval's greedy matching: each detection (best score first) takes the unmatched ground
    truth with the highest IoU at or above `threshold`. Returns the matched flag per detection."""
    matched_gt = np.zeros(ious.shape[1], bool)
    matched = np.zeros(ious.shape[0], bool)
    for d in range(ious.shape[0]):
        best, m = min(threshold, 1 - 1e-10), -1
        for g in range(ious.shape[1]):
            if matched_gt[g] or ious[d, g] < best:
                continue
            best, m = ious[d, g], g
        if m >= 0:
            matched[d] = matched_gt[m] = True
    return matched


def _average_precision(
    scores: np.ndarray, tp: np.ndarray, n_gt: int
) -> tuple[np.ndarray, np.ndarray]:
    """COCO AP per IoU threshold from concatenated detections: `tp` is [T, N].

    Also returns the interpolated precision at each of `RECALL_POINTS` per threshold ([T, 101]):
    AP is its mean."""
    order = np.argsort(-scores, kind="mergesort")
    tp = tp[:, order]
    tp_sum = np.cumsum(tp, axis=1, dtype=np.float64)
    fp_sum = np.cumsum(~tp, axis=1, dtype=np.float64)
    ap = np.zeros(len(tp))
    curves = np.zeros((len(tp), len(RECALL_POINTS)))
    for t in range(len(tp)):
        if not tp.shape[1]:
            continue
        recall = tp_sum[t] / n_gt
        precision = tp_sum[t] / (tp_sum[t] + fp_sum[t] + np.spacing(1))
        precision = np.maximum.accumulate(precision[::-1])[::-1]  # the envelope
        index = np.searchsorted(recall, RECALL_POINTS, side="left")
        q = np.zeros(len(RECALL_POINTS))
        valid = index < len(precision)
        q[valid] = precision[index[valid]]
        ap[t] = q.mean()
        curves[t] = q
    return ap, curves


def detection_metrics(
    ground_truth: Sequence[GroundTruth],
    detections: Sequence[Detections],
    names: Sequence[str],
    *,
    conf: float = 0.25,
    confusion_iou: float = 0.5,
) -> DetectionMetrics:
    """COCO mAP over all images, plus precision, recall and a confusion matrix at `conf`."""
    if len(ground_truth) != len(detections):
        raise ValueError(f"{len(ground_truth)} ground truths but {len(detections)} detections")
    nc = len(names)
    ap_all: list[np.ndarray] = []
    ap50: dict[str, float | None] = {}
    ap50_95: dict[str, float | None] = {}
    instances: dict[str, int] = {}
    precisions: list[float] = []
    recalls: list[float] = []
    pr_curves: dict[str, list[float]] = {}
    for k, name in enumerate(names):
        scores: list[np.ndarray] = []
        matches: list[np.ndarray] = []
        n_gt = 0
        for gt, det in zip(ground_truth, detections, strict=True):
            g = gt.boxes[gt.class_ids == k]
            keep = np.flatnonzero(det.class_ids == k)
            keep = keep[np.argsort(-det.scores[keep], kind="mergesort")][:MAX_DETS]
            n_gt += len(g)
            if not len(keep):
                continue
            ious = box_iou(det.boxes[keep], g)
            matches.append(np.stack([_match(ious, t) for t in IOU_THRESHOLDS]))
            scores.append(det.scores[keep].astype(np.float64))
        instances[name] = n_gt
        if n_gt == 0:  # COCOeval leaves such classes out of the mean
            ap50[name] = ap50_95[name] = None
            continue
        score = np.concatenate(scores) if scores else np.zeros(0)
        tp = (
            np.concatenate(matches, axis=1) if matches else np.zeros((len(IOU_THRESHOLDS), 0), bool)
        )
        ap, curves = _average_precision(score, tp, n_gt)
        ap_all.append(ap)
        pr_curves[name] = [float(v) for v in curves[0]]
        ap50[name], ap50_95[name] = float(ap[0]), float(ap.mean())
        served = score >= conf
        true_positives = int(tp[0][served].sum())
        precisions.append(true_positives / int(served.sum()) if served.any() else 0.0)
        recalls.append(true_positives / n_gt)
    stacked = np.array(ap_all) if ap_all else np.zeros((0, len(IOU_THRESHOLDS)))
    matrix = confusion_matrix(ground_truth, detections, nc, conf=conf, iou=confusion_iou)
    return DetectionMetrics(
        map50=float(stacked[:, 0].mean()) if len(stacked) else 0.0,
        map50_95=float(stacked.mean()) if len(stacked) else 0.0,
        precision=float(np.mean(precisions)) if precisions else 0.0,
        recall=float(np.mean(recalls)) if recalls else 0.0,
        ap50=ap50,
        ap50_95=ap50_95,
        instances=instances,
        confusion_labels=[*names, BACKGROUND],
        confusion=[[int(v) for v in row] for row in matrix],
        pr_curves=pr_curves,
    )


@dataclass(frozen=True)
class BoxPairing:
    """One image's ground truth paired with its served detections (score >= conf), as the
    confusion matrix counts them. Indices of detections are into `served`."""

    served: np.ndarray  # indices into the image's detections with score >= conf
    pairs: list[tuple[int, int]]  # (ground-truth index, served index), IoU >= iou
    missed: list[int]  # ground truth without a detection
    false_alarms: list[int]  # served detections without ground truth


def pair_boxes(gt: GroundTruth, det: Detections, *, conf: float, iou: float) -> BoxPairing:
    """Pair boxes one to one, highest IoU first, regardless of class; unpaired ones are left."""
    served = np.flatnonzero(det.scores >= conf)
    ious = box_iou(gt.boxes, det.boxes[served])
    candidates = np.argwhere(ious >= iou)
    order = np.argsort(-ious[candidates[:, 0], candidates[:, 1]], kind="mergesort")
    used_gt: set[int] = set()
    used_det: set[int] = set()
    pairs: list[tuple[int, int]] = []
    for g, d in candidates[order]:
        if g in used_gt or d in used_det:
            continue
        used_gt.add(int(g))
        used_det.add(int(d))
        pairs.append((int(g), int(d)))
    return BoxPairing(
        served=served,
        pairs=pairs,
        missed=sorted(set(range(len(gt.boxes))) - used_gt),
        false_alarms=sorted(set(range(len(served))) - used_det),
    )


def confusion_matrix(
    ground_truth: Sequence[GroundTruth],
    detections: Sequence[Detections],
    num_classes: int,
    *,
    conf: float,
    iou: float,
) -> np.ndarray:
    """[true][predicted] counts with a background row and column, at confidence `conf`.

    Detections and ground truth are paired by `pair_boxes`: a pair counts at (true class,
    predicted class), an unpaired box against background.
    """
    bg = num_classes
    matrix = np.zeros((num_classes + 1, num_classes + 1), np.int64)
    for gt, det in zip(ground_truth, detections, strict=True):
        pairing = pair_boxes(gt, det, conf=conf, iou=iou)
        classes = det.class_ids[pairing.served]
        for g, d in pairing.pairs:
            matrix[gt.class_ids[g], classes[d]] += 1
        for g in pairing.missed:
            matrix[gt.class_ids[g], bg] += 1
        for d in pairing.false_alarms:
            matrix[bg, classes[d]] += 1
    return matrix
