"""The drift check through the CLI: decisions, reports, bad input, and the alert metrics."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from tests.drift_data import DriftTables, build_drift_tables
from tests.servers import free_port, gauge
from visionops.cli.app import app
from visionops.config import get_settings
from visionops.data.features import FEATURE_COLUMNS
from visionops.data.tables import load_feature_table
from visionops.monitoring.drift import DriftConfig, check_drift
from visionops.monitoring.publish import prometheus_metrics

runner = CliRunner()


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> DriftTables:
    return build_drift_tables(tmp_path_factory.mktemp("drift"))


def _check(reference: Path | str, current: Path, *extra: str) -> tuple[int, dict, str]:
    result = runner.invoke(
        app, ["drift", "check", "--reference", str(reference), "--current", str(current), *extra]
    )
    try:
        payload = json.loads(result.stdout)
    except json.JSONDecodeError:
        payload = {}
    return result.exit_code, payload, result.output


def test_clean_window_is_no_drift(tables: DriftTables, tmp_path: Path):
    code, payload, output = _check(tables.reference, tables.clean, "--report-dir", str(tmp_path))
    assert code == 0, output
    assert payload["decision"] == "no_drift"
    assert payload["drifted_columns"] == []
    assert payload["current_rows"] == 180
    assert {c["column"] for c in payload["columns"]} >= {"brightness_mean", "sharpness"}
    written = json.loads((tmp_path / "drift.json").read_text())
    assert written["decision"] == "no_drift"
    assert written["evidently"]["tests"]  # Evidently's own test results ride along


def test_severe_brightness_shift_is_drift(tables: DriftTables, tmp_path: Path):
    code, payload, output = _check(tables.reference, tables.drifted, "--report-dir", str(tmp_path))
    assert code == 0, output  # a successful check exits 0 whatever it decides
    assert payload["decision"] == "drift"
    assert payload["drift_detected"] is True
    assert "brightness_mean" in payload["drifted_columns"]
    column = next(c for c in payload["columns"] if c["column"] == "brightness_mean")
    assert column["method"] == "anderson" and column["score"] < column["threshold"]


class _ExternalResources(HTMLParser):
    """Collects every attribute that would make a browser fetch something from elsewhere."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self._tag = ""

    def handle_data(self, data: str) -> None:
        if self._tag == "style" and ("@import" in data or "url(http" in data):
            self.found.append("<style> loading a remote stylesheet or font")

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._tag = tag
        for name, value in attrs:
            value = (value or "").strip().lower()
            loads = name in ("src", "href", "data", "srcset", "poster") and tag != "a"
            if loads and value.startswith(("http:", "https:", "//")):
                self.found.append(f"<{tag} {name}={value}>")
        if tag == "link" and dict(attrs).get("rel") == "stylesheet":
            self.found.append("<link rel=stylesheet>")


@pytest.mark.parametrize("which", ["drifted", "clean"])
def test_html_report_is_self_contained(tables: DriftTables, tmp_path: Path, which: str):
    _check(tables.reference, getattr(tables, which), "--report-dir", str(tmp_path))
    page = (tmp_path / "drift_report.html").read_text(encoding="utf-8")
    assert page.count("<script") >= 1 and len(page) > 100_000  # the viewer is inlined
    parser = _ExternalResources()
    parser.feed(page)
    assert parser.found == []


def test_small_or_empty_window_is_not_enough_data(tables: DriftTables, tmp_path: Path):
    few = tmp_path / "few.csv"
    load_feature_table(tables.drifted).head(10).to_csv(few, index=False)
    code, payload, _ = _check(tables.reference, few, "--report-dir", str(tmp_path / "r"))
    assert code == 0
    assert payload["decision"] == "not_enough_data"  # even though these rows are drifted
    assert "10 usable current rows" in payload["reason"]
    assert "not enough data" in (tmp_path / "r" / "drift_report.html").read_text()

    for name, content in [("empty.csv", ""), ("header.csv", "brightness_mean,sharpness\n"),
                          ("empty.jsonl", "")]:  # fmt: skip
        (tmp_path / name).write_text(content)
        code, payload, output = _check(tables.reference, tmp_path / name)
        assert (code, payload.get("decision")) == (0, "not_enough_data"), output


