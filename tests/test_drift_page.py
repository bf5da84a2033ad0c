"""The drift page a person reads first, rendered by headless Chromium (Debian `chromium`).

`visionops drift check --report-dir` on real feature tables (the simulator's brightness drift of
real generated images): the page's text is read from the DOM Chromium built (`--dump-dom`), its
screenshot must not be blank, and Chromium's network log must show no request leaving the file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests import headless_chromium
from tests.drift_data import PRODUCTS, DriftTables, build_drift_tables
from visionops.cli.app import app


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> DriftTables:
    return build_drift_tables(tmp_path_factory.mktemp("drift-page"), n_images=40)


@headless_chromium.needs_chromium
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

    rendered = headless_chromium.render(page, tmp_path / "chromium", width=1280, height=2400)
    dom = rendered.dom

    assert rendered.external() == []
    assert rendered.screenshot.std() > 10  # not a blank page
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
