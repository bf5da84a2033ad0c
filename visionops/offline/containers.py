"""Run one of the project's images with no network route and report every attempt to reach out.

The container runs as `visionops.containers` runs it (the same image, args, env, user, read-only
root, dropped capabilities, limits), with three changes that the check needs:

- its network is that of a "sandbox" container (`--network container:...`, as a pod's containers
  join the pod's sandbox) made with `--network none`: only loopback, no route. The DNS recorder
  (`dns_recorder.py`) listens in that namespace on 127.0.0.53, started there with `nsenter --net`
  before the container starts, so no lookup can come before it;
- `/etc/resolv.conf` is a read-only file naming the recorder;
- its entrypoint runs under this machine's `strace -f` (the binary and its libraries, mounted
  read-only: nothing is added to the image), which logs every connection attempt of every process
  and thread into a mounted folder (`syscall_log.py` reads it).

What it reports is the same `OfflineReport` as `visionops doctor offline` for host processes.
Traffic for the container comes from the same namespace: `OfflineContainer.in_network` runs a
function in a thread that joined it, `OfflineContainer.netns_argv` a command. Needs root,
`nsenter` (util-linux), `strace` and a Docker engine.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

from visionops.containers import (
    ContainerSpec,
    Mount,
    docker_binary,
    readable_by_containers,
    remove_container,
    run_container,
    stop_container,
    writable_by_containers,
)
from visionops.errors import ContainerError, SandboxUnavailable
from visionops.offline.namespace import (
    RECORDER,
    OfflineReport,
    read_report,
    strace_argv,
    write_resolv_conf,
)

T = TypeVar("T")

TOOLS_TARGET = "/opt/visionops-offline"  # strace and its libraries, read-only
TRACE_TARGET = "/var/log/visionops-offline"  # the strace log, the one folder it may write
CLONE_NEWNET = 0x40000000


def container_sandbox_problem() -> str | None:
    """Why `offline_container` cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "needs root (nsenter into a container's network namespace)"
    for tool, package in (("nsenter", "util-linux"), ("strace", "strace"), ("ldd", "libc-bin")):
        if shutil.which(tool) is None:
            return f"needs `{tool}` (apt-get install {package})"
    return None


def strace_tools(folder: Path) -> Path:
    """This machine's strace with every library it loads (its dynamic loader included) copied
    into `folder`, readable by the containers' user: it runs in any image, whatever its libc."""
    strace = Path(shutil.which("strace") or "strace").resolve()
    listed = subprocess.run(["ldd", str(strace)], capture_output=True, text=True, check=True)
    folder.mkdir(parents=True, exist_ok=True)
    for library in re.findall(r"(/\S+)", listed.stdout):
        shutil.copy(Path(library).resolve(), folder / Path(library).name)
    shutil.copy(strace, folder / "strace")
    loader = [p.name for p in folder.glob("ld-linux*")]
    if not loader:
        raise SandboxUnavailable(f"ldd names no dynamic loader for {strace}")
    (folder / "loader").write_text(loader[0])
    return readable_by_containers(folder)


