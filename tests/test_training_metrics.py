"""Our detection metrics against pycocotools' COCOeval, without servers."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from visionops.detections import Detections
from visionops.training.metrics import GroundTruth, detection_metrics

NAMES = ["Cable/break", "Cable/crack", "Screw/defect", "Wood/knot"]  # no Wood/knot ground truth


def _scene(seed: int = 1, images: int = 40) -> tuple[list[GroundTruth], list[Detections]]:
    """Ground truth and noisy detections: shifted boxes, wrong classes, false positives, misses."""
    rng = np.random.default_rng(seed)
    truths, found = [], []
    for _ in range(images):
        n = int(rng.integers(0, 5))
        xy = rng.uniform(0, 200, (n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(5, 60, (n, 2))], axis=1)
        classes = rng.integers(0, 3, n)
        truths.append(GroundTruth(boxes, classes))
        keep = rng.uniform(size=n) < 0.85  # some objects are missed
        shifted = boxes[keep] + rng.normal(0, 3, (int(keep.sum()), 4)).clip(-2.5, 2.5)
        wrong = np.where(rng.uniform(size=n) < 0.8, classes, rng.integers(0, 4, n))[keep]
        m = int(rng.integers(0, 6))
        fxy = rng.uniform(0, 200, (m, 2))
        spurious = np.concatenate([fxy, fxy + rng.uniform(5, 60, (m, 2))], axis=1)
        all_boxes = np.concatenate([shifted, spurious]).round(2)
        all_classes = np.concatenate([wrong, rng.integers(0, 4, m)]).astype(np.int64)
        scores = rng.uniform(0.001, 1, len(all_boxes)).round(3)  # rounding makes ties
        order = np.argsort(-scores, kind="mergesort")
        found.append(Detections(all_boxes[order], scores[order], all_classes[order]))
    return truths, found


def _cocoeval(truths: list[GroundTruth], found: list[Detections]) -> np.ndarray:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from visionops.training.evaluate import coco_results

    images, annotations = [], []
    for index, truth in enumerate(truths, 1):
        images.append({"id": index, "width": 300, "height": 300, "file_name": f"{index}.jpg"})
        for box, cls in zip(truth.boxes, truth.class_ids, strict=True):
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append(
                {
                    "id": len(annotations) + 1, "image_id": index, "category_id": int(cls) + 1,
                    "bbox": [box[0], box[1], w, h], "area": w * h, "iscrowd": 0,
                }
            )  # fmt: skip
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(NAMES)]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": annotations, "categories": categories}
        gt.createIndex()
        evaluation = COCOeval(gt, gt.loadRes(coco_results(found)), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation.stats


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_map_matches_cocoeval(seed: int):
    truths, found = _scene(seed)
    ours = detection_metrics(truths, found, NAMES)
    stats = _cocoeval(truths, found)
    assert 0.05 < stats[0] < 0.95  # a non-trivial score, so agreement means something
    assert ours.map50_95 == pytest.approx(stats[0], abs=1e-9)
    assert ours.map50 == pytest.approx(stats[1], abs=1e-9)
    assert ours.ap50_95["Wood/knot"] is None  # no ground truth: left out, as COCOeval does
    assert ours.instances["Wood/knot"] == 0


def test_perfect_detections_score_one():
    truths, _ = _scene(5)
    perfect = [
        Detections(t.boxes, np.linspace(0.99, 0.5, len(t.boxes)), t.class_ids) for t in truths
    ]
    m = detection_metrics(truths, perfect, NAMES)
    assert (m.map50, m.map50_95, m.precision, m.recall) == (1.0, 1.0, 1.0, 1.0)
    matrix = np.array(m.confusion)
    assert matrix.trace() == sum(len(t.boxes) for t in truths)
    assert matrix.sum() == matrix.trace()


def test_confusion_matrix_and_served_precision_recall():
    truth = GroundTruth(
        np.array([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]], float), np.array([0, 1, 2])
    )
    found = Detections(
        np.array([[0, 0, 10, 10], [20, 20, 30, 30], [80, 80, 90, 90], [50, 50, 60, 60]], float),
        np.array([0.9, 0.8, 0.7, 0.1]),  # the last one is below the served threshold
        np.array([0, 2, 1, 2]),
    )
    m = detection_metrics([truth], [found], NAMES, conf=0.25)
    matrix = np.array(m.confusion)  # [true][predicted], background last
    assert m.confusion_labels[-1] == "background"
    assert matrix[0, 0] == 1  # right class
    assert matrix[1, 2] == 1  # Cable/crack detected as Screw/defect
    assert matrix[2, 4] == 1  # Screw/defect missed at conf 0.25
    assert matrix[4, 1] == 1  # a false Cable/crack on background
    assert matrix.sum() == 4
    # Per class at conf 0.25: break 1/1 and 1/1; crack 0/1 and 0/1; defect 0/1 (one wrong box)
    assert m.precision == pytest.approx((1 + 0 + 0) / 3)
    assert m.recall == pytest.approx((1 + 0 + 0) / 3)


def _crowded_scene() -> tuple[list[GroundTruth], list[Detections]]:
    """One image, one class: three objects and 120 detections, best score first. The objects are
    found at ranks 1, 100 and 101; every other detection is far from any object."""
    objects = np.array([[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]], float)
    far = np.array([[100 + 3 * i, 100, 110 + 3 * i, 110] for i in range(120)], float)
    boxes = far.copy()
    boxes[[0, 99, 100]] = objects
    scores = np.linspace(0.99, 0.5, 120).round(5)
    truth = GroundTruth(objects, np.zeros(3, np.int64))
    return [truth], [Detections(boxes, scores, np.zeros(120, np.int64))]


def test_only_the_best_100_detections_per_image_and_class_count():
    """README: mAP as COCOeval computes it, 100 detections per image and class. With the cap the
    objects found at ranks 1 and 100 count and the one at rank 101 does not: precision 1 up to
    recall 1/3 (34 of the 101 recall points), 2/100 up to recall 2/3 (33 points), then nothing."""
    truths, found = _crowded_scene()
    by_hand = (34 * 1.0 + 33 * 2 / 100) / 101
    ours = detection_metrics(truths, found, NAMES)
    stats = _cocoeval(truths, found)
    assert stats[0] == pytest.approx(by_hand, abs=1e-12)
    assert ours.map50_95 == pytest.approx(by_hand, abs=1e-12)
    assert ours.map50 == pytest.approx(stats[1], abs=1e-12)
