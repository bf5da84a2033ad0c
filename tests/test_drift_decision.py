"""The drift decision on hand-made feature tables, in process (a few seconds in all).

`tests/test_monitoring_drift.py` checks the decision through the CLI on features of real images;
this file holds `visionops.monitoring.drift` to each rule of the README's "Drift check" on tables
whose answer is known by construction: a column shifted by many standard deviations (KS p-value
next to 0), columns whose current values are the reference's own values reordered (KS statistic
0, p-value exactly 1). `make mutation` runs the drift decision against this file.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from visionops.config import Settings, get_settings
from visionops.errors import DriftCheckError, UsageError
from visionops.monitoring.drift import DriftConfig, check_drift, compared_columns

SHIFTED, CALM = "brightness_mean", ["contrast", "sharpness", "noise_sigma"]  # the table order
COLUMNS = [SHIFTED, *CALM]


def _tables(current_rows: int = 120) -> tuple[pd.DataFrame, pd.DataFrame]:
    """120 reference rows; the current window's calm columns hold the reference's own values
    in another order (all of them when it has 120 rows), its shifted column is 10 sigma off."""
    rng = np.random.default_rng(0)
    reference = pd.DataFrame({c: rng.normal(100, 10, 120) for c in COLUMNS})
    current = pd.DataFrame(
        {c: rng.permutation(reference[c].to_numpy())[:current_rows] for c in CALM}
    )
    current.insert(0, SHIFTED, rng.normal(200, 10, current_rows))
    return reference, current


# -- configuration --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"drift_share": 0.0}, "drift share must be in (0, 1], got 0.0"),
        ({"drift_share": 1.01}, "drift share must be in (0, 1], got 1.01"),
        ({"min_rows": 1}, "the minimum window must be at least 2 rows, got 1"),
        ({"num_threshold": 0.0},
         "drift threshold num_threshold must be a positive number, got 0.0"),
        ({"cat_threshold": -1.0},
         "drift threshold cat_threshold must be a positive number, got -1.0"),
        ({"num_threshold": math.inf},
         "drift threshold num_threshold must be a positive number, got inf"),
        ({"column_thresholds": {"sharpness": 0.0}},
         "drift threshold sharpness must be a positive number, got 0.0"),
        ({"column_thresholds": {"sharpness": math.nan}},
         "drift threshold sharpness must be a positive number, got nan"),
        ({"sample_rows": 49, "min_rows": 50},
         "the sample (49 rows) must hold at least the minimum window (50 rows)"),
        ({"num_effect_threshold": 0.0},
         "drift num_effect_threshold must be a positive number, got 0.0"),
        ({"cat_effect_threshold": math.inf},
         "drift cat_effect_threshold must be a positive number, got inf"),
        ({"column_effect_thresholds": {"noise_sigma": 0.0}},
         "drift effect threshold noise_sigma must be a positive number, got 0.0"),
        ({"column_effect_thresholds": {"noise_sigma": math.nan}},
         "drift effect threshold noise_sigma must be a positive number, got nan"),
        ({"num_threshold": 0.001},
         "drift threshold num_threshold (0.001) must be above anderson's smallest p-value "
         "(0.001), or it never finds drift"),
        ({"column_thresholds": {"sharpness": 0.0005}},
         "drift threshold sharpness (0.0005) must be above anderson's smallest p-value (0.001), "
         "or it never finds drift"),
        ({"num_method": "ks", "column_methods": {"contrast": "anderson"},
          "column_thresholds": {"contrast": 0.001}},
         "drift threshold contrast (0.001) must be above anderson's smallest p-value (0.001), "
         "or it never finds drift"),
    ],
)  # fmt: skip
def test_bad_configuration_is_a_usage_error_naming_it(values: dict, message: str) -> None:
    with pytest.raises(UsageError) as caught:
        DriftConfig(**values)
    assert str(caught.value) == message


def test_edges_of_the_configuration_are_accepted() -> None:
    config = DriftConfig(drift_share=1.0, min_rows=2, num_threshold=None, cat_threshold=1e-300)
    assert (config.drift_share, config.min_rows, config.num_threshold) == (1.0, 2, None)
    exact = DriftConfig(sample_rows=50, min_rows=50, num_effect_threshold=1e-300)
    assert (exact.sample_rows, exact.min_rows, exact.num_effect_threshold) == (50, 50, 1e-300)
    # Anderson-Darling's p-value is never below 0.001: a hair above it can find drift; KS's can
    # be anything, and a column with its own method takes its own floor.
    above = math.nextafter(0.001, 1.0)
    assert DriftConfig(num_threshold=above, column_thresholds={"sharpness": above}).num_threshold
    ks = DriftConfig(num_method="ks", num_threshold=1e-300, column_thresholds={"contrast": 1e-9})
    assert (ks.num_threshold, ks.threshold_for("contrast")) == (1e-300, 1e-9)
    own = DriftConfig(column_methods={"contrast": "ks"}, column_thresholds={"contrast": 1e-9})
    assert own.threshold_for("contrast") == 1e-9


def test_the_defaults_are_the_calibrated_ones() -> None:
    """README: Anderson-Darling 0.01 and normed Wasserstein 0.45, 0.6 for axis_alignment
    (calibrated), chisquare 0.001 and psi 0.1, share 0.04, 50 rows, every column."""
    config = DriftConfig()
    assert (config.num_method, config.num_threshold) == ("anderson", 0.01)
    assert (config.num_effect, config.num_effect_threshold) == ("wasserstein", 0.45)
    assert (config.cat_method, config.cat_threshold) == ("chisquare", 0.001)
    assert (config.cat_effect, config.cat_effect_threshold, config.column_effect_thresholds) == (
        "psi", 0.1, {"axis_alignment": 0.6}
    )  # fmt: skip
    assert (config.drift_share, config.min_rows, config.columns) == (0.04, 50, None)
    assert DriftConfig.from_settings(Settings()) == config


def test_settings_and_overrides() -> None:
    settings = Settings(
        drift_num_method="wasserstein", drift_cat_method="psi", drift_num_threshold=0.2,
        drift_cat_threshold=0.3, drift_share=0.5, drift_min_rows=7,
        drift_columns=["sharpness", "top_class"], drift_column_methods={"sharpness": "psi"},
        drift_column_thresholds={"sharpness": 0.4}, drift_num_effect_threshold=0.3,
        drift_column_effect_thresholds={"sharpness": 0.9, "top_class": 0.2},
    )  # fmt: skip
    config = DriftConfig.from_settings(settings, drift_share=None, min_rows=9)
    assert (config.num_method, config.cat_method) == ("wasserstein", "psi")
    assert (config.num_threshold, config.cat_threshold) == (0.2, 0.3)
    assert (config.drift_share, config.min_rows) == (0.5, 9)  # None keeps the setting
    assert config.columns == ("sharpness", "top_class")
    assert (config.method_for("sharpness"), config.threshold_for("sharpness")) == ("psi", 0.4)
    assert (config.method_for("contrast"), config.threshold_for("contrast")) == ("wasserstein", 0.2)
    assert (config.method_for("top_class"), config.threshold_for("top_class")) == ("psi", 0.3)
    assert config.effect_for("sharpness") == ("wasserstein", 0.9)  # its own
    assert config.effect_for("contrast") == ("wasserstein", 0.3)  # the numeric one
    assert config.effect_for("top_class") == ("psi", 0.2)  # a class column's own
    assert DriftConfig(cat_effect_threshold=0.7).effect_for("top_class") == ("psi", 0.7)


# -- the decision ---------------------------------------------------------------------------------


def test_one_shifted_column_of_four_is_drift_at_a_quarter_and_not_above() -> None:
    reference, current = _tables()
    result = check_drift(reference, current, config=DriftConfig(drift_share=0.25, min_rows=10))
    assert result.decision == "drift" and result.drift_detected
    assert result.drifted_columns == [SHIFTED] and result.drifted_share == 0.25
    assert [c.column for c in result.columns] == COLUMNS
    shifted = result.columns[0]
    assert (shifted.kind, shifted.method, shifted.threshold) == ("numerical", "anderson", 0.01)
    assert shifted.score == 0.001 and shifted.drifted  # scipy's floor: 10 sigma is far below
    assert all(c.score == 0.25 and not c.drifted for c in result.columns[1:])  # and its cap
    assert result.reason == (
        f"drift: 1 of 4 columns drifted (share 0.25, drift at >= 0.25): {SHIFTED}"
    )
    assert result.scores() == {c.column: c.score for c in result.columns}
    assert (result.reference_rows, result.current_rows, result.min_rows) == (120, 120, 10)

    above = check_drift(reference, current, config=DriftConfig(drift_share=0.26, min_rows=10))
    assert (above.decision, above.drift_detected, above.drifted_share) == ("no_drift", False, 0.25)
    assert above.reason == (
        f"no drift: 1 of 4 columns drifted (share 0.25, drift at >= 0.26): {SHIFTED}"
    )


def test_a_window_like_the_reference_is_no_drift() -> None:
    reference, _ = _tables()
    same = reference.sample(frac=1.0, random_state=2).reset_index(drop=True)
    result = check_drift(reference, same, config=DriftConfig(min_rows=10))
    assert (result.decision, result.drifted_columns, result.drifted_share) == ("no_drift", [], 0.0)
    assert result.reason == "no drift: 0 of 4 columns drifted (share 0.00, drift at >= 0.04): none"


def test_the_minimum_window_is_counted_in_usable_rows() -> None:
    reference, current = _tables(current_rows=12)
    config = DriftConfig(drift_share=0.25, min_rows=12)
    assert check_drift(reference, current, config=config).decision == "drift"  # exactly 12
    fewer = check_drift(reference, current.head(11), config=config)
    assert (fewer.decision, fewer.drift_detected, fewer.columns) == ("not_enough_data", False, [])
    assert fewer.reason == "not enough data: 11 usable current rows, at least 12 needed"
    assert (fewer.current_rows, fewer.drifted_share) == (11, None)
    holes = current.copy()
    holes.loc[3, "sharpness"] = np.nan
    left = check_drift(reference, holes, config=config)
    assert (left.decision, left.current_rows) == ("not_enough_data", 11)
    assert "1 current rows with missing or infinite values left out" in left.notes


def test_an_empty_window_is_not_enough_data_even_without_columns() -> None:
    reference, _ = _tables()
    result = check_drift(reference, pd.DataFrame(), config=DriftConfig(min_rows=10))
    assert (result.decision, result.current_rows) == ("not_enough_data", 0)


def test_a_reference_below_the_minimum_is_an_error() -> None:
    reference, current = _tables()
    with pytest.raises(DriftCheckError, match="the reference has 9 usable rows; at least 10"):
        check_drift(reference.head(9), current, config=DriftConfig(min_rows=10))
    assert check_drift(reference.head(10), current, config=DriftConfig(min_rows=10)).decision


def test_missing_and_infinite_values_are_left_out_and_counted() -> None:
    reference, current = _tables()
    reference.loc[0, "contrast"] = np.inf
    reference.loc[1, "contrast"] = -np.inf
    current.loc[5, "noise_sigma"] = np.nan
    result = check_drift(reference, current, config=DriftConfig(drift_share=0.25, min_rows=10))
    assert (result.reference_rows, result.current_rows) == (118, 119)
    assert result.notes == [
        "2 reference rows with missing or infinite values left out",
        "1 current rows with missing or infinite values left out",
    ]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sharpness": "loud"}, "current column 'sharpness' is not numeric (e.g. 'loud')"),
        ({"contrast": np.nan}, "current columns without any finite value: ['contrast']"),
        ({"contrast": np.inf}, "current columns without any finite value: ['contrast']"),
    ],
)
def test_columns_that_cannot_be_compared_are_named(change: dict, message: str) -> None:
    reference, current = _tables()
    current = current.astype(object)
    for column, value in change.items():
        current[column] = value
    with pytest.raises(DriftCheckError) as caught:
        check_drift(reference, current, config=DriftConfig(min_rows=10))
    assert str(caught.value) == message


def test_a_non_numeric_reference_is_named_as_the_reference() -> None:
    reference, current = _tables()
    reference = reference.astype(object)
    reference.loc[4, "sharpness"] = "n/a"
    with pytest.raises(DriftCheckError) as caught:
        check_drift(reference, current, config=DriftConfig(min_rows=10))
    assert str(caught.value) == "reference column 'sharpness' is not numeric (e.g. 'n/a')"


# -- columns --------------------------------------------------------------------------------------


def test_configured_columns_only() -> None:
    reference, current = _tables()
    config = DriftConfig(columns=("sharpness", "contrast"), min_rows=10)
    result = check_drift(reference, current, config=config)
    assert [c.column for c in result.columns] == ["sharpness", "contrast"]  # as configured
    assert result.decision == "no_drift"
    assert result.notes == [
        f"not compared (absent from the reference or not configured): ['{SHIFTED}', 'noise_sigma']"
    ]
    with pytest.raises(DriftCheckError) as caught:
        check_drift(reference, current, config=DriftConfig(columns=("sharpness", "nope")))
    assert str(caught.value) == "configured drift columns missing from the reference: ['nope']"


def test_columns_missing_on_either_side() -> None:
    reference, current = _tables()
    with pytest.raises(DriftCheckError) as caught:
        check_drift(reference, current.drop(columns=["contrast"]), config=DriftConfig(min_rows=10))
    assert str(caught.value) == (
        "reference and current have different columns: current lacks ['contrast']"
    )
    unrelated = pd.DataFrame({"a": range(60), "b": range(60)})
    with pytest.raises(DriftCheckError) as caught:
        check_drift(unrelated, current, config=DriftConfig(min_rows=10))
    assert str(caught.value).startswith(
        "the reference has no feature columns (it has: a, b); build it with"
    )
    only_current = current.assign(edge_density=1.0)
    result = check_drift(reference, only_current, config=DriftConfig(drift_share=0.25, min_rows=10))
    assert [c.column for c in result.columns] == COLUMNS
    assert result.notes == [
        "not compared (absent from the reference or not configured): ['edge_density']"
    ]


def test_per_column_methods_and_thresholds() -> None:
    """The shifted column with a threshold below its KS p-value (its own method) does not drift;
    wasserstein on a calm column scores 0 (the same values) under its threshold."""
    reference, current = _tables()
    config = DriftConfig(
        drift_share=0.25, min_rows=10, column_thresholds={SHIFTED: 1e-300},
        column_methods={SHIFTED: "ks", "contrast": "wasserstein"},
    )  # fmt: skip
    result = check_drift(reference, current, config=config)
    by_column = {c.column: c for c in result.columns}
    assert (by_column[SHIFTED].threshold, by_column[SHIFTED].drifted) == (1e-300, False)
    contrast = by_column["contrast"]
    assert (contrast.method, contrast.threshold, contrast.drifted) == ("wasserstein", 0.01, False)
    assert contrast.score == pytest.approx(0.0, abs=1e-12)
    assert (result.decision, result.drifted_columns) == ("no_drift", [])


def test_a_threshold_of_none_is_the_methods_own_default() -> None:
    reference, current = _tables()
    result = check_drift(
        reference, current, config=DriftConfig(num_threshold=None, drift_share=0.25, min_rows=10)
    )
    assert {c.threshold for c in result.columns} == {0.1}  # Evidently's Anderson-Darling default
    ks = DriftConfig(num_method="ks", num_threshold=None, drift_share=0.25, min_rows=10)
    assert {c.threshold for c in check_drift(reference, current, config=ks).columns} == {0.05}


def test_an_unknown_method_is_a_usage_error() -> None:
    reference, current = _tables()
    with pytest.raises(UsageError, match="drift method 'nope' cannot compare num columns"):
        check_drift(reference, current, config=DriftConfig(num_method="nope", min_rows=10))


def test_the_class_column_is_categorical_and_three_is_three_point_zero() -> None:
    reference, current = _tables()
    reference["top_class"] = np.resize([0, 1, 2, -1], len(reference))
    current["top_class"] = np.resize([0.0, 1.0, 2.0, -1.0], len(current))
    config = DriftConfig(drift_share=0.2, min_rows=10)
    result = check_drift(reference, current, config=config)
    top = result.columns[-1]
    assert (top.column, top.kind, top.method, top.drifted) == (
        "top_class", "categorical", "chisquare", False,
    )  # fmt: skip
    current["top_class"] = 7.0  # a class the reference never saw
    unseen = check_drift(reference, current, config=config)
    assert unseen.drifted_columns == [SHIFTED, "top_class"]
    assert unseen.reason == (
        f"drift: 2 of 5 columns drifted (share 0.40, drift at >= 0.20): {SHIFTED}, top_class"
    )


# -- reports --------------------------------------------------------------------------------------


def test_reports_are_written_for_every_decision(tmp_path: Path) -> None:
    reference, current = _tables()
    config = DriftConfig(drift_share=0.25, min_rows=10)
    result = check_drift(reference, current, config=config, report_dir=tmp_path / "a")
    written = json.loads((tmp_path / "a" / "drift.json").read_text())
    assert written["decision"] == "drift" and written["evidently"]["tests"]
    assert result.to_dict() == {k: v for k, v in written.items() if k != "evidently"}
    assert (tmp_path / "a" / "drift_report.html").stat().st_size > 100_000

    few = check_drift(reference, current.head(3), config=config, report_dir=tmp_path / "b")
    page = (tmp_path / "b" / "drift_report.html").read_text()
    assert "Drift check: not enough data" in page and few.reason in page
    assert json.loads((tmp_path / "b" / "drift.json").read_text())["evidently"] is None
    assert few.to_dict()["report_html"] == str(tmp_path / "b" / "drift_report.html")


# -- settings from the environment, sampling, what a result says -----------------------------------


def test_the_environments_columns_and_thresholds_are_honoured(
    settings_env: pytest.MonkeyPatch,
) -> None:
    """VISIONOPS_DRIFT_COLUMNS picks and orders the compared columns (the class first here);
    VISIONOPS_DRIFT_COLUMN_THRESHOLDS gives the shifted one a threshold below its KS p-value."""
    reference, current = _tables()
    settings_env.setenv("VISIONOPS_DRIFT_NUM_METHOD", "ks")
    reference["top_class"] = np.resize([0, 1, 2], len(reference))
    current["top_class"] = np.resize([2, 1, 0], len(current))
    settings_env.setenv("VISIONOPS_DRIFT_COLUMNS", json.dumps(["top_class", SHIFTED, "contrast"]))
    settings_env.setenv("VISIONOPS_DRIFT_COLUMN_THRESHOLDS", json.dumps({SHIFTED: 1e-300}))
    settings_env.setenv("VISIONOPS_DRIFT_MIN_ROWS", "10")
    result = check_drift(reference, current)
    assert [(c.column, c.kind, c.threshold) for c in result.columns] == [
        ("top_class", "categorical", 0.001),
        (SHIFTED, "numerical", 1e-300),
        ("contrast", "numerical", 0.01),
    ]
    assert (result.decision, result.drifted_columns, result.min_rows) == ("no_drift", [], 10)
    assert result.notes == [
        "not compared (absent from the reference or not configured): ['sharpness', 'noise_sigma']"
    ]
    settings_env.delenv("VISIONOPS_DRIFT_COLUMN_THRESHOLDS")
    get_settings.cache_clear()
    assert check_drift(reference, current).drifted_columns == [SHIFTED]


@pytest.mark.parametrize("method", ["anderson", "ks"])
def test_what_a_result_says_beside_the_decision(method: str) -> None:
    """Scores and effect sizes as scipy computes them on the same columns, the statistics of
    every row as numpy computes them; a class column has no statistics."""
    from scipy.stats import anderson_ksamp, ks_2samp, wasserstein_distance

    def p_value(a: np.ndarray, b: np.ndarray) -> float:
        if method == "ks":
            return float(ks_2samp(a, b).pvalue)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # floored / capped
            return float(anderson_ksamp([a, b], variant="midrank").pvalue)

    reference, current = _tables()
    reference["top_class"] = np.resize([0, 1, 2, -1], len(reference))
    current["top_class"] = np.resize([0.0, 1.0, 2.0, -1.0], len(current))
    current[CALM[0]] += 3.0  # 0.3 sigma: p-values inside scipy's AD table (0.05), KS's 0.1
    config = DriftConfig(num_method=method, drift_share=0.2, min_rows=10, sample_seed=7)
    result = check_drift(reference, current, config=config)
    assert (result.drift_share_threshold, result.min_rows, result.sample_seed) == (0.2, 10, 7)
    assert (result.reference_sample, result.current_sample) == (120, 120)
    for column in result.columns[:-1]:
        a, b = reference[column.column].to_numpy(), current[column.column].to_numpy()
        assert column.score == pytest.approx(p_value(a, b), rel=1e-9, abs=1e-300)
        assert column.effect == pytest.approx(wasserstein_distance(a, b) / a.std(), abs=1e-9)
        assert (column.method, column.effect_method, column.effect_threshold) == (
            method, "wasserstein", 0.45
        )  # fmt: skip
        for side, values in (("reference", a), ("current", b)):
            assert getattr(column, side) == pytest.approx(
                {"rows": 120, "missing": 0, "mean": values.mean(), "std": values.std(),
                 "min": values.min(), "max": values.max()}
            )  # fmt: skip
    shifted, calm = result.columns[0], result.columns[1]
    assert (shifted.significant, shifted.large, shifted.drifted) == (True, True, True)
    assert (calm.significant, calm.large, calm.drifted) == (False, False, False)
    top = result.columns[-1]
    assert (top.effect_method, top.effect_threshold, top.effect) == ("psi", 0.1, 0.0)
    assert (top.reference, top.current) == ({}, {})


def test_a_real_change_too_small_to_matter_is_not_drift() -> None:
    """Both must say so: the shifted column's test is significant, but its effect (about 10
    reference standard deviations) is under an effect threshold of 100."""
    reference, current = _tables()
    config = DriftConfig(drift_share=0.25, min_rows=10, num_effect_threshold=100.0)
    result = check_drift(reference, current, config=config)
    shifted = result.columns[0]
    assert (shifted.significant, shifted.large, shifted.drifted) == (True, False, False)
    assert (result.decision, result.drifted_share) == ("no_drift", 0.0)


def test_a_columns_own_effect_threshold_decides_that_column_only() -> None:
    """Known answers: the shifted column's effect is about 10 reference standard deviations.
    Its own threshold above that effect keeps it from drifting although the numeric threshold
    (0.45) is far below; the same threshold given to another column changes nothing; a threshold
    exactly at the effect is reached (an effect at least the threshold matters), one a hair above
    is not."""
    reference, current = _tables()
    base = {"drift_share": 0.25, "min_rows": 10}
    own = check_drift(
        reference, current, config=DriftConfig(**base, column_effect_thresholds={SHIFTED: 100.0})
    )
    shifted = own.columns[0]
    assert (shifted.effect_threshold, shifted.significant, shifted.large) == (100.0, True, False)
    assert 5.0 < shifted.effect < 100.0
    assert [c.effect_threshold for c in own.columns[1:]] == [0.45, 0.45, 0.45]
    assert (own.decision, own.drifted_columns) == ("no_drift", [])

    other = check_drift(
        reference, current, config=DriftConfig(**base, column_effect_thresholds={"contrast": 100.0})
    )
    assert [c.effect_threshold for c in other.columns] == [0.45, 100.0, 0.45, 0.45]
    assert (other.decision, other.drifted_columns) == ("drift", [SHIFTED])

    at = DriftConfig(**base, column_effect_thresholds={SHIFTED: shifted.effect})
    assert check_drift(reference, current, config=at).drifted_columns == [SHIFTED]
    above = DriftConfig(
        **base, column_effect_thresholds={SHIFTED: math.nextafter(shifted.effect, 1e9)}
    )
    assert check_drift(reference, current, config=above).drifted_columns == []


def test_a_class_columns_own_effect_threshold() -> None:
    """A class the reference never saw drifts `top_class` under the class default (psi 0.1) and
    not under its own threshold far above its PSI."""
    reference, current = _tables()
    reference["top_class"] = np.resize([0, 1, 2, -1], len(reference))
    current["top_class"] = 7.0
    base = {"drift_share": 0.2, "min_rows": 10, "column_effect_thresholds": {SHIFTED: 100.0}}
    result = check_drift(reference, current, config=DriftConfig(**base))
    assert result.drifted_columns == ["top_class"]
    top = result.columns[-1]
    own = {**base["column_effect_thresholds"], "top_class": top.effect * 2}
    quiet = check_drift(
        reference, current, config=DriftConfig(**{**base, "column_effect_thresholds": own})
    )
    assert (quiet.columns[-1].effect_threshold, quiet.columns[-1].large) == (top.effect * 2, False)
    assert (quiet.decision, quiet.drifted_columns) == ("no_drift", [])


def test_the_environments_own_effect_thresholds_are_honoured(
    settings_env: pytest.MonkeyPatch,
) -> None:
    reference, current = _tables()
    settings_env.setenv("VISIONOPS_DRIFT_MIN_ROWS", "10")
    settings_env.setenv("VISIONOPS_DRIFT_COLUMN_EFFECT_THRESHOLDS", json.dumps({SHIFTED: 100}))
    result = check_drift(reference, current)
    assert (result.columns[0].effect_threshold, result.drifted_columns) == (100.0, [])
    settings_env.setenv("VISIONOPS_DRIFT_COLUMN_EFFECT_THRESHOLDS", "{}")
    get_settings.cache_clear()
    assert check_drift(reference, current).drifted_columns == [SHIFTED]


def test_a_sample_is_seeded_and_said() -> None:
    """Only the current window is sampled here (100 of 120 rows); the note says what was
    compared, and the same seed always compares the same rows."""
    reference, current = _tables()
    # KS: its p-value differs with the rows compared (Anderson-Darling's is capped at 0.25).
    base = {"num_method": "ks", "drift_share": 0.25, "min_rows": 10, "sample_rows": 100}
    config = DriftConfig(**base, sample_seed=3)
    result = check_drift(reference.head(80), current, config=config)
    assert (result.reference_sample, result.current_sample, result.current_rows) == (80, 100, 120)
    assert result.notes == [
        "compared a seeded uniform sample (seed 3): 100 of 120 current and 80 of 80 reference rows"
    ]
    # Both sides sampled: the seed decides which rows, on both sides.
    both = [check_drift(reference, current, config=config).scores() for _ in range(2)]
    other = DriftConfig(**base, sample_seed=4)
    assert both[0] == both[1] != check_drift(reference, current, config=other).scores()


def test_the_decision_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    reference, current = _tables()
    with caplog.at_level(logging.INFO, logger="visionops.monitoring.drift"):
        check_drift(reference, current, config=DriftConfig(drift_share=0.25, min_rows=10))
    assert caplog.messages == [
        f"drift check: drift: 1 of 4 columns drifted (share 0.25, drift at >= 0.25): {SHIFTED}"
    ]


def test_an_empty_window_lacking_columns_is_not_enough_data() -> None:
    """No rows: nothing to compare, so a column it lacks is no error (and nothing is counted)."""
    reference, _ = _tables()
    result = check_drift(reference, pd.DataFrame({"contrast": []}), config=DriftConfig(min_rows=10))
    assert (result.decision, result.current_rows, result.current_sample) == (
        "not_enough_data",
        0,
        0,
    )
    assert (result.reference_sample, result.notes) == (120, [])
    assert result.reason == "not enough data: 0 usable current rows, at least 10 needed"


def test_compared_columns_of_tables_count_their_rows() -> None:
    """Called with two tables, a current table with rows must have every compared column."""
    reference, current = _tables()
    config = DriftConfig(min_rows=10)
    assert compared_columns(reference, current, config) == (COLUMNS, [])
    with pytest.raises(DriftCheckError) as caught:
        compared_columns(reference, current.drop(columns=["sharpness"]), config)
    assert str(caught.value) == (
        "reference and current have different columns: current lacks ['sharpness']"
    )
    assert compared_columns(reference, current.head(0).drop(columns=["sharpness"]), config)[0]


@pytest.mark.parametrize(
    ("reference_columns", "shown"),
    [([], "none"), ([f"c{i}" for i in range(13)], ", ".join(f"c{i}" for i in range(12)))],
)
def test_a_reference_without_feature_columns_says_what_it_has(
    reference_columns: list[str], shown: str
) -> None:
    """At most the first 12 of its columns are shown."""
    with pytest.raises(DriftCheckError) as caught:
        compared_columns(reference_columns, COLUMNS, DriftConfig(), current_rows=60)
    assert str(caught.value) == (
        f"the reference has no feature columns (it has: {shown}); build it with "
        "`visionops drift features` or the evaluation step"
    )


# -- cleaning -------------------------------------------------------------------------------------


def test_a_missing_class_is_left_out_like_a_missing_number() -> None:
    reference, current = _tables()
    reference["top_class"] = np.resize([0, 1, 2], len(reference))
    current["top_class"] = np.resize([0.0, 1.0, 2.0], len(current))
    current.loc[5, "sharpness"] = np.nan
    current.loc[7, "top_class"] = np.nan
    result = check_drift(reference, current, config=DriftConfig(drift_share=0.2, min_rows=10))
    assert (result.current_rows, result.current_sample) == (118, 118)
    assert result.notes == ["2 current rows with missing or infinite values left out"]


def test_the_first_value_that_is_not_a_number_is_named() -> None:
    reference, current = _tables()
    current = current.astype(object)
    current.loc[3, "contrast"] = "loud"
    current.loc[7, "contrast"] = "quiet"
    with pytest.raises(DriftCheckError) as caught:
        check_drift(reference, current, config=DriftConfig(min_rows=10))
    assert str(caught.value) == "current column 'contrast' is not numeric (e.g. 'loud')"


def test_numbers_written_as_text_or_integers_are_compared_as_numbers() -> None:
    """A CSV read without types: numeric strings and integers (with a missing one) parse."""
    reference, current = _tables()
    whole = np.round(current["sharpness"].to_numpy()).astype(int)
    current = current.astype(object)
    current["contrast"] = [f"{v:.17g}" for v in current["contrast"]]
    current["sharpness"] = pd.array(whole, dtype="Int64")
    current.loc[9, "sharpness"] = pd.NA
    result = check_drift(reference, current, config=DriftConfig(drift_share=0.25, min_rows=10))
    assert (result.current_rows, result.drifted_columns) == (119, [SHIFTED])
    contrast = next(c for c in result.columns if c.column == "contrast")
    assert contrast.current["mean"] == pytest.approx(reference["contrast"].mean())


def test_a_constant_column_is_compared_without_warnings() -> None:
    """Zero spread on both sides (the same value): the same distribution, no drift, and nothing
    printed or raised on the way (warnings are errors here)."""
    import warnings

    reference, current = _tables()
    reference["contrast"] = 5.0
    current["contrast"] = 5.0
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        result = check_drift(reference, current, config=DriftConfig(drift_share=0.25, min_rows=10))
    contrast = result.columns[1]
    assert (contrast.column, contrast.drifted, contrast.current["std"]) == ("contrast", False, 0.0)
    assert result.drifted_columns == [SHIFTED]


def test_psi_bins_a_numeric_column() -> None:
    """PSI as a numeric column's test and as the numeric effect size bins the values (Evidently
    treats each distinct value as a class only for categories): every value moved by a hair
    changes no bin, the shifted column empties every bin it had."""
    reference, current = _tables()
    current["contrast"] = reference["contrast"] + 1e-9
    config = DriftConfig(
        drift_share=0.25, min_rows=10, column_methods={"contrast": "psi"}, num_effect="psi",
        num_effect_threshold=0.1, num_threshold=0.1,
    )  # fmt: skip
    result = check_drift(reference, current, config=config)
    by_column = {c.column: c for c in result.columns}
    contrast = by_column["contrast"]
    assert (contrast.method, contrast.effect_method) == ("psi", "psi")
    assert contrast.score == pytest.approx(0.0, abs=1e-9)
    assert contrast.effect == pytest.approx(0.0, abs=1e-9)
    assert not contrast.significant and not contrast.large
    assert by_column[SHIFTED].large and result.drifted_columns == [SHIFTED]
