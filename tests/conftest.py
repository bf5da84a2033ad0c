"""Shared fixtures: an isolated data dir per session, offline settings, and a network guard.

The guard makes any connection to a non-loopback address fail inside the test process, so a
library that tries to reach the internet fails the test instead of passing quietly.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from visionops.bootstrap import disable_telemetry

# Before any test module imports onnxruntime or openvino: they read their opt-outs once, at import.
disable_telemetry()

from tests.faultproxy import FaultProxy  # noqa: E402
from tests.servers import (  # noqa: E402
    LabelStudio,
    MlflowServer,
    S3Server,
    mlflow_server,
    s3_server,
)

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _is_local(address: object) -> bool:
    if not isinstance(address, tuple) or not address:
        return True  # AF_UNIX paths and the like
    host = str(address[0])
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False  # a host name that would need DNS


def _guarded(real):  # type: ignore[no-untyped-def]
    def connect(self: socket.socket, address: object):  # type: ignore[no-untyped-def]
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_local(address):
            raise OSError(f"tests may only connect to 127.0.0.1; blocked {address!r}")
        return real(self, address)

    return connect


# No silent skips. A skipped test must say why (its reason is printed by `-ra`), and under CI
# (CI=true, as `.ci/run` runs in CI) a skip fails the run unless its reason starts with one of
# SKIPS_ALLOWED_IN_CI: there every tool and service the suite needs is installed and started,
# so a skip there means a check that silently did not run. Empty: CI allows no skip at all.
SKIPS_ALLOWED_IN_CI: dict[str, str] = {  # reason prefix -> why CI may skip it
    "pipeline image not built": "the 8 GB pipeline image takes about 16 min to build from an empty "
    "cache on 2 cores, beyond CI's 40-minute budget; `make test-containers` builds it and runs "
    "these tests (README: Run in containers)",
}
_DEFAULT_REASONS = ("", "unconditional skip")
_skips: list[tuple[str, str]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        _skips.append((report.nodeid, reason.removeprefix("Skipped: ").strip()))


def _unexpected_skips() -> list[tuple[str, str]]:
    in_ci = os.environ.get("CI", "").lower() in ("true", "1", "yes")
    return [
        (nodeid, reason)
        for nodeid, reason in _skips
        if reason in _DEFAULT_REASONS
        or (in_ci and not reason.startswith(tuple(SKIPS_ALLOWED_IN_CI)))
    ]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _unexpected_skips() and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    unexpected = _unexpected_skips()
    if unexpected:
        terminalreporter.section("skips that fail this run", sep="=", red=True, bold=True)
        terminalreporter.line(
            "A skip needs a reason, and under CI=true only the reasons in "
            "tests/conftest.py SKIPS_ALLOWED_IN_CI may skip:"
        )
        for nodeid, reason in unexpected:
            terminalreporter.line(f"SKIPPED {nodeid}: {reason or '(no reason given)'}")


@pytest.fixture(scope="session", autouse=True)
def offline_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point VISIONOPS_DATA_DIR at a temporary dir, bootstrap offline, guard the network."""
    from visionops.bootstrap import bootstrap
    from visionops.config import get_settings

    data_dir = tmp_path_factory.mktemp("visionops-data")
    saved = os.environ.copy()
    os.environ["VISIONOPS_DATA_DIR"] = str(data_dir)
    for key in [k for k in os.environ if k.startswith("VISIONOPS_") and k != "VISIONOPS_DATA_DIR"]:
        del os.environ[key]
    get_settings.cache_clear()
    bootstrap()
    socket.socket.connect = _guarded(_real_connect)  # type: ignore[method-assign]
    socket.socket.connect_ex = _guarded(_real_connect_ex)  # type: ignore[method-assign]
    try:
        yield data_dir
    finally:
        socket.socket.connect = _real_connect  # type: ignore[method-assign]
        socket.socket.connect_ex = _real_connect_ex  # type: ignore[method-assign]
        os.environ.clear()
        os.environ.update(saved)
        get_settings.cache_clear()


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Set VISIONOPS_* variables for one test; the settings cache is reset around it."""
    from visionops.config import get_settings

    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3 server (SeaweedFS) on 127.0.0.1 with credentials, shared by the session."""
    with s3_server(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture
def s3_settings(s3: S3Server, settings_env: pytest.MonkeyPatch, request: pytest.FixtureRequest):
    """Settings pointing at the session's S3 server, with a fresh bucket for this test."""
    from visionops.config import get_settings
    from visionops.storage import S3Store, s3_client

    bucket = "t-" + "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:50]
    bucket = bucket.strip("-")
    for key, value in s3.env(bucket).items():
        settings_env.setenv(key, value)
    get_settings.cache_clear()
    settings = get_settings()
    S3Store(s3_client(settings), bucket, endpoint=s3.endpoint).ensure_bucket()
    return settings


@pytest.fixture(scope="session")
def untrained_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory exported from an untrained YOLOv8n (3 classes, imgsz 320)."""
    from tests.models import untrained_model_dir

    return untrained_model_dir(tmp_path_factory.mktemp("models") / "untrained")


# Training and registry: an MLflow server with its artifacts in S3, a tiny YOLO dataset and one
# model trained on it against that server, shared by the training/evaluation/registry tests.


@pytest.fixture(scope="session")
def mlflow(s3: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A real `mlflow server` on 127.0.0.1 whose artifacts live in the session's S3 server."""
    with mlflow_server(tmp_path_factory.mktemp("mlflow"), s3) as server:
        yield server


def _mlflow_env(server: MlflowServer, name: str) -> dict[str, str]:
    return {
        **server.env(),
        "VISIONOPS_MODEL_NAME": name,
        "VISIONOPS_MLFLOW_EXPERIMENT": "tests",
        "VISIONOPS_GATE_MIN_MAP50": "0",  # models trained for seconds score about 0
        "VISIONOPS_MLFLOW_RETRIES": "1",
        "VISIONOPS_MLFLOW_BACKOFF": "0",
    }


@pytest.fixture
def mlflow_settings(mlflow: MlflowServer, settings_env: pytest.MonkeyPatch, request):
    """Settings pointing at the session's MLflow server, with a registered model of this test's."""
    from visionops.config import get_settings

    name = "m-" + "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:60]
    for key, value in _mlflow_env(mlflow, name.strip("-")).items():
        settings_env.setenv(key, value)
    get_settings.cache_clear()
    return get_settings()


@pytest.fixture(scope="session")
def tiny_data_yaml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data.yaml of a generated YOLO dataset: 2 products, 16 train and 8 val images."""
    from tests.trained import tiny_dataset

    return tiny_dataset(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def trained(mlflow: MlflowServer, tiny_data_yaml: Path):
    """One training run (2 epochs, imgsz 64) on the MLflow server, watched as it ran."""
    from tests.trained import train_observed
    from visionops.config import Settings, get_settings

    with pytest.MonkeyPatch.context() as patch:
        for key, value in _mlflow_env(mlflow, "session-model").items():
            patch.setenv(key, value)
        get_settings.cache_clear()
        settings = Settings()
        try:
            return train_observed(tiny_data_yaml, settings)
        finally:
            get_settings.cache_clear()


@pytest.fixture(scope="session")
def pushgateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus Pushgateway on 127.0.0.1 (its URL)."""
    from tests.servers import pushgateway_server

    with pushgateway_server(tmp_path_factory.mktemp("pushgateway")) as url:
        yield url


@pytest.fixture
def local_kfp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """KFP's local runner in this venv, outputs under this test's tmp dir (returned)."""
    from kfp import local

    monkeypatch.chdir(tmp_path)
    outputs = tmp_path / "outputs"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(outputs))
    return outputs


