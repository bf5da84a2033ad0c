"""The monitoring pipeline: compact -> collect -> drift check -> retrain on drift | record it;
beside them, the prediction log's kept images past their retention are deleted.

python -m pipelines.monitoring                   # compile to pipelines/monitoring.yaml
visionops pipeline run monitoring --local -p new_data=/path/to/labeled/drifted/data
"""

from pathlib import Path

from kfp import dsl

from components.collect import collect
from components.compact import compact
from components.drift_check import drift_check
from components.prune_images import prune_images
from components.record import record_decision
from components.retrain import retrain
from pipelines import compile_pipeline, step

PIPELINE_NAME = "visionops-monitoring"
# Peak RSS at 1M rows (benchmarks/monitoring_scale.py, README "Monitoring at production scale"):
# compact 168 MiB, collect 285 MiB, check 537 MiB. None grows with the window: DuckDB is capped at
# 256 MB and reads a bounded chunk, the check keeps a bounded sample. Limits: the cap plus what
# Python, pyarrow and Evidently hold, with headroom.
COMPACT_MEMORY = "768Mi"
COLLECT_MEMORY = "768Mi"
CHECK_MEMORY = "1Gi"


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="Compare a window of the prediction log with the champion's reference; on drift, "
    "re-submit the training pipeline with the new labeled data, else record the decision.",
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
) -> None:
    """`log_location`: the prediction log (s3://bucket/prefix or folder; empty: the configured
    one); the window is [start, end) or the last `hours`; `reference`: `champion`, models:/... or
    a feature table; `drift_share`/`min_rows` of 0 use the settings. On drift, training runs on
    `dataset` plus `new_data` (labeled images of the drifted window) with `epochs`, `imgsz`,
    `weights` (0/empty: training defaults) and any other training parameter in
    `training_params` (JSON). Kept request images older than `image_retention_days` (negative:
    `VISIONOPS_LOG_IMAGES_RETENTION_DAYS`; 0: forever) are deleted, whole days at a time."""
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
    with dsl.If(check.outputs["decision"] == "drift", "drift"):
        step(
            retrain(
                monitoring_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                drift=check.outputs["result"],
                dataset=dataset,
                new_data=new_data,
                products=products,
                epochs=epochs,
                imgsz=imgsz,
                weights=weights,
                training_params=training_params,
                lineage=check.outputs["lineage"],
            ),
            "Re-submit training",
            cpu="250m",
            memory="512Mi",
            retries=2,
        )
    with dsl.Else("no-drift"):
        step(
            record_decision(
                monitoring_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, drift=check.outputs["result"]
            ),
            "Record: no drift",
            cpu="250m",
            memory="512Mi",
            retries=2,
        )


if __name__ == "__main__":
    print(compile_pipeline(monitoring_pipeline, Path(__file__).with_suffix(".yaml")))
