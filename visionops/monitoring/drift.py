"""The drift decision: a current feature window against the reference table, at any size.

Each side is read once, in batches (`visionops.monitoring.drift_sample`): every row's streaming
statistics and a seeded uniform sample of at most `sample_rows` usable rows. The columns are
compared on the samples with two of Evidently's statistics each (computed by
`visionops.monitoring.drift_stats` with scipy, Evidently being imported only for its report): a
test (Anderson-Darling p-value by default) that says whether the change is real, and an effect
size (normed Wasserstein by default) that says whether it is large enough to matter; a column
drifted only when both say so. With windows of
millions of rows a test alone flags changes of a few thousandths of a standard deviation; the
effect size alone is noisy on small windows. Drift when the share of drifted columns reaches
`drift_share`. Below `min_rows` usable current rows the answer is "not enough data" instead of a
guess. Evidently's report, when asked for, is computed on the same samples and says so. Input
problems (no feature columns, columns missing on one side, non-numeric or non-finite values) are a
`DriftCheckError` that names them; rows with missing or infinite values are left out and counted,
never silently compared.
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
from visionops.data.tables import FeatureTableReader
from visionops.errors import DriftCheckError, UsageError
from visionops.monitoring.drift_sample import Side, read_side
from visionops.monitoring.drift_stats import P_VALUE_FLOORS, Kind, StatTest, stattest

if TYPE_CHECKING:
    import pandas as pd  # heavy (about a second): only where a table is read

    Table = pd.DataFrame | Path | FeatureTableReader

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
    own default in Evidently (anderson 0.1, ks 0.05, wasserstein 0.1...).
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
    num_effect: str = _DEFAULTS["drift_num_effect"].default
    num_effect_threshold: float = _DEFAULTS["drift_num_effect_threshold"].default
    column_effect_thresholds: dict[str, float] = field(
        default_factory=lambda: dict(_DEFAULTS["drift_column_effect_thresholds"].default_factory())
    )
    cat_effect: str = _DEFAULTS["drift_cat_effect"].default
    cat_effect_threshold: float = _DEFAULTS["drift_cat_effect_threshold"].default
    sample_rows: int = _DEFAULTS["drift_sample_rows"].default
    sample_seed: int = _DEFAULTS["drift_sample_seed"].default

    def __post_init__(self) -> None:
        if self.sample_rows < self.min_rows:
            raise UsageError(
                f"the sample ({self.sample_rows} rows) must hold at least the minimum window "
                f"({self.min_rows} rows)"
            )
        for name, value in [("num_effect_threshold", self.num_effect_threshold),
                            ("cat_effect_threshold", self.cat_effect_threshold)]:  # fmt: skip
            if not (value > 0 and math.isfinite(value)):
                raise UsageError(f"drift {name} must be a positive number, got {value}")
        for name, value in self.column_effect_thresholds.items():
            if not (value > 0 and math.isfinite(value)):
                raise UsageError(
                    f"drift effect threshold {name} must be a positive number, got {value}"
                )
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
        for name, method, value in [
            ("num_threshold", self.num_method, self.num_threshold),
            *((c, self.method_for(c), t) for c, t in self.column_thresholds.items()),
        ]:
            floor = P_VALUE_FLOORS.get(method)
            if floor is not None and value is not None and value <= floor:
                raise UsageError(
                    f"drift threshold {name} ({value:g}) must be above {method}'s smallest "
                    f"p-value ({floor:g}), or it never finds drift"
                )

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
            "num_effect": settings.drift_num_effect,
            "num_effect_threshold": settings.drift_num_effect_threshold,
            "column_effect_thresholds": dict(settings.drift_column_effect_thresholds),
            "cat_effect": settings.drift_cat_effect,
            "cat_effect_threshold": settings.drift_cat_effect_threshold,
            "sample_rows": settings.drift_sample_rows,
            "sample_seed": settings.drift_sample_seed,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def method_for(self, column: str) -> str:
        default = self.cat_method if column in CATEGORICAL_COLUMNS else self.num_method
        return self.column_methods.get(column, default)

    def threshold_for(self, column: str) -> float | None:
        default = self.cat_threshold if column in CATEGORICAL_COLUMNS else self.num_threshold
        return self.column_thresholds.get(column, default)

    def effect_for(self, column: str) -> tuple[str, float]:
        """(effect method, threshold): a column's own threshold (`column_effect_thresholds`, set
        where calibration found one column moving more than others under harmless variation),
        else its kind's."""
        if column in CATEGORICAL_COLUMNS:
            method, default = self.cat_effect, self.cat_effect_threshold
        else:
            method, default = self.num_effect, self.num_effect_threshold
        return method, self.column_effect_thresholds.get(column, default)