# Engines and INT8 (tests/test_engines.py, tests/test_quantize.py): a model that detects, trained
# through `visionops train` on generated shapes, so its directory carries the guarded INT8 variant.


@pytest.fixture(scope="session")
def detecting(tmp_path_factory: pytest.TempPathFactory):
    """(TrainResult, data.yaml) of a YOLOv8n trained until it detects (about 20 s of CPU)."""
    from tests.detecting import shapes_dataset, train_detector
    from visionops.config import get_settings

    data_yaml = shapes_dataset(tmp_path_factory.mktemp("shapes"))
    return train_detector(data_yaml, get_settings()), data_yaml


# Fault injection (tests/test_faults_*.py): servers of their own, since the tests kill them, with a
# fault-injecting proxy in front of each: VisionOps -> proxy -> mlflow server -> proxy -> S3.


@dataclass(frozen=True)
class FaultStack:
    """Real SeaweedFS and `mlflow server` processes, each behind a `FaultProxy`."""

    s3: S3Server  # SeaweedFS itself (`s3.process` kills and restarts it)
    s3_proxy: FaultProxy  # what MLflow and the predictor reach S3 through
    mlflow: MlflowServer  # `mlflow.process` kills and restarts it
    mlflow_proxy: FaultProxy  # what VisionOps reaches MLflow through

    @property
    def proxied_s3(self) -> S3Server:
        return S3Server(self.s3_proxy.url, self.s3.access_key, self.s3.secret_key)

    def heal(self) -> None:
        """Every fault off, every proxy listening, every server running."""
        for proxy in (self.s3_proxy, self.mlflow_proxy):
            proxy.forget()
            proxy.up()
        for process in (self.s3.process, self.mlflow.process):
            if process is not None and (process.proc is None or process.proc.poll() is not None):
                process.start()


