"""The drift page a person reads first, rendered by headless Chromium (Debian `chromium`).

`visionops drift check --report-dir` on real feature tables (the simulator's brightness drift of
real generated images): the page's text is read from the DOM Chromium built (`--dump-dom`), its
screenshot must not be blank, and Chromium's network log must show no request leaving the file.
The thumbnails come from folders given by hand, or, as in the monitoring pipeline, from the
registered reference's evaluation and the images the predictor kept of the window.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from tests import headless_chromium
from tests.drift_data import PRODUCTS, DriftTables, build_drift_tables
from visionops.cli.app import app
from visionops.config import get_settings
from visionops.data.tables import FeatureTableReader
from visionops.data.thumbnails import write_thumbnails
from visionops.monitoring.drift_images import window_image_keys
from visionops.monitoring.log_layout import IMAGE_KEY
from visionops.monitoring.reference import image_files
from visionops.storage import LocalStore


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> DriftTables:
    return build_drift_tables(tmp_path_factory.mktemp("drift-page"), n_images=40)


def test_a_p_value_at_the_tests_floor_is_said_as_at_most() -> None:
    """scipy reports Anderson-Darling's p-value as 0.001 for anything smaller: the page says "at
    most" there and the number elsewhere; KS has no floor, not even at 0."""
    from visionops.monitoring.drift import ColumnDrift
    from visionops.monitoring.drift_page import meaning

    def said(method: str, score: float) -> str:
        return meaning(ColumnDrift("contrast", "numerical", method, 0.01, score, True))

    assert said("anderson", 0.001).startswith("anderson p-value at most 1.00e-03: the chance")
    assert said("anderson", 0.0459).startswith("anderson p-value 4.59e-02: the chance")
    assert said("ks", 0.0).startswith("ks p-value 0.00e+00: the chance")
    assert said("ks", 0.001).startswith("ks p-value 1.00e-03: the chance")


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
    assert (top["method"], top["score"]) == ("anderson", 0.001)  # scipy's floor: "at most"
    assert "anderson p-value at most 1.00e-03" in dom and "lower means more drift" in dom
    assert dom.count("<svg") >= len(drifted)  # a histogram per drifted column
    assert dom.count("data:image/jpeg;base64,") == 12  # six reference, six current thumbnails
    assert "Reference images <small>(given: " in dom and "Current images <small>(given: " in dom
    assert "Window" in dom and "not recorded (a table given by hand)" in dom


DAY = "images/dt=2026-12-08"


def _kept_window(tables: DriftTables, work: Path) -> tuple[Path, Path, list[str | None]]:
    """The drifted window as collect writes it once the predictor keeps images (LOOP-CONTRACT
    item 1): each record's `image_key` names the bytes sent, below the log's store root. Every
    third record kept nothing; one kept image is gone (retention deleted its day)."""
    store = LocalStore(work / "log")
    frame = pd.read_parquet(tables.drifted)
    per_product = len(frame) // len(PRODUCTS)
    keys: list[str | None] = []
    for row, name in enumerate(frame["file_name"]):
        data = (tables.dark / PRODUCTS[row // per_product] / "inference" / name).read_bytes()
        key = f"{DAY}/{hashlib.sha256(data).hexdigest()}{Path(name).suffix}"
        store.write_bytes(key, data)
        keys.append(None if row % 3 == 2 else key)
    keys[1] = f"{DAY}/{'0' * 64}.png"  # sorts first of all; its bytes are gone
    frame[IMAGE_KEY] = keys
    window = work / "window.parquet"
    frame.to_parquet(window)
    return window, work / "log", keys


def test_the_window_images_are_a_bounded_sample_of_distinct_kept_keys(
    tables: DriftTables, tmp_path: Path
) -> None:
    window, _, keys = _kept_window(tables, tmp_path)
    kept = [k for k in keys if k]
    repeated = pd.read_parquet(window)
    repeated = pd.concat([repeated, repeated], ignore_index=True)  # every image sent twice

    for table in (window, repeated):
        chosen, count = window_image_keys(FeatureTableReader(table), 12)
        hashes = sorted({k.rsplit("/", 1)[1]: k for k in kept})
        assert chosen == [f"{DAY}/{h}" for h in hashes[:12]]  # the same for the same window
        assert count == len(kept) * (1 if table is window else 2)
    small, _ = window_image_keys(FeatureTableReader(repeated), 3)
    assert small == chosen[:3]  # one column read in batches: bounded by `count`, not the window
    assert window_image_keys(FeatureTableReader(tables.drifted)) == ([], 0)  # nothing kept


@headless_chromium.needs_chromium
def test_the_pipeline_page_shows_the_evaluation_and_the_kept_images(
    tables: DriftTables, tmp_path: Path, settings_env: pytest.MonkeyPatch
) -> None:
    """As the monitoring pipeline checks: the champion's reference, with the thumbnails its
    evaluation logged beside the table, against a window whose images the predictor kept."""
    from visionops.tracking import connect
    from visionops.training.evaluate import (
        EVALUATION_ARTIFACT_DIR,
        REFERENCE_FEATURES,
        REFERENCE_IMAGES,
    )

    settings_env.setenv("VISIONOPS_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    evaluation = tmp_path / "evaluation"
    evaluation.mkdir()
    (evaluation / REFERENCE_FEATURES).write_bytes(tables.reference.read_bytes())
    val = [p for product in PRODUCTS for p in image_files(tables.root / product / "val")]
    write_thumbnails([(p, p.relative_to(tables.root).as_posix()) for p in val],
                     evaluation / REFERENCE_IMAGES)  # fmt: skip
    tracking = connect(get_settings())
    run_id = tracking.client.create_run(tracking.experiment_id).info.run_id
    tracking.client.log_artifacts(run_id, str(evaluation), EVALUATION_ARTIFACT_DIR)
    tracking.client.create_registered_model("drift-page")
    tracking.client.create_model_version("drift-page", f"runs:/{run_id}/model", run_id=run_id)
    tracking.client.set_registered_model_alias("drift-page", "champion", "1")
    window, log, keys = _kept_window(tables, tmp_path)
    out = tmp_path / "report"

    result = CliRunner().invoke(app, [
        "drift", "check", "--name", "drift-page", "--reference", "champion",
        "--current", str(window), "--log", str(log), "--report-dir", str(out),
    ])  # fmt: skip

    assert result.exit_code == 0, result.output
    rendered = headless_chromium.render(out / "drift_report.html", tmp_path / "chromium")
    assert rendered.external() == [] and rendered.screenshot.std() > 10
    dom = rendered.dom
    assert dom.count("data:image/jpeg;base64,") == 12  # six reference, six current thumbnails
    assert "Reference images <small>(evaluation images of drift-page v1)" in dom
    kept = [k for k in keys if k]
    assert f"(kept by the predictor: {len(kept)} of the window's {len(keys)} images)" in dom
    strips = dom.split("Current images")
    reference_names = re.findall(r"title=\"([^\"]+)\"", strips[0])
    assert len(reference_names) == 6
    assert {n.split("-", 1)[1].split("__")[0] for n in reference_names} == set(PRODUCTS)
    shown = re.findall(r"title=\"([^\"]+)\"", strips[1].split("</div>", 1)[0])
    readable = sorted({k.rsplit("/", 1)[1] for k in kept} - {f"{'0' * 64}.png"})
    assert shown == readable[:6]  # the gone image skipped, the next candidate shown
