"""Open a page in headless Chromium (Debian `chromium`, `make tools`) as a person would.

A page is a local HTML file or a URL on 127.0.0.1 (a server a test started). One run takes a
screenshot and records Chromium's network log (`--log-net-log`); a second run dumps the DOM it
built. The requests the page made are those whose network isolation key is the page's own site
(`file://`, or `http://127.0.0.1`: Chromium keys by site, without the port); Chromium's own
background requests (updates, accounts) carry other keys and are not the page's doing. Name
resolution is mapped to nowhere (127.0.0.1 excepted) so that a page which tries to reach out
fails here as it would offline, and the net log still names what it asked for.

Every browser test takes `needs_chromium`: one skip, whose reason CI does not allow
(tests/conftest.py SKIPS_ALLOWED_IN_CI), so a CI run without Chromium fails instead of passing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

BINARY = "chromium"
SKIP_REASON = "chromium is not installed (make tools)"
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
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--disable-features=AutofillServerCommunication,OptimizationHints",
    "--hide-scrollbars",
)
CHROMIUM_SERVICES = ("https://content-autofill.googleapis.com/",)
"""Chromium's own requests made on a page's behalf (form autofill, a page with a form such as
MLflow's UI), carrying the page's key although the page never asked: not the page's."""


def available() -> bool:
    return shutil.which(BINARY) is not None


needs_chromium = pytest.mark.skipif(not available(), reason=SKIP_REASON)


@dataclass(frozen=True)
class Rendered:
    """What Chromium made of a page."""

    dom: str
    requested: list[str]  # every URL the page asked for
    screenshot: np.ndarray  # RGB pixels
    site: str  # the page's own site: `file://` or `http://127.0.0.1`

    def external(self) -> list[str]:
        """Requested URLs that are neither the page's site nor embedded data."""
        own = ("file:", "data:", "blob:", self.site, *CHROMIUM_SERVICES)
        return sorted({u for u in self.requested if u and not u.startswith(own)})


def _site(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return "file://" if parts.scheme == "file" else f"{parts.scheme}://{parts.hostname}"


def render(
    page: Path | str,
    work: Path,
    *,
    width: int = 1400,
    height: int = 3000,
    wait_ms: int | None = None,
) -> Rendered:
    """Load `page` (a local file, or a URL) in headless Chromium; raises if Chromium fails.

    `wait_ms`: virtual time to let scripts run before the screenshot and the DOM (a single-page
    app such as MLflow's UI builds its page after loading)."""
    work.mkdir(parents=True, exist_ok=True)
    url = page if isinstance(page, str) else page.resolve().as_uri()
    site = _site(url)
    netlog, shot = work / "netlog.json", work / "screenshot.png"
    common = [BINARY, *_COMMON, f"--user-data-dir={work / 'profile'}"]
    if wait_ms is not None:
        common.append(f"--virtual-time-budget={wait_ms}")
    subprocess.run(
        [*common, f"--log-net-log={netlog}", "--net-log-capture-mode=Everything",
         f"--window-size={width},{height}", f"--screenshot={shot}", url],
        check=True, capture_output=True, timeout=240,
    )  # fmt: skip
    dom = subprocess.run(
        [*common, "--dump-dom", url], check=True, capture_output=True, text=True, timeout=240
    ).stdout
    log = json.loads(netlog.read_text(errors="replace"))
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    starts = [e.get("params", {}) for e in log.get("events", []) if e.get("type") == start_job]
    requested = [
        str(p.get("url", "")) for p in starts if site in str(p.get("network_isolation_key", ""))
    ]
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB"))
    return Rendered(dom, requested, pixels, site)
