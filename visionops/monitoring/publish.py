"""Where a drift decision goes: an MLflow run, the Prometheus Pushgateway (the "drift detected"
alert), and the text both the alert and the Kubeflow step show.

`check_and_publish` is the whole monitoring step in one call, for `visionops drift check` and the
`drift_check` component alike: decide (`visionops.monitoring.drift`), then record the check in
MLflow if asked, then push the gauges if a Pushgateway is given. A failed push never hides the
decision: it is returned in `push_error` and the caller decides whether it is fatal.
"""

from __future__ import annotations

import logging
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from visionops.config import Settings, get_settings
from visionops.errors import StorageError
from visionops.monitoring.drift import DriftConfig, DriftResult, check_drift
from visionops.monitoring.drift_images import current_strip, reference_strip
from visionops.monitoring.drift_page import PageContext, add_summary, drifted_values
from visionops.monitoring.reference import Reference
from visionops.tracking import TAG_PREFIX, connect, log_metrics, mlflow_errors

if TYPE_CHECKING:
    import pandas as pd

    from visionops.storage import ObjectStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckContext:
    """What a check was about, beyond the two tables: the window it judged, the registered
    version its reference describes, and the pipeline run it was part of. Named in the MLflow run
    (name and tags), the drift page, and the lineage of a retraining it starts. The drift page's
    thumbnails: the reference's evaluation images (or those below `reference_images`), the
    images the predictor kept of the window, read from `log`, the prediction log it was collected
    from (else those below `current_images`)."""

    window_start: str = ""
    window_end: str = ""
    reference: Reference | None = None
    pipeline_run: str = ""
    reference_images: tuple[Path, ...] = ()  # folders
    current_images: tuple[Path, ...] = ()  # folders
    log: ObjectStore | None = None

    @property
    def window(self) -> str:
        """`start .. end` (ISO 8601), or empty when the window is not known."""
        if not (self.window_start or self.window_end):
            return ""
        return f"{self.window_start or '?'} .. {self.window_end or '?'}"

    @property
    def reference_version(self) -> str:
        """`NAME vN` of a registered reference, else empty."""
        ref = self.reference
        return ref.describe() if ref is not None and ref.version else ""


@dataclass(frozen=True)
class PublishedCheck:
    """A drift check and where it went."""

    result: DriftResult
    model_name: str
    prometheus: str  # the gauges in Prometheus text format
    mlflow_run_id: str | None = None
    pushed_to: str | None = None  # the Pushgateway group URL
    push_error: StorageError | None = None  # why the push failed, if it did
    context: CheckContext = field(default_factory=CheckContext)

    def lineage(self) -> dict[str, str]:
        """What a retraining this check starts records as its lineage
        (`visionops.training.lineage.FIELDS`)."""
        found = {
            "trigger": "drift",
            "drift_run": self.mlflow_run_id or "",
            "drift_window": self.context.window,
            "drift_reference": self.context.reference_version,
            "drift_decision": self.result.decision,
            "monitoring_pipeline_run": self.context.pipeline_run,
        }
        return {k: v for k, v in found.items() if v}


def check_and_publish(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    config: DriftConfig | None = None,
    report_dir: Path | None = None,
    model_name: str = "",
    log_to_mlflow: bool = False,
    pushgateway: str | None = None,
    settings: Settings | None = None,
    context: CheckContext | None = None,
) -> PublishedCheck:
    """Decide drift for `current` against `reference`, then publish the result.

    `report_dir`: write Evidently's HTML and the JSON result there. `log_to_mlflow`: record the
    check as an MLflow run. `pushgateway`: a URL to push the drift gauges to (None: no push).
    `model_name` empty means the configured model. `context`: the window, the reference version
    and the pipeline run, named in the MLflow run. RegistryError when MLflow is unreachable; a
    failed push is returned, not raised.
    """
    settings = settings or get_settings()
    model_name = model_name or settings.model_name
    context = context or CheckContext()
    result = check_drift(reference, current, config=config, report_dir=report_dir)
    if result.report_html is not None:
        _add_drift_page(result, reference, current, config, context, model_name)
    run_id = None
    if log_to_mlflow:
        run_id = log_drift_to_mlflow(
            result, model_name=model_name, settings=settings, context=context
        )
    pushed_to, push_error = None, None
    if pushgateway:
        try:
            pushed_to = push_drift_metrics(result, model_name, pushgateway)
        except StorageError as error:
            push_error = error
    return PublishedCheck(
        result, model_name, prometheus_metrics(result, model_name), run_id, pushed_to, push_error,
        context,
    )  # fmt: skip


HISTOGRAM_ROWS = 5000
"""Rows of each side drawn in the drift page's histograms, at most."""


def _add_drift_page(
    result: DriftResult,
    reference: Any,
    current: Any,
    config: DriftConfig | None,
    context: CheckContext,
    model_name: str,
) -> None:
    """VisionOps' summary on top of the HTML report (`visionops.monitoring.drift_page`)."""
    from visionops.data.tables import FeatureTableReader

    assert result.report_html is not None
    drifted = result.drifted_columns
    seed = config.sample_seed if config is not None else 0
    ref = context.reference
    page = PageContext(
        window=context.window,
        reference=(ref.describe() if ref is not None else ""),
        model_name=model_name,
        reference_values=drifted_values(reference, drifted, HISTOGRAM_ROWS, seed, "reference"),
        current_values=drifted_values(current, drifted, HISTOGRAM_ROWS, seed, "current"),
        reference_strip=reference_strip(
            ref.images if ref is not None else (), context.reference_images,
            context.reference_version,
        ),
        current_strip=current_strip(
            current if isinstance(current, FeatureTableReader) else FeatureTableReader(current),
            context.log, context.current_images,
        ),
    )  # fmt: skip
    add_summary(result.report_html, result, page)