def test_min_rows_flag_lowers_the_window(tables: DriftTables, tmp_path: Path):
    few = tmp_path / "few.csv"
    load_feature_table(tables.drifted).head(30).to_csv(few, index=False)
    code, payload, _ = _check(tables.reference, few, "--min-rows", "20")
    assert (code, payload["decision"]) == (0, "drift")


def test_missing_or_unreadable_tables_exit_1(tables: DriftTables, tmp_path: Path):
    code, _, output = _check(tables.reference, tmp_path / "nope.parquet")
    assert code == 1 and "feature table not found" in output
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    code, _, output = _check(tables.reference, tmp_path / "bad.parquet")
    assert code == 1 and "cannot read feature table" in output
    (tmp_path / "t.xlsx").write_bytes(b"")
    code, _, output = _check(tables.reference, tmp_path / "t.xlsx")
    assert code == 1 and "unsupported" in output


def test_different_columns_are_named(tables: DriftTables, tmp_path: Path):
    current = load_feature_table(tables.clean).drop(columns=["brightness_mean", "sharpness"])
    current.to_csv(tmp_path / "cur.csv", index=False)
    code, payload, output = _check(tables.reference, tmp_path / "cur.csv")
    assert code == 1 and payload == {}
    assert "different columns" in output and "brightness_mean" in output

    unrelated = pd.DataFrame({"a": range(100), "b": range(100)})
    unrelated.to_csv(tmp_path / "ref.csv", index=False)
    code, _, output = _check(tmp_path / "ref.csv", tables.clean)
    assert code == 1 and "no feature columns" in output


def test_nan_and_inf_rows_are_left_out_not_compared(tables: DriftTables, tmp_path: Path):
    current = load_feature_table(tables.clean)
    # Spread over every product: dropping one product's rows would be a real change of mix.
    current.loc[current.index % 9 == 0, "brightness_mean"] = np.nan
    current.loc[current.index % 9 == 1, "sharpness"] = np.inf
    current.to_csv(tmp_path / "cur.csv", index=False)
    code, payload, _ = _check(tables.reference, tmp_path / "cur.csv")
    assert (code, payload["decision"]) == (0, "no_drift")  # no false alarm from the bad values
    assert payload["current_rows"] == 140
    assert any("40 current rows" in note for note in payload["notes"])

    current["noise_sigma"] = np.nan
    current.to_csv(tmp_path / "cur.csv", index=False)
    code, _, output = _check(tables.reference, tmp_path / "cur.csv")
    assert code == 1 and "without any finite value" in output and "noise_sigma" in output

    current["noise_sigma"] = "loud"
    current.to_csv(tmp_path / "cur.csv", index=False)
    code, _, output = _check(tables.reference, tmp_path / "cur.csv")
    assert code == 1 and "'noise_sigma' is not numeric" in output


def test_methods_come_from_settings(tables: DriftTables, settings_env: pytest.MonkeyPatch):
    settings_env.setenv("VISIONOPS_DRIFT_NUM_METHOD", "wasserstein")
    settings_env.setenv("VISIONOPS_DRIFT_NUM_THRESHOLD", "0.5")
    settings_env.setenv("VISIONOPS_DRIFT_COLUMN_METHODS", '{"sharpness": "psi"}')
    code, payload, output = _check(tables.reference, tables.drifted)
    assert code == 0, output
    methods = {c["column"]: (c["method"], c["threshold"]) for c in payload["columns"]}
    assert methods["brightness_mean"] == ("wasserstein", 0.5)
    assert methods["sharpness"] == ("psi", 0.5)
    assert payload["decision"] == "drift"

    settings_env.setenv("VISIONOPS_DRIFT_NUM_METHOD", "no-such-test")
    get_settings.cache_clear()
    code, _, output = _check(tables.reference, tables.drifted)
    assert code == 2 and "no-such-test" in output


