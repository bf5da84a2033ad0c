"""A tiny generated YOLO dataset and a model trained on it, for training/registry tests.

Training is the expensive part of those tests, so the session trains once (2 epochs at imgsz 64)
and watches MLflow while it does: at the end of every epoch it records what the tracking server
already holds, which shows that metrics are logged as epochs end, not replayed afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visionops.config import Settings
from visionops.training.train import TrainResult

PRODUCTS = ("Cable", "Screw")
IMGSZ = 64


def tiny_dataset(root: Path) -> Path:
    """Synthesize 2 products (8 train, 4 val images each) and convert them; returns data.yaml."""
    from visionops.data.convert import convert
    from visionops.data.synth import synthesize

    synthesize(
        root / "vision", products=list(PRODUCTS), n_train=8, n_val=4, n_inference=2,
        imgsz=96, seed=3,
    )  # fmt: skip
    return convert(root / "vision", root / "yolo").data_yaml


@dataclass
class EpochObservation:
    """What MLflow held when an epoch's progress was reported."""

    epoch: int
    run_status: str
    logged_steps: list[int]


@dataclass
class ObservedTraining:
    result: TrainResult
    settings: Settings
    observations: list[EpochObservation] = field(default_factory=list)


def train_observed(data_yaml: Path, settings: Settings, *, epochs: int = 2) -> ObservedTraining:
    """Train with `settings`, recording MLflow's view of the running run after each epoch."""
    from visionops.tracking import connect
    from visionops.training.train import train

    tracking = connect(settings)
    observations: list[EpochObservation] = []

    def watch(done: int, total: int) -> None:
        if done == 0:
            return
        (run,) = tracking.client.search_runs(
            [tracking.experiment_id], "attributes.status = 'RUNNING'", max_results=1
        )
        history = tracking.client.get_metric_history(run.info.run_id, "train/box_loss")
        observations.append(
            EpochObservation(done, run.info.status, sorted(m.step for m in history))
        )

    result = train(
        data_yaml, epochs=epochs, imgsz=IMGSZ, batch=8, device="cpu", seed=0,
        progress=watch, settings=settings,
    )  # fmt: skip
    return ObservedTraining(result, settings, observations)


def cocoeval_map(data_yaml: Path, model_dir: Path, split: str = "val") -> float:
    """mAP50-95 of `model_dir`'s fp32 model on `split`, see `cocoeval_scores`."""
    from visionops.inference import Detector

    return cocoeval_scores(data_yaml, Detector.from_model_dir(model_dir), split)[0]


def cocoeval_scores(data_yaml: Path, detector: Any, split: str = "val") -> tuple[float, float]:
    """(mAP50-95, mAP50) of a serving `Detector` on `split` as pycocotools' COCOeval scores
    them: ground truth read from the label files here, detections at the evaluation's settings
    (confidence 0.001, the served IoU and max_det), boxes and scores rounded as detections.json
    holds them. Independent of `visionops.training.metrics`."""
    import contextlib
    import io

    import numpy as np
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from visionops.config import get_settings
    from visionops.data.features import read_image
    from visionops.training.dataset import label_path, load_data_yaml

    settings = get_settings()
    dataset = load_data_yaml(data_yaml)
    images, annotations, results = [], [], []
    for image_id, path in enumerate(dataset.images(split), 1):
        image = read_image(path)
        height, width = image.shape[:2]
        images.append({"id": image_id, "width": width, "height": height})
        label = label_path(path)
        for line in label.read_text().splitlines() if label.exists() else []:
            cls, cx, cy, w, h = (float(v) for v in line.split()[:5])
            corners = [(cx - w / 2) * width, (cy - h / 2) * height]
            corners += [(cx + w / 2) * width, (cy + h / 2) * height]
            x1, y1, x2, y2 = np.round(np.array(corners, np.float64), 2).tolist()
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "category_id": int(cls) + 1,
                 "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                 "iscrowd": 0}
            )  # fmt: skip
        (found,) = detector.detect(
            [image], conf=0.001, iou=settings.serve_iou, max_det=settings.serve_max_det
        )
        boxes = np.round(found.boxes.astype(np.float64), 2).tolist()
        scores = np.round(found.scores.astype(np.float64), 5).tolist()
        for (x1, y1, x2, y2), score, cls in zip(boxes, scores, found.class_ids, strict=True):
            results.append(
                {"image_id": image_id, "category_id": int(cls) + 1,
                 "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score}
            )  # fmt: skip
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(dataset.names)]
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO()
        truth.dataset = {"images": images, "annotations": annotations, "categories": categories}
        truth.createIndex()
        if not results:
            return 0.0, 0.0
        evaluation = COCOeval(truth, truth.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return float(evaluation.stats[0]), float(evaluation.stats[1])


def labeled_by(model_dir: Path, data_yaml: Path, root: Path) -> Path:
    """The val images of `data_yaml`, labeled with every detection `model_dir` makes on them at
    the evaluation's settings.

    On these labels that model is perfect: each of its detections is a labeled box and each label
    one of its detections, so COCOeval gives it mAP50-95 1.0, the most any model can score: no
    other model beats it there. Returns the new data.yaml (train and val: those images)."""
    import yaml

    from visionops.config import get_settings
    from visionops.data.features import read_image
    from visionops.inference import Detector
    from visionops.training.dataset import label_path, load_data_yaml

    settings = get_settings()
    dataset = load_data_yaml(data_yaml)
    detector = Detector.from_model_dir(model_dir)
    for path in dataset.images("val"):
        image = read_image(path)
        height, width = image.shape[:2]
        (found,) = detector.detect(
            [image], conf=0.001, iou=settings.serve_iou, max_det=settings.serve_max_det
        )
        target = root / "images" / "val" / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(path)
        rows = [
            f"{cls} {(x1 + x2) / 2 / width!r} {(y1 + y2) / 2 / height!r} "
            f"{(x2 - x1) / width!r} {(y2 - y1) / height!r}"
            for (x1, y1, x2, y2), cls in zip(
                found.boxes.astype(float).tolist(), found.class_ids, strict=True
            )
        ]
        label = label_path(target)
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("".join(f"{row}\n" for row in rows))
    out = root / "data.yaml"
    out.write_text(
        yaml.safe_dump(
            {"path": str(root), "train": "images/val", "val": "images/val",
             "names": dict(enumerate(dataset.names))}
        )
    )  # fmt: skip
    return out
