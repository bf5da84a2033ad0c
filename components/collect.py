"""KFP component `collect`: one time window of the prediction log as a feature table."""

# No `from __future__ import annotations` here: KFP reads the real annotation objects.

from typing import NamedTuple

from kfp.dsl import Dataset, Output

from components import visionops_component


@visionops_component
def collect(
    features: Output[Dataset],
    log_location: str = "",
    start: str = "",
    end: str = "",
    hours: float = 24.0,
) -> NamedTuple("CollectOutputs", [("rows", int)]):  # type: ignore[valid-type]
    """Stream the prediction log records with start <= timestamp < end into a Parquet table.

    `log_location`: s3://bucket/prefix or a folder; empty: the configured log store. Empty
    `end`: now; empty `start`: `hours` before the end. An empty window is written as an empty table
    (the drift check then answers "not enough data"). Skipped lines and files are counted and
    named in the output's metadata (`problems`) and the step's log.
    """
    from collections import namedtuple

    from visionops.bootstrap import bootstrap

    bootstrap()
    from visionops.monitoring.collect import collect_window

    summary = collect_window(
        log_location, features.path, start=start or None, end=end or None, hours=hours
    )
    features.metadata["format"] = "parquet"
    features.metadata["rows"] = summary.rows
    features.metadata["start"] = summary.start.isoformat()
    features.metadata["end"] = summary.end.isoformat()
    features.metadata["problems"] = summary.problems()
    features.metadata["other_columns"] = summary.other_columns
    for line in summary.problems():
        print(f"WARNING: {line}")
    for line in summary.notes():
        print(line)
    print(f"collected {summary.rows} rows in {summary.seconds:.1f}s")
    return namedtuple("CollectOutputs", ["rows"])(summary.rows)
