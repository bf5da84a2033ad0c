"""A local Label Studio for `visionops label studio`: its own virtualenv, 127.0.0.1, offline.

Label Studio pins packages that clash with ours, so it runs from `make label-studio`'s virtualenv
(`VISIONOPS_LABEL_STUDIO_VENV`, default `.label-studio/`) as a child process, never imported. It
listens on 127.0.0.1 only, with its phone-home switched off (Sentry, the PyPI version check,
usage analytics; feature flags from its own file), sign-up without an invite off, and `HOST`
removed from its environment (it expects a URL there).

The admin account is generated once per data dir and kept in `<data dir>/visionops-admin.json`
(mode 0600) with its API token: a personal access token (Label Studio 1.23 turns legacy tokens
off), created through the API with the admin's session and re-created when it no longer works. A
new data dir starts from the migrated empty database the install made (`<venv>/template/`), which
saves the minutes its migrations take on two cores.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import requests

from visionops.errors import LabelStudioError, UsageError

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
ADMIN_FILE = "visionops-admin.json"
DATABASE = "label_studio.sqlite3"
LOG_FILE = "label-studio.log"
ADMIN_EMAIL = "admin@visionops.local"
# Read by Label Studio's settings (each also without the prefix; the prefixed name wins).
OFFLINE_ENV = {
    "LABEL_STUDIO_SENTRY_DSN": "",
    "LABEL_STUDIO_FRONTEND_SENTRY_DSN": "",
    "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",
    "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
    "LABEL_STUDIO_FEATURE_FLAGS_OFFLINE": "true",
    "LABEL_STUDIO_CONVERTER_DOWNLOAD_RESOURCES": "false",
    "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
}
REMOVED_ENV = ("HOST", "LABEL_STUDIO_HOST", "HEARTEX_HOST")


@dataclass(frozen=True)
class Admin:
    """The generated admin account and its API token (a personal access token)."""

    email: str
    password: str
    token: str = ""


@dataclass
class Studio:
    """A running Label Studio: where it answers, who administers it, its process and log."""

    url: str
    data_dir: Path
    admin: Admin
    process: subprocess.Popen[bytes]
    log_path: Path

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM to its process group, SIGKILL after `timeout` s; its exit code."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            except ProcessLookupError:
                pass
        return int(self.process.returncode or 0)


def executable(venv: Path) -> Path:
    """The `label-studio` script of the virtualenv; UsageError naming the install target."""
    script = Path(venv).expanduser().absolute() / "bin" / "label-studio"
    if not script.is_file():
        raise UsageError(
            f"Label Studio is not installed in {Path(venv)}: run `make label-studio` "
            "(or point VISIONOPS_LABEL_STUDIO_VENV at its virtualenv)"
        )
    return script


def port_in_use(port: int) -> bool:
    with closing(socket.socket()) as probe:
        try:
            probe.bind((HOST, port))
        except OSError:
            return True
    return False


def studio_environment(data_dir: Path, admin: Admin, base: dict[str, str]) -> dict[str, str]:
    """Label Studio's environment: `base` without HOST, offline, the data dir and the admin."""
    env = {k: v for k, v in base.items() if k not in REMOVED_ENV}
    env.update(OFFLINE_ENV)
    env.update(
        LABEL_STUDIO_BASE_DATA_DIR=str(data_dir),
        LABEL_STUDIO_USERNAME=admin.email,
        LABEL_STUDIO_PASSWORD=admin.password,
        PYTHONUNBUFFERED="1",
    )
    return env


def load_admin(data_dir: Path) -> Admin:
    """The data dir's admin, generated (and kept, 0600) the first time."""
    path = data_dir / ADMIN_FILE
    if path.is_file():
        saved = json.loads(path.read_text())
        return Admin(saved["email"], saved["password"], saved.get("token", ""))
    admin = Admin(ADMIN_EMAIL, secrets.token_urlsafe(18))
    _save_admin(data_dir, admin)
    return admin