def image_entrypoint(image: str) -> tuple[str, ...]:
    """The ENTRYPOINT of `image` (empty when it has none)."""
    done = subprocess.run(
        [docker_binary(), "image", "inspect", "--format", "{{json .Config.Entrypoint}}", image],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise ContainerError(f"image {image} is not built here: run `make images` first")
    return tuple(json.loads(done.stdout) or ())


def container_pid(name: str, timeout: float = 60) -> int:
    """The host pid of a running container's first process."""
    deadline = time.monotonic() + timeout
    while True:
        done = subprocess.run(
            [docker_binary(), "inspect", "--format", "{{.State.Pid}}", name],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        pid = int(done.stdout.strip() or 0) if done.returncode == 0 else 0
        if pid > 0:
            return pid
        if time.monotonic() > deadline:
            raise ContainerError(f"container {name} did not start within {timeout:.0f} s")
        time.sleep(0.1)


def _children(pid: int) -> list[int]:
    with contextlib.suppress(OSError, ValueError):
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


@dataclass
class OfflineContainer:
    """A container running with no route, its network namespace, and (once stopped) its report."""

    spec: ContainerSpec  # what runs (the traced entrypoint, the sandbox's network)
    command: list[str]  # what runs under strace: the image's entrypoint and the args
    netns_pid: int  # a process in the network namespace (the sandbox's)
    process: subprocess.Popen[bytes]  # `docker run`, attached
    log_path: Path
    report: OfflineReport | None = field(default=None)

    def netns_argv(self, argv: list[str]) -> list[str]:
        """`argv` run in the container's network namespace (and this machine's everything else)."""
        return ["nsenter", f"--target={self.netns_pid}", "--net", "--", *argv]

    def wait(self, timeout: float) -> int:
        """Until the container's command ends on its own; its exit code. ContainerError naming
        the log after `timeout` s (the block's end then stops it)."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ContainerError(
                f"{self.spec.name} still ran after {timeout:.0f} s; log: {self.log_path}"
            ) from None

    def in_network(self, function: Callable[[], T]) -> T:
        """`function()` in a thread that joined the container's network namespace: the sockets
        it opens reach the container's 127.0.0.1."""
        outcome: dict[str, object] = {}

        def run() -> None:
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                fd = os.open(f"/proc/{self.netns_pid}/ns/net", os.O_RDONLY)
                try:
                    if libc.setns(fd, CLONE_NEWNET) != 0:
                        error = ctypes.get_errno()
                        raise OSError(error, f"setns: {os.strerror(error)}")
                finally:
                    os.close(fd)
                outcome["value"] = function()
            except BaseException as error:  # handed to the caller's thread
                outcome["error"] = error

        thread = threading.Thread(target=run, name="in-container-network")
        thread.start()
        thread.join()
        if "error" in outcome:
            raise outcome["error"]  # type: ignore[misc]
        return outcome["value"]  # type: ignore[return-value]


def _stop_traced(name: str, process: subprocess.Popen[bytes], grace: float) -> int | None:
    """SIGTERM the traced command (strace, the container's first process, blocks the signals
    Docker sends it and ends with its command), SIGKILL after `grace`; its exit code."""
    if process.poll() is not None:
        return process.returncode
    with contextlib.suppress(ContainerError):
        tracer = container_pid(name, timeout=5)
        for child in _children(tracer):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)
    try:
        return process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        return stop_container(name, process, timeout=5)


@contextlib.contextmanager
def offline_container(
    spec: ContainerSpec, work_dir: Path, *, grace: float = 60
) -> Iterator[OfflineContainer]:
    """Run `spec` with no network route (module docstring) for the duration of the block; its
    `report` is set once the block ends and the container has stopped (SIGTERM to the command,
    SIGKILL after `grace` s). Raises `SandboxUnavailable` where the check cannot run."""
    problem = container_sandbox_problem()
    if problem:
        raise SandboxUnavailable(f"the offline check of {spec.image} {problem}")
    work_dir.mkdir(parents=True, exist_ok=True)
    resolv = write_resolv_conf(work_dir / "resolv.conf")
    tools = strace_tools(work_dir / "strace")
    trace_dir = writable_by_containers(work_dir / "trace")
    trace, queries = trace_dir / "strace.log", work_dir / "dns-queries.json"
    for stale in (trace, queries):
        stale.unlink(missing_ok=True)
    command = [*(spec.entrypoint or image_entrypoint(spec.image)), *spec.args]
    if not command:
        raise ContainerError(f"image {spec.image} has no entrypoint and no args were given")
    loader = f"{TOOLS_TARGET}/{(tools / 'loader').read_text()}"
    tracer = [loader, "--library-path", TOOLS_TARGET, f"{TOOLS_TARGET}/strace"]
    # The sandbox holds the network namespace, as a pod's sandbox does; it runs nothing.
    sandbox = replace(
        spec, name=f"{spec.name}-netns", entrypoint=("sleep",), args=("infinity",), env={},
        network="none", mounts=(), tmpfs={}, cpus=None, memory_bytes=64 << 20,
    )  # fmt: skip
    traced = replace(
        spec, network=f"container:{sandbox.name}",
        entrypoint=tuple(strace_argv(f"{TRACE_TARGET}/{trace.name}", command, tracer)), args=(),
        mounts=(
            *spec.mounts, Mount(resolv, "/etc/resolv.conf"), Mount(tools, TOOLS_TARGET),
            Mount(trace_dir, TRACE_TARGET, read_only=False),
        ),
    )  # fmt: skip
    sandbox_process = run_container(sandbox, work_dir / "sandbox.log")
    recorder: subprocess.Popen[str] | None = None
    process: subprocess.Popen[bytes] | None = None
    try:
        netns_pid = container_pid(sandbox.name)
        recorder = subprocess.Popen(
            ["nsenter", f"--target={netns_pid}", "--net", "--", sys.executable, "-m",
             "visionops.offline.dns_recorder", "--host", RECORDER[0], "--port", str(RECORDER[1]),
             "--queries", str(queries)],
            stdout=subprocess.PIPE, stderr=(work_dir / "recorder.log").open("ab"), text=True,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        if recorder.stdout is None or recorder.stdout.readline().strip() != "ready":
            raise SandboxUnavailable(
                f"the DNS recorder did not start in {sandbox.name}'s network namespace; "
                f"log: {work_dir / 'recorder.log'}"
            )
        log_path = work_dir / f"{spec.name}.log"
        process = run_container(traced, log_path)
        running = OfflineContainer(traced, command, netns_pid, process, log_path)
        yield running
        exit_code = _stop_traced(traced.name, process, grace)
        recorder.send_signal(signal.SIGTERM)
        recorder.wait(timeout=30)
        if not (trace.exists() and queries.exists()):
            raise SandboxUnavailable(
                f"the offline check of {spec.image} recorded nothing (exit {exit_code}); "
                f"log: {log_path}"
            )
        running.report = read_report(
            command, -1 if exit_code is None else exit_code, trace, queries
        )
    finally:
        if process is not None and process.poll() is None:
            stop_container(traced.name, process, timeout=5)
        remove_container(traced.name)
        if recorder is not None and recorder.poll() is None:
            recorder.kill()
            recorder.wait(timeout=30)
        stop_container(sandbox.name, sandbox_process, timeout=1)
