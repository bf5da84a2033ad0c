"""Evaluate a model directory the way it is served: its ONNX file through the serving detector.

Images go through `visionops.inference.Detector` (the predictor's letterbox, ONNX Runtime and NMS),
so the numbers describe what users get. Outputs, in one folder and in the MLflow run:

    ground_truth.json           COCO ground truth of the split
    detections.json             COCO results (any COCO tool can re-score them)
    metrics.json                mAP50, mAP50-95, precision, recall, per-class AP, confusion matrix
    report.md                   the same as a Markdown table
    report.html                 the page a person looks at: precision-recall curves, confusion
                                heatmap, per-product rows, the worst images with boxes drawn
    reference_features.parquet  one feature row per image (monitoring's features): the drift
                                reference of this model
    reference_images/           thumbnails of six of its images: what the drift page shows of it

`visionops.training.comparison` scores two models this way on the same split.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from visionops.config import Settings, get_settings
from visionops.data.features import feature_row, read_image
from visionops.data.files import atomic_write_text
from visionops.data.tables import write_feature_table
from visionops.data.thumbnails import write_thumbnails
from visionops.detections import Detections
from visionops.errors import DataError
from visionops.inference import Detector
from visionops.models.artifact import read_metadata
from visionops.models.sources import (
    REGISTRY_SCHEME,
    RUNS_SCHEME,
    ResolvedModel,
    parse_model_uri,
    resolve_model,
)
from visionops.progress import ProgressCallback, no_progress
from visionops.tracking import TAG_PREFIX, connect, log_metrics, mlflow_errors
from visionops.training.dataset import LabeledImage, YoloDataset, load_data_yaml
from visionops.training.evaluation_report import ReportSubject, report_html
from visionops.training.evaluation_scores import (
    ProductScore,
    ScoredImage,
    image_product,
    product_scores,
)
from visionops.training.metrics import DetectionMetrics, GroundTruth, detection_metrics

if TYPE_CHECKING:
    from mlflow.entities import Run

log = logging.getLogger(__name__)

EVAL_CONF = 0.001  # keep (almost) every box: mAP integrates over all confidences
BATCH = 16
EVALUATION_ARTIFACT_DIR = "evaluation"
GROUND_TRUTH_JSON = "ground_truth.json"
DETECTIONS_JSON = "detections.json"
METRICS_JSON = "metrics.json"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
REFERENCE_FEATURES = "reference_features.parquet"
REFERENCE_IMAGES = "reference_images"  # thumbnails of a few evaluation images, for drift pages
FILE_COLUMN = "file_name"
EVAL_METRIC_PREFIX = "eval."
TAG_EVAL_HASH = f"{TAG_PREFIX}eval.data_hash"
TAG_EVAL_DATA = f"{TAG_PREFIX}eval.data_yaml"
TAG_EVAL_SPLIT = f"{TAG_PREFIX}eval.split"
HEADLINE_METRICS = ("map50", "map50_95", "precision", "recall")
PER_CLASS_SECTION = f"{EVAL_METRIC_PREFIX}per_class/"


def per_class_metric(kind: str, class_name: str) -> str:
    """The MLflow metric of one class's `kind` (ap50, ap50_95): `eval.per_class/ap50.Cable.0`.

    One `/` only: the MLflow UI groups charts by the part before it, so every class lands in one
    "eval.per_class" section (class names such as `Cable/0` would otherwise open a section each).
    Runs logged before this carry `eval.ap50/<class>` (`legacy_per_class_metric`).
    """
    return f"{PER_CLASS_SECTION}{kind}.{class_name.replace('/', '.')}"


def legacy_per_class_metric(kind: str, class_name: str) -> str:
    """The name `per_class_metric` had before (`eval.ap50/Cable/0`), still read."""
    return f"{EVAL_METRIC_PREFIX}{kind}/{class_name}"


@dataclass(frozen=True)
class Evaluation:
    """Headline metrics of one model on one evaluation split (identified by its hash): what the
    promotion gate compares."""

    data_hash: str
    metrics: dict[str, float]
    data_yaml: str | None = None
    split: str = "val"


def logged_evaluation(run: Run) -> Evaluation | None:
    """The evaluation `evaluate` logged to `run` (its `eval.*` metrics and tags), if any."""
    tags = run.data.tags
    data_hash = tags.get(TAG_EVAL_HASH)
    metrics = {
        key: run.data.metrics[f"{EVAL_METRIC_PREFIX}{key}"]
        for key in HEADLINE_METRICS
        if f"{EVAL_METRIC_PREFIX}{key}" in run.data.metrics
    }
    if not data_hash or "map50_95" not in metrics:
        return None
    return Evaluation(data_hash, metrics, tags.get(TAG_EVAL_DATA), tags.get(TAG_EVAL_SPLIT, "val"))


@dataclass(frozen=True)
class EvaluationResult:
    """What `evaluate` measured and where it wrote it."""

    model_dir: Path
    data_yaml: Path
    split: str
    data_hash: str
    images: int
    metrics: DetectionMetrics
    conf: float
    out_dir: Path
    run_id: str | None = None
    files: dict[str, Path] = field(default_factory=dict)
    model: str = ""  # what the reports call it (`report_label`): `NAME vN`, or a candidate
    products: list[ProductScore] = field(default_factory=list)

    def subject(self) -> ReportSubject:
        """This evaluation as the HTML report shows it."""
        facts = [
            ("model", self.model or str(self.model_dir)),
            ("model files", str(self.model_dir)),
            ("MLflow run", self.run_id or "-"),
            ("data", str(self.data_yaml)),
            ("split", f"{self.split} ({self.images} images)"),
            ("data hash", self.data_hash),
            ("served confidence", f"{self.conf:g}"),
        ]
        return ReportSubject(
            self.model or str(self.model_dir), facts, self.metrics, self.conf, self.products
        )

    def to_dict(self) -> dict[str, Any]:
        m = self.metrics
        return {
            "model_dir": str(self.model_dir),
            "data_yaml": str(self.data_yaml),
            "split": self.split,
            "data_hash": self.data_hash,
            "images": self.images,
            "conf": self.conf,
            "run_id": self.run_id,
            **m.summary(),
            "per_class": {
                name: {"ap50": m.ap50[name], "ap50_95": m.ap50_95[name], "instances": n}
                for name, n in m.instances.items()
            },
            "confusion_matrix": {"labels": m.confusion_labels, "matrix": m.confusion},
            "per_product": {p.product: p.to_dict() for p in self.products},
        }

    def markdown(self) -> str:
        """The metrics as Markdown: headline numbers, then one row per class."""
        m = self.metrics
        lines = [
            f"## Evaluation of {self.model or self.model_dir} on `{self.split}` ({self.images} "
            f"images, data {self.data_hash[:12]})",
            "",
            "| mAP50 | mAP50-95 | precision | recall |",
            "| ---: | ---: | ---: | ---: |",
            f"| {m.map50:.4f} | {m.map50_95:.4f} | {m.precision:.4f} | {m.recall:.4f} |",
            "",
            f"Precision and recall at confidence {self.conf:g} (what the predictor serves).",
            "",
            "| class | instances | AP50 | AP50-95 |",
            "| --- | ---: | ---: | ---: |",
        ]
        for name, n in m.instances.items():
            ap50, ap = m.ap50[name], m.ap50_95[name]
            shown = ("-", "-") if ap50 is None or ap is None else (f"{ap50:.4f}", f"{ap:.4f}")
            lines.append(f"| {name} | {n} | {shown[0]} | {shown[1]} |")
        if self.products:
            lines += [
                "",
                "| product | images | mAP50 | mAP50-95 | missed | false alarms | wrong class |",
                "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
            ]
            lines += [
                f"| {p.product} | {p.images} | {p.metrics.map50:.4f} | {p.metrics.map50_95:.4f} "
                f"| {p.missed} | {p.false_alarms} | {p.wrong_class} |"
                for p in self.products
            ]
        return "\n".join(lines) + "\n"


def evaluate(
    model: str | Path,
    data_yaml: Path,
    *,
    split: str = "val",
    out_dir: Path | None = None,
    run_id: str | None = None,
    log_run: bool = True,
    progress: ProgressCallback = no_progress,
    settings: Settings | None = None,
) -> EvaluationResult:
    """Score `model` on `split` of `data_yaml` through the serving detector.

    Logs to MLflow run `run_id`, or to the run that trained the model (its metadata), unless
    `log_run` is False. Raises DataError (data, or classes that differ from the model's),
    ModelNotFound, RegistryError/StorageError (MLflow or S3 unreachable).
    """
    settings = settings or get_settings()
    dataset = load_data_yaml(data_yaml)
    labeled = dataset.labeled(split)
    resolved = resolve_model(model, settings)
    model_dir = resolved.path
    metadata = read_metadata(model_dir)
    if metadata.names != dataset.names:
        raise DataError(
            f"the model's {len(metadata.names)} classes differ from the {len(dataset.names)} of "
            f"{dataset.data_yaml}; evaluate on data with the classes the model was trained on"
        )
    data_hash = dataset.split_hash(split)
    run_id = run_id or (metadata.run_id if log_run else None)
    out_dir = Path(out_dir or _default_out_dir(settings, model_dir, run_id, split, data_hash))
    out_dir.mkdir(parents=True, exist_ok=True)

    detector = Detector.from_model_dir(model_dir, batch_size=4)
    conf = settings.serve_conf
    truths, detections, rows, sizes = _run_images(
        detector, labeled, conf=conf, settings=settings, progress=progress
    )
    metrics = detection_metrics(truths, detections, dataset.names, conf=conf)
    scored = [
        ScoredImage(
            item.path, item.relative, image_product(item.relative, t, dataset.names,
                                                    dataset.products), t, d,
        )
        for item, t, d in zip(labeled, truths, detections, strict=True)
    ]  # fmt: skip
    result = EvaluationResult(
        model_dir=model_dir,
        data_yaml=dataset.data_yaml,
        split=split,
        data_hash=data_hash,
        images=len(labeled),
        metrics=metrics,
        conf=conf,
        out_dir=out_dir,
        run_id=run_id,
        model=report_label(
            str(model), resolved, metadata.run_id or run_id, settings, look_up=log_run
        ),
        products=product_scores(scored, dataset.names, conf),
    )
    files = _write_outputs(result, dataset, labeled, scored, sizes, rows)
    result = EvaluationResult(**{**result.__dict__, "files": files})
    if run_id and log_run:
        _log_to_run(result, settings)
    log.info(
        "%s on %s/%s: mAP50 %.4f, mAP50-95 %.4f, precision %.4f, recall %.4f",
        model_dir, dataset.data_yaml, split,
        metrics.map50, metrics.map50_95, metrics.precision, metrics.recall,
    )  # fmt: skip
    return result


def score_detector(
    detector: Any,
    dataset: YoloDataset,
    split: str,
    *,
    settings: Settings,
    progress: ProgressCallback = no_progress,
) -> DetectionMetrics:
    """The metrics `evaluate` reports for a loaded `Detector` on `split`, without writing files.

    The INT8 accuracy guard (`visionops.training.quantize`) scores each model variant with it.
    """
    truths, detections, _, _ = _run_images(
        detector, dataset.labeled(split), conf=settings.serve_conf, settings=settings,
        progress=progress,
    )  # fmt: skip
    return detection_metrics(truths, detections, dataset.names, conf=settings.serve_conf)


def report_label(
    model: str, resolved: ResolvedModel, run_id: str | None, settings: Settings, *, look_up: bool
) -> str:
    """How every report names the model it is about: `NAME vN` for a registered version (`NAME
    vN (champion)` when asked for by alias), else `unregistered candidate (run ID)`. A run or a
    directory is looked up in the registry by its run when MLflow is in use anyway (`look_up`,
    or a runs:/ URI): a candidate evaluated before registration is not registered yet."""
    if model.startswith(REGISTRY_SCHEME):
        uri = parse_model_uri(model)
        return f"{uri.name} v{resolved.version}" + (f" ({uri.alias})" if uri.alias else "")
    if run_id and (look_up or model.startswith(RUNS_SCHEME)):
        with mlflow_errors(f"look up the registered versions of run {run_id}", settings):
            found = connect(settings).client.search_model_versions(f"run_id = '{run_id}'")
        if found:
            found = sorted(found, key=lambda mv: (mv.name, int(mv.version)))
            return ", ".join(f"{mv.name} v{mv.version}" for mv in found)
    return f"unregistered candidate (run {run_id})" if run_id else (
        f"unregistered candidate ({resolved.path})"
    )  # fmt: skip


def _default_out_dir(
    settings: Settings, model_dir: Path, run_id: str | None, split: str, data_hash: str
) -> Path:
    owner = run_id or model_dir.name
    return settings.data_dir / "evaluations" / owner / f"{split}-{data_hash[:12]}"


def _rounded(detections: Detections) -> Detections:
    """Detections as written to detections.json, so our metrics score exactly those numbers."""
    return Detections(
        np.round(detections.boxes.astype(np.float64), 2),
        np.round(detections.scores.astype(np.float64), 5),
        detections.class_ids,
    )


def _run_images(
    detector: Any,
    labeled: list[LabeledImage],
    *,
    conf: float,
    settings: Settings,
    progress: ProgressCallback,
) -> tuple[list[GroundTruth], list[Detections], list[dict[str, object]], list[tuple[int, int]]]:
    """Detections, ground truth in pixels, feature rows and (width, height) per image."""
    truths: list[GroundTruth] = []
    detections: list[Detections] = []
    rows: list[dict[str, object]] = []
    sizes: list[tuple[int, int]] = []
    total = len(labeled)
    progress(0, total)
    for start in range(0, total, BATCH):
        chunk = labeled[start : start + BATCH]
        try:
            images = [read_image(item.path) for item in chunk]
        except ValueError as error:  # InvalidImage
            raise DataError(str(error)) from error
        found = detector.detect(
            images, conf=EVAL_CONF, iou=settings.serve_iou, max_det=settings.serve_max_det
        )
        for item, image, det in zip(chunk, images, found, strict=True):
            height, width = image.shape[:2]
            boxes = np.round(item.pixel_boxes(width, height), 2)
            truths.append(GroundTruth(boxes, item.class_ids))
            detections.append(_rounded(det))
            served = det.scores >= conf
            kept = Detections(det.boxes[served], det.scores[served], det.class_ids[served])
            rows.append(
                {FILE_COLUMN: item.relative, **feature_row(image, kept, len(detector.names))}
            )
            sizes.append((width, height))
        progress(min(start + BATCH, total), total)
    return truths, detections, rows, sizes


def coco_ground_truth(
    names: list[str], labeled: list[LabeledImage], truths: list[GroundTruth], sizes: list
) -> dict[str, Any]:
    """COCO ground truth: image ids 1..N in split order, category id = class id + 1."""
    images, annotations = [], []
    for index, (item, truth, (width, height)) in enumerate(
        zip(labeled, truths, sizes, strict=True), 1
    ):
        images.append({"id": index, "file_name": item.relative, "width": width, "height": height})
        for box, cls in zip(truth.boxes, truth.class_ids, strict=True):
            w, h = float(box[2] - box[0]), float(box[3] - box[1])
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": index,
                    "category_id": int(cls) + 1,
                    "bbox": [float(box[0]), float(box[1]), w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    categories = [
        {"id": i + 1, "name": name, "supercategory": name.split("/", 1)[0]}
        for i, name in enumerate(names)
    ]
    return {"images": images, "annotations": annotations, "categories": categories}


def coco_results(detections: list[Detections]) -> list[dict[str, Any]]:
    """COCO results format: one entry per box, image ids as in `coco_ground_truth`."""
    results = []
    for index, det in enumerate(detections, 1):
        for box, score, cls in zip(det.boxes, det.scores, det.class_ids, strict=True):
            results.append(
                {
                    "image_id": index,
                    "category_id": int(cls) + 1,
                    "bbox": [
                        float(box[0]),
                        float(box[1]),
                        float(box[2] - box[0]),
                        float(box[3] - box[1]),
                    ],
                    "score": float(score),
                }
            )
    return results


def _write_outputs(
    result: EvaluationResult,
    dataset: YoloDataset,
    labeled: list[LabeledImage],
    scored: list[ScoredImage],
    sizes: list[tuple[int, int]],
    rows: list[dict[str, object]],
) -> dict[str, Path]:
    import pandas as pd  # heavy (about a second to import): only where the table is built

    out = result.out_dir
    files = {
        "ground_truth": out / GROUND_TRUTH_JSON,
        "detections": out / DETECTIONS_JSON,
        "metrics": out / METRICS_JSON,
        "report": out / REPORT_MD,
        "report_html": out / REPORT_HTML,
        "reference_features": out / REFERENCE_FEATURES,
    }
    truths = [image.truth for image in scored]
    ground_truth = coco_ground_truth(dataset.names, labeled, truths, sizes)
    atomic_write_text(files["ground_truth"], json.dumps(ground_truth))
    atomic_write_text(files["detections"], json.dumps(coco_results([i.detections for i in scored])))
    atomic_write_text(files["metrics"], json.dumps(result.to_dict(), indent=2) + "\n")
    atomic_write_text(files["report"], result.markdown())
    atomic_write_text(files["report_html"], report_html(result.subject(), scored, dataset.names))
    write_feature_table(pd.DataFrame.from_records(rows), files["reference_features"])
    write_thumbnails([(item.path, item.relative) for item in labeled], out / REFERENCE_IMAGES)
    return files


def _log_to_run(result: EvaluationResult, settings: Settings) -> None:
    """Metrics (`eval.*`), the evaluation data's identity (tags) and every output file."""
    assert result.run_id is not None
    tracking = connect(settings)
    m = result.metrics
    prefix = EVAL_METRIC_PREFIX
    values: dict[str, float] = {f"{prefix}{k}": v for k, v in m.summary().items()}
    for kind, per_class in (("ap50_95", m.ap50_95), ("ap50", m.ap50)):
        values.update({per_class_metric(kind, k): v for k, v in per_class.items() if v is not None})
    run_id = result.run_id
    log_metrics(tracking, run_id, values)
    with mlflow_errors(f"log the evaluation to run {run_id}", settings):
        tracking.client.set_tag(run_id, TAG_EVAL_HASH, result.data_hash)
        tracking.client.set_tag(run_id, TAG_EVAL_DATA, str(result.data_yaml))
        tracking.client.set_tag(run_id, TAG_EVAL_SPLIT, result.split)
        tracking.client.log_artifacts(run_id, str(result.out_dir), EVALUATION_ARTIFACT_DIR)
