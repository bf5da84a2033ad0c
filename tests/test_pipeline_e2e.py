"""Both pipelines end to end under KFP's local runner, on tiny generated data.

One training run (through `visionops pipeline run training --local`) makes the champion; a real
predictor serves it and logs clean, then drifted, traffic; the monitoring pipeline then takes
each branch: the clean window records "no drift" and submits nothing, the drifted window
re-submits exactly one training run (a new local run in its own process, with the drifted images
and their labels), which runs to its end; its drift page shows the champion's evaluation images
beside the window's. Last, a promotion is deployed to the running predictor. Everything is real
and on 127.0.0.1; only the data is small (imgsz 64, 1 epoch).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from pipelines import load_pipeline
from tests import headless_chromium
from visionops.cli.app import app
from visionops.demo import (
    DemoConfig,
    DemoData,
    DemoEvents,
    drift_check,
    prepare_data,
    thumbnail_folders,
)
from visionops.local_predictor import (
    inference_images,
    predictor,
    send_images,
    served_version,
    wait_for_log,
)
from visionops.orchestration.decisions import list_decisions
from visionops.orchestration.local import LocalRun, follow_run, read_run, run_local, runs_dir
from visionops.orchestration.resubmit import list_submissions

NAME = "e2e-pipelines"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> DemoData:
    config = DemoConfig(products=2, train=8, val=8, inference=8, imgsz=96, drift_severity=1.0)
    return prepare_data(config, tmp_path_factory.mktemp("e2e"), DemoEvents())


@pytest.fixture(scope="module")
def training(data: DemoData) -> LocalRun:
    args = ["pipeline", "run", "training", "--local", "--run-name", "e2e-training"]
    params = {"dataset": data.vision, "epochs": 1, "imgsz": 64, "batch": 8, "min_map50": 0,
              "model_name": NAME, "deploy_target": "none"}  # fmt: skip
    for key, value in params.items():
        args += ["-p", f"{key}={value}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "e2e-training" in result.output and "MLflow UI" in result.output
    run = read_run(runs_dir() / "e2e-training")
    assert run is not None
    return run


@dataclass(frozen=True)
class Traffic:
    url: str
    log_dir: Path
    clean: tuple[datetime, datetime]
    drifted: tuple[datetime, datetime]


@pytest.fixture(scope="module")
def traffic(training: LocalRun, data: DemoData) -> Iterator[Traffic]:
    log_dir = data.vision.parent / "prediction-log"
    with predictor(NAME, log_dir, data.vision.parent) as url:
        start = datetime.now(UTC)
        clean = send_images(url, NAME, inference_images(data.vision))
        middle = datetime.now(UTC)
        drifted = send_images(url, NAME, inference_images(data.drifted))
        end = datetime.now(UTC)
        assert clean == drifted == 16
        wait_for_log(log_dir, start, end, clean + drifted)
        yield Traffic(url, log_dir, (start, middle), (middle, end))


def _monitor(
    traffic: Traffic, data: DemoData, window: tuple[datetime, datetime], sent: Path
) -> LocalRun:
    training_params = {"model_name": NAME, "batch": 8, "min_map50": 0, "deploy_target": "local",
                       "predictor_url": traffic.url}  # fmt: skip
    return run_local("monitoring", load_pipeline("monitoring"), {
        "current_images": thumbnail_folders(sent),
        "log_location": str(traffic.log_dir), "start": window[0].isoformat(),
        "end": window[1].isoformat(), "reference": f"models:/{NAME}@champion",
        "model_name": NAME, "min_rows": 10, "dataset": str(data.vision),
        "new_data": str(data.drifted), "epochs": 1, "imgsz": 64,
        "training_params": json.dumps(training_params),
    })  # fmt: skip


def _champion() -> Any:
    from visionops.tracking import connect

    return connect().client.get_model_version_by_alias(NAME, "champion")


def test_the_training_pipeline_trains_evaluates_registers(training: LocalRun) -> None:
    assert training.status == "succeeded"
    assert {s.task: s.state for s in training.steps.values()} == dict.fromkeys(
        ["fetch-dataset", "fetch-dataset-2", "validate-dataset", "convert-dataset",
         "train-model", "evaluate-model", "register-model", "deploy-model"], "succeeded",
    )  # fmt: skip
    register = training.steps["register-model"].parameters
    assert (register["version"], register["promoted"], register["alias"]) == ("1", True, "champion")
    assert training.output("deploy-model", "target") == "none"  # nothing was serving yet

    model = Path(training.artifact("train-model", "model")["path"])
    assert {"model.onnx", "metadata.json"} <= {p.name for p in model.iterdir()}
    metrics = training.artifact("evaluate-model", "metrics")["metadata"]
    assert {"map50", "map50_95", "precision", "recall"} <= set(metrics)
    confusion = training.artifact("evaluate-model", "confusion")["metadata"]
    assert "confusionMatrix" in confusion
    reports: dict[str, list[str]] = {}
    for label, path in training.reports():
        reports.setdefault(label, []).append(path.read_text())
    assert any("| mAP50 | mAP50-95 |" in text for text in reports["Evaluate"])
    assert any(
        text.startswith("<!DOCTYPE html>") and 'id="gallery"' in text
        for text in reports["Evaluate"]
    )  # the evaluation's report.html, the step's HTML output
    assert reports["Validate data"][0].startswith("#")

    champion = _champion()
    assert str(champion.version) == "1"
    assert champion.run_id == training.output("train-model", "run_id")


def test_no_drift_records_the_decision_and_submits_nothing(
    traffic: Traffic, data: DemoData
) -> None:
    submitted, decided = len(list_submissions()), len(list_decisions())

    run = _monitor(traffic, data, traffic.clean, data.vision)

    check = drift_check(run)
    assert check.decision == "no_drift", check.reason
    assert run.steps["record-decision"].state == "succeeded"
    assert run.steps["retrain"].state == "skipped"
    assert len(list_submissions()) == submitted
    decisions = list_decisions()
    assert len(decisions) == decided + 1 and decisions[-1]["decision"] == "no_drift"
    assert check.report is not None and check.report.read_text().lstrip().startswith("<")


@pytest.fixture(scope="module")
def drifted(traffic: Traffic, data: DemoData) -> tuple[LocalRun, set[str]]:
    """The monitoring run on the drifted window, and the submissions there were before it."""
    before = {s.key for s in list_submissions()}
    return _monitor(traffic, data, traffic.drifted, data.drifted), before


def test_drift_resubmits_exactly_one_training_run_with_the_new_data(
    drifted: tuple[LocalRun, set[str]], traffic: Traffic, data: DemoData
) -> None:
    run, before = drifted

    check = drift_check(run)
    assert check.decision == "drift", check.reason
    assert "brightness_mean" in [c["column"] for c in check.columns if c["drifted"]]
    assert run.steps["record-decision"].state == "skipped"
    (submission,) = [s for s in list_submissions() if s.key not in before]
    assert submission.run_name == run.output("retrain", "run_name")
    assert list_decisions()[-1]["training_run"] == submission.run_name

    retrained = follow_run(
        load_pipeline("training"), Path(submission.run_dir), submission.pid, lambda *_: None
    )

    assert retrained.status == "succeeded"
    assert retrained.params["extra_data"] == str(data.drifted)
    assert retrained.params["predictor_url"] == traffic.url
    converted = retrained.artifact("convert-dataset", "yolo")["metadata"]
    assert converted["images"] == {"train": 32, "val": 32}  # clean + drifted, labels carried
    assert retrained.output("register-model", "version") == "2"
    # One epoch decides little, so either outcome may come; what must hold is that the outcome is
    # the gate's rule on the numbers the decision reports, and that the predictor serves it.
    from visionops.tracking import connect
    from visionops.training.registry import TAG_METRIC

    promoted, reason = (retrained.output("register-model", key) for key in ("promoted", "reason"))
    tags = connect().client.get_model_version(NAME, "2").tags
    candidate = float(tags[f"{TAG_METRIC}map50_95"])
    if reason.startswith("below the minimums"):
        assert not promoted
    else:
        compared = re.search(
            r"map50_95 (\d\.\d+) vs champion v1 (\d\.\d+) .*\(margin (\d\.\d+)\)", reason
        )
        assert compared is not None, reason
        reported, champion, margin = (float(value) for value in compared.groups())
        assert reported == pytest.approx(candidate, abs=5e-5)
        if abs(candidate - champion - margin) > 1e-4:  # the champion's score has four decimals
            assert promoted == (candidate - champion > margin), reason
    assert str(_champion().version) == ("2" if promoted else "1")
    assert served_version(traffic.url, NAME) == str(_champion().version)


@headless_chromium.needs_chromium
def test_the_drift_page_shows_the_evaluation_and_the_window_images(
    drifted: tuple[LocalRun, set[str]], tmp_path: Path
) -> None:
    """Six of the champion's evaluation images (logged by its evaluation step) beside six of the
    window's: those the predictor kept, else those the pipeline was given."""
    report = drift_check(drifted[0]).report
    assert report is not None
    page = tmp_path / "drift-drifted-window.html"  # the artifact has no suffix; the demo adds it
    shutil.copyfile(report, page)

    rendered = headless_chromium.render(page, tmp_path / "chromium")

    assert rendered.external() == []
    summary = rendered.dom.split('id="visionops-drift-summary"', 1)[1].split("</div></div>")[0]
    reference, current = summary.split("Current images")
    assert f"Reference images <small>(evaluation images of {NAME} v1)" in reference
    assert reference.count("data:image/jpeg;base64,") == 6
    assert current.count("data:image/jpeg;base64,") == 6


def test_a_promotion_is_deployed_to_the_running_predictor(
    traffic: Traffic, training: LocalRun
) -> None:
    from visionops.deploy import deploy
    from visionops.errors import PipelineError
    from visionops.tracking import connect
    from visionops.training.promotion import promote, register

    run_id = training.output("train-model", "run_id")
    assert register(run_id, name=NAME).version == "1"  # the same run again: the version it made
    client = connect().client
    first = client.get_model_version(NAME, "1")
    new = str(client.create_model_version(NAME, first.source, run_id=run_id).version)
    promote(new, force=True, name=NAME)

    result = deploy(new, target="local", predictor_url=traffic.url, name=NAME)

    assert (result.target, result.version) == ("local", new)
    assert result.model_uri == f"models:/{NAME}@champion"
    with pytest.raises(PipelineError, match="--model-uri"):
        deploy("1", target="local", predictor_url=traffic.url, name=NAME)  # not the champion
