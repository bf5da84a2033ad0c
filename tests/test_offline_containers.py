"""Offline, proven below Python, for the images: the predictor and the pipeline steps run in their
containers with no network route, and nothing in them asks for a name or tries to leave loopback.

`visionops.offline.containers` runs an image as `tests/containers.py` runs it (the kind overlay's
args, env, uid 1000, read-only root, dropped capabilities, limits) in a network namespace with only
loopback (a `--network none` sandbox the container joins, as a pod's containers join its sandbox),
with the DNS recorder listening there before the container starts, `/etc/resolv.conf` naming it,
and the entrypoint under this machine's strace. The test's own traffic comes from that namespace.
What a pod reaches that a container with no route cannot (the in-cluster S3 service for the
prediction log) is a loopback port where nothing listens: the predictor spools the log, as it
does when MinIO is down.

Needs root, `nsenter` and `strace` besides a Docker engine: skipped with one line without them,
failed under CI=true. The pipeline image's test skips where that image is not built (as its other
tests do, tests/conftest.py SKIPS_ALLOWED_IN_CI).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from tests.containers import container_name, predictor_spec
from tests.k8s import find
from tests.servers import free_port
from visionops.config import DEFAULT_MODEL_NAME as MODEL

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sandbox() -> None:
    from visionops.offline.containers import container_sandbox_problem

    problem = container_sandbox_problem()
    if problem is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true, and the offline check of the images cannot run here: {problem}")
    pytest.skip(f"OFFLINE CHECK OF THE IMAGES NOT RUN: {problem}")


def _assert_offline(report: object, log: Path) -> None:
    assert report is not None, f"no report; log:\n{log.read_text(errors='replace')[-3000:]}"
    problems = "\n".join(report.problems())  # type: ignore[attr-defined]
    assert report.clean, f"network attempts with no route:\n{problems}"  # type: ignore[attr-defined]
    assert report.processes >= 1  # type: ignore[attr-defined]


def test_the_predictor_image_with_no_route_serves_and_asks_for_nothing(
    sandbox: None,
    predictor_image: str,
    kind_docs: list[dict],
    untrained_model: Path,
    tmp_path: Path,
) -> None:
    """The predictor as the InferenceService runs it, under v1, v2 and gRPC traffic and a
    metrics scrape on its engine (the image carries ONNX Runtime only), then SIGTERM: zero DNS
    queries, zero connection attempts outside loopback, and a clean exit."""
    from tests.images import encode, textured
    from tests.test_serving_server import GRPC_CLIENT, b64, v1_body, v2_body
    from visionops.offline.containers import offline_container

    service = find(kind_docs, "InferenceService", "visionops-predictor")
    # S3 as a loopback port with nothing behind it: the pod's MinIO is not reachable here.
    s3 = SimpleNamespace(endpoint=f"http://127.0.0.1:{free_port()}", access_key="k", secret_key="s")
    http_port, grpc_port = free_port(), free_port()
    spec = predictor_spec(
        service, tmp_path, s3=s3, bucket="offline", http_port=http_port, grpc_port=grpc_port,
        model_dir=untrained_model,
    )  # fmt: skip
    assert spec.read_only and spec.user == "1000:1000" and spec.memory_bytes == 1 << 30
    jpeg = encode(textured(240, 320, seed=5), ".jpg")
    url = f"http://127.0.0.1:{http_port}"

    def traffic() -> dict[str, object]:
        with httpx.Client(base_url=url, timeout=60) as client:
            for _ in range(600):
                try:
                    if client.get("/v2/health/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            v1 = client.post(f"/v1/models/{MODEL}:predict", json=v1_body(jpeg, conf=0.001))
            v2 = client.post(f"/v2/models/{MODEL}/infer", json=v2_body(jpeg, jpeg))
            bad = client.post(f"/v2/models/{MODEL}/infer", json={"inputs": []})
            scraped = client.get("/metrics")
        return {"v1": v1.status_code, "v2": v2.status_code, "bad": bad.status_code,
                "metrics": scraped.status_code, "v1_body": v1.json()}  # fmt: skip

    with offline_container(spec, tmp_path / "offline") as running:
        answers = running.in_network(traffic)
        calls = [{"call": "infer", "images": [b64(jpeg)], "parameters": {"conf": "0.001"}}]
        grpc = subprocess.run(
            running.netns_argv([sys.executable, str(GRPC_CLIENT), f"127.0.0.1:{grpc_port}", MODEL]),
            input=json.dumps(calls), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    log = running.log_path
    assert (answers["v1"], answers["v2"], answers["bad"], answers["metrics"]) == (
        200, 200, 400, 200,
    ), (answers, log.read_text(errors="replace")[-3000:])  # fmt: skip
    assert len(answers["v1_body"]["predictions"]) == 1  # type: ignore[index]
    assert grpc.returncode == 0 and json.loads(grpc.stdout)[0]["ok"], grpc.stderr[-2000:]
    _assert_offline(running.report, log)
    assert running.report is not None and running.report.exit_code == 0, log.read_text()[-3000:]
    assert running.command[:3] == ["python", "-m", "serving"]  # the image's own entrypoint ran
    # What MinIO could not take is on the spool volume, as on the cluster when MinIO is down.
    (spool,) = [m.source for m in spec.mounts if m.target == "/var/spool/visionops"]
    assert any(p.is_file() for p in spool.rglob("*")), "the prediction log was not spooled"


def test_the_pipeline_image_with_no_route_runs_the_training_pipeline_and_asks_for_nothing(
    sandbox: None, pipeline_image: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Every step of the training pipeline (fetch, validate, convert, train, evaluate with the
    INT8 guard, register into MLflow, deploy none) inside one pipeline-image container, as a
    step container runs (uid 1000, read-only root, tmpfs /tmp, the dataset read-only): no DNS
    query, no connection outside loopback. MLflow is the image's file store on the tmpfs."""
    from visionops.containers import ContainerSpec, Mount, readable_by_containers
    from visionops.demo import DemoConfig, DemoEvents, prepare_data
    from visionops.offline.containers import offline_container

    config = DemoConfig(products=2, train=8, val=8, inference=8, imgsz=64, drift_severity=1.0)
    data = prepare_data(config, tmp_path_factory.mktemp("offline-data"), DemoEvents())
    readable_by_containers(data.vision)
    params = {"dataset": data.vision, "epochs": 1, "imgsz": 64, "batch": 8, "min_map50": 0,
              "model_name": "offline-pipeline", "deploy_target": "none"}  # fmt: skip
    args = ["pipeline", "run", "training", "--local", "--run-name", "offline-training"]
    for key, value in params.items():
        args += ["-p", f"{key}={value}"]
    spec = ContainerSpec(
        image=pipeline_image, name=container_name("pipeline-offline"), entrypoint=("visionops",),
        args=tuple(args), env={"HOME": "/tmp", "VISIONOPS_DATA_DIR": "/tmp/visionops"},
        mounts=(Mount(data.vision, str(data.vision)),),
    )  # fmt: skip
    work = tmp_path_factory.mktemp("offline-pipeline")
    with offline_container(spec, work) as running:
        running.wait(timeout=1500)
    log = running.log_path
    text = log.read_text(errors="replace")
    assert running.report is not None and running.report.exit_code == 0, text[-4000:]
    _assert_offline(running.report, log)
    assert "offline-training" in text and "succeeded" in text, text[-3000:]
    assert running.report.processes > 5  # every step ran as its own traced process
