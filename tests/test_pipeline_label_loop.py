"""The data loop in the pipelines, against a real Label Studio on 127.0.0.1 under KFP's local
runner: the monitoring pipeline on a drifted window whose images the predictor kept sends them to
a Label Studio project with the model's boxes, and records the request with its decision; a
scripted annotator (the stand-in for people) finishes some tasks through Label Studio's API; the
harvest pipeline writes their labels as a VISION root and re-submits training once, however
often it runs. Training is not waited for: its dataset fails validation within seconds.
"""

# No `from __future__ import annotations`: KFP reads the real annotation objects.
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pipelines import load_pipeline
from tests.drift_data import PRODUCTS, DriftTables, build_drift_tables
from tests.servers import LabelStudio, free_port
from visionops.cli.app import app
from visionops.config import get_settings
from visionops.data.features import read_image
from visionops.data.vision import open_vision
from visionops.detections import Detections
from visionops.labeling.label_studio_client import LabelStudioClient
from visionops.monitoring.image_retention import ImagePolicy
from visionops.monitoring.prediction_log import PredictionLogWriter
from visionops.orchestration.decisions import read_decision
from visionops.orchestration.label_loop import (
    LABEL_STUDIO,
    harvest_root,
    labelling_store,
    list_requests,
    project_title,
    read_request,
    request_labels,
)
from visionops.orchestration.local import LocalRun, read_run, run_local
from visionops.orchestration.resubmit import list_submissions, read_submission
from visionops.storage import LocalStore

pytestmark = pytest.mark.filterwarnings("ignore:You may be attemping:RuntimeWarning")

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
MODEL = "defects"
NAMES = ("Cable/break", "PCB_1/missing", "Wood/knot")
BUDGET = 5
ACCEPTED = 3  # tasks the annotator finishes; the others stay open

runner = CliRunner()


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> DriftTables:
    return build_drift_tables(tmp_path_factory.mktemp("loop"), n_images=20)


