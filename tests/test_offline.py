"""Offline, proven below Python: `visionops doctor offline` and the opt-outs it checks.

The system test runs what a user runs (`visionops doctor offline --small`: a tiny training
pipeline run, both engines under traffic, a drift check; `make offline-check` runs the quick demo)
in a network namespace with only loopback up and a DNS recorder as the only name server, traced
with strace, and asserts that no process asked for a name or tried an address outside loopback.
The recorder is tested first on a command that does both, natively and from a child. These tests
need root, `unshare` and `strace`; without them they are skipped with one line, and with CI=true
they fail instead.

The opt-outs themselves are also checked without namespaces, by what the runtimes write when
their telemetry is on: ONNX Runtime's event cache in $HOME and OpenVINO's import of its sender.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from visionops.offline.dns_recorder import DnsRecorder, nxdomain_reply, parse_question
from visionops.offline.namespace import (
    CI_MARKERS,
    check_offline,
    clean_environment,
    run_offline,
    sandbox_problem,
)
from visionops.offline.syscall_log import read_trace

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sandbox() -> None:
    problem = sandbox_problem()
    if problem is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true, and the offline check cannot run here: {problem}")
    pytest.skip(f"OFFLINE CHECK NOT RUN (the network namespace test): {problem}")


def _env() -> dict[str, str]:
    """This environment without the opt-outs and CI markers; the project first on the path."""
    env = clean_environment(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def _query(name: str, query_id: int = 0x1234, qtype: int = 1) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    return (
        struct.pack("!HHHHHH", query_id, 0x0100, 1, 0, 0, 0)
        + labels
        + b"\0"
        + struct.pack("!HH", qtype, 1)
    )


# ---------------------------------------------------------------- the recorder's parts


def test_a_query_is_answered_nxdomain_with_its_id_and_question() -> None:
    message = _query("mobile.events.data.microsoft.com", query_id=0xBEEF, qtype=28)
    query_id, name, qtype, end = parse_question(message)
    assert (query_id, name, qtype) == (0xBEEF, "mobile.events.data.microsoft.com", "AAAA")

    reply = nxdomain_reply(message, end)

    reply_id, flags, questions, answers = struct.unpack("!HHHH", reply[:8])
    assert reply_id == 0xBEEF and flags & 0x8000 and flags & 0xF == 3  # a response, NXDOMAIN
    assert (questions, answers) == (1, 0) and reply[12:] == message[12:end]
    with pytest.raises(ValueError, match="shorter than a DNS header"):
        parse_question(b"\x00\x01")


def test_the_recorder_names_the_process_that_asked(tmp_path: Path) -> None:
    """A real recorder on a free loopback port, asked by a separate process over UDP and TCP."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    asker = (
        "import socket, struct, sys\n"
        f"message = {_query('telemetry.example.com')!r}\n"
        f"udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); udp.settimeout(5)\n"
        f"udp.sendto(message, ('127.0.0.1', {port}))\n"
        "udp_reply = udp.recv(512)\n"
        f"tcp = socket.create_connection(('127.0.0.1', {port}), timeout=5)\n"
        "tcp.sendall(struct.pack('!H', len(message)) + message)\n"
        "tcp_reply = tcp.recv(512)[2:]\n"
        "print(udp_reply[3] & 15, tcp_reply[3] & 15)\n"
    )
    with DnsRecorder("127.0.0.1", port) as recorder:
        asked = subprocess.run(
            [sys.executable, "-c", asker, "the-asker"], capture_output=True, text=True, timeout=30
        )
    assert asked.returncode == 0, asked.stderr
    assert asked.stdout.split() == ["3", "3"]  # NXDOMAIN over both transports
    assert [(q.name, q.transport) for q in recorder.queries] == [
        ("telemetry.example.com", "udp"),
        ("telemetry.example.com", "tcp"),
    ]
    for query in recorder.queries:
        assert query.pid is not None and "the-asker" in query.command