@dataclass
class ColumnDrift:
    """One column's comparison on the samples: the test's score (a p-value, or a distance for a
    distance method) against its threshold, and the effect size against its own; `drifted` only
    when both say so. The stats describe every row of each side."""

    column: str
    kind: Literal["numerical", "categorical"]
    method: str
    threshold: float
    score: float
    drifted: bool
    significant: bool = False
    effect_method: str = ""
    effect_threshold: float = math.nan
    effect: float = math.nan
    large: bool = False
    reference: dict[str, float | int] = field(default_factory=dict)
    current: dict[str, float | int] = field(default_factory=dict)


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
    reference_sample: int = 0  # rows of each side compared (a uniform sample of its usable rows)
    current_sample: int = 0
    sample_seed: int = 0
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
            "reference_sample": self.reference_sample,
            "current_sample": self.current_sample,
            "sample_seed": self.sample_seed,
            "columns": [
                {k: v for k, v in asdict(c).items() if not k.startswith("_")} for c in self.columns
            ],
            "notes": list(self.notes),
            "report_html": str(self.report_html) if self.report_html else None,
            "report_json": str(self.report_json) if self.report_json else None,
        }


# ---------------------------------------------------------------- columns


def compared_columns(
    reference: pd.DataFrame | list[str],
    current: pd.DataFrame | list[str],
    config: DriftConfig,
    current_rows: int | None = None,
) -> tuple[list[str], list[str]]:
    """(columns to compare, notes) from the two tables' columns (or the tables).
    DriftCheckError when they cannot be compared."""
    reference_columns = [str(c) for c in getattr(reference, "columns", reference)]
    current_columns = [str(c) for c in getattr(current, "columns", current)]
    if current_rows is None:
        current_rows = len(current)
    notes: list[str] = []
    if config.columns is not None:
        columns = list(config.columns)
        absent = [c for c in columns if c not in reference_columns]
        if absent:
            raise DriftCheckError(f"configured drift columns missing from the reference: {absent}")
    else:
        columns = [c for c in FEATURE_COLUMNS if c in reference_columns]
        if not columns:
            shown = ", ".join(reference_columns[:12]) or "none"
            raise DriftCheckError(
                f"the reference has no feature columns (it has: {shown}); build it with "
                "`visionops drift features` or the evaluation step"
            )
    missing = [c for c in columns if c not in current_columns]
    if missing and current_rows:
        raise DriftCheckError(
            f"reference and current have different columns: current lacks {missing}"
        )
    extra = [c for c in FEATURE_COLUMNS if c in current_columns and c not in columns]
    if extra:
        notes.append(f"not compared (absent from the reference or not configured): {extra}")
    return columns, notes


def _reader(table: Table) -> FeatureTableReader:
    return table if isinstance(table, FeatureTableReader) else FeatureTableReader(table)


# ---------------------------------------------------------------- check


