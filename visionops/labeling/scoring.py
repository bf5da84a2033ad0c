"""What makes an image worth labelling, and how a batch is spread over the window.

Three signals, each in [0, 1]:

- **uncertainty**: the least sure detection's closeness to the confidence threshold, 1 at the
  threshold and 0 at score 1 (`1 - |score - t| / (1 - t)`); an image without any detection
  scores `NO_DETECTION_UNCERTAINTY`, since a missed defect hides there;
- **class confusion**: two boxes of different classes on one region (IoU >= `CONFUSION_IOU`),
  the weaker score over the stronger (1: the model cannot tell the two classes apart);
- **drift** (with a drift result): how far the image sits from the reference on the columns that
  drifted, in the reference's standard deviations, capped at `DRIFT_FULL_SD`.

An image's usefulness is the larger of uncertainty and confusion (averaged with drift when a
drift result is given). Diversity then spreads the batch: a greedy farthest-point pick (k-center)
over the standardised feature columns, each step taking the image with the best mix of usefulness
and distance to the images already picked, and never one within `NEAR_DUPLICATE` of one of them.
Columns that drifted weigh `DRIFT_COLUMN_WEIGHT` times the others in that distance.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from visionops.data.features import CATEGORICAL_COLUMNS, FEATURE_COLUMNS
from visionops.errors import DataError

NUMERIC_COLUMNS: tuple[str, ...] = tuple(c for c in FEATURE_COLUMNS if c not in CATEGORICAL_COLUMNS)
NO_DETECTION_UNCERTAINTY = 0.5
CONFUSION_IOU = 0.5
DRIFT_FULL_SD = 3.0
DRIFT_COLUMN_WEIGHT = 4.0
USEFULNESS_SHARE = 0.5  # of a pick's value; the rest is its distance to the batch so far
NEAR_DUPLICATE = 0.05  # weighted RMS distance in standard deviations: the same scene again


def box_uncertainty(score: float, threshold: float) -> float:
    """1 for a score at the threshold, falling linearly to 0 at score 1 (and at score 0)."""
    if score >= threshold:
        return max(0.0, 1.0 - (score - threshold) / max(1.0 - threshold, 1e-9))
    return max(0.0, 1.0 - (threshold - score) / max(threshold, 1e-9))


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@dataclass(frozen=True)
class Confusion:
    """The most confused pair of boxes of an image: classes, scores, overlap, value."""

    value: float = 0.0
    classes: tuple[str, str] = ("", "")
    scores: tuple[float, float] = (0.0, 0.0)
    overlap: float = 0.0


def confusion(detections: Sequence[Mapping[str, Any]]) -> Confusion:
    """The strongest class confusion among an image's detections (records of the log)."""
    best = Confusion()
    for i, a in enumerate(detections):
        for b in detections[i + 1 :]:
            if a["class_id"] == b["class_id"]:
                continue
            overlap = iou(a["box"], b["box"])
            if overlap < CONFUSION_IOU:
                continue
            low, high = sorted((float(a["score"]), float(b["score"])))
            value = low / high if high > 0 else 0.0
            if value > best.value:
                best = Confusion(
                    value, (str(a["class_name"]), str(b["class_name"])),
                    (float(a["score"]), float(b["score"])), overlap,
                )  # fmt: skip
    return best


def uncertainties(scores: np.ndarray, owner: np.ndarray, rows: int, threshold: float) -> np.ndarray:
    """`box_uncertainty` of each image's least sure box (`owner`: the image of each box);
    NO_DETECTION_UNCERTAINTY for an image without boxes. Vectorised: one pass over the boxes."""
    above = 1.0 - (scores - threshold) / max(1.0 - threshold, 1e-9)
    below = 1.0 - (threshold - scores) / max(threshold, 1e-9)
    each = np.maximum(np.where(scores >= threshold, above, below), 0.0)
    out = np.full(rows, -np.inf)
    np.maximum.at(out, owner, each)
    return np.where(np.isfinite(out), out, NO_DETECTION_UNCERTAINTY)


