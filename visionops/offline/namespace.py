"""Run a command with no route out and report every attempt it made to reach the network.

`run_offline` starts the command in a new network namespace in which only loopback is up, and a
new mount namespace in which `/etc/resolv.conf` names the DNS recorder on 127.0.0.53
(`dns_recorder.py`). The command runs under `strace -f`, which sees the connection attempts of
every process and thread it starts (`syscall_log.py`). Nothing is proven at the Python level:
native libraries and forked children are caught the same way.

Needs root (or CAP_SYS_ADMIN), `unshare` (util-linux) and `strace`. `python -m
visionops.offline.namespace` is the part that runs inside the namespaces.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from visionops.bootstrap import TELEMETRY_OFF
from visionops.errors import SandboxUnavailable
from visionops.offline.dns_recorder import DnsQuery, DnsRecorder
from visionops.offline.syscall_log import TRACED_CALLS, Connection, read_trace

RECORDER = ("127.0.0.53", 53)
TIMED_OUT = 124  # the exit code of a command stopped at its timeout, as timeout(1) reports it
BOOTSTRAP_DIRS = ("YOLO_CONFIG_DIR", "MPLCONFIGDIR", "TORCH_HOME")
# What the check runs when it is given no command: the quick demo, then OpenVINO under traffic,
# or with `small` the small loop (`visionops doctor offline-scenario`, in visionops/cli/doctor.py).
DEFAULT_SCENARIO = (sys.executable, "-m", "visionops", "doctor", "offline-scenario")
RESOLV_CONF = Path("/etc/resolv.conf")

# Variables by which libraries recognise a CI job or a test run and stay quiet on their own
# (ONNX Runtime, OpenVINO's and MLflow's telemetry): the check removes them, so it sees what a
# user's machine does, not what a CI job does.
CI_MARKERS = ("CI", "PYTEST_CURRENT_TEST", "GITHUB_ACTIONS", "GITLAB_CI", "CIRCLECI", "TRAVIS",
              "JENKINS_URL", "TF_BUILD", "BITBUCKET_BUILD_NUMBER", "CODEBUILD_BUILD_ARN",
              "CODEBUILD_BUILD_ID", "BUILDKITE", "TEAMCITY_VERSION", "APPVEYOR",
              "CLOUD_RUN_EXECUTION", "RUNBOT_HOST_URL", "RUNBOT_BUILD_NAME", "RUNBOT_WORKER_ID",
              "ORT_RUNNING_UNIT_TESTS")  # fmt: skip


@dataclass
class OfflineReport:
    """What a command did with the network while it ran with no route out."""

    command: list[str]
    exit_code: int
    dns_queries: list[DnsQuery] = field(default_factory=list)
    connections: list[Connection] = field(default_factory=list)
    processes: int = 0  # processes the trace saw (the command and everything it started)

    @property
    def clean(self) -> bool:
        """No name was looked up and no address outside loopback was tried."""
        return not self.dns_queries and not self.connections

    def problems(self) -> list[str]:
        """One line per distinct host a process tried to reach, naming the process."""
        lines: dict[str, int] = {}
        for query in self.dns_queries:
            who = f"process {query.pid} ({_short(query.command)})" if query.pid else "a process"
            line = f"DNS query for {query.name} ({query.qtype}) from {who}"
            lines[line] = lines.get(line, 0) + 1
        for attempt in self.connections:
            line = (
                f"{attempt.call} to {attempt.address} port {attempt.port} from process "
                f"{attempt.pid} ({_short(attempt.command) or '?'}): {attempt.result}"
            )
            lines[line] = lines.get(line, 0) + 1
        return [line if count == 1 else f"{line} [x{count}]" for line, count in lines.items()]


def _short(command: str, limit: int = 160) -> str:
    """A command line on one line, cut to `limit` characters."""
    flat = " ".join(command.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop the runner inside the namespaces: it stops every process left there (whatever
    session they started) and still writes what it recorded. SIGKILL after 60 s."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def sandbox_problem() -> str | None:
    """Why `run_offline` cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "needs root (a new network and mount namespace, strace of the whole tree)"
    for tool, package in (("unshare", "util-linux"), ("strace", "strace")):
        if shutil.which(tool) is None:
            return f"needs `{tool}` (apt-get install {package})"
    probe = subprocess.run(
        ["unshare", "--net", "--mount", "true"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        return f"cannot create a network namespace: {probe.stderr.strip() or probe.returncode}"
    if not RESOLV_CONF.exists():
        return f"{RESOLV_CONF} does not exist: nothing to point at the DNS recorder"
    return None


def clean_environment(base: Mapping[str, str]) -> dict[str, str]:
    """`base` without the CI markers and without the settings `visionops.bootstrap` makes (it ran
    in this process already): the check proves that the command makes them itself."""
    removed = {*CI_MARKERS, *TELEMETRY_OFF, *BOOTSTRAP_DIRS}
    return {key: value for key, value in base.items() if key not in removed}


def run_offline(
    command: Sequence[str],
    work_dir: Path,
    *,
    env: Mapping[str, str] | None = None,
    output: IO[bytes] | None = None,
    timeout: float | None = None,
) -> OfflineReport:
    """Run `command` with no network route and return what it tried to reach.

    `work_dir` receives the resolv.conf, the strace log and the recorded queries. `output`
    receives the command's stdout and stderr (default: this process's). Raises
    `SandboxUnavailable` where namespaces or strace are not available.
    """
    problem = sandbox_problem()
    if problem:
        raise SandboxUnavailable(f"the offline check {problem}")
    work_dir.mkdir(parents=True, exist_ok=True)
    resolv = write_resolv_conf(work_dir / "resolv.conf")
    trace, queries = work_dir / "strace.log", work_dir / "dns-queries.json"
    for stale in (trace, queries):
        stale.unlink(missing_ok=True)
    inner = [
        "unshare", "--net", "--mount", "--propagation", "private", "--",
        sys.executable, "-m", "visionops.offline.namespace", "--resolv-conf", str(resolv),
        "--trace", str(trace), "--queries", str(queries), "--", *command,
    ]  # fmt: skip
    environment = dict(os.environ if env is None else env)
    process = subprocess.Popen(
        inner, env=environment, stdout=output, stderr=subprocess.STDOUT if output else None,
        stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        exit_code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop(process)
        exit_code = TIMED_OUT  # what was recorded until then is still reported
    except BaseException:
        _stop(process)
        raise
    if not (trace.exists() and queries.exists()):  # the runner inside failed: nothing to trust
        raise SandboxUnavailable(
            f"the offline check could not run {command[0]} in its namespaces (exit {exit_code})"
        )
    return read_report(command, exit_code, trace, queries)


def write_resolv_conf(path: Path) -> Path:
    """A resolv.conf that sends every lookup to the recorder, once, with a short timeout."""
    path.write_text(f"nameserver {RECORDER[0]}\noptions timeout:1 attempts:1\n")
    path.chmod(0o644)
    return path


def strace_argv(
    trace: str | Path, command: Sequence[str], strace: Sequence[str] = ("strace",)
) -> list[str]:
    """`command` under `strace` (a command line that runs it), logging to `trace` every call
    `read_trace` reads, from every process and thread it starts."""
    return [
        *strace, "-f", "--seccomp-bpf", "-qq", "-e", "signal=none", "-s", "256",
        "-e", "trace=" + ",".join(TRACED_CALLS), "-o", str(trace), "--", *command,
    ]  # fmt: skip


def read_report(
    command: Sequence[str], exit_code: int, trace: Path, queries: Path
) -> OfflineReport:
    """The report of a run, from its strace log and the recorder's queries (a JSON list)."""
    recorded = json.loads(queries.read_text())
    with trace.open(errors="replace") as log:
        summary = read_trace(log, allowed_dns=RECORDER)
    return OfflineReport(
        command=list(command),
        exit_code=exit_code,
        dns_queries=[DnsQuery(**query) for query in recorded],
        connections=summary.connections,
        processes=summary.processes,
    )


def scenario(*, small: bool = False) -> tuple[str, ...]:
    """The command the check runs when it is given none: the quick demo and OpenVINO under
    traffic, or (`small`) the small loop."""
    return (*DEFAULT_SCENARIO, "--small") if small else DEFAULT_SCENARIO


def check_offline(
    work_dir: Path,
    command: Sequence[str] = (),
    *,
    small: bool = False,
    output: IO[bytes] | None = None,
    timeout: float | None = None,
) -> OfflineReport:
    """`visionops doctor offline`: `command`, or the default scenario (`small`: the small loop)
    from an empty data dir (`<work_dir>/data`, as on a fresh clone), run offline in this
    process's clean environment."""
    env = clean_environment(os.environ)
    if not command:
        command = scenario(small=small)
        shutil.rmtree(work_dir / "data", ignore_errors=True)
        env["VISIONOPS_DATA_DIR"] = str(work_dir / "data")
    return run_offline(command, work_dir, env=env, output=output, timeout=timeout)


# ---------------------------------------------------------------- inside the namespaces


def _loopback_up() -> None:
    """`ip link set lo up`, without needing iproute2."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(sock, siocgifflags, request))[1]
        fcntl.ioctl(sock, siocsifflags, struct.pack("16sh", b"lo", flags | iff_up))


def _bind_mount(source: Path, target: Path) -> None:
    ms_bind = 4096
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(str(source).encode(), str(target).encode(), None, ms_bind, None) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"cannot bind {source} over {target}: {os.strerror(error)}")


def _namespace_processes(keep: int) -> list[int]:
    """Every process in this network namespace but this one and `keep`."""
    mine, found = Path("/proc/self/ns/net").readlink(), []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and int(entry.name) not in (os.getpid(), keep):
            with contextlib.suppress(OSError):
                if Path(f"/proc/{entry.name}/ns/net").readlink() == mine:
                    found.append(int(entry.name))
    return found


def _stop_namespace(keep: int, grace: float = 20) -> None:
    """SIGTERM whatever the command left running here (a server in its own session, say), then
    SIGKILL what is still there after `grace` seconds: nothing outlives the check."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        left = _namespace_processes(keep)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = _namespace_processes(keep)
        if not left:
            return


def _running(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


class _Stopped(Exception):
    """SIGTERM from `run_offline` (its timeout, or Ctrl-C), or `run_offline`'s process died."""


def _stopped(signum: int, frame: object) -> None:
    raise _Stopped


def _traced_command(tracer: int, strace_exe: Path) -> int | None:
    """The command strace runs, once it has executed it. strace first forks short-lived probes of
    the kernel's ptrace features, which never execute anything: a child still running strace's
    own program is a probe, or the command not yet started."""
    children = Path(f"/proc/{tracer}/task/{tracer}/children")
    with contextlib.suppress(OSError, ValueError):
        for pid in children.read_text().split():
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/exe").readlink() != strace_exe:
                    return int(pid)
    return None


def _wait_for_command(tracer: subprocess.Popen[bytes]) -> None:
    """Until the command strace started has ended (strace itself waits for all its tracees,
    including servers the command left behind), or `run_offline`'s process is gone."""
    command, parent = None, os.getppid()
    strace_exe = Path(shutil.which("strace") or "strace").resolve()  # tracer may not run it yet
    while tracer.poll() is None:
        if os.getppid() != parent:
            raise _Stopped  # whoever asked for the check is gone: stop, leave nothing behind
        if command is None:
            command = _traced_command(tracer.pid, strace_exe)
        elif not _running(command):
            return
        time.sleep(0.2)


def _inside(arguments: argparse.Namespace) -> int:
    _loopback_up()
    _bind_mount(arguments.resolv_conf, RESOLV_CONF)
    strace = strace_argv(arguments.trace, arguments.command)
    signal.signal(signal.SIGTERM, _stopped)
    stopped = False
    with DnsRecorder(*RECORDER) as recorder:
        tracer = subprocess.Popen(strace)
        try:
            _wait_for_command(tracer)
        except _Stopped:
            stopped = True
        _stop_namespace(keep=tracer.pid)  # strace ends once its tracees have, with their status
        try:
            exit_code = tracer.wait(timeout=30)
        except subprocess.TimeoutExpired:
            tracer.kill()
            exit_code = tracer.wait()
    recorder.save(arguments.queries)
    return TIMED_OUT if stopped else exit_code


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The inside of `visionops doctor offline`.")
    parser.add_argument("--resolv-conf", type=Path, required=True)
    parser.add_argument("--trace", type=Path, required=True)
    parser.add_argument("--queries", type=Path, required=True)
    parser.add_argument("command", nargs="+")
    return _inside(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
