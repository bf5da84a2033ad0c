"""KFP component `compact`: the closed hours of a window of the prediction log become Parquet."""

# No `from __future__ import annotations` here: KFP reads the real annotation objects.

from typing import NamedTuple

from components import visionops_component


@visionops_component
def compact(
    log_location: str = "",
    start: str = "",
    end: str = "",
    hours: float = 24.0,
) -> NamedTuple("CompactOutputs", [("rows", int), ("parts", int)]):  # type: ignore[valid-type]
    """Compact each hour of [start, end) that ended `VISIONOPS_LOG_COMPACT_AFTER_S` ago into one
    Parquet part (safe while the predictor still writes; running it again changes nothing).

    `log_location`: s3://bucket/prefix or a folder; empty: the configured log store. Empty `end`:
    now; empty `start`: `hours` before the end. Files that cannot be compacted stay JSON lines and
    are named in the step's log.
    """
    from collections import namedtuple

    from visionops.bootstrap import bootstrap

    bootstrap()
    from visionops.monitoring.compact import compact_window

    summary = compact_window(log_location, start=start or None, end=end or None, hours=hours)
    for line in summary.problems():
        print(f"WARNING: {line}")
    parts = sum(1 for h in summary.hours if h.part)
    print(f"compacted {summary.rows} rows into {parts} parts in {summary.seconds:.1f}s")
    return namedtuple("CompactOutputs", ["rows", "parts"])(summary.rows, parts)
