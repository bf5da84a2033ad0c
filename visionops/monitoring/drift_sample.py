"""One pass over one side of a drift check: the rows compared and every row's statistics.

A feature table (a file or a DataFrame, behind `FeatureTableReader`) is read once, in batches,
keeping two things that do not grow with the window: per-column streaming statistics of every row
(count, missing, mean, spread, range) and a seeded uniform sample of at most `sample_rows` rows
(indices drawn before reading, so the same table and seed give the same sample, whether it comes
from a file or a DataFrame). Values are cleaned on the way: a value that is not a number is a
`DriftCheckError` that names it; rows with missing or infinite values are left out of the sample
and counted. The decision on the samples is `visionops.monitoring.drift`'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from visionops.data.features import CATEGORICAL_COLUMNS
from visionops.errors import DriftCheckError

if TYPE_CHECKING:
    import pandas as pd  # heavy (about a second): only where a table is read

    from visionops.data.tables import FeatureTableReader


@dataclass
class ColumnStats:
    """Streaming statistics of one column over every row of a side (not only the sample)."""

    rows: int = 0  # finite values
    missing: int = 0  # NaN, empty or infinite
    mean: float = math.nan
    std: float = math.nan
    min: float = math.nan
    max: float = math.nan
    _m2: float = field(default=0.0, repr=False)

    def add(self, values: Any) -> None:
        """Fold a batch in (Chan et al.'s parallel update of mean and squared deviations)."""
        finite = values[np.isfinite(values)]
        self.missing += len(values) - len(finite)
        n = len(finite)
        if not n:
            return
        mean, m2 = float(finite.mean()), float(((finite - finite.mean()) ** 2).sum())
        if self.rows == 0:
            self.mean, self._m2, self.min, self.max = (
                mean,
                m2,
                float(finite.min()),
                float(finite.max()),
            )
        else:
            total = self.rows + n
            delta = mean - self.mean
            self.mean += delta * n / total
            self._m2 += m2 + delta * delta * self.rows * n / total
            self.min, self.max = (
                min(self.min, float(finite.min())),
                max(self.max, float(finite.max())),
            )
        self.rows += n
        self.std = math.sqrt(self._m2 / self.rows)

    def to_dict(self) -> dict[str, float | int]:
        return {"rows": self.rows, "missing": self.missing, "mean": self.mean, "std": self.std,
                "min": self.min, "max": self.max}  # fmt: skip


def _clean(frame: pd.DataFrame, columns: list[str], side: str) -> tuple[pd.DataFrame, Any]:
    """The compared columns as finite numbers (NaN where missing or infinite), and the mask of
    rows to keep. Categorical columns stay labels. Float columns (a collected window's) pass as
    numpy arrays; anything else is parsed, and a value that is not a number is an error."""
    import pandas as pd  # heavy (about a second): only where a table is read

    data: dict[str, Any] = {}
    keep = np.ones(len(frame), bool)
    for column in columns:
        series = frame[column]
        if column in CATEGORICAL_COLUMNS:
            data[column] = series.to_numpy()
            keep &= series.notna().to_numpy()
            continue
        if not pd.api.types.is_float_dtype(series.dtype):
            coerced = pd.to_numeric(series, errors="coerce")
            bad = coerced.isna() & series.notna()
            if bad.any():
                example = series[bad].iloc[0]
                raise DriftCheckError(f"{side} column {column!r} is not numeric (e.g. {example!r})")
            series = coerced
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
        finite = np.isfinite(values)
        if not finite.all():
            values = np.where(finite, values, np.nan)
        data[column] = values
        keep &= finite
    return pd.DataFrame(data, columns=columns), keep


def _category(value: object) -> str:
    """Labels as strings; 3.0 and 3 are the same class."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@dataclass
class Side:
    """What one pass over a table keeps: its sample of usable rows and every row's statistics."""

    sample: pd.DataFrame
    rows: int  # usable rows (every compared column finite)
    dropped: int  # rows left out for missing or infinite values
    stats: dict[str, ColumnStats]


def read_side(
    table: FeatureTableReader, columns: list[str], sample_rows: int, seed: int, side: str
) -> Side:
    """One pass in batches: streaming statistics of every row, and a seeded uniform sample of at
    most `sample_rows` rows (chosen by index before reading), usable rows of it kept."""
    import pandas as pd  # heavy (about a second): only where a table is read

    total = table.num_rows
    if total > sample_rows:
        rng = np.random.default_rng(seed)
        wanted = np.sort(rng.choice(total, sample_rows, replace=False))
    else:
        wanted = None
    stats = {c: ColumnStats() for c in columns if c not in CATEGORICAL_COLUMNS}
    seen: set[str] = set()
    parts: list[pd.DataFrame] = []
    usable = dropped = offset = 0
    for batch in table.batches(columns):
        frame, keep = _clean(batch, columns, side)
        for column, column_stats in stats.items():
            column_stats.add(frame[column].to_numpy())
        seen.update(c for c in columns if frame[c].notna().any())
        usable += int(keep.sum())
        dropped += int(len(keep) - keep.sum())
        if wanted is not None:
            low, high = np.searchsorted(wanted, [offset, offset + len(frame)])
            take = np.zeros(len(frame), bool)
            take[wanted[low:high] - offset] = True
            keep = keep & take
        parts.append(frame.loc[keep])
        offset += len(frame)
    empty = [c for c in columns if usable + dropped and c not in seen]
    if empty:
        raise DriftCheckError(f"{side} columns without any finite value: {empty}")
    sample = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)
    for column in columns:
        if column in CATEGORICAL_COLUMNS:
            sample[column] = sample[column].map(_category)
    return Side(sample, usable, dropped, stats)
