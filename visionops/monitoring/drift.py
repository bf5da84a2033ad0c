"""The drift decision: Evidently compares a current feature window with the reference table.

Every compared column gets its own Evidently `ValueDrift` (method and threshold from the settings,
per column if configured) and the decision is Evidently's `DriftedColumnsCount` test: drift when
the share of drifted columns reaches `drift_share`. Below `drift_min_rows` current rows the answer
is "not enough data" instead of a guess. Input problems (no feature columns, columns missing on one
side, non-numeric or non-finite values) are a `DriftCheckError` that names them; rows with missing
or infinite values are left out and counted, never silently compared.
"""

from __future__ import annotations

import html
import json
import logging
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from visionops.config import Settings, get_settings
from visionops.data.features import CATEGORICAL_COLUMNS, FEATURE_COLUMNS
from visionops.data.files import atomic_write_text
from visionops.errors import DriftCheckError, UsageError

if TYPE_CHECKING:
    import pandas as pd  # heavy (about a second): only once tables are compared

log = logging.getLogger(__name__)

Decision = Literal["drift", "no_drift", "not_enough_data"]
DRIFT: Decision = "drift"
NO_DRIFT: Decision = "no_drift"
NOT_ENOUGH_DATA: Decision = "not_enough_data"

REPORT_HTML = "drift_report.html"
REPORT_JSON = "drift.json"


_DEFAULTS = Settings.model_fields


