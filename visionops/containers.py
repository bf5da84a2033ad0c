"""The project's images as containers on this machine's Docker engine, run as the cluster runs them.

Every container gets what the manifests give the pods: uid 1000, a read-only root filesystem, all
capabilities dropped, no privilege escalation, `/tmp` as a tmpfs, CPU and memory limits. Locally
they share the host's network and bind 127.0.0.1 only, so they reach (and are reached by) MLflow,
S3 and each other on 127.0.0.1, and nothing outside the machine reaches them.

Servers (the predictor, MLflow) run attached: `run_container` returns the `docker run` process,
whose output is the container's log and whose exit code is the container's. Pipeline steps run
through KFP's DockerRunner (`visionops/orchestration/docker.py`) with the same settings.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from visionops.config import Settings, get_settings
from visionops.errors import ContainerError

log = logging.getLogger(__name__)

UID = GID = 1000
USER = f"{UID}:{GID}"
TMPFS_OPTIONS = "rw,nosuid,nodev,mode=1777"
# Every container VisionOps starts carries this label (and a name with this prefix).
LABEL = "io.visionops.managed"


@dataclass(frozen=True)
class Mount:
    """A host path bound into a container (read-only unless said otherwise)."""

    source: Path
    target: str
    read_only: bool = True


@dataclass(frozen=True)
class ContainerSpec:
    """How to run one container: what `docker run` is given, nothing implicit."""

    image: str
    name: str
    args: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()  # empty: the image's ENTRYPOINT
    env: Mapping[str, str] = field(default_factory=dict)
    user: str = USER
    group_add: tuple[str, ...] = ()
    read_only: bool = True
    cap_drop_all: bool = True
    no_new_privileges: bool = True
    tmpfs: Mapping[str, str] = field(default_factory=lambda: {"/tmp": TMPFS_OPTIONS})
    cpus: float | None = None
    memory_bytes: int | None = None
    mounts: tuple[Mount, ...] = ()
    network: str = "host"

    def run_argv(self) -> list[str]:
        """`docker run` for this spec. Environment values are not on the command line (other
        users see it in `ps`): `--env NAME` takes each from the environment of `docker` itself,
        see `run_env`."""
        argv = [docker_binary(), "run", "--rm", "--name", self.name, "--label", f"{LABEL}=1"]
        argv += ["--network", self.network, "--user", self.user]
        for group in self.group_add:
            argv += ["--group-add", group]
        if self.read_only:
            argv.append("--read-only")
        if self.cap_drop_all:
            argv += ["--cap-drop", "ALL"]
        if self.no_new_privileges:
            argv += ["--security-opt", "no-new-privileges"]
        for path, options in self.tmpfs.items():
            argv += ["--tmpfs", f"{path}:{options}"]
        if self.cpus is not None:
            argv += ["--cpus", f"{self.cpus:g}"]
        if self.memory_bytes is not None:
            # The same for memory+swap: no swap, as in a pod.
            argv += ["--memory", str(self.memory_bytes), "--memory-swap", str(self.memory_bytes)]
        for mount in self.mounts:
            options = f"type=bind,source={mount.source},target={mount.target}"
            argv += ["--mount", options + (",readonly" if mount.read_only else "")]
        for name in self.env:
            argv += ["--env", name]
        if self.entrypoint:
            argv += ["--entrypoint", self.entrypoint[0]]
        argv.append(self.image)
        argv += [*self.entrypoint[1:], *self.args]
        return argv

    def run_env(self) -> dict[str, str]:
        """The environment of the `docker run` process: this one's, plus the container's values."""
        return {**os.environ, **self.env}


def docker_binary() -> str:
    """The docker CLI; ContainerError if it is not installed."""
    found = shutil.which("docker")
    if found is None:
        raise ContainerError(
            "the docker CLI is not installed (Debian: apt-get install docker.io; "
            "README: Run in containers)"
        )
    return found


def engine_problem() -> str | None:
    """Why no Docker engine can be used here, or None when one answers."""
    try:
        docker = docker_binary()
    except ContainerError as error:
        return str(error)
    try:
        done = subprocess.run(
            [docker, "version", "--format", "{{.Server.Version}}"],
            capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return "the Docker engine did not answer within 20 s"
    if done.returncode != 0:
        where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        reason = (done.stderr.strip().splitlines() or ["no answer"])[-1]
        return f"no Docker engine answers at {where} ({reason})"
    return None


def require_engine() -> None:
    """ContainerError in one line unless a Docker engine answers."""
    problem = engine_problem()
    if problem:
        raise ContainerError(
            f"{problem}; start one (as root: hack/docker-engine.sh start; "
            "README: Run in containers)"
        )


def image_present(ref: str) -> bool:
    done = subprocess.run(
        [docker_binary(), "image", "inspect", ref],
        capture_output=True, timeout=30, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    return done.returncode == 0


def require_images(*refs: str) -> None:
    """ContainerError naming the first image that is not built here."""
    require_engine()
    for ref in refs:
        if not image_present(ref):
            raise ContainerError(f"image {ref} is not built here: run `make images` first")


def run_container(spec: ContainerSpec, log_path: Path) -> subprocess.Popen[bytes]:
    """Start `spec` attached, its output appended to `log_path`; returns the `docker run`
    process (its exit code is the container's). Stop it with `stop_container`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    remove_container(spec.name)  # a leftover of an interrupted run would block the name
    log.info("container %s (%s), log %s", spec.name, spec.image, log_path)
    with log_path.open("ab") as output:
        return subprocess.Popen(
            spec.run_argv(), env=spec.run_env(), stdin=subprocess.DEVNULL, stdout=output,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def stop_container(name: str, process: subprocess.Popen[bytes], timeout: int = 20) -> int | None:
    """SIGTERM the container (SIGKILL after `timeout` s), wait for its `docker run`, make sure
    it is removed; returns its exit code (None if it could not be told)."""
    if process.poll() is None:
        with contextlib.suppress(subprocess.TimeoutExpired, ContainerError):
            subprocess.run(
                [docker_binary(), "stop", "--time", str(timeout), name],
                capture_output=True, timeout=timeout + 30, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    remove_container(name)
    return process.returncode


def remove_container(name: str) -> None:
    """Remove container `name` if it exists (running or not); quiet otherwise."""
    with contextlib.suppress(subprocess.TimeoutExpired, ContainerError):
        subprocess.run(
            [docker_binary(), "rm", "--force", name],
            capture_output=True, timeout=60, stdin=subprocess.DEVNULL,
        )  # fmt: skip


def writable_by_containers(path: Path) -> Path:
    """Create `path` and let uid 1000 write to it (owned by it when this process may chown,
    else open to all), as a pod's fsGroup would."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        os.chown(path, UID, GID)
        path.chmod(0o775)
    except PermissionError:
        path.chmod(0o777)
    return path


def readable_by_containers(path: Path) -> Path:
    """Make `path` (a file or a tree) readable by uid 1000, as KServe's storage initializer
    leaves a model directory: directories a+rx, files a+r."""
    targets = [path, *path.rglob("*")] if path.is_dir() else [path]
    for target in targets:
        mode = target.stat().st_mode
        target.chmod(mode | (0o555 if target.is_dir() else 0o444))
    return path


@contextlib.contextmanager
def running(spec: ContainerSpec, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`run_container` for the duration of a block; stopped and removed after it."""
    process = run_container(spec, log_path)
    try:
        yield process
    finally:
        stop_container(spec.name, process)


def image_refs(settings: Settings | None = None) -> dict[str, str]:
    """The images this machine runs, by role (the same references the cluster pulls)."""
    settings = settings or get_settings()
    return {
        "pipeline": settings.pipeline_image,
        "predictor": settings.predictor_image,
        "mlflow": settings.mlflow_image,
    }