def _save_admin(data_dir: Path, admin: Admin) -> None:
    path = data_dir / ADMIN_FILE
    temp = path.with_name(f".{path.name}.tmp")
    temp.unlink(missing_ok=True)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({"email": admin.email, "password": admin.password, "token": admin.token}, handle)
    temp.replace(path)


def start_studio(venv: Path, data_dir: Path, port: int, *, timeout: float = 600) -> Studio:
    """Start Label Studio on 127.0.0.1:`port` with `data_dir`, wait for /health, make sure the
    admin has a working API token; the running Studio (stop it with `Studio.stop`)."""
    script = executable(venv)
    if not 0 < port < 65536:
        raise UsageError(f"--port must be 1..65535, got {port}")
    if port_in_use(port):  # Label Studio would quietly move to another port
        raise UsageError(f"port {port} on {HOST} is in use; choose another --port")
    data_dir = Path(data_dir).expanduser().absolute()
    data_dir.mkdir(parents=True, exist_ok=True)
    template = script.parent.parent / "template" / DATABASE
    if not (data_dir / DATABASE).exists() and template.is_file():
        shutil.copyfile(template, data_dir / DATABASE)
    admin = load_admin(data_dir)
    log_path = data_dir / LOG_FILE
    argv = [str(script), "start", "--no-browser", "--port", str(port), "--internal-host", HOST]
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            argv, cwd=data_dir, env=studio_environment(data_dir, admin, dict(os.environ)),
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    studio = Studio(f"http://{HOST}:{port}", data_dir, admin, process, log_path)
    try:
        _wait_healthy(studio, timeout)
        studio.admin = ensure_token(studio.url, admin)
        if studio.admin != admin:
            _save_admin(data_dir, studio.admin)
    except BaseException:
        studio.stop()
        raise
    return studio


def _wait_healthy(studio: Studio, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if studio.process.poll() is not None:
            tail = studio.log_path.read_text(errors="replace")[-1500:]
            raise LabelStudioError(
                f"Label Studio exited with {studio.process.returncode} before it answered "
                f"(log {studio.log_path}):\n{tail}"
            )
        try:
            if requests.get(studio.url + "/health", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise LabelStudioError(
        f"Label Studio did not answer {studio.url}/health within {timeout:.0f} s "
        f"(log {studio.log_path})"
    )


def ensure_token(url: str, admin: Admin, *, timeout: float = 30) -> Admin:
    """`admin` with a personal access token that Label Studio accepts: the saved one if it still
    works, else a new one made with the admin's session (older ones revoked first)."""
    if admin.token:
        answer = requests.post(
            f"{url}/api/token/refresh/", json={"refresh": admin.token}, timeout=timeout
        )
        if answer.status_code == 200:
            return admin
    with requests.Session() as session:
        session.get(f"{url}/user/login/", timeout=timeout)
        login = session.post(
            f"{url}/user/login/",
            data={"email": admin.email, "password": admin.password,
                  "csrfmiddlewaretoken": session.cookies.get("csrftoken", "")},
            allow_redirects=False, timeout=timeout,
        )  # fmt: skip
        if login.status_code != 302:
            raise LabelStudioError(
                f"Label Studio at {url} refused the saved admin {admin.email} (HTTP "
                f"{login.status_code}); its password is in {ADMIN_FILE} of the data dir"
            )
        headers = {"X-CSRFToken": session.cookies.get("csrftoken", "")}
        for old in session.get(f"{url}/api/token/", timeout=timeout).json():
            session.post(
                f"{url}/api/token/blacklist/", json={"refresh": old["token"]}, headers=headers,
                timeout=timeout,
            )  # fmt: skip
        made = session.post(f"{url}/api/token/", headers=headers, timeout=timeout)
        if made.status_code != 201:
            raise LabelStudioError(
                f"Label Studio at {url} did not make an API token: HTTP {made.status_code}"
            )
        return Admin(admin.email, admin.password, str(made.json()["token"]))
