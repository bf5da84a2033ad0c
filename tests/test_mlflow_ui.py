"""What a person sees of VisionOps in the MLflow UI, rendered by headless Chromium.

A real `mlflow server` on 127.0.0.1 (the session's, artifacts in S3) holds two registered versions,
the second fine-tuned from the first after a drift check. Chromium loads the runs table at the
address the CLI prints, the second version's page and its run's page, and the test reads the DOM
the UI built: the model-training view with VisionOps' columns, the lineage tags and the model
card. The screenshots must not be blank, and no request may leave 127.0.0.1.
"""

from __future__ import annotations

from pathlib import Path

from tests import headless_chromium
from tests.servers import MlflowServer
from tests.test_registry import _candidate, _with_lineage
from tests.trained import ObservedTraining
from visionops.config import Settings
from visionops.tracking import connect, runs_table_url
from visionops.training.promotion import register

pytestmark = headless_chromium.needs_chromium


def _render(url: str, work: Path) -> headless_chromium.Rendered:
    """The page at `url` once the UI has built it (MLflow's UI is a single-page app)."""
    return headless_chromium.render(url, work, width=1600, height=1200, wait_ms=25000)


def test_runs_table_version_and_run_pages_show_visionops_items(
    mlflow: MlflowServer, mlflow_settings: Settings, trained: ObservedTraining, tmp_path: Path
) -> None:
    s = mlflow_settings
    first = register(_with_lineage(s, _candidate(s, trained, 0.3, data_hash="0" * 64),
                                   trigger="manual"))  # fmt: skip
    second_run = _with_lineage(
        s, _candidate(s, trained, 0.5, data_hash="0" * 64), trigger="drift",
        parent_model=s.model_name, parent_version=first.version, drift_run="d0c",
        drift_window="2026-12-07T10:00:00+00:00 .. 2026-12-07T11:00:00+00:00",
    )  # fmt: skip
    second = register(second_run)
    assert second.promoted
    tracking = connect(s)
    base = s.tracking_uri

    page = _render(runs_table_url(base, tracking.experiment_id), tmp_path / "runs")
    assert page.external() == [] and page.screenshot.std() > 5
    runs = page.dom
    # The model-training runs table (not the GenAI traces view) with VisionOps' columns.
    assert "Training runs" in runs and "eval.map50_95" in runs
    assert "visionops.lineage.parent_version" in runs

    page = _render(f"{base}/#/models/{s.model_name}/versions/{second.version}", tmp_path / "v")
    assert page.external() == [] and page.screenshot.std() > 5
    version = page.dom
    assert "visionops.lineage.parent_version" in version and "visionops.gate.decision" in version
    assert "Gate: champion" in version  # the model card, its description

    page = _render(f"{base}/#/experiments/{tracking.experiment_id}/runs/{second_run}",
                   tmp_path / "run")  # fmt: skip
    assert page.external() == [] and page.screenshot.std() > 5
    run = page.dom
    assert "visionops.lineage.drift_run" in run and "d0c" in run
    assert "eval.map50_95" in run