def check_drift(
    reference: Table,
    current: Table,
    *,
    config: DriftConfig | None = None,
    report_dir: Path | None = None,
) -> DriftResult:
    """Compare `current` with `reference` and decide drift / no drift / not enough data.

    Either side is a DataFrame, a feature table's path (Parquet is streamed) or a
    `FeatureTableReader`. With `report_dir`, writes `drift_report.html` (Evidently on the samples,
    self-contained) and `drift.json` (this result plus Evidently's metric and test values) there.
    """
    config = config or DriftConfig.from_settings()
    ref_table, cur_table = _reader(reference), _reader(current)
    columns, notes = compared_columns(
        ref_table.columns, cur_table.columns, config, cur_table.num_rows
    )
    ref = read_side(ref_table, columns, config.sample_rows, config.sample_seed, "reference")
    if ref.dropped:
        notes.append(f"{ref.dropped} reference rows with missing or infinite values left out")
    if ref.rows < config.min_rows:
        raise DriftCheckError(
            f"the reference has {ref.rows} usable rows; at least {config.min_rows} are needed"
        )
    if cur_table.num_rows:
        cur = read_side(cur_table, columns, config.sample_rows, config.sample_seed, "current")
    else:
        cur = Side(ref.sample.iloc[0:0], 0, 0, {})
    if cur.dropped:
        notes.append(f"{cur.dropped} current rows with missing or infinite values left out")

    result = DriftResult(
        decision=NOT_ENOUGH_DATA,
        reason="",
        reference_rows=ref.rows,
        current_rows=cur.rows,
        min_rows=config.min_rows,
        drift_share_threshold=config.drift_share,
        notes=notes,
        reference_sample=len(ref.sample),
        current_sample=len(cur.sample),
        sample_seed=config.sample_seed,
    )
    if cur.rows < config.min_rows:
        result.reason = (
            f"not enough data: {cur.rows} usable current rows, at least {config.min_rows} needed"
        )
        _write_reports(result, None, report_dir)
        return result
    if len(cur.sample) < cur.rows or len(ref.sample) < ref.rows:
        notes.append(
            f"compared a seeded uniform sample (seed {config.sample_seed}): "
            f"{len(cur.sample)} of {cur.rows} current and {len(ref.sample)} of {ref.rows} "
            "reference rows"
        )
    _decide(result, ref, cur, columns, config)
    snapshot = _run_evidently(ref.sample, cur.sample, columns, config) if report_dir else None
    _write_reports(result, snapshot, report_dir)
    log.info("drift check: %s", result.reason)
    return result


def _statistic(method: str, threshold: float | None, kind: Kind) -> tuple[StatTest, float]:
    """(the statistic, its threshold) for a method name; None: the method's default."""
    test = stattest(method, kind)
    return test, test.default_threshold if threshold is None else threshold


def _decide(
    result: DriftResult, ref: Side, cur: Side, columns: list[str], config: DriftConfig
) -> None:
    """Each column: the test and the effect size on the samples; drifted when both say so."""
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # constant columns: zero spread
        for column in columns:
            categorical = column in CATEGORICAL_COLUMNS
            kind: Kind = "cat" if categorical else "num"
            test, threshold = _statistic(
                config.method_for(column), config.threshold_for(column), kind
            )
            effect_method, effect_threshold = config.effect_for(column)
            effect_test, _ = _statistic(effect_method, effect_threshold, kind)
            a, b = ref.sample[column], cur.sample[column]
            score, significant = test.func(a, b, kind, threshold)
            effect, large = effect_test.func(a, b, kind, effect_threshold)
            result.columns.append(
                ColumnDrift(
                    column=column,
                    kind="categorical" if categorical else "numerical",
                    method=test.name,
                    threshold=float(threshold),
                    score=float(score),
                    drifted=bool(significant) and bool(large),
                    significant=bool(significant),
                    effect_method=effect_test.name,
                    effect_threshold=float(effect_threshold),
                    effect=float(effect),
                    large=bool(large),
                    reference=ref.stats[column].to_dict() if column in ref.stats else {},
                    current=cur.stats[column].to_dict() if column in cur.stats else {},
                )
            )
    drifted = result.drifted_columns
    result.drifted_share = len(drifted) / len(columns)
    result.decision = DRIFT if result.drifted_share >= config.drift_share - 1e-12 else NO_DRIFT
    verdict = "drift" if result.decision == DRIFT else "no drift"
    result.reason = (
        f"{verdict}: {len(drifted)} of {len(columns)} columns drifted "
        f"(share {result.drifted_share:.2f}, drift at >= {config.drift_share:.2f}): "
        f"{', '.join(drifted) or 'none'}"
    )


