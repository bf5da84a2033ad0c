"""Feature tables read in batches hold a bounded part of the file, whatever its size.

The drift check reads a collected window (millions of rows) through `FeatureTableReader`; with
pyarrow's default pre-buffering every row group it had read stayed allocated until the end of
the file (1.3 GB for a 10M-row window, over the check step's 1 GiB limit).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from visionops.data.tables import FeatureTableReader

ROW_GROUP = 25_000
COLUMNS = [f"c{i}" for i in range(8)]  # 1.6 MB of float64 per row group, 64 MB in the file


def test_a_parquet_table_is_read_a_row_group_at_a_time(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "window.parquet"
    table = pa.table({c: rng.normal(size=40 * ROW_GROUP) for c in COLUMNS})
    pq.write_table(table, path, row_group_size=ROW_GROUP, compression="none")
    pool = pa.default_memory_pool()
    reader = FeatureTableReader(path)
    before = pool.bytes_allocated()
    held, rows, total = 0, 0, 0.0
    for batch in reader.batches(COLUMNS, rows=ROW_GROUP):
        held = max(held, pool.bytes_allocated() - before)
        rows += len(batch)
        total += float(batch["c0"].sum())
    assert rows == len(table)
    assert total == pytest.approx(float(np.sum(table["c0"].to_numpy())), rel=1e-12)
    one_row_group = ROW_GROUP * len(COLUMNS) * 8  # the batch, its DataFrame, the next group's
    assert held < 16 * one_row_group, f"{held / 2**20:.0f} MiB held while reading"  # of 40
