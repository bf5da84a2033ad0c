"""The drift decision's statistics, computed without Evidently, are Evidently's own.

`visionops.monitoring.drift_stats` computes `ks`, `wasserstein`, `chisquare` and `psi` with scipy
and numpy so that a check imports Evidently only to render its report. Each is compared here with
the stattest Evidently registers under that name, on the same samples: equal scores (to the last
bit, both computed in this process) and equal verdicts, on the cases that take different paths
(KS's exact p-value up to 10,000 rows and its asymptotic one above, ties, a constant reference,
a class only one side has, PSI's bins and classes). Then the whole check: its scores are
Evidently's, and it does not import Evidently unless asked for the report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from visionops.errors import UsageError
from visionops.monitoring.drift import DriftConfig, check_drift
from visionops.monitoring.drift_stats import NATIVE, stattest

ROOT = Path(__file__).resolve().parents[1]


def _evidently(method: str, kind: str):  # type: ignore[no-untyped-def]
    from evidently.legacy.calculations.stattests.registry import get_registered_stattest
    from evidently.legacy.core import ColumnType

    return get_registered_stattest(method, ColumnType(kind)), ColumnType(kind)


def _numeric_cases() -> dict[str, tuple[pd.Series, pd.Series]]:
    rng = np.random.default_rng(7)
    reference = pd.Series(rng.normal(100, 10, 1008))
    return {
        "same distribution, 50 rows (exact KS)": (reference, pd.Series(rng.normal(100, 10, 50))),
        "small shift, 2,000 rows": (reference, pd.Series(rng.normal(101, 10, 2000))),
        "large shift, 20,000 rows (asymptotic KS)": (
            reference,
            pd.Series(rng.normal(130, 14, 20_000)),
        ),
        "same values reordered": (reference, pd.Series(rng.permutation(reference.to_numpy()))),
        "ties (rounded), 12,000 rows": (
            reference.round(0),
            pd.Series(rng.normal(102, 10, 12_000)).round(0),
        ),
        "constant reference": (pd.Series(np.full(300, 3.0)), pd.Series(rng.normal(3, 1, 400))),
        "20 distinct values (PSI by value)": (
            pd.Series(np.resize(np.arange(20.0), 500)),
            pd.Series(rng.integers(0, 22, 600).astype(float)),
        ),
        "21 distinct values (PSI by bins)": (
            pd.Series(np.resize(np.arange(21.0), 500)),
            pd.Series(rng.integers(0, 22, 600).astype(float)),
        ),
        "few distinct values": (
            pd.Series(rng.integers(0, 5, 500).astype(float)),
            pd.Series(rng.integers(0, 7, 700).astype(float)),
        ),
    }


def _class_cases() -> dict[str, tuple[pd.Series, pd.Series]]:
    rng = np.random.default_rng(8)
    labels = np.array(["-1", "0", "1", "2", "3"])
    shares, other = [0.4, 0.3, 0.1, 0.1, 0.1], [0.1, 0.1, 0.2, 0.3, 0.3]
    reference = pd.Series(rng.choice(labels, 1008, p=shares))
    return {
        "same shares": (reference, pd.Series(rng.choice(labels, 5000, p=shares))),
        "other shares": (reference, pd.Series(rng.choice(labels, 800, p=other))),
        "a class the reference never saw": (
            reference,
            pd.Series(np.concatenate([reference.to_numpy()[:500], ["7"] * 20])),
        ),
        "one class only": (reference, pd.Series(["0"] * 60)),
        "a class at exactly 1 in 10,000, a class gone": (  # PSI's smallest share, at its bound
            reference,
            pd.Series(np.concatenate([rng.choice(labels[1:], 9_999), ["7"]])),
        ),
    }


CASES = [
    (method, kind, name)
    for method, test in NATIVE.items()
    for kind in test.kinds
    for name in (_numeric_cases() if kind == "num" else _class_cases())
]


@pytest.mark.parametrize(("method", "kind", "case"), CASES)
def test_each_statistic_is_evidentlys_on_the_same_samples(method: str, kind: str, case: str):
    reference, current = (_numeric_cases() if kind == "num" else _class_cases())[case]
    ours = stattest(method, kind)  # type: ignore[arg-type]
    theirs, column_type = _evidently(method, kind)
    assert (ours.name, ours.default_threshold) == (theirs.name, theirs.default_threshold)
    exact, _ = theirs.func(reference, current, column_type, 0.05)
    for threshold in (1e-3, 0.05, 0.5, float(exact)):  # the score itself: which side is drift
        score, verdict = ours.func(reference, current, kind, threshold)  # type: ignore[arg-type]
        expected, expected_verdict = theirs.func(reference, current, column_type, threshold)
        assert score == float(expected), (method, case, threshold)
        assert verdict == bool(expected_verdict), (method, case, threshold)


def test_a_kind_a_statistic_does_not_take_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="method 'ks' cannot compare cat columns: it takes num"):
        stattest("ks", "cat")
    with pytest.raises(UsageError, match="drift method 'chisquare' cannot compare num columns"):
        stattest("chisquare", "num")


def test_another_evidently_method_comes_from_its_registry() -> None:
    reference, current = _numeric_cases()["small shift, 2,000 rows"]
    ours = stattest("cramer_von_mises", "num")
    theirs, column_type = _evidently("cramer_von_mises", "num")
    assert (ours.name, ours.default_threshold) == ("cramer_von_mises", theirs.default_threshold)
    assert ours.func(reference, current, "num", 0.05) == theirs.func(
        reference, current, column_type, 0.05
    )


def test_anderson_darling_of_one_value_on_both_sides_is_no_change() -> None:
    """scipy (and so Evidently) refuses a single distinct value; a fixed camera's image width is
    one, so the check must still answer: nothing changed. One value against another is a change."""
    same = pd.Series(np.full(300, 640.0))
    assert stattest("anderson", "num").func(same, same.iloc[:50], "num", 0.01) == (1.0, False)
    score, real = stattest("anderson", "num").func(same, same.iloc[:50] + 1, "num", 0.01)
    assert (score, real) == (0.001, True)  # scipy's floor


def _tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(3)
    columns = ["brightness_mean", "contrast", "sharpness", "noise_sigma"]
    reference = pd.DataFrame({c: rng.normal(100, 10, 1008) for c in columns})
    reference["top_class"] = rng.choice([-1, 0, 1, 2], 1008)
    current = pd.DataFrame({c: rng.normal(100, 10, 30_000) for c in columns})
    current["contrast"] += 8.0  # 0.8 sd: drifted
    current["sharpness"] += 2.5  # 0.25 sd: real, too small to matter
    current["top_class"] = rng.choice([-1, 0, 1, 2, 3], 30_000)
    return reference, current


def test_the_checks_scores_and_decisions_are_evidentlys() -> None:
    """The whole check (its 20,000-row sample included): every column's scores and verdicts are
    what Evidently's registry computes on the samples the check compared."""
    from visionops.data.tables import FeatureTableReader
    from visionops.monitoring.drift_sample import read_side

    reference, current = _tables()
    config = DriftConfig(cat_effect_threshold=0.05)
    result = check_drift(reference, current, config=config)
    assert result.current_sample == config.sample_rows < result.current_rows
    columns = [c.column for c in result.columns]
    ref = read_side(FeatureTableReader(reference), columns, config.sample_rows, 0, "reference")
    cur = read_side(FeatureTableReader(current), columns, config.sample_rows, 0, "current")
    for column in result.columns:
        kind = "cat" if column.kind == "categorical" else "num"
        test, column_type = _evidently(column.method, kind)
        effect, _ = _evidently(column.effect_method, kind)
        a, b = ref.sample[column.column], cur.sample[column.column]
        score, significant = test.func(a, b, column_type, column.threshold)
        value, large = effect.func(a, b, column_type, column.effect_threshold)
        assert (column.score, column.significant) == (score, significant), column.column
        assert (column.effect, column.large) == (value, large), column.column
    assert result.drifted_columns == ["contrast", "top_class"]
    by_name = {c.column: c for c in result.columns}
    assert by_name["sharpness"].significant and not by_name["sharpness"].large


def test_a_check_imports_evidently_only_for_its_report(tmp_path: Path) -> None:
    reference, current = _tables()
    reference.to_parquet(tmp_path / "reference.parquet")
    current.to_parquet(tmp_path / "current.parquet")
    script = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from visionops.monitoring.drift import check_drift\n"
        f"folder = Path({str(tmp_path)!r})\n"
        "report = folder / 'report' if sys.argv[1] == 'report' else None\n"
        "result = check_drift(folder / 'reference.parquet', folder / 'current.parquet',"
        " report_dir=report)\n"
        "print(json.dumps([result.decision, 'evidently' in sys.modules]))\n"
    )
    seen = {}
    for mode in ("decision", "report"):
        done = subprocess.run(
            [sys.executable, "-c", script, mode], cwd=ROOT, capture_output=True, text=True,
            check=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        seen[mode] = json.loads(done.stdout.splitlines()[-1])
    assert seen == {"decision": ["drift", False], "report": ["drift", True]}
    assert (tmp_path / "report" / "drift_report.html").stat().st_size > 100_000
