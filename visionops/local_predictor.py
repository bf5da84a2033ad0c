"""The KServe predictor as the demo runs it, on 127.0.0.1, and traffic through it.

`predictor` starts it on a registered model's champion (a process, or its image with `docker`)
with a prediction log, and stops its whole process group at the end; `send_images` posts images
(KServe v1, base64 JSON); `wait_for_log` waits until the log holds what was sent. The demo, the
small loop, `visionops doctor` and the end-to-end tests share them.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from visionops.config import get_settings
from visionops.containers import stop_container
from visionops.errors import PipelineError, VisionOpsError
from visionops.monitoring.collect import read_window
from visionops.monitoring.reference import image_files
from visionops.orchestration.docker import predictor_in_container
from visionops.orchestration.local import alive
from visionops.storage import LocalStore


def free_port() -> int:
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _http(url: str, body: bytes | None = None, timeout: float = 60) -> dict[str, Any]:
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read() or b"{}")


def stop_process(process: subprocess.Popen[bytes] | int, timeout: float = 20) -> None:
    """SIGTERM the process group (then SIGKILL after `timeout`); quiet if it is gone already."""
    pid = process if isinstance(process, int) else process.pid
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if isinstance(process, subprocess.Popen):
            if process.poll() is not None:
                return
        elif not alive(pid):
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


@contextmanager
def predictor(
    name: str, log_dir: Path, work: Path, engine: str = "onnxruntime", docker: bool = False
) -> Iterator[str]:
    """The KServe predictor on `models:/<name>@champion`, on 127.0.0.1 (`docker`: the predictor
    image); yields its URL."""
    port, grpc = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = work / "predictor.log"
    args = [
        "--model-uri", f"models:/{name}@champion", f"--model_name={name}", "--host", "127.0.0.1",
        f"--http_port={port}", f"--grpc_port={grpc}", "--prediction-log", str(log_dir),
        "--engine", engine,
    ]  # fmt: skip
    container = None
    if docker:
        container, process = predictor_in_container(get_settings(), args, log_dir, log_path)
    else:
        with log_path.open("ab") as output:
            process = subprocess.Popen(
                [sys.executable, "-m", "serving", *args], stdin=subprocess.DEVNULL, stdout=output,
                stderr=subprocess.STDOUT, env={**os.environ, "VISIONOPS_LOG_FLUSH_EVERY_S": "1"},
                start_new_session=True,
            )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                raise PipelineError(f"the predictor exited ({process.returncode}); see {log_path}")
            try:
                _http(f"{url}/v2/health/ready", timeout=2)
                break
            except OSError as error:
                if time.monotonic() > deadline:
                    raise PipelineError(
                        f"the predictor was not ready in 180 s; see {log_path}"
                    ) from error
                time.sleep(0.5)
        yield url
    finally:
        if container is None:
            stop_process(process)
        else:
            stop_container(container.name, process)


def send_images(url: str, name: str, images: list[Path], per_request: int = 8) -> int:
    """POST the images to the predictor (KServe v1, base64 JSON); returns how many it answered."""
    answered = 0
    for start in range(0, len(images), per_request):
        chunk = images[start : start + per_request]
        body = {
            "instances": [
                {"image": {"b64": base64.b64encode(p.read_bytes()).decode()}} for p in chunk
            ]
        }
        reply = _http(f"{url}/v1/models/{name}:predict", json.dumps(body).encode())
        answered += len(reply.get("predictions", []))
    return answered


def wait_for_log(log_dir: Path, start: datetime, end: datetime, count: int) -> None:
    """Wait until the prediction log holds `count` records of [start, end) (it flushes often)."""
    deadline = time.monotonic() + 60
    while len(read_window(LocalStore(log_dir), start, end)) < count:
        if time.monotonic() > deadline:
            raise PipelineError(f"the prediction log in {log_dir} did not reach {count} records")
        time.sleep(0.5)


def inference_folders(root: Path) -> list[Path]:
    """The inference split of every product of a VISION root: the images the demo sends."""
    return [product / "inference" for product in sorted(root.iterdir())
            if (product / "inference").is_dir()]  # fmt: skip


def inference_images(root: Path) -> list[Path]:
    return [p for folder in inference_folders(root) for p in image_files(folder)]


def served_version(url: str, name: str) -> str:
    try:
        return str(_http(f"{url}/v2/models/{name}")["parameters"]["model_version"])
    except (OSError, KeyError, VisionOpsError) as error:
        raise PipelineError(f"cannot ask the predictor which version it serves: {error}") from error
