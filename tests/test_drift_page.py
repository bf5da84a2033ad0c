"""The drift page a person reads first, rendered by headless Chromium (Debian `chromium`).

`visionops drift check --report-dir` on real feature tables (the simulator's brightness drift of
real generated images): the page's text is read from the DOM Chromium built (`--dump-dom`), its
screenshot must not be blank, and Chromium's network log must show no request leaving the file.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tests.drift_data import PRODUCTS, DriftTables, build_drift_tables
from visionops.cli.app import app

CHROMIUM = "chromium"
needs_chromium = pytest.mark.skipif(
    shutil.which(CHROMIUM) is None, reason="chromium is not installed (make tools)"
)


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> DriftTables:
    return build_drift_tables(tmp_path_factory.mktemp("drift-page"), n_images=40)


def _chromium(url: str, work: Path) -> tuple[str, np.ndarray, list[str]]:
    """(DOM text, screenshot pixels, URLs the page requested) of `url` in headless Chromium."""
    common = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--host-resolver-rules=MAP * ~NOTFOUND", "--hide-scrollbars",
        f"--user-data-dir={work / 'profile'}",
    ]  # fmt: skip
    netlog, shot = work / "netlog.json", work / "shot.png"
    subprocess.run(
        [*common, f"--log-net-log={netlog}", "--window-size=1280,2400", f"--screenshot={shot}",
         url],
        check=True, capture_output=True, timeout=180,
    )  # fmt: skip
    dom = subprocess.run(
        [*common, "--dump-dom", url], check=True, capture_output=True, text=True, timeout=180
    ).stdout
    log = json.loads(netlog.read_text(errors="replace"))
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    params = [e.get("params", {}) for e in log.get("events", []) if e.get("type") == start]
    requested = [
        p.get("url", "")
        for p in params
        if str(p.get("network_isolation_key", "")).startswith("file://")
    ]
    with Image.open(shot) as image:
        return dom, np.asarray(image.convert("RGB")), requested


@needs_chromium
def test_the_drift_page_says_what_drifted_and_renders_offline(
    tables: DriftTables, tmp_path: Path
) -> None:
    out = tmp_path / "report"
    result = CliRunner().invoke(app, [
        "drift", "check", "--reference", str(tables.reference), "--current", str(tables.drifted),
        "--report-dir", str(out), "--reference-images", str(tables.root / PRODUCTS[0] / "val"),
        "--current-images", str(tables.dark / PRODUCTS[0] / "inference"),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    decided = json.loads(result.stdout)
    assert decided["decision"] == "drift"
    page = out / "drift_report.html"

    dom, pixels, requested = _chromium(page.as_uri(), tmp_path / "chromium")

    assert [u for u in requested if not u.startswith(("file:", "data:"))] == []
    assert pixels.std() > 10  # not a blank page
    assert "VisionOps drift check: drift" in dom
    assert "Drift: production images no longer look like the data" in dom
    assert f"{decided['current_rows']:,} current, {decided['reference_rows']:,} reference" in dom
    # Drifted columns strongest first, each statistic in scientific notation with its meaning.
    drifted = sorted(
        (c for c in decided["columns"] if c["drifted"]), key=lambda c: c["effect"], reverse=True
    )
    positions = [dom.index(f"<b>{c['column']}</b>") for c in drifted]
    assert positions == sorted(positions) and "brightness_mean" in [c["column"] for c in drifted]
    top = drifted[0]
    assert f"ks p-value {top['score']:.2e}" in dom and "lower means more drift" in dom
    assert dom.count("<svg") >= len(drifted)  # a histogram per drifted column
    assert dom.count("data:image/jpeg;base64,") == 12  # six reference, six current thumbnails
    assert "Reference images" in dom and "Current images" in dom
    assert "Window" in dom and "not recorded (a table given by hand)" in dom
