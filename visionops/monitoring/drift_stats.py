"""The statistics a drift decision compares columns with, without importing Evidently.

Evidently takes seconds to import (7.7 s of a 13.3 s check of a million rows on an idle 2-core
machine: its pydantic models, metric and UI modules, nltk, plotly), and the decision needs none
of it: its default statistics are a few lines of scipy and numpy each. They are computed here
exactly as Evidently's registered stattests compute them (same names, default thresholds, scores
and verdicts: `tests/test_drift_stats.py` compares both on the same samples):

- `ks`: the two-sample Kolmogorov-Smirnov test's p-value (scipy's `ks_2samp`, its default
  method); real at p <= threshold;
- `anderson`: the k-sample Anderson-Darling test's p-value (scipy's `anderson_ksamp`, midrank),
  which scipy interpolates from a table and floors at 0.001 (caps at 0.25); real at p < threshold.
  Unlike KS it weighs the tails, so it sees a few images changed a lot (README "Calibration").
  Where both sides hold one and the same value (a fixed camera's image size) scipy refuses to
  compute it; nothing changed there, so the p-value is 1 (Evidently raises);
- `wasserstein`: the Wasserstein distance over the reference's standard deviation (at least
  0.001); matters at >= threshold;
- `chisquare`: the chi-square test's p-value of the current class counts against the reference's,
  scaled to the current size; real at p < threshold;
- `psi`: the population stability index over the reference's classes, or for a numeric column
  with more than 20 values over Sturges' bins of both sides; matters at >= threshold.

Any other method Evidently registers (`cramer_von_mises`, `jensenshannon`...) is taken from its
registry, which imports it. Evidently itself is then imported only to render its report.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from visionops.errors import UsageError

Kind = Literal["num", "cat"]
Func = Callable[[Any, Any, Kind, float], tuple[float, bool]]


@dataclass(frozen=True)
class StatTest:
    """A named statistic: `func(reference, current, kind, threshold)` -> (score, verdict)."""

    name: str
    kinds: tuple[Kind, ...]
    default_threshold: float
    func: Func


def _ks(reference: Any, current: Any, kind: Kind, threshold: float) -> tuple[float, bool]:
    from scipy.stats import ks_2samp  # about a second: only a check that compares loads it

    p_value = float(ks_2samp(reference, current)[1])
    return p_value, p_value <= threshold


def _anderson(reference: Any, current: Any, kind: Kind, threshold: float) -> tuple[float, bool]:
    from scipy.stats import anderson_ksamp  # about a second: only a check that compares loads it

    a, b = np.asarray(reference, np.float64), np.asarray(current, np.float64)
    if a.min() == a.max() == b.min() == b.max():
        return 1.0, False  # one value on both sides: nothing changed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "p-value floored": the page says so
        p_value = float(anderson_ksamp([a, b], variant="midrank").pvalue)
    return p_value, p_value < threshold


def _wasserstein(reference: Any, current: Any, kind: Kind, threshold: float) -> tuple[float, bool]:
    from scipy.stats import wasserstein_distance  # about a second: only a check that compares

    norm = max(float(np.std(reference)), 0.001)  # np.std of a Series: its own std(ddof=0)
    value = float(wasserstein_distance(reference, current)) / norm
    return value, value >= threshold


def _classes(reference: Any, current: Any) -> list[Any]:
    """The classes of both sides, as Evidently lists them (a set's order)."""
    return list(set(reference.dropna().unique()) | set(current.dropna().unique()))


def _chisquare(reference: Any, current: Any, kind: Kind, threshold: float) -> tuple[float, bool]:
    from scipy.stats import chisquare  # about a second: only a check that compares loads it

    keys = _classes(reference, current)
    ref_counts = {**dict.fromkeys(keys, 0), **dict(reference.value_counts())}
    cur_counts = {**dict.fromkeys(keys, 0), **dict(current.value_counts())}
    scale = current.shape[0] / reference.shape[0]
    expected = [ref_counts[key] * scale for key in keys]
    observed = [cur_counts[key] for key in keys]
    p_value = float(chisquare(observed, expected)[1])
    return p_value, p_value < threshold


def _fill_zeroes(percents: np.ndarray) -> None:
    """An empty bin gets a small share (Evidently's `feel_zeroes`), so the log stays finite."""
    smallest = min(percents[percents != 0])
    np.place(percents, percents == 0, smallest / 10**6 if smallest <= 0.0001 else 0.0001)


def _psi(reference: Any, current: Any, kind: Kind, threshold: float) -> tuple[float, bool]:
    if kind == "num" and reference.nunique() > 20:
        combined = np.concatenate([np.asarray(reference), np.asarray(current)])
        bins = np.histogram_bin_edges(combined, bins="sturges")
        ref_percents = np.histogram(reference, bins)[0] / len(reference)
        cur_percents = np.histogram(current, bins)[0] / len(current)
    else:
        keys = _classes(reference, current)
        ref_counts = {**dict.fromkeys(keys, 0), **dict(reference.value_counts())}
        cur_counts = {**dict.fromkeys(keys, 0), **dict(current.value_counts())}
        ref_percents = np.array([ref_counts[key] / len(reference) for key in keys])
        cur_percents = np.array([cur_counts[key] / len(current) for key in keys])
    _fill_zeroes(ref_percents)
    _fill_zeroes(cur_percents)
    value = float(np.sum((ref_percents - cur_percents) * np.log(ref_percents / cur_percents)))
    return value, value >= threshold


P_VALUE_FLOORS: dict[str, float] = {"anderson": 0.001}
"""Tests whose p-value is never reported below a floor: scipy interpolates Anderson-Darling's from
a table and says 0.001 for anything smaller, so a threshold at or below it never finds a change."""

NATIVE: dict[str, StatTest] = {
    "ks": StatTest("ks", ("num",), 0.05, _ks),
    "anderson": StatTest("anderson", ("num",), 0.1, _anderson),
    "wasserstein": StatTest("wasserstein", ("num",), 0.1, _wasserstein),
    "chisquare": StatTest("chisquare", ("cat",), 0.05, _chisquare),
    "psi": StatTest("psi", ("cat", "num"), 0.1, _psi),
}
"""Evidently's statistics computed here: name -> the kinds of column, the default threshold."""


def stattest(method: str, kind: Kind) -> StatTest:
    """The statistic `method` for a column of `kind`; UsageError when it cannot compare it."""
    native = NATIVE.get(method)
    if native is not None:
        if kind not in native.kinds:
            raise UsageError(
                f"drift method {method!r} cannot compare {kind} columns: it takes "
                f"{' and '.join(native.kinds)} columns"
            )
        return native
    return _evidently_stattest(method, kind)


def _evidently_stattest(method: str, kind: Kind) -> StatTest:
    # Evidently takes seconds to import: only a method computed nowhere else loads it.
    from evidently.legacy.calculations.stattests.registry import get_registered_stattest
    from evidently.legacy.core import ColumnType

    try:
        found = get_registered_stattest(method, ColumnType(kind))
    except Exception as error:  # StatTestNotFoundError, StatTestInvalidFeatureTypeError
        message = f"drift method {method!r} cannot compare {kind} columns: {error}"
        raise UsageError(message) from error
    compute = found.func

    def func(reference: Any, current: Any, kind: Kind, threshold: float) -> tuple[float, bool]:
        return compute(reference, current, ColumnType(kind), threshold)  # type: ignore[no-any-return]

    return StatTest(found.name, (kind,), float(found.default_threshold), func)