@dataclass(frozen=True)
class DriftConfig:
    """How columns are compared; `from_settings` reads the `VISIONOPS_DRIFT_*` settings.

    Unset fields take the calibrated defaults of `Settings`. A threshold of None means the method's
    own default in Evidently (ks 0.05, wasserstein 0.1...).
    """

    num_method: str = _DEFAULTS["drift_num_method"].default
    cat_method: str = _DEFAULTS["drift_cat_method"].default
    num_threshold: float | None = _DEFAULTS["drift_num_threshold"].default
    cat_threshold: float | None = _DEFAULTS["drift_cat_threshold"].default
    drift_share: float = _DEFAULTS["drift_share"].default
    min_rows: int = _DEFAULTS["drift_min_rows"].default
    columns: tuple[str, ...] | None = None
    column_methods: dict[str, str] = field(default_factory=dict)
    column_thresholds: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0.0 < self.drift_share <= 1.0:
            raise UsageError(f"drift share must be in (0, 1], got {self.drift_share}")
        if self.min_rows < 2:
            raise UsageError(f"the minimum window must be at least 2 rows, got {self.min_rows}")
        for name, value in [
            ("num_threshold", self.num_threshold),
            ("cat_threshold", self.cat_threshold),
            *self.column_thresholds.items(),
        ]:
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise UsageError(f"drift threshold {name} must be a positive number, got {value}")

    @classmethod
    def from_settings(cls, settings: Settings | None = None, **overrides: Any) -> DriftConfig:
        settings = settings or get_settings()
        values: dict[str, Any] = {
            "num_method": settings.drift_num_method,
            "cat_method": settings.drift_cat_method,
            "num_threshold": settings.drift_num_threshold,
            "cat_threshold": settings.drift_cat_threshold,
            "drift_share": settings.drift_share,
            "min_rows": settings.drift_min_rows,
            "columns": tuple(settings.drift_columns) if settings.drift_columns else None,
            "column_methods": dict(settings.drift_column_methods),
            "column_thresholds": dict(settings.drift_column_thresholds),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def method_for(self, column: str) -> str:
        default = self.cat_method if column in CATEGORICAL_COLUMNS else self.num_method
        return self.column_methods.get(column, default)

    def threshold_for(self, column: str) -> float | None:
        default = self.cat_threshold if column in CATEGORICAL_COLUMNS else self.num_threshold
        return self.column_thresholds.get(column, default)


@dataclass
class ColumnDrift:
    """One column's comparison: Evidently's score (p-value or distance) against its threshold."""

    column: str
    kind: Literal["numerical", "categorical"]
    method: str
    threshold: float
    score: float
    drifted: bool


@dataclass
class DriftResult:
    """The outcome of one check; `to_dict()` is the JSON the CLI and components emit."""

    decision: Decision
    reason: str
    reference_rows: int
    current_rows: int
    min_rows: int
    drift_share_threshold: float
    drifted_share: float | None = None
    columns: list[ColumnDrift] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    report_html: Path | None = None
    report_json: Path | None = None

    @property
    def drift_detected(self) -> bool:
        return self.decision == DRIFT

    @property
    def drifted_columns(self) -> list[str]:
        return [c.column for c in self.columns if c.drifted]

    def scores(self) -> dict[str, float]:
        """Per-column scores, e.g. for KFP Metrics."""
        return {c.column: c.score for c in self.columns}

    def to_dict(self) -> dict[str, Any]:
        return {
            "decision": self.decision,
            "drift_detected": self.drift_detected,
            "reason": self.reason,
            "drifted_share": self.drifted_share,
            "drift_share_threshold": self.drift_share_threshold,
            "drifted_columns": self.drifted_columns,
            "reference_rows": self.reference_rows,
            "current_rows": self.current_rows,
            "min_rows": self.min_rows,
            "columns": [asdict(c) for c in self.columns],
            "notes": list(self.notes),
            "report_html": str(self.report_html) if self.report_html else None,
            "report_json": str(self.report_json) if self.report_json else None,
        }


# ---------------------------------------------------------------- columns


def compared_columns(
    reference: pd.DataFrame, current: pd.DataFrame, config: DriftConfig
) -> tuple[list[str], list[str]]:
    """(columns to compare, notes). DriftCheckError when the two tables cannot be compared."""
    notes: list[str] = []
    if config.columns is not None:
        columns = list(config.columns)
        absent = [c for c in columns if c not in reference.columns]
        if absent:
            raise DriftCheckError(f"configured drift columns missing from the reference: {absent}")
    else:
        columns = [c for c in FEATURE_COLUMNS if c in reference.columns]
        if not columns:
            shown = ", ".join(map(str, list(reference.columns)[:12])) or "none"
            raise DriftCheckError(
                f"the reference has no feature columns (it has: {shown}); build it with "
                "`visionops drift features` or the evaluation step"
            )
    missing = [c for c in columns if c not in current.columns]
    if missing and len(current):
        raise DriftCheckError(
            f"reference and current have different columns: current lacks {missing}"
        )
    extra = [c for c in FEATURE_COLUMNS if c in current.columns and c not in columns]
    if extra:
        notes.append(f"not compared (absent from the reference or not configured): {extra}")
    return columns, notes


def _clean(frame: pd.DataFrame, columns: list[str], side: str) -> tuple[pd.DataFrame, int]:
    """The compared columns with finite values only, and how many rows were left out."""
    import pandas as pd  # heavy (about a second): only once tables are compared

    table = frame.loc[:, columns].copy()
    for column in columns:
        if column in CATEGORICAL_COLUMNS:
            continue
        values = pd.to_numeric(table[column], errors="coerce")
        bad = values.isna() & table[column].notna()
        if bad.any():
            example = table.loc[bad, column].iloc[0]
            raise DriftCheckError(f"{side} column {column!r} is not numeric (e.g. {example!r})")
        table[column] = values.replace([np.inf, -np.inf], np.nan)
    empty = [c for c in columns if len(table) and table[c].isna().all()]
    if empty:
        raise DriftCheckError(f"{side} columns without any finite value: {empty}")
    keep = table.notna().all(axis=1)
    table = table.loc[keep]
    for column in columns:
        if column in CATEGORICAL_COLUMNS:
            table[column] = table[column].map(_category)
    return table.reset_index(drop=True), int((~keep).sum())


def _category(value: object) -> str:
    """Labels as strings; 3.0 and 3 are the same class."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# ---------------------------------------------------------------- check


def check_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    config: DriftConfig | None = None,
    report_dir: Path | None = None,
) -> DriftResult:
    """Compare `current` with `reference` and decide drift / no drift / not enough data.

    With `report_dir`, writes `drift_report.html` (Evidently, self-contained) and `drift.json`
    (this result plus Evidently's metric and test values) there.
    """
    config = config or DriftConfig.from_settings()
    columns, notes = compared_columns(reference, current, config)
    ref, ref_dropped = _clean(reference, columns, "reference")
    if ref_dropped:
        notes.append(f"{ref_dropped} reference rows with missing or infinite values left out")
    if len(ref) < config.min_rows:
        raise DriftCheckError(
            f"the reference has {len(ref)} usable rows; at least {config.min_rows} are needed"
        )
    cur, cur_dropped = (
        _clean(current, columns, "current") if len(current) else (current.iloc[0:0], 0)
    )
    if cur_dropped:
        notes.append(f"{cur_dropped} current rows with missing or infinite values left out")

    result = DriftResult(
        decision=NOT_ENOUGH_DATA,
        reason="",
        reference_rows=len(ref),
        current_rows=len(cur),
        min_rows=config.min_rows,
        drift_share_threshold=config.drift_share,
        notes=notes,
    )
    if len(cur) < config.min_rows:
        result.reason = (
            f"not enough data: {len(cur)} usable current rows, at least {config.min_rows} needed"
        )
        _write_reports(result, None, report_dir)
        return result

    snapshot = _run_evidently(ref, cur, columns, config)
    _read_snapshot(result, snapshot, columns, config)
    _write_reports(result, snapshot, report_dir)
    log.info("drift check: %s", result.reason)
    return result


def _stattest(method: str, kind: str) -> Any:
    # Evidently takes seconds to import: only a check that compares anything loads it.
    from evidently.legacy.calculations.stattests.registry import get_registered_stattest
    from evidently.legacy.core import ColumnType

    try:
        return get_registered_stattest(method, ColumnType(kind))
    except Exception as error:  # StatTestNotFoundError, StatTestInvalidFeatureTypeError
        message = f"drift method {method!r} cannot compare {kind} columns: {error}"
        raise UsageError(message) from error


def _run_evidently(ref: pd.DataFrame, cur: pd.DataFrame, columns: list[str], config: DriftConfig):  # type: ignore[no-untyped-def]
    # Evidently takes seconds to import: only a check that compares anything loads it.
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import DriftedColumnsCount, ValueDrift

    categorical = [c for c in columns if c in CATEGORICAL_COLUMNS]
    numerical = [c for c in columns if c not in CATEGORICAL_COLUMNS]
    methods: dict[str, str] = {}
    thresholds: dict[str, float] = {}
    for column in columns:
        kind = "cat" if column in CATEGORICAL_COLUMNS else "num"
        methods[column] = config.method_for(column)
        stattest = _stattest(methods[column], kind)
        threshold = config.threshold_for(column)
        thresholds[column] = stattest.default_threshold if threshold is None else threshold
    definition = DataDefinition(numerical_columns=numerical, categorical_columns=categorical)
    metrics = [
        DriftedColumnsCount(
            columns=columns,
            drift_share=config.drift_share,
            per_column_method=methods,
            per_column_threshold=thresholds,
        ),
        *(ValueDrift(column=c, method=methods[c], threshold=thresholds[c]) for c in columns),
    ]
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        # Evidently's correlation widgets divide by a zero spread on constant columns.
        warnings.simplefilter("ignore", RuntimeWarning)
        return Report(metrics, include_tests=True).run(
            Dataset.from_pandas(cur, data_definition=definition),
            Dataset.from_pandas(ref, data_definition=definition),
        )


def _read_snapshot(result: DriftResult, snapshot: Any, columns: list[str], config: DriftConfig):  # type: ignore[no-untyped-def]
    data = snapshot.dict()
    drifted_by_test: dict[str, bool] = {}
    share_status = None
    for test in data["tests"]:
        params = test["metric_config"]["params"]
        if params["type"].endswith("ValueDrift"):
            drifted_by_test[params["column"]] = test["status"] == "FAIL"
        elif params["type"].endswith("DriftedColumnsCount"):
            share_status = test["status"]
    for metric in data["metrics"]:
        cfg = metric["config"]
        if cfg["type"].endswith("DriftedColumnsCount"):
            result.drifted_share = float(metric["value"]["share"])
        elif cfg["type"].endswith("ValueDrift"):
            column = cfg["column"]
            result.columns.append(
                ColumnDrift(
                    column=column,
                    kind="categorical" if column in CATEGORICAL_COLUMNS else "numerical",
                    method=str(cfg["method"]),
                    threshold=float(cfg["threshold"]),
                    score=float(metric["value"]),
                    drifted=drifted_by_test[column],
                )
            )
    result.columns.sort(key=lambda c: columns.index(c.column))
    if share_status is None or result.drifted_share is None:
        raise DriftCheckError("Evidently returned no drifted-columns test")  # pragma: no cover
    counted = round(result.drifted_share * len(columns))
    if counted != len(result.drifted_columns):
        log.warning("Evidently counted %d drifted columns, per-column tests %d",
                    counted, len(result.drifted_columns))  # fmt: skip
    result.decision = DRIFT if share_status == "FAIL" else NO_DRIFT
    drifted = ", ".join(result.drifted_columns) or "none"
    verdict = "drift" if result.decision == DRIFT else "no drift"
    result.reason = (
        f"{verdict}: {len(result.drifted_columns)} of {len(columns)} columns drifted "
        f"(share {result.drifted_share:.2f}, drift at >= {config.drift_share:.2f}): {drifted}"
    )


def _write_reports(result: DriftResult, snapshot: Any, report_dir: Path | None) -> None:
    if report_dir is None:
        return
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    result.report_html = report_dir / REPORT_HTML
    result.report_json = report_dir / REPORT_JSON
    if snapshot is not None:
        snapshot.save_html(str(result.report_html))  # a Path silently writes nothing
        evidently = snapshot.dict()
    else:
        atomic_write_text(result.report_html, _summary_html(result))
        evidently = None
    payload = {**result.to_dict(), "evidently": evidently}
    atomic_write_text(result.report_json, json.dumps(payload, indent=2, default=str) + "\n")


def _summary_html(result: DriftResult) -> str:
    """A small self-contained page for checks that did not run Evidently (not enough data)."""
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in result.notes)
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>VisionOps drift check</title>"
        "</head><body><h1>Drift check: not enough data</h1>"
        f"<p>{html.escape(result.reason)}</p>"
        f"<p>Reference rows: {result.reference_rows}</p><ul>{notes}</ul></body></html>\n"
    )
