"""What a person sees of VisionOps in the MLflow UI, rendered by headless Chromium.

A real `mlflow server` on 127.0.0.1 (the session's, artifacts in S3) holds two registered versions,
the second fine-tuned from the first after a drift check. Chromium loads the runs table at the
address the CLI prints, the second version's page and its run's page, and the test reads the DOM
the UI built: the model-training view with VisionOps' columns, the lineage tags and the model
card. The screenshots must not be blank, and no request may leave 127.0.0.1.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.servers import MlflowServer
from tests.test_registry import _candidate, _with_lineage
from tests.trained import ObservedTraining
from visionops.config import Settings
from visionops.tracking import connect, runs_table_url
from visionops.training.promotion import register

CHROMIUM = "chromium"
pytestmark = pytest.mark.skipif(
    shutil.which(CHROMIUM) is None, reason="chromium is not installed (make tools)"
)


def _render(url: str, work: Path) -> tuple[str, np.ndarray, list[str]]:
    """(DOM, screenshot pixels, URLs requested) of the page at `url` once the UI has rendered."""
    work.mkdir(parents=True, exist_ok=True)
    common = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--hide-scrollbars", "--virtual-time-budget=25000",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--disable-features=AutofillServerCommunication,OptimizationHints",
        f"--user-data-dir={work / 'profile'}",
    ]  # fmt: skip
    netlog, shot = work / "netlog.json", work / "shot.png"
    subprocess.run(
        [*common, f"--log-net-log={netlog}", "--window-size=1600,1200", f"--screenshot={shot}",
         url],
        check=True, capture_output=True, timeout=240,
    )  # fmt: skip
    dom = subprocess.run(
        [*common, "--dump-dom", url], check=True, capture_output=True, text=True, timeout=240
    ).stdout
    log = json.loads(netlog.read_text(errors="replace"))
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    # The page's requests carry its origin as network isolation key; Chromium's own (updates,
    # accounts; name resolution mapped to nowhere above) carry other keys.
    params = [e.get("params", {}) for e in log.get("events", []) if e.get("type") == start]
    requested = [
        p.get("url", "") for p in params if "127.0.0.1" in str(p.get("network_isolation_key", ""))
    ]
    with Image.open(shot) as image:
        return dom, np.asarray(image.convert("RGB")), requested


CHROMIUM_SERVICES = ("https://content-autofill.googleapis.com/",)
"""Chromium's own requests on a page's behalf (form autofill), not the page's: left out."""


def _external(requested: list[str]) -> list[str]:
    local = ("http://127.0.0.1", "data:", "blob:", *CHROMIUM_SERVICES)
    return sorted({u for u in requested if u and not u.startswith(local)})


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

    runs, pixels, requested = _render(
        runs_table_url(base, tracking.experiment_id), tmp_path / "runs"
    )
    assert _external(requested) == [] and pixels.std() > 5
    # The model-training runs table (not the GenAI traces view) with VisionOps' columns.
    assert "Training runs" in runs and "eval.map50_95" in runs
    assert "visionops.lineage.parent_version" in runs

    version, pixels, requested = _render(
        f"{base}/#/models/{s.model_name}/versions/{second.version}", tmp_path / "version"
    )
    assert _external(requested) == [] and pixels.std() > 5
    assert "visionops.lineage.parent_version" in version and "visionops.gate.decision" in version
    assert "Gate: champion" in version  # the model card, its description

    run, pixels, requested = _render(
        f"{base}/#/experiments/{tracking.experiment_id}/runs/{second_run}", tmp_path / "run"
    )
    assert _external(requested) == [] and pixels.std() > 5
    assert "visionops.lineage.drift_run" in run and "d0c" in run
    assert "eval.map50_95" in run
