"""Open an HTML file in headless Chromium (Debian `chromium`, `make tools`) as a person would.

One run takes a screenshot and records Chromium's network log (`--log-net-log`): the requests the
page made are those whose network isolation key is the file's origin (`file://`); Chromium's own
background requests (updates, accounts) carry other keys and are not the page's doing. A second
run dumps the DOM it parsed. Name resolution is mapped to nowhere so that a page which tries to
reach out fails here as it would offline, and the net log still names what it asked for.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

BINARY = "chromium"
_COMMON = (
    "--headless",
    "--no-sandbox",  # tests may run as root (CI, containers)
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--hide-scrollbars",
)


@dataclass(frozen=True)
class Rendered:
    """What Chromium made of a page."""

    dom: str
    requested: list[str]  # every URL the page asked for
    screenshot: np.ndarray  # RGB pixels

    def external(self) -> list[str]:
        """Requested URLs that are neither the file itself nor embedded data."""
        return sorted({u for u in self.requested if not u.startswith(("file:", "data:"))})


def available() -> bool:
    return shutil.which(BINARY) is not None


def render(page: Path, work: Path, *, width: int = 1400, height: int = 3000) -> Rendered:
    """Load `page` (a local file) in headless Chromium; raises if Chromium fails."""
    work.mkdir(parents=True, exist_ok=True)
    url = page.resolve().as_uri()
    profile = work / "profile"
    netlog = work / "netlog.json"
    shot = work / "screenshot.png"
    common = [BINARY, *_COMMON, f"--user-data-dir={profile}"]
    subprocess.run(
        [*common, f"--log-net-log={netlog}", "--net-log-capture-mode=Everything",
         f"--window-size={width},{height}", f"--screenshot={shot}", url],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    dom = subprocess.run(
        [*common, "--dump-dom", url], check=True, capture_output=True, text=True, timeout=120
    ).stdout
    log = json.loads(netlog.read_text(errors="replace"))
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    requested = [
        e["params"]["url"]
        for e in log.get("events", [])
        if e.get("type") == start_job
        and str(e.get("params", {}).get("network_isolation_key", "")).startswith("file://")
    ]
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB"))
    return Rendered(dom, requested, pixels)