def test_prediction_columns_and_class_mix(tmp_path: Path):
    rng = np.random.default_rng(0)

    def window(n: int, classes: list[int], conf: float) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "det_count": rng.poisson(2, n).astype(float),
                "conf_mean": rng.normal(conf, 0.05, n),
                "top_class": rng.choice(classes, n).astype(float),
            }
        )

    config = DriftConfig(num_method="ks", num_threshold=0.001, cat_threshold=0.001,
                         drift_share=0.3, min_rows=50)  # fmt: skip
    reference = window(400, [-1, 0, 1, 2], 0.7)
    same = check_drift(reference, window(200, [-1, 0, 1, 2], 0.7), config=config)
    assert same.decision == "no_drift"
    new_class = check_drift(reference, window(200, [3], 0.7), config=config)
    assert new_class.drifted_columns == ["top_class"]
    assert new_class.columns[-1].kind == "categorical"
    assert new_class.decision == "drift"


def test_alert_metrics_in_prometheus_format(tables: DriftTables):
    reference, drifted = load_feature_table(tables.reference), load_feature_table(tables.drifted)
    result = check_drift(reference, drifted)
    families = {
        f.name: f for f in text_string_to_metric_families(prometheus_metrics(result, 'm"1'))
    }
    detected = families["visionops_drift_detected"].samples[0]
    assert detected.labels == {"model_name": 'm"1'} and detected.value == 1
    assert families["visionops_drift_share"].samples[0].value == pytest.approx(result.drifted_share)
    waiting = check_drift(reference, drifted.head(5))
    text = prometheus_metrics(waiting, "m")
    assert 'visionops_drift_detected{model_name="m"} 0' in text
    assert "visionops_drift_share" not in text


def test_check_pushes_the_alert_gauges_to_a_pushgateway(
    tables: DriftTables, pushgateway: str, tmp_path: Path
):
    model = get_settings().model_name
    code, payload, output = _check(tables.reference, tables.drifted, "--pushgateway", pushgateway)
    assert code == 0, output
    assert gauge(pushgateway, "visionops_drift_detected", model_name=model) == 1
    assert gauge(pushgateway, "visionops_drift_share", model_name=model) == pytest.approx(
        payload["drifted_share"]
    )
    code, payload, output = _check(tables.reference, tables.clean, "--pushgateway", pushgateway)
    assert code == 0, output
    assert gauge(pushgateway, "visionops_drift_detected", model_name=model) == 0  # replaced


def test_unreachable_pushgateway_is_a_clear_error(tables: DriftTables):
    url = f"http://127.0.0.1:{free_port()}"
    code, payload, output = _check(tables.reference, tables.drifted, "--pushgateway", url)
    assert code == 1
    assert payload["decision"] == "drift"  # the decision was still printed
    assert f"Pushgateway {url} unreachable" in output


