"""The three images as built by `make images` (hack/images.sh), and the predictor and MLflow images
run as the kind overlay runs them: what the engine was told, and what the container then does.

The serving contract itself (every protocol, bad input, metrics, reload, the three model sources)
runs against the predictor container in tests/test_serving_server.py and
tests/test_serving_sources.py; the pipeline image's steps in tests/test_pipeline_docker.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.containers import (
    IMAGES_SCRIPT,
    SESSION_PREFIX,
    images_env,
    inspect,
    memory_bytes,
    pod_container,
    predictor_container,
)
from tests.k8s import ROOT, find
from tests.servers import MlflowServer, Predictor, S3Server
from visionops.config import DEFAULT_MODEL_NAME as MODEL
from visionops.config import Settings

pytestmark = pytest.mark.slow

GB = 10**9


def images_script(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(IMAGES_SCRIPT), *args], capture_output=True, text=True, timeout=1800,
        env=images_env(**env), stdin=subprocess.DEVNULL,
    )  # fmt: skip


def image_id(ref: str) -> str:
    return subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Id}}", ref],
        capture_output=True, text=True, timeout=60,
    ).stdout.strip()  # fmt: skip


def test_images_are_named_as_the_overlay_and_pipelines_name_them_and_run_as_uid_1000(
    predictor_image: str, mlflow_image: str, kind_docs: list[dict]
) -> None:
    settings = Settings()
    assert predictor_image == settings.predictor_image == "localhost:5001/visionops-predictor:0.1.0"
    assert mlflow_image == settings.mlflow_image
    service = find(kind_docs, "InferenceService", "visionops-predictor")
    assert pod_container(service, "kserve-container")[1]["image"] == predictor_image
    mlflow = find(kind_docs, "Deployment", "mlflow")
    assert pod_container(mlflow, "mlflow")[1]["image"] == mlflow_image
    compiled = (ROOT / "pipelines" / "training.yaml").read_text()
    assert f"image: {settings.pipeline_image}" in compiled
    for ref in (predictor_image, mlflow_image):
        config = json.loads(
            subprocess.run(
                ["docker", "image", "inspect", "--format", "{{json .Config}}", ref],
                capture_output=True, text=True, timeout=60, check=True,
            ).stdout
        )  # fmt: skip
        assert config["User"] == "1000:1000", ref
    size = int(
        subprocess.run(
            ["docker", "image", "inspect", "--format", "{{.Size}}", predictor_image],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout
    )  # fmt: skip
    assert size <= 1 * GB, f"the predictor image is {size / 1e6:.0f} MB"


def test_images_rebuild_from_the_cache_and_print_their_sizes(predictor_image: str) -> None:
    before = image_id(predictor_image)
    again = images_script("predictor")
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr
    assert image_id(predictor_image) == before  # nothing changed: the same image
    assert "steps from the cache" in again.stdout
    assert f"{predictor_image}" in again.stdout.split("==> Images", 1)[1]
    assert " MB" in again.stdout.split("==> Images", 1)[1]


def test_a_failed_build_names_the_image_and_its_log_and_keeps_the_last_good_image(
    predictor_image: str, tmp_path: Path
) -> None:
    before = image_id(predictor_image)
    # A base no registry serves: the build fails at its first FROM, with a clear cause.
    failed = images_script(
        "predictor", PYTHON_IMAGE="127.0.0.1:1/no-such-base:0", IMAGES_LOG_DIR=str(tmp_path),
        VISIONOPS_IMAGE_TAG="broken-build-test",
    )  # fmt: skip
    assert failed.returncode == 1
    (line,) = failed.stderr.strip().splitlines()
    log = tmp_path / "visionops-predictor-broken-build-test.log"
    assert line == (
        "error: building localhost:5001/visionops-predictor:broken-build-test failed (exit 1); "
        f"log: {log}"
    )
    assert "dial tcp 127.0.0.1:1: connect: connection refused" in log.read_text()
    assert image_id("localhost:5001/visionops-predictor:broken-build-test") == ""
    assert image_id(predictor_image) == before


def test_without_an_engine_the_build_stops_in_one_line() -> None:
    missing = images_script("predictor", DOCKER_HOST="unix:///nonexistent/docker.sock")
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines() == [
        "error: building visionops-predictor needs a Docker engine, and none answers at "
        "unix:///nonexistent/docker.sock (as root: hack/docker-engine.sh start; "
        "README: Run in containers)"
    ]


@pytest.fixture(scope="module")
def predictor(
    predictor_image: str,
    kind_docs: list[dict],
    s3: S3Server,
    untrained_model: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Predictor]:
    from minio import Minio

    client = Minio(s3.endpoint.removeprefix("http://"), s3.access_key, s3.secret_key, secure=False)
    if not client.bucket_exists("containers-predictor"):
        client.make_bucket("containers-predictor")
    service = find(kind_docs, "InferenceService", "visionops-predictor")
    work = tmp_path_factory.mktemp("predictor-container")
    with predictor_container(
        service, work, s3=s3, bucket="containers-predictor", model_dir=untrained_model
    ) as server:
        yield server


def _container_of(server: Predictor) -> str:
    argv = server.proc.args
    assert isinstance(argv, list)
    return str(argv[argv.index("--name") + 1])


def test_the_predictor_container_gets_the_manifests_security_and_limits(
    predictor: Predictor, kind_docs: list[dict]
) -> None:
    _, spec = pod_container(
        find(kind_docs, "InferenceService", "visionops-predictor"), "kserve-container"
    )
    state = inspect(_container_of(predictor))
    host = state["HostConfig"]
    assert state["Config"]["User"] == "1000:1000"
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
    assert "no-new-privileges" in host["SecurityOpt"]
    assert host["Privileged"] is False
    assert host["NetworkMode"] == "host"
    assert host["Memory"] == memory_bytes(spec["resources"]["limits"]["memory"]) == 1 << 30
    assert host["NanoCpus"] == 1_000_000_000  # the kind overlay's cpu: "1"
    assert "/tmp" in host["Tmpfs"]
    (models,) = [m for m in state["Mounts"] if m["Destination"] == "/mnt/models"]
    assert models["RW"] is False
    args = state["Args"]
    assert "--model_name=visionops-yolov8n" in args and "--model-dir=/mnt/models" in args
    env = dict(e.split("=", 1) for e in state["Config"]["Env"])
    assert env["VISIONOPS_DATA_DIR"] == "/tmp/visionops" and env["HOME"] == "/tmp"


def test_the_predictor_container_cannot_write_outside_tmp_and_binds_loopback_only(
    predictor: Predictor,
) -> None:
    probe = (
        "import os\n"
        "def writable(path):\n"
        "    try:\n"
        "        open(path, 'w').close(); return True\n"
        "    except OSError:\n"
        "        return False\n"
        "print(os.getuid(), os.getgid(), writable('/probe'), writable('/opt/venv/probe'),"
        " writable('/mnt/models/probe'), writable('/tmp/probe'))\n"
    )
    done = subprocess.run(
        ["docker", "exec", _container_of(predictor), "python", "-c", probe],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.stdout.split() == ["1000", "1000", "False", "False", "False", "True"], done.stderr
    ports = {int(predictor.http.rsplit(":", 1)[1]), int(predictor.grpc.rsplit(":", 1)[1])}
    listening = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port = local.rsplit(":", 1)
            if state == "0A" and int(port, 16) in ports:
                listening[int(port, 16)] = address
    assert set(listening) == ports
    # 127.0.0.1 (gRPC listens on IPv6's mapped form of it), nothing else
    assert set(listening.values()) <= {"0100007F", "0000000000000000FFFF00000100007F"}, listening


def test_the_predictor_container_answers_tritonclient_over_http_and_grpc(
    predictor: Predictor,
) -> None:
    import numpy as np
    import tritonclient.http as httpclient

    from tests.images import encode, textured
    from tests.test_serving_server import GRPC_CLIENT, b64

    jpeg = encode(textured(240, 320, seed=3), ".jpg")
    client = httpclient.InferenceServerClient(predictor.http.removeprefix("http://"))
    tensor = httpclient.InferInput("image", [len(jpeg)], "UINT8")
    tensor.set_data_from_numpy(np.frombuffer(jpeg, np.uint8), binary_data=True)
    result = client.infer(MODEL, [tensor], parameters={"conf": 0.001})
    http_boxes = result.as_numpy("boxes")
    assert result.as_numpy("num_detections").tolist() == [len(http_boxes)] and len(http_boxes)
    client.close()
    call = {"call": "infer", "images": [b64(jpeg)], "parameters": {"conf": "0.001"}}
    done = subprocess.run(
        [sys.executable, str(GRPC_CLIENT), predictor.grpc, MODEL],
        input=json.dumps([call, {"call": "ready"}]), capture_output=True, text=True,
        timeout=120, check=True,
    )  # fmt: skip
    grpc_result, ready = json.loads(done.stdout)
    assert ready == {"ok": True, "value": True}
    assert grpc_result["ok"] and grpc_result["outputs"]["boxes"] == http_boxes.tolist()


def test_the_mlflow_container_stays_within_the_overlays_memory_limit(
    mlflow_in_container: MlflowServer, kind_docs: list[dict]
) -> None:
    """The overlay's MLflow once outgrew its 1 GiB limit before its first request (MLflow's job
    runner: 8 processes) and was OOM-killed; it runs as the Deployment says and keeps running."""
    _, spec = pod_container(find(kind_docs, "Deployment", "mlflow"), "mlflow")
    names = subprocess.run(
        ["docker", "ps", "--filter", f"name=^{SESSION_PREFIX}mlflow", "--format", "{{.Names}}"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout.split()  # fmt: skip
    assert len(names) == 1
    with httpx.Client(base_url=mlflow_in_container.url, timeout=60) as client:
        for _ in range(20):
            response = client.get("/api/2.0/mlflow/experiments/search?max_results=5")
            assert response.status_code == 200, response.text
    state = inspect(names[0])
    assert state["State"]["Running"] and not state["State"]["OOMKilled"]
    assert state["HostConfig"]["Memory"] == memory_bytes(spec["resources"]["limits"]["memory"])
    assert state["HostConfig"]["ReadonlyRootfs"] and state["Config"]["User"] == "1000:1000"
    stats = subprocess.run(
        ["docker", "stats", "--no-stream", "--format", "{{.MemUsage}}", names[0]],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    print(f"MLflow container memory: {stats.strip()}")


@pytest.mark.parametrize("required", [False, True], ids=["skipped", "required"])
def test_without_docker_container_tests_are_skipped_loudly_or_fail_when_required(
    required: bool, tmp_path: Path
) -> None:
    """No docker CLI on PATH (and so no engine to start): one loud header line, every container
    test skipped; with VISIONOPS_REQUIRE_DOCKER=1 (CI) they fail instead."""
    # Not CI: under CI=true the conftest fails any skip, and this checks the skip itself.
    env = {k: v for k, v in os.environ.items() if k not in ("VISIONOPS_REQUIRE_DOCKER", "CI")}
    env["PATH"] = str(tmp_path)  # nothing there: no docker, no dockerd
    if required:
        env["VISIONOPS_REQUIRE_DOCKER"] = "1"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs",
         f"{__file__}::test_images_rebuild_from_the_cache_and_print_their_sizes"],
        capture_output=True, text=True, timeout=300, env=env, cwd=ROOT,
    )  # fmt: skip
    header = [line for line in done.stdout.splitlines() if line.startswith("containers:")]
    assert len(header) == 1, done.stdout[-3000:]
    if required:
        assert header[0].startswith("containers: NO DOCKER ENGINE (the docker CLI is not installed")
        assert "FAIL (required)" in header[0]
        assert done.returncode == 1 and "1 error" in done.stdout, done.stdout[-3000:]
        assert "VISIONOPS_REQUIRE_DOCKER=1 makes that a failure" in done.stdout
    else:
        assert "every container test is SKIPPED" in header[0]
        assert done.returncode == 0 and "1 skipped" in done.stdout, done.stdout[-3000:]
        assert "SKIPPED [1]" in done.stdout and "no Docker engine: the docker CLI" in done.stdout
