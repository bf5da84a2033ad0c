"""The monitoring pipeline: compact -> collect -> drift check -> on drift, request labels for the
window (and retrain at once on labels the caller already has) | record it; beside them, the
prediction log's kept images past their retention are deleted. The `harvest` pipeline retrains
on the labels once people made them.

python -m pipelines.monitoring                   # compile to pipelines/monitoring.yaml
visionops pipeline run monitoring --local -p label_budget=50
"""

from pathlib import Path

from kfp import dsl

from components.collect import collect
from components.compact import compact
from components.drift_check import drift_check
from components.prune_images import prune_images
from components.record import record_decision
from components.request_labels import request_labels
from pipelines import compile_pipeline, retrain_step, step

PIPELINE_NAME = "visionops-monitoring"
# Peak RSS at 1M and 10M rows (benchmarks/monitoring_scale.py, README "Monitoring at production
# scale"): compact 244 / 399 MiB, collect 399 / 455 MiB (a compacted day 418 / 570 MiB), check
# with its report 538 / 562 MiB. None grows with the window's length: DuckDB is capped at 256 MB
# and reads a bounded chunk, a part is read an hour at a time, the check keeps a bounded sample.
# Limits: at least 1.35x the largest peak.
COMPACT_MEMORY = "768Mi"
COLLECT_MEMORY = "768Mi"
CHECK_MEMORY = "1Gi"


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="Compare a window of the prediction log with the champion's reference; on drift, "
    "send the window's images to be labelled (and re-submit training on labeled data given), "
    "else record the decision.",
)
def monitoring_pipeline(
    log_location: str = "",
    start: str = "",
    end: str = "",
    hours: float = 24.0,
    reference: str = "champion",
    drift_share: float = 0.0,
    min_rows: int = 0,
    model_name: str = "",
    dataset: str = "synthetic",
    new_data: str = "",
    products: str = "",
    epochs: int = 0,
    imgsz: int = 0,
    weights: str = "",
    training_params: str = "{}",
    image_retention_days: int = -1,
    current_images: str = "",
    label_budget: int = 50,
    label_target: str = "auto",
) -> None:
    """`log_location`: the prediction log (s3://bucket/prefix or folder; empty: the configured
    one); the window is [start, end) or the last `hours`; `reference`: `champion`, models:/... or
    a feature table; `drift_share`/`min_rows` of 0 use the settings. On drift, at most
    `label_budget` of the window's kept images go to be labelled (`label_target`: auto = Label
    Studio if VISIONOPS_LABEL_STUDIO_URL is set, else COCO; label-studio; coco); training on
    `dataset` plus them (`harvest` pipeline), or at once plus `new_data` (labeled images of the
    window the caller has), runs with `epochs`, `imgsz`, `weights` (0/empty: training defaults)
    and any other training parameter in `training_params` (JSON). Kept request images older
    than `image_retention_days` (negative: `VISIONOPS_LOG_IMAGES_RETENTION_DAYS`; 0: forever)
    are deleted, whole days at a time."""
    step(
        prune_images(log_location=log_location, retention_days=image_retention_days),
        "Delete expired images",
        cpu="250m",
        memory="512Mi",
        retries=2,
    )
    compacted = step(
        compact(log_location=log_location, start=start, end=end, hours=hours),
        "Compact the prediction log",
        cpu="1",
        memory=COMPACT_MEMORY,
        retries=2,
    )
    window = step(
        collect(log_location=log_location, start=start, end=end, hours=hours),
        "Collect the prediction log",
        cpu="1",
        memory=COLLECT_MEMORY,
        retries=2,
    ).after(compacted)
    check = step(
        drift_check(
            current=window.outputs["features"],
            reference_uri=reference,
            drift_share=drift_share,
            min_rows=min_rows,
            model_name=model_name,
            monitoring_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            log_location=log_location,
            current_images=current_images,
        ),
        "Drift check (Evidently)",
        cpu="1",
        memory=CHECK_MEMORY,
        retries=2,
    )
    run_id, result = dsl.PIPELINE_JOB_ID_PLACEHOLDER, check.outputs["result"]
    lineage = check.outputs["lineage"]
    training = {"dataset": dataset, "products": products, "epochs": epochs, "imgsz": imgsz,
                "weights": weights, "training_params": training_params}  # fmt: skip
    with dsl.If(check.outputs["decision"] == "drift", "drift"):
        labels = request_labels(
            monitoring_run_id=run_id, drift=result, log_location=log_location, lineage=lineage,
            start=start, end=end, hours=hours, budget=label_budget, target=label_target,
            model_name=model_name, **training,
        )  # fmt: skip
        step(labels, "Request labels", cpu="1", memory="1Gi", retries=2, label_studio=True)
        with dsl.If(new_data != "", "labels-given"):  # labels the caller has: retrain now
            retrain_step(run_id, result, lineage, new_data=new_data, **training).after(labels)
    with dsl.Else("no-drift"):
        recorded = record_decision(monitoring_run_id=run_id, drift=result)
        step(recorded, "Record: no drift", cpu="250m", memory="512Mi", retries=2)


if __name__ == "__main__":
    print(compile_pipeline(monitoring_pipeline, Path(__file__).with_suffix(".yaml")))