STRACE_LOG = """\
100 execve("/venv/bin/python", ["/venv/bin/python", "-m", "serving", "--engine", "openvino"], 0x7ffd /* 35 vars */) = 0
100 clone3({flags=CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_SIGHAND|CLONE_THREAD|CLONE_SYSVSEM|CLONE_SETTLS, child_tid=0x7f, parent_tid=0x7f, exit_signal=0, stack=0x7f, stack_size=0x7fff80, tls=0x7f} <unfinished ...>
101 connect(6, {sa_family=AF_INET, sin_port=htons(443), sin_addr=inet_addr("20.42.65.85")}, 16 <unfinished ...>
100 <... clone3 resumed> => {parent_tid=[101]}, 88) = 101
101 <... connect resumed>) = -1 ENETUNREACH (Network is unreachable)
101 clone(child_stack=NULL, flags=CLONE_CHILD_CLEARTID|CLONE_CHILD_SETTID|SIGCHLD, child_tidptr=0x7f) = 102
102 connect(7, {sa_family=AF_INET6, sin6_port=htons(80), sin6_flowinfo=htonl(0), inet_pton(AF_INET6, "2001:db8::1", &sin6_addr), sin6_scope_id=0}, 28) = -1 ENETUNREACH (Network is unreachable)
102 connect(8, {sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("127.0.0.53")}, 16) = 0
102 sendto(9, "\\x12\\x34", 2, 0, {sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("127.0.0.1")}, 16) = 2
102 sendto(10, "{sa_family=AF_INET, sin_port=htons(80), sin_addr=inet_addr(\\"192.0.2.9\\")}", 60, MSG_NOSIGNAL, NULL, 0) = 60
100 connect(11, {sa_family=AF_INET, sin_port=htons(8080), sin_addr=inet_addr("127.0.0.1")}, 16) = 0
100 connect(12, {sa_family=AF_INET6, sin6_port=htons(8081), sin6_flowinfo=htonl(0), inet_pton(AF_INET6, "::ffff:127.0.0.1", &sin6_addr), sin6_scope_id=0}, 28) = 0
100 connect(13, {sa_family=AF_UNIX, sun_path="/var/run/nscd/socket"}, 110) = -1 ENOENT (No such file or directory)
"""  # noqa: E501 (strace's lines, as it writes them)


def test_the_trace_names_threads_and_forked_children_and_ignores_loopback() -> None:
    summary = read_trace(STRACE_LOG.splitlines(), allowed_dns=("127.0.0.53", 53))

    command = "/venv/bin/python -m serving --engine openvino"
    found = [(c.pid, c.command, c.address, c.port) for c in summary.connections]
    assert found == [
        (100, command, "20.42.65.85", 443),  # a thread of 100, logged before its clone returned
        (102, command, "2001:db8::1", 80),  # a forked child, before it executes anything
        (102, command, "127.0.0.1", 53),  # DNS to a server other than the recorder
    ]
    assert summary.connections[0].result.startswith("-1 ENETUNREACH")
    assert summary.processes == 2


def test_the_check_runs_without_ci_markers_and_without_the_opt_outs() -> None:
    """Libraries stay quiet in CI on their own; the check must see what a user's machine does."""
    env = clean_environment(
        {"CI": "true", "PYTEST_CURRENT_TEST": "x", "ORT_DISABLE_TELEMETRY": "1", "HOME": "/h"}
    )
    assert env == {"HOME": "/h"}
    assert "GITHUB_ACTIONS" in CI_MARKERS and "TF_BUILD" in CI_MARKERS