@pytest.fixture(scope="module")
def drifted_log(tables: DriftTables, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The darkened images as the predictor logs them: each kept (policy `all`), with a box of
    its product's class, scores spread around the threshold."""
    folder = tmp_path_factory.mktemp("log")
    writer = PredictionLogWriter(
        LocalStore(folder), names=NAMES, model_name=MODEL, model_version="1",
        images=ImagePolicy.parse("all"),
    )  # fmt: skip
    paths = sorted(p for product in PRODUCTS for p in (tables.dark / product).rglob("*.*g"))
    for i, path in enumerate(paths):
        box = np.array([[8.0 + i % 5, 10.0, 60.0, 50.0 + i % 7]], np.float32)
        score = np.array([0.2 + 0.6 * (i % 10) / 10], np.float32)
        cls = np.array([PRODUCTS.index(path.relative_to(tables.dark).parts[0])], np.int64)
        assert writer.submit(
            read_image(path), Detections(box, score, cls), encoded=path.read_bytes(),
            timestamp=T0 + timedelta(seconds=i),
        )  # fmt: skip
    writer.close()
    assert writer.written == len(paths) == 60
    return folder


@pytest.fixture
def studio_env(label_studio: LabelStudio, settings_env: pytest.MonkeyPatch) -> LabelStudio:
    """The steps (subprocesses) inherit these."""
    settings_env.setenv("VISIONOPS_LABEL_STUDIO_URL", label_studio.url)
    settings_env.setenv("VISIONOPS_LABEL_STUDIO_TOKEN", label_studio.token)
    get_settings.cache_clear()
    return label_studio


@pytest.fixture
def bad_dataset(tmp_path: Path) -> str:
    """Fetches but fails validation: a submitted training run ends within seconds."""
    folder = tmp_path / "not-vision"
    folder.mkdir()
    (folder / "README.txt").write_text("no products here\n")
    return str(folder)


def _monitor(log: Path, tables: DriftTables, dataset: str, **more: object) -> LocalRun:
    return run_local("monitoring", load_pipeline("monitoring"), {
        "log_location": str(log), "start": T0.isoformat(),
        "end": (T0 + timedelta(hours=1)).isoformat(), "reference": str(tables.reference),
        "model_name": MODEL, "min_rows": 10, "dataset": dataset, "epochs": 1, "imgsz": 64,
        "image_retention_days": 0, "label_budget": BUDGET, **more,
    })  # fmt: skip


def _annotate(client: LabelStudioClient, project: str, accept: int) -> None:
    """The scripted annotator: submits the model's boxes of the first `accept` tasks unchanged."""
    found = client.find_project(project)
    assert found is not None
    tasks = sorted(client.tasks(int(found["id"]), full=True), key=lambda t: t["id"])
    for task in tasks[:accept]:
        result = task["predictions"][0]["result"]
        client.request("POST", f"/api/tasks/{task['id']}/annotations/",
                       json={"result": result, "was_cancelled": False})  # fmt: skip


def _wait_for_summary(run_dir: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while read_run(run_dir) is None:
        assert time.monotonic() < deadline, f"no summary in {run_dir}"
        time.sleep(0.5)


def _cli(*args: str) -> tuple[int, str]:
    get_settings.cache_clear()
    try:
        result = runner.invoke(app, list(args))
    finally:
        get_settings.cache_clear()
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.output


def test_drift_asks_label_studio_and_the_harvest_retrains_once(
    studio_env: LabelStudio, drifted_log: Path, tables: DriftTables, bad_dataset: str,
    local_kfp: Path,
) -> None:  # fmt: skip
    before = {s.key for s in list_submissions()}
    asked = {r.monitoring_run_id for r, _ in list_requests()}

    monitoring = _monitor(drifted_log, tables, bad_dataset)

    assert monitoring.steps["request-labels"].state == "succeeded"
    assert monitoring.steps["record-decision"].state == "skipped"
    (request,) = [r for r, _ in list_requests() if r.monitoring_run_id not in asked]
    run_id = request.monitoring_run_id
    assert {s.key for s in list_submissions()} == before  # no labels yet: no training yet
    assert (request.target, request.images, request.model_name) == (LABEL_STUDIO, BUDGET, MODEL)
    assert request.project == project_title(MODEL, run_id)
    assert request.training["dataset"] == bad_dataset
    decision = read_decision(run_id)
    assert decision is not None and decision["decision"] == "drift"
    assert decision["labelling"]["project"] == request.project
    assert decision["labelling"]["images"] == BUDGET
    assert decision["labelling"]["where"] == f"{studio_env.url}/projects/{request.project_id}/data"
    assert "brightness_mean" in decision["drifted_columns"]

    with LabelStudioClient(studio_env.url, studio_env.token) as client:
        tasks = list(client.tasks(request.project_id, full=True))
        assert len(tasks) == BUDGET
        for task in tasks:  # the model's box, for people to correct
            (prediction,) = task["predictions"]
            (box,) = prediction["result"]
            assert box["value"]["rectanglelabels"][0] in NAMES
        _annotate(client, request.project, ACCEPTED)

    harvest = run_local("harvest", load_pipeline("harvest"), {"monitoring_run_id": run_id})

    (submission,) = [s for s in list_submissions() if s.key not in before]
    assert submission.key == run_id and submission.run_name == f"training-after-{run_id}"
    root = labelling_store().uri(f"{run_id}/root")
    assert submission.params["extra_data"] == root
    assert submission.params["dataset"] == bad_dataset and submission.params["epochs"] == 1
    assert harvest.output("retrain", "already") is False
    assert harvest.output("harvest-labels", "images") == ACCEPTED
    written = json.loads((Path(root) / "vision_root.json").read_text())
    assert written["total_images"] == ACCEPTED and written["boxes"] == ACCEPTED
    assert set(open_vision(Path(root)).names) <= set(PRODUCTS)
    harvested = read_request(run_id)
    assert harvested is not None
    assert (harvested.harvest["labelled"], harvested.harvest["unfinished"]) == (
        ACCEPTED, BUDGET - ACCEPTED,
    )  # fmt: skip
    assert read_decision(run_id)["training_run"] == submission.run_name
    assert read_decision(run_id)["labelling"]["project"] == request.project  # kept
    _wait_for_summary(Path(submission.run_dir))

    # Again (a person re-runs it, or a retried step): the same training run, nothing new.
    again = run_local("harvest", load_pipeline("harvest"), {"monitoring_run_id": run_id})
    assert again.output("retrain", "already") is True
    assert [s.key for s in list_submissions() if s.key not in before] == [run_id]
    code, output = _cli("label", "requests")
    assert code == 0, output
    listed = {r["monitoring_run_id"]: r for r in json.loads(output[: output.rindex("}") + 1])
              ["requests"]}  # fmt: skip
    assert listed[run_id]["status"] == "training submitted"
    code, output = _cli("label", "harvest", run_id)
    assert code == 0 and "was submitted before" in output, output
    assert read_submission(run_id).pid == submission.pid


def test_labels_the_caller_has_retrain_at_once_and_the_request_is_only_recorded(
    drifted_log: Path, tables: DriftTables, bad_dataset: str, local_kfp: Path,
    settings_env: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """`new_data` given (the demo's drift simulator carries labels): today's behaviour, retrain
    in the same run; the request is made too (as COCO: no Label Studio configured here), and a
    harvest then finds the training submitted and submits nothing."""
    settings_env.delenv("VISIONOPS_LABEL_STUDIO_URL", raising=False)
    before = {s.key for s in list_submissions()}

    run = _monitor(drifted_log, tables, bad_dataset, new_data=bad_dataset, label_budget=2)

    assert run.steps["request-labels"].state == run.steps["retrain"].state == "succeeded"
    (submission,) = [s for s in list_submissions() if s.key not in before]
    assert submission.params["extra_data"] == bad_dataset
    request = read_request(submission.key)
    assert request is not None and (request.target, request.images) == ("coco", 2)
    decision = read_decision(submission.key)
    assert decision["training_run"] == submission.run_name
    assert decision["labelling"]["coco"] == request.coco
    _wait_for_summary(Path(submission.run_dir))
    _, harvest = harvest_root(submission.key)
    assert harvest.already and harvest.submission.run_name == submission.run_name


def test_label_studio_unreachable_or_a_wrong_token_is_one_line_and_writes_nothing(
    studio_env: LabelStudio, drifted_log: Path, tables: DriftTables,
    settings_env: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    drift = json.loads(tables_result(tables))
    store = labelling_store()
    settings_env.setenv("VISIONOPS_LABEL_STUDIO_TOKEN", "not-a-token")
    get_settings.cache_clear()
    with pytest.raises(Exception, match="refused the token") as refused:
        request_labels("wrong-token-run", drift, log_location=str(drifted_log),
                       start=T0.isoformat(), end=(T0 + timedelta(hours=1)).isoformat(),
                       budget=2)  # fmt: skip
    assert "\n" not in str(refused.value)
    assert read_request("wrong-token-run") is None and read_decision("wrong-token-run") is None
    assert not store.list_keys("wrong-token-run")

    # A request made, then Label Studio gone or the token wrong when harvesting: exit 1, one line.
    settings_env.setenv("VISIONOPS_LABEL_STUDIO_TOKEN", studio_env.token)
    get_settings.cache_clear()
    request_labels("harvest-fails", drift, log_location=str(drifted_log), start=T0.isoformat(),
                   end=(T0 + timedelta(hours=1)).isoformat(), budget=2)  # fmt: skip
    code, output = _cli("label", "harvest", "harvest-fails")  # nobody labelled anything yet
    (line,) = output.strip().splitlines()
    assert code == 1 and line.startswith("error: no labelled image in "), output
    assert "nothing written" in line and not store.exists("harvest-fails/root/vision_root.json")
    with LabelStudioClient(studio_env.url, studio_env.token) as client:
        _annotate(client, project_title(get_settings().model_name, "harvest-fails"), 2)
    settings_env.setenv("VISIONOPS_LABEL_STUDIO_TOKEN", "not-a-token")
    code, output = _cli("label", "harvest", "harvest-fails")
    (line,) = output.strip().splitlines()
    assert code == 1 and line.startswith("error: Label Studio at ") and "refused the token" in line
    settings_env.setenv("VISIONOPS_LABEL_STUDIO_TOKEN", studio_env.token)
    settings_env.setenv("VISIONOPS_LABEL_STUDIO_URL", f"http://127.0.0.1:{free_port()}")
    code, output = _cli("label", "harvest", "harvest-fails")
    (line,) = output.strip().splitlines()
    assert code == 1 and line.startswith("error: Label Studio is unreachable at "), output
    assert not store.exists("harvest-fails/root/vision_root.json")
    assert read_submission("harvest-fails") is None
    assert not read_request("harvest-fails").harvest


def test_without_label_studio_the_window_goes_out_as_coco_and_comes_back(
    drifted_log: Path, tables: DriftTables, settings_env: pytest.MonkeyPatch
) -> None:
    settings_env.delenv("VISIONOPS_LABEL_STUDIO_URL", raising=False)
    get_settings.cache_clear()
    drift = json.loads(tables_result(tables))
    request = request_labels("coco-run", drift, log_location=str(drifted_log),
                             start=T0.isoformat(), end=(T0 + timedelta(hours=1)).isoformat(),
                             budget=3)  # fmt: skip
    assert (request.target, request.images) == ("coco", 3)
    again = request_labels("coco-run", drift, log_location=str(drifted_log), budget=3)
    assert again.already and again.requested_at == request.requested_at

    store = labelling_store()
    with pytest.raises(Exception, match="no labels returned yet"):
        harvest_root("coco-run")
    # The person corrects the export in CVAT and puts its COCO file where the request says.
    exported = json.loads(store.read_bytes("coco-run/coco/annotations/instances_default.json"))
    store.write_bytes("coco-run/labels.json", json.dumps(exported).encode())
    _, harvest = harvest_root("coco-run")
    assert (harvest.images, harvest.boxes) == (3, len(exported["annotations"]))
    assert harvest.root == store.uri("coco-run/root")
    assert (Path(harvest.root) / "vision_root.json").is_file()


def test_on_s3_the_batch_and_the_harvested_root_live_in_the_bucket(
    drifted_log: Path, tables: DriftTables, s3_settings: object
) -> None:
    drift = json.loads(tables_result(tables))
    request = request_labels("s3-run", drift, log_location=str(drifted_log), start=T0.isoformat(),
                             end=(T0 + timedelta(hours=1)).isoformat(), budget=2)  # fmt: skip
    store = labelling_store()
    assert request.batch == store.uri("s3-run/batch") and request.batch.startswith("s3://")
    assert request.coco == store.uri("s3-run/coco") and store.exists("s3-run/request.json")
    exported = store.read_bytes("s3-run/coco/annotations/instances_default.json")
    labels = store.uri("s3-run/returned/instances_default.json")
    store.write_bytes("s3-run/returned/instances_default.json", exported)

    _, harvest = harvest_root("s3-run", labels=labels)

    assert harvest.root == store.uri("s3-run/root") and harvest.images == 2
    keys = store.list_keys("s3-run/root")
    assert "s3-run/root/vision_root.json" in keys and any(k.endswith(".coco.json") for k in keys)
    assert read_request("s3-run").harvest["root"] == harvest.root


def tables_result(tables: DriftTables) -> str:
    """A drift result of the darkened window against the reference (the check's JSON)."""
    from visionops.monitoring.drift import DriftConfig, check_drift

    result = check_drift(tables.reference, tables.drifted, config=DriftConfig(min_rows=10))
    assert result.decision == "drift"
    return json.dumps(result.to_dict())


def test_the_batch_offers_the_classes_of_the_model_the_window_was_compared_with(
    tmp_path: Path,
) -> None:
    """So that people can label a class the model did not report in the window."""
    from visionops.models.artifact import ModelMetadata, write_metadata
    from visionops.orchestration.label_loop import model_classes
    from visionops.tracking import connect

    names = ["Cable/break", "Cable/thunderbolt", "Wood/knot"]
    (tmp_path / "model").mkdir()
    write_metadata(tmp_path / "model", ModelMetadata(names=names, imgsz=64))
    tracking = connect()
    run = tracking.client.create_run(tracking.experiment_id)
    tracking.client.log_artifacts(run.info.run_id, str(tmp_path / "model"), "model")
    tracking.client.create_registered_model("loop-classes")
    version = tracking.client.create_model_version(
        "loop-classes", f"runs:/{run.info.run_id}/model", run_id=run.info.run_id
    ).version

    assert model_classes(json.dumps({"drift_reference": f"loop-classes v{version}"})) == names
    assert model_classes(json.dumps({"drift_reference": "loop-classes v99"})) == []  # unknown
    assert model_classes(json.dumps({"drift_window": "a .. b"})) == []  # a feature table
    assert model_classes("") == []
