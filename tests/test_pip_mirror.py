"""hack/pip_mirror.py: this machine's pip indexes, local ones served on 127.0.0.1 to image builds.

Run as hack/images.sh runs it (its own process, a pip configuration file, SIGTERM at the end),
against a PyPI-style index folder made here; the HTTP side is a real server on a free port.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import ModuleType

import pytest

from tests.k8s import ROOT
from tests.servers import free_port

SCRIPT = ROOT / "hack" / "pip_mirror.py"


@pytest.fixture(scope="module")
def mirror() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pip_mirror", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["pip_mirror"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_pips_precedence_is_kept_and_empty_values_ignored(mirror: ModuleType) -> None:
    listing = "\n".join([
        "global.extra-index-url='file:///a/simple https://mirror.example/simple'",
        "global.find-links='/opt/wheels'",
        "global.cert='/etc/ssl/certs/ca-certificates.crt'",
        "install.find-links='/srv/wheels'",
        ":env:.find-links=''",
        ":env:.index-url='https://proxy.example/simple'",
    ])  # fmt: skip
    assert mirror.effective(listing) == {
        "extra-index-url": "file:///a/simple https://mirror.example/simple",
        "find-links": "/srv/wheels",  # install over global; the empty env value ignored
        "index-url": "https://proxy.example/simple",  # cert: not the image's business
    }


def test_local_locations_are_served_first_and_credentials_never_become_build_args(
    mirror: ModuleType, tmp_path: Path
) -> None:
    (tmp_path / "pypi" / "simple").mkdir(parents=True)
    (tmp_path / "wheels").mkdir()
    settings = {
        "index-url": "https://user:secret@private.example/simple",
        "extra-index-url": f"https://mirror.example/simple file://{tmp_path}/pypi/simple "
        f"file://{tmp_path}/absent/simple",
        "find-links": str(tmp_path / "wheels"),
    }
    plan = mirror.plan(settings, "http://127.0.0.1:3141")
    assert plan.args == {
        "PIP_INDEX_URL": "http://127.0.0.1:3141/0/simple",
        "PIP_EXTRA_INDEX_URL": "https://mirror.example/simple",
        "PIP_FIND_LINKS": "http://127.0.0.1:3141/1/",
    }
    assert plan.roots == {"0": tmp_path / "pypi", "1": tmp_path / "wheels"}
    assert "secret" not in " ".join(plan.notes) + " ".join(plan.args.values())
    assert any("credentials" in note and "***@private.example" in note for note in plan.notes)
    assert any("absent/simple: it does not exist" in note for note in plan.notes)
    # PyPI alone (pip's default): nothing to pass, nothing to serve.
    assert mirror.plan({}, "http://127.0.0.1:3141").args == {}


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, b""


def _start_mirror(config: Path, args_file: Path, port: int, *extra: str) -> subprocess.Popen:
    """The mirror as hack/images.sh starts it, with `config` as pip's configuration; returns
    once it wrote its build arguments (it serves from then on) or ended."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = str(config)
    server = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--args-file", str(args_file), "--port", str(port), *extra],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not args_file.exists() and server.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    return server


def test_the_mirror_serves_the_index_read_only_and_nothing_outside_it(tmp_path: Path) -> None:
    index = tmp_path / "pypi"
    (index / "simple" / "demo").mkdir(parents=True)
    (index / "files").mkdir()
    (index / "files" / "demo-1.0-py3-none-any.whl").write_bytes(b"wheel bytes")
    (index / "simple" / "demo" / "index.html").write_text(
        '<a href="../../files/demo-1.0-py3-none-any.whl">demo-1.0-py3-none-any.whl</a>'
    )
    (tmp_path / "secret.txt").write_text("not for the build")
    (index / "files" / "escape").symlink_to(tmp_path / "secret.txt")
    config = tmp_path / "pip.conf"
    config.write_text(f"[global]\nextra-index-url = file://{index}/simple\n")
    args_file, port = tmp_path / "pip-args", free_port()
    server = _start_mirror(config, args_file, port)
    try:
        lines = args_file.read_text().splitlines()
        base = f"http://127.0.0.1:{port}/0"
        # Local first (pip prefers local files here; over HTTP only the order says so).
        assert f"PIP_INDEX_URL={base}/simple" in lines
        assert "PIP_EXTRA_INDEX_URL=https://pypi.org/simple" in lines
        assert any(line.startswith("# ") and str(index) in line for line in lines)
        status, page = _get(f"{base}/simple/demo/")
        assert status == 200 and b"demo-1.0-py3-none-any.whl" in page
        assert _get(f"{base}/files/demo-1.0-py3-none-any.whl") == (200, b"wheel bytes")
        assert _get(f"{base}/../secret.txt")[0] == 404
        assert _get(f"{base}/%2e%2e/secret.txt")[0] == 404
        assert _get(f"{base}/files/escape")[0] == 404  # a symlink out of the folder
        assert _get(f"http://127.0.0.1:{port}/9/simple/")[0] == 404
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0  # SIGTERM ends it cleanly


def test_the_mirror_stops_when_the_build_that_started_it_is_killed(tmp_path: Path) -> None:
    """A build killed with SIGKILL cannot stop its mirror: the mirror notices and stops itself,
    so the next build gets the fixed port again (the port is part of the layer cache's key)."""
    index = tmp_path / "pypi" / "simple"
    index.mkdir(parents=True)
    config = tmp_path / "pip.conf"
    config.write_text(f"[global]\nextra-index-url = file://{index}\n")
    args_file, port = tmp_path / "pip-args", free_port()
    build = subprocess.Popen(["sleep", "600"])  # stands for hack/images.sh
    server = _start_mirror(config, args_file, port, "--parent", str(build.pid))
    try:
        assert _get(f"http://127.0.0.1:{port}/0/simple/")[0] == 200
        assert server.poll() is None  # serves as long as the build runs
        build.kill()
        build.wait()
        assert server.wait(timeout=30) == 0
    finally:
        build.kill()
        server.kill()
        server.wait()
