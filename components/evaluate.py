"""KFP component `evaluate_model`: score the served ONNX model; metrics for the Kubeflow UI."""

# No `from __future__ import annotations` here: KFP reads the real annotation objects.

from typing import NamedTuple

from kfp.dsl import HTML, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

from components import visionops_component


@visionops_component
def evaluate_model(
    model: Input[Model],
    dataset: Input[Dataset],
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
    report: Output[Markdown],
    report_html: Output[HTML],
    reference: Output[Dataset],
    split: str = "val",
    run_id: str = "",
) -> NamedTuple("EvaluationOutputs", [("map50", float), ("map50_95", float)]):  # type: ignore[valid-type]
    """mAP, precision, recall, per-class AP (`metrics`), the confusion matrix, a Markdown table,
    the report a person looks at (`report_html`: curves, heatmap, per product, worst images; the
    Kubeflow UI shows it) and the reference feature table for drift monitoring (`reference`,
    parquet).

    Everything is also logged to the MLflow run (`run_id`, default: the model's training run).
    """
    import shutil
    from collections import namedtuple
    from pathlib import Path

    from visionops.bootstrap import bootstrap

    bootstrap()
    from visionops.training.evaluate import evaluate

    data_yaml = Path(dataset.path) / dataset.metadata.get("data_yaml", "data.yaml")
    result = evaluate(
        model.path, data_yaml, split=split, run_id=run_id or model.metadata.get("run_id") or None
    )
    m = result.metrics
    for name, value in m.summary().items():
        metrics.log_metric(name, value)
    for name, value in m.ap50_95.items():
        if value is not None:
            metrics.log_metric(f"ap50_95/{name}", value)
    confusion.log_confusion_matrix(m.confusion_labels, m.confusion)
    Path(report.path).write_text(result.markdown(), encoding="utf-8")
    shutil.copyfile(result.files["report_html"], report_html.path)
    shutil.copyfile(result.files["reference_features"], reference.path)
    reference.metadata.update({"format": "parquet", "rows": result.images})
    for artifact in (metrics, reference):
        artifact.metadata["data_hash"] = result.data_hash
    print(result.markdown())
    return namedtuple("EvaluationOutputs", ["map50", "map50_95"])(m.map50, m.map50_95)
