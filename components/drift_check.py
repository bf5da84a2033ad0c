"""KFP component `drift_check`: Evidently compares the window with the reference feature table."""

# No `from __future__ import annotations` here: KFP reads the real annotation objects.

from typing import NamedTuple, Optional

from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Output

from components import visionops_component


@visionops_component
def drift_check(
    current: Input[Dataset],
    report: Output[HTML],
    result: Output[Artifact],
    scores: Output[Metrics],
    reference: Optional[Input[Dataset]] = None,  # noqa: UP045 (KFP needs Optional[...])
    reference_uri: str = "champion",
    drift_share: float = 0.0,
    min_rows: int = 0,
    model_name: str = "",
    log_to_mlflow: bool = True,
    monitoring_run_id: str = "",
    log_location: str = "",
    current_images: str = "",
) -> NamedTuple("DriftOutputs", [("decision", str), ("drift_detected", bool), ("lineage", str)]):  # type: ignore[valid-type]
    """Decide drift / no_drift / not_enough_data; use `decision` in `dsl.If`.

    The reference is the `reference` table if given, else `reference_uri`: `champion` (the
    configured model's champion), models:/NAME@ALIAS or a path/URI of a feature table.

    Writes the self-contained Evidently report (`report`, shown in the Kubeflow UI), the JSON
    result (`result`, also carrying the Prometheus text for the drift alert in its metadata) and
    per-column scores as Metrics; with `log_to_mlflow` the report and scores also go to an MLflow
    run. `drift_share`/`min_rows` of 0 mean the settings' values. With VISIONOPS_PUSHGATEWAY_URL
    set, the drift gauges are pushed there for the "drift detected" alert; a failed push is logged
    and recorded in the result's metadata, it does not stop the decision. `lineage` (JSON) names
    this check's MLflow run, its window (from `current`'s metadata), the reference version and
    `monitoring_run_id`: what a retraining it starts records as where it came from.

    The report's thumbnails: the reference's evaluation images, and the images the predictor kept
    of the window, read from the prediction log at `log_location` (empty: the configured one),
    else those below `current_images` (folders, comma-separated).
    """
    import json
    import math
    import shutil
    import tempfile
    from collections import namedtuple
    from pathlib import Path

    from visionops.bootstrap import bootstrap

    settings = bootstrap()
    from visionops.data.tables import FeatureTableReader
    from visionops.monitoring.drift import REPORT_HTML, REPORT_JSON, DriftConfig
    from visionops.monitoring.log_layout import open_log
    from visionops.monitoring.publish import CheckContext, check_and_publish
    from visionops.monitoring.reference import Reference, resolve_reference_source

    def table(artifact: Dataset):  # type: ignore[no-untyped-def]
        return FeatureTableReader(Path(artifact.path), artifact.metadata.get("format", "parquet"))

    if reference is not None:
        reference_table = table(reference)
        source = Reference(Path(reference.path))
    else:
        source = resolve_reference_source(reference_uri, settings, name=model_name or None)
        reference_table = FeatureTableReader(source.path)
    context = CheckContext(
        window_start=str(current.metadata.get("start", "")),
        window_end=str(current.metadata.get("end", "")),
        reference=source,
        pipeline_run=monitoring_run_id,
        current_images=tuple(Path(p.strip()) for p in current_images.split(",") if p.strip()),
        log=open_log(log_location),
    )

    config = DriftConfig.from_settings(drift_share=drift_share or None, min_rows=min_rows or None)
    with tempfile.TemporaryDirectory() as tmp:
        check = check_and_publish(
            reference_table, table(current), config=config, report_dir=Path(tmp),
            model_name=model_name, log_to_mlflow=log_to_mlflow,
            pushgateway=settings.pushgateway_url, settings=settings, context=context,
        )  # fmt: skip
        shutil.copyfile(Path(tmp) / REPORT_HTML, report.path)
        shutil.copyfile(Path(tmp) / REPORT_JSON, result.path)
    outcome = check.result
    if check.mlflow_run_id:
        result.metadata["mlflow_run_id"] = check.mlflow_run_id
    for name, value in outcome.scores().items():
        if math.isfinite(value):  # a constant column scores NaN; KFP metrics cannot hold it
            scores.log_metric(name, value)
    if outcome.drifted_share is not None:
        scores.log_metric("drifted_share", outcome.drifted_share)
    scores.log_metric("current_rows", outcome.current_rows)
    result.metadata["decision"] = outcome.decision
    result.metadata["prometheus"] = check.prometheus
    if check.pushed_to:
        result.metadata["pushed_to"] = check.pushed_to
    if check.push_error is not None:
        print(f"WARNING: drift metrics not pushed: {check.push_error}")
        result.metadata["push_error"] = str(check.push_error)
    print(f"{outcome.decision}: {outcome.reason}")
    return namedtuple("DriftOutputs", ["decision", "drift_detected", "lineage"])(
        outcome.decision, outcome.drift_detected, json.dumps(check.lineage())
    )