def prometheus_metrics(result: DriftResult, model_name: str) -> str:
    """The drift result in Prometheus text format, for a Pushgateway or a textfile collector.

    `visionops_drift_detected{model_name}` is 1 on drift and 0 otherwise ("not enough data" is 0
    and leaves `visionops_drift_share` out, so an alert never fires on a guess).
    """
    label = model_name.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    lines = [
        "# HELP visionops_drift_detected 1 when the last drift check decided drift, else 0.",
        "# TYPE visionops_drift_detected gauge",
        f'visionops_drift_detected{{model_name="{label}"}} {int(result.drift_detected)}',
        "# HELP visionops_drift_check_rows Current rows compared by the last drift check.",
        "# TYPE visionops_drift_check_rows gauge",
        f'visionops_drift_check_rows{{model_name="{label}"}} {result.current_rows}',
    ]
    if result.drifted_share is not None:
        lines += [
            "# HELP visionops_drift_share Share of feature columns that drifted in the last check.",
            "# TYPE visionops_drift_share gauge",
            f'visionops_drift_share{{model_name="{label}"}} {result.drifted_share:g}',
        ]
    return "\n".join(lines) + "\n"


def push_drift_metrics(
    result: DriftResult, model_name: str, url: str, *, job: str = "visionops-drift"
) -> str:
    """PUT the drift gauges to a Prometheus Pushgateway, where the "drift detected" alert reads
    them; returns the group URL. One group per model, so a check replaces only its own model's
    values. Raises StorageError when the gateway cannot be reached or refuses the push.
    """
    group = (
        f"{url.rstrip('/')}/metrics/job/{urllib.parse.quote(job, safe='')}"
        f"/model_name/{urllib.parse.quote(model_name, safe='')}"
    )
    request = urllib.request.Request(
        group,
        data=prometheus_metrics(result, model_name).encode(),
        method="PUT",
        headers={"Content-Type": "text/plain; version=0.0.4"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
    except urllib.error.HTTPError as error:
        detail = error.read().decode(errors="replace").strip()
        raise StorageError(f"Pushgateway {group} refused the drift metrics: {detail}") from error
    except (urllib.error.URLError, OSError) as error:
        raise StorageError(f"Pushgateway {url} unreachable: {error}") from error
    log.info("pushed drift metrics of %s to %s", model_name, group)
    return group


def drift_run_name(model_name: str, context: CheckContext) -> str:
    """`drift <model> vN <start> .. <end>`: two checks of different windows never share a name."""
    ref = context.reference
    parts = ["drift", model_name]
    if ref is not None and ref.version:
        parts.append(f"v{ref.version}" if ref.model_name == model_name else ref.describe())
    if context.window:
        parts.append(context.window)
    return " ".join(parts)


def log_drift_to_mlflow(
    result: DriftResult,
    *,
    model_name: str = "",
    settings: Settings | None = None,
    context: CheckContext | None = None,
) -> str:
    """Record one check as an MLflow run: decision tags, per-column scores, the HTML and JSON.

    The run lands in VisionOps' experiment, named after the model, the reference version and the
    window (`drift_run_name`), so the MLflow UI lists checks beside the training runs. Returns the
    run id; RegistryError when MLflow is unreachable.
    """
    settings = settings or get_settings()
    model_name = model_name or settings.model_name
    context = context or CheckContext()
    tracking = connect(settings)
    tags = {
        "mlflow.runName": drift_run_name(model_name, context),
        f"{TAG_PREFIX}kind": "drift-check",
        f"{TAG_PREFIX}drift.decision": result.decision,
        f"{TAG_PREFIX}drift.model_name": model_name,
        f"{TAG_PREFIX}drift.drifted_columns": ",".join(result.drifted_columns),
    }
    ref = context.reference
    extra = {
        "window_start": context.window_start,
        "window_end": context.window_end,
        "reference_model": ref.model_name if ref else "",
        "reference_version": ref.version if ref else "",
        "reference_run": ref.run_id if ref else "",
        "pipeline_run": context.pipeline_run,
    }
    tags.update({f"{TAG_PREFIX}drift.{k}": str(v) for k, v in extra.items() if v})
    with mlflow_errors("start a drift-check run", settings):
        run_id = tracking.client.create_run(tracking.experiment_id, tags=tags).info.run_id
    values: dict[str, float] = {
        "drift.detected": float(result.drift_detected),
        "drift.current_rows": float(result.current_rows),
        "drift.reference_rows": float(result.reference_rows),
        **{f"drift.score.{c.column}": c.score for c in result.columns},
        **{f"drift.effect.{c.column}": c.effect for c in result.columns},
    }
    if result.drifted_share is not None:
        values["drift.share"] = result.drifted_share
    log_metrics(tracking, run_id, values)
    with mlflow_errors(f"log the drift report to run {run_id}", settings):
        for path in (result.report_html, result.report_json):
            if path is not None and Path(path).is_file():
                tracking.client.log_artifact(run_id, str(path), "drift")
        tracking.client.set_terminated(run_id, "FINISHED")
    return run_id
