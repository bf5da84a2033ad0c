"""Both pipelines with every step in the pipeline image: `visionops pipeline run NAME --docker`.

KFP's own DockerRunner starts each step as a container of the pipeline image (uid 1000, read-only
root, tmpfs /tmp, the host's network to reach MLflow and S3 on 127.0.0.1); MLflow is the MLflow
image run as the kind overlay's Deployment runs it, with its artifacts in the session's S3 server;
the predictor serving the champion is the predictor image run as the InferenceService runs it.
Tiny data (imgsz 64, 1 epoch). The CLI runs as its own process, as a user would run it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from pipelines import load_pipeline
from tests.containers import ContainerStarts, predictor_container
from tests.k8s import find
from tests.servers import BIN, MlflowServer, S3Server
from visionops.demo import DemoConfig, DemoData, DemoEvents, prepare_data
from visionops.local_predictor import inference_images
from visionops.orchestration.docker import RUN_LABEL
from visionops.orchestration.local import LocalRun, follow_run, read_run, runs_dir

pytestmark = pytest.mark.slow

NAME = "docker-pipelines"
BUCKET = "docker-pipelines"
TRAINING_STEPS = ["fetch-dataset", "fetch-dataset-2", "validate-dataset", "convert-dataset",
                  "train-model", "evaluate-model", "register-model", "deploy-model"]  # fmt: skip


@pytest.fixture(scope="module")
def starts(pipeline_image: str) -> Iterator[ContainerStarts]:
    """Step containers as they start, for every run of this module."""
    with ContainerStarts(RUN_LABEL) as watching:
        yield watching


@pytest.fixture(scope="module")
def env(pipeline_image: str, mlflow_in_container: MlflowServer, s3: S3Server) -> dict[str, str]:
    """The environment of a user who points VisionOps at the MLflow container and S3."""
    from minio import Minio

    client = Minio(s3.endpoint.removeprefix("http://"), s3.access_key, s3.secret_key, secure=False)
    if not client.bucket_exists(BUCKET):
        client.make_bucket(BUCKET)
    return {
        **mlflow_in_container.env(), **s3.env(BUCKET), "VISIONOPS_MLFLOW_EXPERIMENT": "docker",
        "VISIONOPS_MLFLOW_RETRIES": "1", "VISIONOPS_MLFLOW_BACKOFF": "0",
    }  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> DemoData:
    from visionops.containers import readable_by_containers

    config = DemoConfig(products=2, train=8, val=8, inference=8, imgsz=96, drift_severity=1.0)
    data = prepare_data(config, tmp_path_factory.mktemp("docker-data"), DemoEvents())
    readable_by_containers(data.vision), readable_by_containers(data.drifted)  # uid 1000 reads
    return data


def cli_args(pipeline: str, run_name: str, params: dict[str, Any]) -> list[str]:
    args = [str(BIN / "visionops"), "pipeline", "run", pipeline, "--docker", "--run-name", run_name]
    for key, value in params.items():
        args += ["-p", f"{key}={value}"]
    return args


def training_params(model_name: str, dataset: Path) -> dict[str, Any]:
    return {"dataset": dataset, "epochs": 1, "imgsz": 64, "batch": 8, "min_map50": 0,
            "model_name": model_name, "deploy_target": "none"}  # fmt: skip


def left_running(run_name: str) -> list[str]:
    return subprocess.run(
        ["docker", "ps", "--all", "--quiet", "--filter", f"label={RUN_LABEL}={run_name}"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout.split()  # fmt: skip


def registry(env: dict[str, str]) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(env["VISIONOPS_MLFLOW_TRACKING_URI"])


@pytest.fixture(scope="module")
def training(
    env: dict[str, str], data: DemoData, pipeline_image: str, starts: ContainerStarts
) -> LocalRun:
    done = subprocess.run(
        cli_args("training", "docker-training", training_params(NAME, data.vision)),
        env={**os.environ, **env}, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "steps in containers" in done.stdout and "docker-training" in done.stdout
    run = read_run(runs_dir() / "docker-training")
    assert run is not None
    started = starts.images("docker-training")
    assert started == [pipeline_image] * len(TRAINING_STEPS)  # one container per step
    assert not left_running("docker-training")
    return run


def test_training_runs_every_step_in_a_container_and_registers_into_mlflow_with_s3(
    training: LocalRun, env: dict[str, str], s3: S3Server
) -> None:
    from minio import Minio

    assert {s.task: s.state for s in training.steps.values()} == dict.fromkeys(
        TRAINING_STEPS, "succeeded"
    )
    register = training.steps["register-model"].parameters
    assert (register["version"], register["promoted"]) == ("1", True)
    champion = registry(env).get_model_version_by_alias(NAME, "champion")
    assert champion.version == "1" and champion.run_id == training.output("train-model", "run_id")
    # The steps ran as uid 1000: what they wrote in the pipeline root is theirs.
    model = Path(training.artifact("train-model", "model")["path"])
    assert (model / "model.onnx").stat().st_uid == 1000
    # The version's files are in S3, through the MLflow container's artifact proxy.
    client = Minio(s3.endpoint.removeprefix("http://"), s3.access_key, s3.secret_key, secure=False)
    keys = [o.object_name for o in client.list_objects("mlflow", recursive=True)]
    assert any(champion.run_id in k and k.endswith("model/model.onnx") for k in keys)


def test_a_step_killed_mid_run_fails_the_run_and_registers_nothing(
    env: dict[str, str], data: DemoData
) -> None:
    name, run_name = f"{NAME}-killed", "docker-killed"
    params = {**training_params(name, data.vision), "epochs": 50}
    process = subprocess.Popen(
        cli_args("training", run_name, params), env={**os.environ, **env},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    log = runs_dir() / run_name / "run.log"
    try:
        deadline = time.monotonic() + 900
        while not (log.is_file() and "epoch 1/" in log.read_text(errors="replace")):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "training never started"
            time.sleep(1)
        (container,) = left_running(run_name)
        subprocess.run(["docker", "kill", container], capture_output=True, timeout=60, check=True)
        out, err = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)
    assert process.returncode == 1, out[-2000:] + err[-2000:]
    (line,) = [entry for entry in err.strip().splitlines() if entry.startswith("error:")]
    assert "train-model" in line and str(log) in line, line
    assert read_run(runs_dir() / run_name).status == "failed"
    assert registry(env).search_model_versions(f"name='{name}'") == []
    assert not left_running(run_name)


@pytest.fixture(scope="module")
def drifted_window(
    training: LocalRun,
    env: dict[str, str],
    data: DemoData,
    predictor_image: str,
    kind_docs: list[dict],
    s3: S3Server,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[datetime, datetime]]:
    """Drifted traffic through the predictor container serving the champion, logged to S3."""
    from visionops.local_predictor import send_images
    from visionops.monitoring.collect import read_window
    from visionops.storage import S3Store

    service = find(kind_docs, "InferenceService", "visionops-predictor")
    tracking = {"VISIONOPS_MLFLOW_TRACKING_URI": env["VISIONOPS_MLFLOW_TRACKING_URI"],
                "VISIONOPS_LOG_FLUSH_EVERY_S": "1"}  # fmt: skip
    with predictor_container(
        service, tmp_path_factory.mktemp("docker-predictor"), s3=s3, bucket=BUCKET,
        model_args=[f"--model-uri=models:/{NAME}@champion", f"--model_name={NAME}"],
        env=tracking,
    ) as server:  # fmt: skip
        start = datetime.now(UTC)
        sent = send_images(server.http, NAME, inference_images(data.drifted))
        end = datetime.now(UTC)
    from minio import Minio

    client = Minio(s3.endpoint.removeprefix("http://"), s3.access_key, s3.secret_key, secure=False)
    records = read_window(S3Store(client, BUCKET, "predictions", s3.endpoint), start, end)
    assert len(records) == sent == 16  # flushed on SIGTERM
    yield start, end


def test_monitoring_in_containers_detects_drift_and_resubmits_training_once(
    drifted_window: tuple[datetime, datetime],
    env: dict[str, str],
    data: DemoData,
    starts: ContainerStarts,
) -> None:
    from visionops.config import Settings
    from visionops.orchestration.resubmit import list_submissions

    settings = Settings(**{k.removeprefix("VISIONOPS_").lower(): v for k, v in env.items()})
    before = {s.key for s in list_submissions(settings)}
    start, end = drifted_window
    follow = {"model_name": NAME, "batch": 8, "min_map50": 0, "deploy_target": "none"}
    params = {
        "log_location": f"s3://{BUCKET}/predictions", "start": start.isoformat(),
        "end": end.isoformat(), "reference": f"models:/{NAME}@champion", "model_name": NAME,
        "min_rows": 10, "dataset": data.vision, "new_data": data.drifted, "epochs": 1,
        "imgsz": 64, "training_params": json.dumps(follow),
    }  # fmt: skip
    done = subprocess.run(
        cli_args("monitoring", "docker-monitoring", params), env={**os.environ, **env},
        capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run = read_run(runs_dir() / "docker-monitoring")
    assert run is not None and run.output("drift-check", "decision") == "drift"
    assert len(starts.images("docker-monitoring")) == len(
        [s for s in run.steps.values() if s.state == "succeeded"]
    )
    (submission,) = [s for s in list_submissions(settings) if s.key not in before]
    assert (submission.mode, submission.status) == ("docker", "submitted")
    assert submission.run_name == run.output("retrain", "run_name") and submission.pid

    retrained = follow_run(
        load_pipeline("training"), Path(submission.run_dir), submission.pid, lambda *_: None
    )
    assert retrained.status == "succeeded"
    assert retrained.params["extra_data"] == str(data.drifted)
    assert retrained.output("register-model", "version") == "2"
    assert len(starts.images(submission.run_name)) == len(TRAINING_STEPS)
    assert [s.key for s in list_submissions(settings) if s.key not in before] == [submission.key]


def test_docker_runs_and_the_docker_demo_need_an_mlflow_and_an_s3_server(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from visionops.cli.app import app

    result = CliRunner().invoke(app, ["pipeline", "run", "training", "--docker"])
    assert result.exit_code == 2
    assert "--docker runs every step in a container that keeps nothing on this machine: set " \
        "VISIONOPS_MLFLOW_TRACKING_URI (an MLflow server) and VISIONOPS_S3_ENDPOINT" in " ".join(
        result.output.split())  # fmt: skip
    both = CliRunner().invoke(app, ["pipeline", "run", "training", "--docker", "--local"])
    assert both.exit_code == 2 and "choose where to run: --local, --docker or --host URL" in (
        both.output
    )
    # The demo checks it before it generates anything (`demo --docker` runs these pipelines).
    out = tmp_path / "demo"
    demo = CliRunner().invoke(app, ["demo", "--docker", "--quick", "--out", str(out)])
    assert demo.exit_code == 2
    assert "set VISIONOPS_MLFLOW_TRACKING_URI (an MLflow server)" in " ".join(demo.output.split())
    assert not out.exists()  # nothing generated


def test_steps_get_the_hardened_runner_and_their_inputs_read_only(tmp_path: Path) -> None:
    from visionops.config import Settings
    from visionops.errors import DataError
    from visionops.orchestration.docker import absolute_paths, docker_runner, input_mounts

    data, outputs = tmp_path / "vision", tmp_path / "outputs"
    data.mkdir(mode=0o700), outputs.mkdir()
    with pytest.raises(DataError, match=f"{data}: not readable by uid 1000, the steps' user"):
        input_mounts({"dataset": str(data)}, outputs)
    data.chmod(0o755)
    settings = Settings(
        mlflow_tracking_uri="http://127.0.0.1:5000", s3_endpoint="http://127.0.0.1:9000",
        s3_access_key="key", s3_secret_key="secret",
    )  # fmt: skip
    params = absolute_paths({"dataset": str(data), "extra_data": "", "weights": "s3://b/w.pt"})
    mounts = input_mounts({**params, "inside": str(outputs)}, outputs)
    assert [(m["Source"], m["Target"], m["ReadOnly"]) for m in mounts] == [
        (str(data), str(data), True)
    ]
    args = docker_runner(settings, "run-x", mounts).container_run_args
    assert (args["user"], args["read_only"], args["network_mode"]) == ("1000:1000", True, "host")
    assert args["cap_drop"] == ["ALL"] and args["security_opt"] == ["no-new-privileges"]
    assert set(args["tmpfs"]) == {"/tmp"} and args["labels"]["io.visionops.run"] == "run-x"
    env = args["environment"]
    assert env["VISIONOPS_DATA_DIR"] == "/tmp/visionops" and env["HOME"] == "/tmp"
    assert env["VISIONOPS_LOCAL_RUNNER"] == "docker"
    assert env["VISIONOPS_S3_SECRET_KEY"] == "secret"  # the steps' S3 access, as the host's


def test_a_step_container_gone_before_its_exit_code_is_read_fails(tmp_path: Path) -> None:
    """kfp 2.17's DockerRunner returns exit code 0 when the auto-removed container is gone before
    `wait()` (a killed step whose removal won the race): without its executor output file the
    step is a failure, and its log says which outputs are missing."""
    import contextlib
    import io

    from kfp.local import config, docker_task_handler, status

    from visionops._compat.kfp import fail_steps_without_outputs

    outputs = tmp_path / "outputs"
    executor_input = {"outputs": {
        "outputFile": str(outputs / "executor_output.json"),
        "artifacts": {"model": {"artifacts": [{"uri": str(outputs / "model")}]}},
        "parameters": {"run_id": {"outputFile": str(outputs / "run_id")}},
    }}  # fmt: skip
    command = ["python3", "-m", "kfp.dsl.executor_main", "--executor_input",
               json.dumps(executor_input)]  # fmt: skip
    handler = docker_task_handler.DockerTaskHandler(
        image="img", full_command=command, pipeline_root=str(outputs),
        runner=config.DockerRunner(),
    )  # fmt: skip
    vanished = pytest.MonkeyPatch()
    vanished.setattr(docker_task_handler.docker, "from_env", lambda: _NoDocker())
    vanished.setattr(docker_task_handler, "run_docker_container", lambda **kwargs: 0)
    fail_steps_without_outputs()
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            assert handler.run() == status.Status.FAILURE
        outputs.mkdir()
        (outputs / "executor_output.json").write_text("{}")
        assert handler.run() == status.Status.SUCCESS  # the executor finished: success stands
    finally:
        vanished.undo()
    assert "ended without writing its outputs (executor_output.json, model, run_id)" in (
        printed.getvalue()
    )


class _NoDocker:
    """What kfp's handler asks of a Docker client before it runs the container."""

    def info(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        return None