@pytest.fixture(scope="session")
def fault_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    work = tmp_path_factory.mktemp("faults")
    with s3_server(work / "s3") as s3, FaultProxy(_port(s3.endpoint)) as s3_proxy:
        behind = S3Server(s3_proxy.url, s3.access_key, s3.secret_key)
        with (
            mlflow_server(work / "mlflow", behind) as server,
            FaultProxy(_port(server.url)) as mlflow_proxy,
        ):
            yield FaultStack(s3, s3_proxy, server, mlflow_proxy)


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


@pytest.fixture
def faults(fault_stack: FaultStack, settings_env: pytest.MonkeyPatch, request):
    """The fault stack for one test, healed afterwards; VisionOps points at it through the proxies
    (S3 too), with a registered model of this test's and short, bounded retries."""
    from visionops.config import get_settings

    name = "f-" + "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:60]
    bucket = name[:50].strip("-")
    env = {
        "VISIONOPS_MLFLOW_TRACKING_URI": fault_stack.mlflow_proxy.url,
        "VISIONOPS_MODEL_NAME": name.strip("-"),
        "VISIONOPS_MLFLOW_EXPERIMENT": "faults",
        "VISIONOPS_GATE_MIN_MAP50": "0",
        "VISIONOPS_MLFLOW_RETRIES": "1",
        "VISIONOPS_MLFLOW_BACKOFF": "0",
        **fault_stack.proxied_s3.env(bucket),
    }
    for key, value in env.items():
        settings_env.setenv(key, value)
    get_settings.cache_clear()
    from visionops.storage import S3Store, s3_client

    S3Store(s3_client(get_settings()), bucket, endpoint=fault_stack.s3_proxy.url).ensure_bucket()
    try:
        yield fault_stack
    finally:
        fault_stack.heal()


# Containers (tests/containers.py): the project's images on a Docker engine, run as the rendered
# kind overlay runs them. Skipped where no engine answers or can be started, failed instead when
# VISIONOPS_REQUIRE_DOCKER=1 (CI).