def _run_evidently(ref: pd.DataFrame, cur: pd.DataFrame, columns: list[str], config: DriftConfig):  # type: ignore[no-untyped-def]
    """Evidently's report of the samples: per column, the effect size (its own choice above
    1,000 rows); the banner above it gives both statistics and the decision."""
    # Evidently takes seconds to import: only a check that compares anything loads it.
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift

    categorical = [c for c in columns if c in CATEGORICAL_COLUMNS]
    numerical = [c for c in columns if c not in CATEGORICAL_COLUMNS]
    metrics = []
    for column in columns:  # one widget per column: the effect size, the statistic that decides
        effect_method, effect_threshold = config.effect_for(column)  # on windows of any size
        metrics.append(ValueDrift(column=column, method=effect_method, threshold=effect_threshold))
    definition = DataDefinition(numerical_columns=numerical, categorical_columns=categorical)
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        # Evidently's correlation widgets divide by a zero spread on constant columns.
        warnings.simplefilter("ignore", RuntimeWarning)
        return Report(metrics, include_tests=True).run(
            Dataset.from_pandas(cur, data_definition=definition),
            Dataset.from_pandas(ref, data_definition=definition),
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
        page = result.report_html.read_text(encoding="utf-8")
        atomic_write_text(result.report_html, page.replace("<body>", "<body>" + _banner(result), 1))
        evidently = snapshot.dict()
    else:
        atomic_write_text(result.report_html, _summary_html(result))
        evidently = None
    payload = {**result.to_dict(), "evidently": evidently}
    atomic_write_text(result.report_json, json.dumps(payload, indent=2, default=str) + "\n")


def _banner(result: DriftResult) -> str:
    """What the decision was and what Evidently's report below was computed on."""
    rows = "".join(
        f"<tr><td>{html.escape(c.column)}</td><td>{html.escape(c.method)} {c.score:.3g} "
        f"({'real' if c.significant else 'not real'} at {c.threshold:g})</td>"
        f"<td>{html.escape(c.effect_method)} {c.effect:.3g} "
        f"({'matters' if c.large else 'small'} at {c.effect_threshold:g})</td>"
        f"<td>{'<b>drifted</b>' if c.drifted else ''}</td></tr>"
        for c in result.columns
    )
    return (
        "<div style='font-family:sans-serif;padding:12px;border-bottom:1px solid #ccc'>"
        f"<h2>VisionOps drift decision: {html.escape(result.decision)}</h2>"
        f"<p>{html.escape(result.reason)}</p>"
        f"<p>Computed on a seeded uniform sample (seed {result.sample_seed}) of "
        f"{result.current_sample:,} of {result.current_rows:,} usable current rows and "
        f"{result.reference_sample:,} of {result.reference_rows:,} reference rows; Evidently's "
        "report below shows the same samples. A column drifted when its test says the change is "
        "real and its effect size says it matters; Evidently's verdicts below show the effect size "
        "alone.</p>"
        "<table><tr><th>column</th><th>test</th><th>effect size</th><th></th></tr>"
        f"{rows}</table></div>"
    )


def _summary_html(result: DriftResult) -> str:
    """A small self-contained page for checks that did not run Evidently (not enough data)."""
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in result.notes)
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>VisionOps drift check</title>"
        "</head><body><h1>Drift check: not enough data</h1>"
        f"<p>{html.escape(result.reason)}</p>"
        f"<p>Reference rows: {result.reference_rows}</p><ul>{notes}</ul></body></html>\n"
    )
