"""The `collect` and `drift_check` components under KFP's local runner, branching on the decision.

The prediction log is written by the real `PredictionLogWriter` from real images; the pipeline
runs in subprocesses exactly as the monitoring pipeline will. Only the KFP API server is absent.
"""

# No `from __future__ import annotations`: KFP reads the real annotation objects.
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from kfp import dsl

from components import visionops_component
from components.collect import collect
from components.drift_check import drift_check
from tests.drift_data import PRODUCTS, DriftTables, build_drift_tables
from tests.servers import gauge
from visionops.data.features import read_image
from visionops.monitoring.prediction_log import PredictionLogWriter
from visionops.storage import LocalStore
from visionops.tracking import connect

T0 = datetime(2026, 2, 1, 8, 30, tzinfo=UTC)
# Locally the steps run in this venv, not in the pipeline image KFP warns about.
pytestmark = pytest.mark.filterwarnings("ignore:You may be attemping:RuntimeWarning")


@visionops_component
def mark(marker: str, branch: str) -> None:
    """Records which branch of the pipeline ran."""
    from pathlib import Path

    Path(marker).write_text(branch)


@dsl.pipeline(name="drift-branch-test")
def drift_branches(log_location: str, reference_uri: str, marker: str, start: str, end: str):
    reference = dsl.importer(
        artifact_uri=reference_uri, artifact_class=dsl.Dataset, metadata={"format": "parquet"}
    )
    window = collect(log_location=log_location, start=start, end=end)
    check = drift_check(
        reference=reference.output, current=window.outputs["features"], model_name="m",
        monitoring_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
    )  # fmt: skip
    with dsl.If(check.outputs["decision"] == "drift"):
        mark(marker=marker, branch="retrain")
    with dsl.Else():
        mark(marker=marker, branch="keep")


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> DriftTables:
    return build_drift_tables(tmp_path_factory.mktemp("drift"))


def _log_images(root: Path, store_dir: Path) -> Path:
    """Log every inference image below `root` as predictions, one second apart from T0."""
    writer = PredictionLogWriter(LocalStore(store_dir), model_name="m", model_version="1")
    paths = sorted(p for product in PRODUCTS for p in (root / product / "inference").glob("*.*g"))
    for i, path in enumerate(paths):
        assert writer.submit(read_image(path), None, timestamp=T0 + timedelta(seconds=i))
    writer.close()
    assert writer.written == len(paths) == 180
    return store_dir


@pytest.mark.parametrize(("which", "branch"), [("clean", "keep"), ("dark", "retrain")])
def test_pipeline_branches_on_the_drift_decision(
    tables: DriftTables,
    local_kfp: Path,
    tmp_path: Path,
    which: str,
    branch: str,
    pushgateway: str,
    settings_env: pytest.MonkeyPatch,
):
    settings_env.setenv("VISIONOPS_PUSHGATEWAY_URL", pushgateway)  # the steps inherit it
    images = tables.root if which == "clean" else tables.dark
    log_dir = _log_images(images, tmp_path / "log")
    marker = tmp_path / "branch.txt"
    drift_branches(
        log_location=str(log_dir),
        reference_uri=str(tables.reference),
        marker=str(marker),
        start=T0.isoformat(),
        end=(T0 + timedelta(hours=1)).isoformat(),
    )
    assert marker.read_text() == branch

    outputs = {p.name: p for p in local_kfp.rglob("*") if p.is_file()}
    page = outputs["report"].read_text(encoding="utf-8")
    assert page.lstrip().lower().startswith("<!doctype html") and len(page) > 100_000
    result = json.loads(outputs["result"].read_text())
    assert result["decision"] == ("drift" if which == "dark" else "no_drift")
    assert result["current_rows"] == 180
    if which == "dark":
        assert "brightness_mean" in result["drifted_columns"]

    executor = json.loads(next(local_kfp.rglob("drift-check/executor_output.json")).read_text())
    assert executor["parameterValues"]["decision"] == result["decision"]
    scores = executor["artifacts"]["scores"]["artifacts"][0]["metadata"]
    assert scores["brightness_mean"] == pytest.approx(
        next(c["score"] for c in result["columns"] if c["column"] == "brightness_mean")
    )
    metadata = executor["artifacts"]["result"]["artifacts"][0]["metadata"]
    assert (
        f'visionops_drift_detected{{model_name="m"}} {int(which == "dark")}'
        in (metadata["prometheus"])
    )
    # The alert's gauge reached the real Pushgateway, under the model's group.
    assert metadata["pushed_to"] == f"{pushgateway}/metrics/job/visionops-drift/model_name/m"
    assert gauge(pushgateway, "visionops_drift_detected", model_name="m") == int(which == "dark")
    tracking = connect()  # the step recorded the check in MLflow
    run = tracking.client.get_run(metadata["mlflow_run_id"])
    assert run.data.tags["visionops.drift.decision"] == result["decision"]
    # Named after its window: two checks of different windows never share a name.
    start, end = T0.isoformat(), (T0 + timedelta(hours=1)).isoformat()
    assert run.data.tags["mlflow.runName"] == f"drift m {start} .. {end}"
    assert run.data.tags["visionops.drift.window_start"] == start
    assert run.data.tags["visionops.drift.pipeline_run"]  # the local run's id
    lineage = json.loads(executor["parameterValues"]["lineage"])
    assert lineage == {
        "trigger": "drift", "drift_run": run.info.run_id, "drift_window": f"{start} .. {end}",
        "drift_decision": result["decision"],
        "monitoring_pipeline_run": run.data.tags["visionops.drift.pipeline_run"],
    }  # fmt: skip
    logged = {f.path for f in tracking.client.list_artifacts(run.info.run_id, "drift")}
    assert logged == {"drift/drift_report.html", "drift/drift.json"}


def test_collect_alone_reads_a_window_and_an_empty_one(
    tables: DriftTables, local_kfp: Path, tmp_path: Path
):
    import pandas as pd

    log_dir = _log_images(tables.root, tmp_path / "log")
    task = collect(
        log_location=str(log_dir),
        start=(T0 + timedelta(seconds=10)).isoformat(),
        end=(T0 + timedelta(seconds=40)).isoformat(),
    )
    assert task.outputs["rows"] == 30
    frame = pd.read_parquet(task.outputs["features"].path)
    assert len(frame) == 30 and "brightness_mean" in frame.columns

    empty = collect(log_location=str(log_dir), start="2020-01-01T00:00:00", end="2020-01-02")
    assert empty.outputs["rows"] == 0