def test_without_root_the_cli_says_so_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment probe answers as on a machine without root; the rest is the real CLI."""
    from visionops.cli.app import app

    monkeypatch.setattr(
        "visionops.offline.namespace.sandbox_problem", lambda: "needs root (a new namespace)"
    )
    result = CliRunner().invoke(app, ["doctor", "offline", "--", "true"])
    assert result.exit_code == 2
    assert "the offline check needs root (a new namespace)" in result.output


# ---------------------------------------------------------------- the opt-outs, by their traces


def _runtime_traces(home: Path, model: Path, opt_outs: bool) -> list[str]:
    """Load both engines in a fresh process with HOME=`home`; what the runtimes left there."""
    script = (
        "import sys\n"
        + ("from visionops.bootstrap import disable_telemetry; disable_telemetry()\n"
           if opt_outs else "")
        + "import onnxruntime as ort, openvino as ov\n"
        f"ort.InferenceSession({str(model)!r}, providers=['CPUExecutionProvider'])\n"
        f"ov.Core().compile_model({str(model)!r}, 'CPU')\n"
        "print(sys.modules.get('openvino_telemetry') is not None)\n"
    )  # fmt: skip
    env = {**_env(), "HOME": str(home)}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    sender_loaded = done.stdout.strip().splitlines()[-1] == "True"
    left = sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file())
    return (["openvino_telemetry imported"] if sender_loaded else []) + left


def test_the_opt_outs_leave_no_telemetry_state(untrained_model: Path, tmp_path: Path) -> None:
    """Without the opt-outs ONNX Runtime creates its device id and event cache and OpenVINO loads
    its sender (that is what phones home); with `disable_telemetry()` first, neither happens."""
    model = untrained_model / "model.onnx"
    (tmp_path / "on").mkdir()
    (tmp_path / "off").mkdir()

    on = _runtime_traces(tmp_path / "on", model, opt_outs=False)
    off = _runtime_traces(tmp_path / "off", model, opt_outs=True)

    assert "openvino_telemetry imported" in on
    assert any("DeveloperTools/.onnxruntime" in p for p in on), on
    assert off == []


def test_the_engines_switch_telemetry_off_themselves(untrained_model: Path) -> None:
    """Whoever creates a backend gets the opt-outs, bootstrap or not (`require_runtime`)."""
    script = (
        "import os, sys\n"
        "from visionops.inference.backends import create_backend\n"
        f"model = {str(untrained_model / 'model.onnx')!r}\n"
        "for engine in ('onnxruntime', 'openvino'): create_backend(engine, model, imgsz=320)\n"
        "print(os.environ.get('ORT_DISABLE_TELEMETRY'), sys.modules.get('openvino_telemetry'))\n"
    )  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=_env(), timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["1", "None"]


# ---------------------------------------------------------------- in the network namespace


def test_the_check_catches_lookups_and_connections_and_names_them(
    sandbox: None, tmp_path: Path
) -> None:
    """A command that does what telemetry does: a lookup from Python, one from a native program
    in a child, a connection out; and one to loopback, which is allowed."""
    leaky = tmp_path / "leaky.py"
    leaky.write_text(
        "import socket, subprocess\n"
        "try:\n    socket.getaddrinfo('example.com', 443)\nexcept OSError as e:\n    print(e)\n"
        "subprocess.run(['getent', 'hosts', 'telemetry.example.org'])\n"
        "try:\n    socket.create_connection(('192.0.2.7', 80), timeout=2)\n"
        "except OSError as e:\n    print(e)\n"
        "server = socket.create_server(('127.0.0.1', 0))\n"
        "socket.create_connection(server.getsockname(), timeout=2).close()\n"
    )
    report = run_offline([sys.executable, str(leaky)], tmp_path / "work", env=_env())

    assert report.exit_code == 0 and not report.clean
    asked = {(q.name, q.command.split()[0]) for q in report.dns_queries}
    assert ("example.com", sys.executable) in asked
    assert ("telemetry.example.org", "getent") in asked
    assert [(c.address, c.port, c.pid) for c in report.connections] == [
        ("192.0.2.7", 80, report.dns_queries[0].pid)
    ]
    problems = "\n".join(report.problems())
    assert f"DNS query for example.com (A) from process {report.dns_queries[0].pid}" in problems
    assert f"connect to 192.0.2.7 port 80 from process {report.dns_queries[0].pid}" in problems
    assert str(leaky) in problems and "ENETUNREACH" in problems


@pytest.mark.slow
@pytest.mark.timeout(1500)  # its own limit (below) comes first and still reports what it saw
def test_training_serving_on_both_engines_and_drift_stay_offline(
    sandbox: None, tmp_path: Path
) -> None:
    """`visionops doctor offline --small`, from an empty data dir: the training pipeline run
    locally (training, the INT8 guard compiling on both engines, evaluation, registration), the
    predictor on ONNX Runtime and on OpenVINO under traffic, a drift check recorded in MLflow.
    The quick demo (`make offline-check`) does the same and more, at three times the cost."""
    work = tmp_path / "offline"
    with (tmp_path / "output.log").open("wb") as output:
        report = check_offline(work, small=True, output=output, timeout=1200)
    text = (tmp_path / "output.log").read_text(errors="replace")

    assert report.exit_code == 0, text[-4000:]
    assert report.clean, "\n".join(report.problems())
    for engine in ("onnxruntime", "openvino"):
        answered = [line for line in text.splitlines() if f"predictor on {engine} answered" in line]
        assert answered and answered[-1].split()[-4] == answered[-1].split()[-2] != "0", answered
    assert "drift check: " in text and "(MLflow run None)" not in text
    (page,) = (work / "data").rglob("drift-check/drift_report.html")
    assert page.read_text().count("data:image/jpeg;base64,") == 12  # reference and current strips
    assert json.loads((work / "dns-queries.json").read_text()) == []
    assert report.processes > 10  # the pipeline's steps and both predictors were all traced