def test_features_command_builds_a_table(tables: DriftTables, tmp_path: Path):
    out = tmp_path / "wood.jsonl"
    result = runner.invoke(
        app, ["drift", "features", "--src", str(tables.root / "Wood" / "val"), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    table = load_feature_table(out)
    assert len(table) == 60 and table["file_name"].str.endswith((".jpg", ".png")).all()
    bad = runner.invoke(app, ["drift", "features", "--src", str(tmp_path / "x"), "--out", str(out)])
    assert bad.exit_code == 1 and "not found" in bad.output


def test_reference_from_the_registry_champion(
    tables: DriftTables, settings_env: pytest.MonkeyPatch, tmp_path: Path
):
    """`--reference champion`: the champion run's evaluation features, from a real MLflow store."""
    import shutil

    from visionops.tracking import connect
    from visionops.training.evaluate import EVALUATION_ARTIFACT_DIR, REFERENCE_FEATURES

    settings_env.setenv("VISIONOPS_DATA_DIR", str(tmp_path / "data"))
    settings_env.setenv("VISIONOPS_MODEL_NAME", "drift-test")
    get_settings.cache_clear()
    tracking = connect(get_settings())
    client = tracking.client
    evaluation = tmp_path / "evaluation"
    evaluation.mkdir()
    shutil.copyfile(tables.reference, evaluation / REFERENCE_FEATURES)
    evaluated = client.create_run(tracking.experiment_id).info.run_id
    client.log_artifacts(evaluated, str(evaluation), EVALUATION_ARTIFACT_DIR)
    bare = client.create_run(tracking.experiment_id).info.run_id
    client.create_registered_model("drift-test")
    for run_id in (evaluated, bare):
        client.create_model_version("drift-test", source=f"runs:/{run_id}/model", run_id=run_id)
    client.set_registered_model_alias("drift-test", "champion", "1")

    code, payload, output = _check("champion", tables.clean)
    assert code == 0, output
    assert (payload["decision"], payload["reference_rows"]) == ("no_drift", 180)
    code, payload, output = _check("models:/drift-test@champion", tables.drifted)
    assert (code, payload["decision"]) == (0, "drift")

    code, _, output = _check("models:/drift-test/2", tables.clean)
    assert code == 1 and "evaluate it first" in output
    code, _, output = _check("models:/drift-test@challenger", tables.clean)
    assert code == 1 and "no version with alias 'challenger'" in output


def _feature_frame(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path)


def test_a_window_of_exactly_the_minimum_is_decided(
    tables: DriftTables, tmp_path: Path, settings_env: pytest.MonkeyPatch
):
    """README: `not_enough_data` when fewer than VISIONOPS_DRIFT_MIN_ROWS usable current rows
    remain; a window of exactly that many is decided."""
    settings_env.setenv("VISIONOPS_DRIFT_MIN_ROWS", "40")
    drifted = _feature_frame(tables.drifted).sample(frac=1.0, random_state=0)  # every product
    drifted.head(40).to_csv(tmp_path / "forty.csv", index=False)
    code, payload, output = _check(tables.reference, tmp_path / "forty.csv")
    assert code == 0, output
    assert (payload["decision"], payload["current_rows"], payload["min_rows"]) == ("drift", 40, 40)

    drifted.head(39).to_csv(tmp_path / "thirty-nine.csv", index=False)
    code, payload, output = _check(tables.reference, tmp_path / "thirty-nine.csv")
    assert (code, payload["decision"]) == (0, "not_enough_data"), output
    assert payload["reason"] == "not enough data: 39 usable current rows, at least 40 needed"

    # Usable rows count, not rows: 42 rows of which 3 have a missing value leave 39.
    holes = drifted.head(42).reset_index(drop=True)
    holes.loc[[0, 20, 41], "sharpness"] = np.nan
    holes.to_csv(tmp_path / "holes.csv", index=False)
    code, payload, output = _check(tables.reference, tmp_path / "holes.csv")
    assert (code, payload["decision"], payload["current_rows"]) == (0, "not_enough_data", 39)
    assert "3 current rows with missing or infinite values left out" in payload["notes"]


def test_drift_columns_setting_chooses_what_is_compared(
    tables: DriftTables, settings_env: pytest.MonkeyPatch
):
    """VISIONOPS_DRIFT_COLUMNS: exactly the listed columns are compared. Columns the darkening
    leaves alone (scipy's KS p-value > 0.1 here, computed independently) decide no drift on the
    darkened window; brightness_mean alone decides drift."""
    from scipy.stats import ks_2samp

    reference, drifted = _feature_frame(tables.reference), _feature_frame(tables.drifted)
    numeric = [c for c in FEATURE_COLUMNS if c in reference.columns and c != "top_class"]
    calm = [
        c for c in numeric
        if reference[c].nunique() > 1 and ks_2samp(reference[c], drifted[c]).pvalue > 0.1
    ]  # fmt: skip
    assert calm, "the darkening should leave some column alone"

    settings_env.setenv("VISIONOPS_DRIFT_COLUMNS", json.dumps(calm))
    code, payload, output = _check(tables.reference, tables.drifted)
    assert code == 0, output
    assert [c["column"] for c in payload["columns"]] == calm
    assert (payload["decision"], payload["drifted_columns"]) == ("no_drift", [])
    assert any("not compared" in note and "brightness_mean" in note for note in payload["notes"])

    settings_env.setenv("VISIONOPS_DRIFT_COLUMNS", '["brightness_mean"]')
    get_settings.cache_clear()
    code, payload, output = _check(tables.reference, tables.drifted)
    assert [c["column"] for c in payload["columns"]] == ["brightness_mean"]
    assert (payload["decision"], payload["drifted_columns"]) == ("drift", ["brightness_mean"])

    settings_env.setenv("VISIONOPS_DRIFT_COLUMNS", '["brightness_mean", "nope"]')
    get_settings.cache_clear()
    code, payload, output = _check(tables.reference, tables.drifted)
    assert code == 1 and "configured drift columns missing from the reference: ['nope']" in output


def test_column_thresholds_apply_to_their_column_only(
    tables: DriftTables, settings_env: pytest.MonkeyPatch
):
    """VISIONOPS_DRIFT_COLUMN_THRESHOLDS: the KS p-value of brightness_mean (scipy, computed
    here) is below the default 0.01, so the column drifts; with its threshold at a tenth of that
    p-value it does not, and the other column keeps the default threshold."""
    from scipy.stats import ks_2samp

    reference, drifted = _feature_frame(tables.reference), _feature_frame(tables.drifted)
    p_value = float(ks_2samp(reference["brightness_mean"], drifted["brightness_mean"]).pvalue)
    assert 0 < p_value < 0.01
    # KS (not the default Anderson-Darling, whose p-value scipy floors at 0.001): a threshold on
    # either side of this p-value.
    settings_env.setenv("VISIONOPS_DRIFT_NUM_METHOD", "ks")
    settings_env.setenv("VISIONOPS_DRIFT_COLUMNS", '["brightness_mean", "edge_density"]')
    for threshold, drifts in ((p_value / 10, False), (min(p_value * 10, 0.5), True)):
        settings_env.setenv(
            "VISIONOPS_DRIFT_COLUMN_THRESHOLDS", json.dumps({"brightness_mean": threshold})
        )
        get_settings.cache_clear()
        code, payload, output = _check(tables.reference, tables.drifted)
        assert code == 0, output
        columns = {c["column"]: c for c in payload["columns"]}
        brightness, other = columns["brightness_mean"], columns["edge_density"]
        assert (brightness["method"], brightness["threshold"]) == ("ks", threshold)
        assert brightness["score"] == pytest.approx(p_value, rel=1e-9)
        assert brightness["drifted"] is drifts
        assert (other["method"], other["threshold"]) == ("ks", 0.01)
        # One drifted column of two is a share of 0.5, over the default 0.04.
        assert payload["decision"] == ("drift" if payload["drifted_columns"] else "no_drift")
        assert ("brightness_mean" in payload["drifted_columns"]) is drifts


def test_a_large_window_drifts_only_on_a_real_and_large_change(tmp_path: Path):
    """200,000 rows: a shift of 0.1 standard deviation is real (Anderson-Darling) but small
    (Wasserstein), so no drift; half a standard deviation is both. A file and a DataFrame give the
    same sample."""
    rng = np.random.default_rng(0)
    reference = pd.DataFrame({"brightness_mean": rng.normal(100, 10, 5000),
                              "sharpness": rng.normal(50, 5, 5000)})  # fmt: skip
    n = 200_000
    config = DriftConfig(num_threshold=0.01, num_effect_threshold=0.2, sample_rows=20_000,
                         min_rows=50)  # fmt: skip

    def window(shift: float) -> pd.DataFrame:
        return pd.DataFrame({"brightness_mean": rng.normal(100 + 10 * shift, 10, n),
                             "sharpness": rng.normal(50, 5, n)})  # fmt: skip

    small = window(0.1)
    result = check_drift(reference, small, config=config)
    column = result.columns[0]
    assert column.significant and not column.large and not column.drifted
    assert column.effect == pytest.approx(0.1, abs=0.04)
    assert result.decision == "no_drift"
    assert (result.current_rows, result.current_sample) == (n, 20_000)
    assert result.reference_sample == 5000
    assert column.current["rows"] == n and column.current["mean"] == pytest.approx(101, abs=0.1)
    assert any("seeded uniform sample" in note for note in result.notes)

    small.to_parquet(tmp_path / "small.parquet", row_group_size=30_000)  # several row groups
    from_file = check_drift(reference, tmp_path / "small.parquet", config=config)
    assert [c.score for c in from_file.columns] == [c.score for c in result.columns]
    assert [c.effect for c in from_file.columns] == [c.effect for c in result.columns]

    large = check_drift(reference, window(0.5), config=config, report_dir=tmp_path / "r")
    assert large.decision == "drift" and large.drifted_columns == ["brightness_mean"]
    page = (tmp_path / "r" / "drift_report.html").read_text(encoding="utf-8")
    assert "VisionOps drift decision: drift" in page
    assert "20,000 of 200,000 usable current rows" in page
