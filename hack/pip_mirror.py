"""This machine's pip index configuration, for image builds: local locations served over loopback.

`hack/images.sh` runs this before `docker build --network host`. It reads the index settings pip
uses here (`pip config list`: every pip.conf and `PIP_*` variable, merged as pip merges them:
`global`, then `install`, then the environment) and turns them into the `PIP_*` build arguments
the Dockerfiles declare:

- `index-url`, `extra-index-url`, `find-links`, `trusted-host`, `no-index`; nothing else (a
  host's `constraint` or `cert` is not the image's business);
- a `file://` index or a local find-links folder is served read-only over HTTP on 127.0.0.1 for
  as long as this process runs (an index from its parent folder, where mirrors keep the files its
  pages link to as `../../files/...`); nothing outside those folders is served, symlinks included;
- local locations are listed before remote ones: on this machine pip prefers a local file over an
  equal one from a remote index (local candidates come first), and over HTTP only the order
  carries that preference;
- a remote URL with credentials in it is left out, with a warning: build arguments are recorded
  in the image's history.

Usage: `python3 hack/pip_mirror.py --args-file F [--port P] [--pip PYTHON]`. It binds its port
(P when free, the same one each build so that Docker's layer cache still matches; else any free
one), writes F atomically: `# ` lines to show the user, then one `NAME=VALUE` per build argument,
then, if there is anything to serve, serves until SIGTERM; else exits 0.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

PYPI = "https://pypi.org/simple"
KEYS = ("index-url", "extra-index-url", "find-links", "trusted-host", "no-index")
SECTIONS = ("global", "install", ":env:")  # pip's order: a later section overrides


def pip_config(python: str) -> dict[str, str]:
    """The index settings of `python -m pip` here, after pip's own precedence; {} without pip."""
    try:
        done = subprocess.run(
            [python, "-m", "pip", "config", "list"],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if done.returncode != 0:
        return {}
    return effective(done.stdout)


def effective(listing: str) -> dict[str, str]:
    """`pip config list` output -> {key: value} for KEYS, a later section overriding an earlier
    one, empty values ignored (as pip ignores them)."""
    found: dict[tuple[str, str], str] = {}
    for line in listing.splitlines():
        name, sep, raw = line.partition("=")
        section, dot, key = name.rpartition(".")
        if not (sep and dot) or section not in SECTIONS or key not in KEYS:
            continue
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        if str(value).strip():
            found[section, key] = str(value).strip()
    settings: dict[str, str] = {}
    for section in SECTIONS:
        for (where, key), value in found.items():
            if where == section:
                settings[key] = value
    return settings


@dataclass
class Plan:
    """What the builds get: build arguments, folders to serve (URL prefix -> folder), notes."""

    args: dict[str, str] = field(default_factory=dict)
    roots: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def local_path(location: str) -> Path | None:
    """The local path of a `file://` URL or a plain path; None for a remote URL."""
    parsed = urllib.parse.urlparse(location)
    if parsed.scheme == "file":
        return Path(urllib.parse.unquote(parsed.path))
    if parsed.scheme in ("http", "https"):
        return None
    return Path(location).expanduser().absolute()


def has_credentials(location: str) -> bool:
    parsed = urllib.parse.urlparse(location)
    return parsed.scheme in ("http", "https") and "@" in parsed.netloc


def plan(settings: dict[str, str], base_url: str) -> Plan:
    """Build arguments for `settings` (see the module docstring), local locations under
    `base_url` (http://127.0.0.1:PORT)."""
    result = Plan()

    def serve(path: Path, index: bool) -> str | None:
        if not path.exists():
            result.notes.append(f"left out {path}: it does not exist")
            return None
        # An index is served from its parent folder: its pages link to files beside it.
        root, page = (path.parent, path.name) if index or path.is_file() else (path, "")
        prefix = str(len(result.roots))
        result.roots[prefix] = root.resolve()
        url = f"{base_url}/{prefix}/{urllib.parse.quote(page)}"
        result.notes.append(f"{path} -> {url} (read-only, for the build)")
        return url

    def translate(locations: list[str], index: bool) -> list[str]:
        local, remote = [], []
        for location in locations:
            path = local_path(location)
            if path is not None:
                if url := serve(path, index):
                    local.append(url)
            elif has_credentials(location):
                hidden = urllib.parse.urlparse(location)._replace(
                    netloc="***@" + location.split("@", 1)[1].split("/", 1)[0]
                )
                result.notes.append(
                    f"left out {hidden.geturl()}: credentials in a build argument are recorded "
                    "in the image's history (docker history)"
                )
            else:
                remote.append(location)
        return local + remote

    indexes = [settings.get("index-url", PYPI), *settings.get("extra-index-url", "").split()]
    translated = translate(indexes, index=True)
    if translated and translated != [PYPI]:  # else pip's default: nothing to pass
        result.args["PIP_INDEX_URL"] = translated[0]
        if translated[1:]:
            result.args["PIP_EXTRA_INDEX_URL"] = " ".join(translated[1:])
    if links := translate(settings.get("find-links", "").split(), index=False):
        result.args["PIP_FIND_LINKS"] = " ".join(links)
    if hosts := settings.get("trusted-host"):
        result.args["PIP_TRUSTED_HOST"] = hosts
    if settings.get("no-index", "").lower() in ("1", "true", "yes", "on"):
        result.args["PIP_NO_INDEX"] = "1"
    return result


class Handler(http.server.SimpleHTTPRequestHandler):
    """GET/HEAD of files and listings under the served folders only (`/<prefix>/<path>`)."""

    roots: ClassVar[dict[str, Path]] = {}

    def translate_path(self, path: str) -> str:
        parts = urllib.parse.unquote(urllib.parse.urlsplit(path).path).lstrip("/").split("/", 1)
        root = self.roots.get(parts[0])
        if root is None:
            return "/nonexistent"
        target = (root / (parts[1] if len(parts) > 1 else "")).resolve()
        if target != root and root not in target.parents:
            return "/nonexistent"  # `..` or a symlink out of the folder
        return str(target) + ("/" if path.endswith("/") else "")


def bind(port: int) -> socket.socket:
    """A listening socket on 127.0.0.1: `port` when free, else any free port."""
    for wanted in (port, 0):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # The previous build's connections linger in TIME_WAIT for a minute: without this, the
        # next build right after would get another port, and so miss the dependency layers' cache.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", wanted))
        except OSError:
            sock.close()
            continue
        sock.listen(64)
        return sock
    raise OSError("no free port on 127.0.0.1")


def write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    partial.replace(path)


def stop_with_parent(parent: int, server: http.server.ThreadingHTTPServer) -> None:
    """Shut the mirror down once process `parent` no longer exists."""
    while True:
        time.sleep(1)
        try:
            os.kill(parent, 0)
        except ProcessLookupError:
            server.shutdown()
            return
        except PermissionError:
            continue


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--args-file", type=Path, required=True)
    parser.add_argument("--port", type=int, default=3141)
    parser.add_argument("--pip", default=sys.executable, help="the python whose pip is read")
    parser.add_argument(
        "--parent",
        type=int,
        help="stop when this process is gone (a build killed with SIGKILL cannot stop its mirror, "
        "and a leftover on the port would make every later build miss the layer cache)",
    )
    options = parser.parse_args()

    settings = pip_config(options.pip)
    sock = bind(options.port)
    port = sock.getsockname()[1]
    result = plan(settings, f"http://127.0.0.1:{port}")
    notes = [f"pip here: {', '.join(f'{k}={v}' for k, v in settings.items()) or 'PyPI only'}"]
    notes += result.notes
    if result.roots and port != options.port:
        notes.append(f"port {options.port} is taken: {port}, the dependency layers rebuild")
    lines = [f"# {note}" for note in notes] + [f"{k}={v}" for k, v in result.args.items()]
    if not result.roots:
        sock.close()
        write_atomically(options.args_file, "\n".join(lines) + "\n")
        return 0

    Handler.roots = result.roots
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = sock
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    if options.parent:
        watcher = threading.Thread(target=stop_with_parent, args=(options.parent, server))
        watcher.daemon = True
        watcher.start()
    write_atomically(options.args_file, "\n".join(lines) + "\n")
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
