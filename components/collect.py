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
    """Read the prediction log records with start <= timestamp < end into a Parquet table.

    `log_location`: s3://bucket/prefix or a folder; empty: the configured log store. Empty
    `end`: now; empty `start`: `hours` before the end. An empty window is written as an empty table
    (the drift check then answers "not enough data").
    """
    from collections import namedtuple

    from visionops.bootstrap import bootstrap

    bootstrap()
    from visionops.data.tables import write_feature_table
    from visionops.monitoring.collect import collect_window

    frame = collect_window(log_location, start=start or None, end=end or None, hours=hours)
    write_feature_table(frame, features.path, table_format="parquet")
    features.metadata["format"] = "parquet"
    features.metadata["rows"] = len(frame)
    return namedtuple("CollectOutputs", ["rows"])(len(frame))