def confusions(
    class_ids: np.ndarray, scores: np.ndarray, boxes: np.ndarray, owner: np.ndarray, rows: int
) -> np.ndarray:
    """`confusion(...).value` of every image at once: boxes are grouped by image (`owner` sorted),
    so the pairs of one image are the boxes k apart with the same owner, for k = 1, 2, ..."""
    out = np.zeros(rows)
    for k in range(1, int(np.bincount(owner).max()) if len(owner) else 0):
        i = np.arange(len(owner) - k)
        j = i + k
        pair = (owner[i] == owner[j]) & (class_ids[i] != class_ids[j])
        if not pair.any():
            continue
        i, j = i[pair], j[pair]
        a, b = boxes[i], boxes[j]
        width = np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0])
        height = np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1])
        inter = np.where((width > 0) & (height > 0), width * height, 0.0)
        union = (
            (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
            + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
            - inter
        )
        overlap = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        low, high = np.minimum(scores[i], scores[j]), np.maximum(scores[i], scores[j])
        value = np.divide(low, high, out=np.zeros_like(low), where=high > 0)
        near = overlap >= CONFUSION_IOU
        np.maximum.at(out, owner[i][near], value[near])
    return out


@dataclass
class DriftFocus:
    """The drifted columns of a drift result: their weight and the reference they drifted from."""

    weights: dict[str, float] = field(default_factory=dict)  # column -> effect / its threshold
    reference: dict[str, tuple[float, float]] = field(default_factory=dict)  # mean, std

    @property
    def columns(self) -> list[str]:
        return list(self.weights)

    def column_weights(self, columns: Sequence[str]) -> np.ndarray:
        """Distance weight per column: DRIFT_COLUMN_WEIGHT for a drifted one, else 1."""
        return np.array([DRIFT_COLUMN_WEIGHT if c in self.weights else 1.0 for c in columns])

    def distances(self, frame: Mapping[str, np.ndarray], rows: int) -> np.ndarray:
        """Per column, |value - reference mean| / reference std (rows x drifted columns)."""
        out = np.zeros((rows, len(self.weights)))
        for j, column in enumerate(self.weights):
            mean, std = self.reference[column]
            values = frame.get(column)
            if values is None:
                continue
            out[:, j] = np.nan_to_num(np.abs(values - mean) / std, nan=0.0)
        return out

    def scores(self, distances: np.ndarray) -> np.ndarray:
        """Drift score per row in [0, 1]: the effect-weighted mean of the capped distances."""
        if not self.weights:
            return np.zeros(len(distances))
        weights = np.array(list(self.weights.values()))
        capped = np.minimum(distances / DRIFT_FULL_SD, 1.0)
        return capped @ weights / weights.sum()


def read_drift_result(path: Path) -> DriftFocus:
    """The drifted numeric feature columns of a `visionops drift check` result (its JSON).

    DataError for a missing or unreadable file or one that is not a drift result.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise DataError(f"drift result not found: {path}") from error
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"cannot read drift result {path}: {error}") from error
    return drift_focus(data, str(path))


def drift_focus(data: Any, source: str = "the drift result") -> DriftFocus:
    """`read_drift_result` of a drift result already read (the drift check's JSON as a dict);
    `source` names it in errors."""
    path = source
    columns = data.get("columns") if isinstance(data, dict) else None
    if not isinstance(columns, list):
        raise DataError(f"{path} is not a drift result (`visionops drift check` JSON): no columns")
    focus = DriftFocus()
    for entry in columns:
        if not isinstance(entry, dict) or not entry.get("drifted"):
            continue
        name = str(entry.get("column"))
        reference = entry.get("reference") or {}
        try:
            mean, std = float(reference["mean"]), float(reference["std"])
        except (KeyError, TypeError, ValueError) as error:
            raise DataError(f"{path}: drifted column {name} has no reference mean/std") from error
        if name not in NUMERIC_COLUMNS or not (math.isfinite(mean) and std > 0):
            continue
        effect, threshold = entry.get("effect"), entry.get("effect_threshold")
        try:
            weight = float(effect) / float(threshold)
        except (TypeError, ValueError, ZeroDivisionError):
            weight = 1.0
        focus.weights[name] = weight if math.isfinite(weight) and weight > 0 else 1.0
        focus.reference[name] = (mean, std)
    return focus


def standardise(features: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Columns scaled to unit spread and weighted, so that Euclidean distance / sqrt(sum of the
    weights used) is a weighted RMS in standard deviations. Missing values sit at the mean;
    constant columns drop out."""
    mean = np.nanmean(features, axis=0) if len(features) else np.zeros(features.shape[1])
    std = np.nanstd(features, axis=0) if len(features) else np.zeros(features.shape[1])
    mean, std = np.nan_to_num(mean), np.nan_to_num(std)
    used = std > 1e-12
    scaled = np.where(used, (features - mean) / np.where(used, std, 1.0), 0.0)
    scaled = np.nan_to_num(scaled)
    total = float(weights[used].sum()) or 1.0
    return scaled * np.sqrt(weights / total)


@dataclass(frozen=True)
class Pick:
    """One greedy step: the row picked, its value, and its distance to the batch before it."""

    row: int
    value: float
    distance: float  # weighted RMS in standard deviations; inf for the first pick


class Greedy:
    """Rows in pick order (`propose`): each maximises USEFULNESS_SHARE * usefulness + the rest *
    its distance to the nearest row accepted so far (as a share of the largest such distance).
    `accept` a proposed row to count it in the batch; a row not accepted (its image was gone) is
    simply skipped. Rows within NEAR_DUPLICATE of an accepted row are never proposed. Ties go to
    the smaller `tiebreak`."""

    def __init__(self, points: np.ndarray, usefulness: np.ndarray, tiebreak: np.ndarray) -> None:
        rows = len(points)
        self.points, self.usefulness = points, usefulness
        self.nearest = np.full(rows, np.inf)
        self.open = np.ones(rows, bool)
        self.near_duplicates = 0
        order = np.lexsort((tiebreak, -usefulness))  # usefulness first, ties by tiebreak
        self.rank = np.empty(rows, np.int64)
        self.rank[order] = np.arange(rows)

    def propose(self) -> Pick | None:
        """The best open row (closed from now on), or None when none is left."""
        candidates = np.flatnonzero(self.open)
        if not len(candidates):
            return None
        nearest = self.nearest[candidates]
        finite = np.isfinite(nearest)
        if not finite.any():
            value = self.usefulness[candidates]
        else:
            spread = nearest[finite].max()
            share = np.minimum(nearest / spread, 1.0) if spread > 0 else np.ones(len(candidates))
            value = USEFULNESS_SHARE * self.usefulness[candidates] + (1 - USEFULNESS_SHARE) * share
        ties = np.flatnonzero(value >= value.max() - 1e-12)
        best = ties[np.argmin(self.rank[candidates[ties]])]
        row = int(candidates[best])
        self.open[row] = False
        return Pick(row, float(value[best]), float(self.nearest[row]))

    def accept(self, row: int) -> None:
        """Count `row` in the batch: distances shrink, its near-duplicates close."""
        distance = np.sqrt(((self.points - self.points[row]) ** 2).sum(axis=1))
        self.nearest = np.minimum(self.nearest, distance)
        near = self.open & (self.nearest < NEAR_DUPLICATE)
        self.near_duplicates += int(near.sum())
        self.open &= ~near