def pytest_report_header(config: pytest.Config) -> str:
    from tests.containers import REQUIRE_DOCKER, engine_status

    reason = engine_status()
    if reason is None:
        return "containers: a Docker engine answers or can be started: container tests run"
    if REQUIRE_DOCKER:
        return f"containers: NO DOCKER ENGINE ({reason}): container tests FAIL (required)"
    return f"containers: NO DOCKER ENGINE ({reason}): every container test is SKIPPED"


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[None]:
    """A Docker engine: the one that answers, or one this session starts (and stops after).
    Containers this session named are removed at the end; any left over fails the session."""
    from tests.containers import (
        REQUIRE_DOCKER,
        engine_status,
        session_leftovers,
        start_engine,
        stop_engine,
    )
    from visionops.containers import remove_container

    reason = engine_status()
    if reason is not None:
        hint = "" if "README" in reason else " (README: Run in containers)"
        message = f"no Docker engine: {reason}{hint}"
        if REQUIRE_DOCKER:
            pytest.fail(f"{message}; VISIONOPS_REQUIRE_DOCKER=1 makes that a failure")
        pytest.skip(message)
    started = start_engine()
    try:
        yield
        leftovers = session_leftovers()
        for entry in leftovers:
            remove_container(entry.split()[0])
        assert not leftovers, f"containers left behind by the tests: {leftovers}"
    finally:
        if started:
            stop_engine()


@pytest.fixture(scope="session")
def predictor_image(docker_engine: None) -> str:
    """The predictor image, built (or found current in the layer cache) by hack/images.sh."""
    from tests.containers import build_image

    return build_image("predictor")


@pytest.fixture(scope="session")
def mlflow_image(docker_engine: None) -> str:
    from tests.containers import build_image

    return build_image("mlflow")


@pytest.fixture(scope="session")
def pipeline_image(docker_engine: None) -> str:
    """The pipeline image, brought up to date from the cache where it is built (or where
    VISIONOPS_BUILD_PIPELINE_IMAGE=1 asks for the full build); else its tests skip, saying so."""
    from tests.containers import (
        BUILD_PIPELINE_IMAGE,
        PIPELINE_IMAGE_SKIP,
        build_image,
        image_present,
    )
    from visionops.config import Settings
    from visionops.containers import image_refs

    ref = image_refs(Settings())["pipeline"]
    if not (BUILD_PIPELINE_IMAGE or image_present(ref)):
        pytest.skip(
            f"{PIPELINE_IMAGE_SKIP}: no {ref} on this engine (8 GB, ~16 min from an empty cache); "
            "`make test-containers` builds it and runs these tests"
        )
    return build_image("pipeline")


@pytest.fixture(scope="session")
def kind_docs(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """The kind overlay, rendered by `kubectl kustomize` (the committed example secrets)."""
    from tests.k8s import example_tree, render

    return render("kind", example_tree(tmp_path_factory.mktemp("kind-tree")))


@pytest.fixture(scope="session")
def mlflow_in_container(
    mlflow_image: str, kind_docs: list[dict], s3: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MlflowServer]:
    """The MLflow image as the kind overlay's Deployment runs it, artifacts in the session's S3."""
    from tests.containers import mlflow_container
    from tests.k8s import find

    deployment = find(kind_docs, "Deployment", "mlflow")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == mlflow_image
    with mlflow_container(deployment, tmp_path_factory.mktemp("mlflow-container"), s3) as url:
        yield MlflowServer(url, "s3://mlflow/artifacts", s3)


# Label Studio (tests/test_labeling_studio.py): `visionops label studio` itself, started once from
# the virtualenv `make label-studio` installs (`make test` installs it first; CI fails on the skip).


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudio]:
    """A real Label Studio on 127.0.0.1 run by `visionops label studio`, its URL and token."""
    from tests.servers import label_studio_command

    with label_studio_command(tmp_path_factory.mktemp("label-studio")) as studio:
        yield studio
