"""Feature tables on disk: CSV, Parquet or JSON lines, chosen by suffix (or told, for KFP artifact
paths without one). The evaluation's reference, `visionops drift features`, the collected window
and the drift check all read and write them here; writes are atomic.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from visionops.data.files import atomic_write_bytes
from visionops.errors import DataError, UsageError

if TYPE_CHECKING:
    import pandas as pd  # heavy (about a second): only where a table is read

TABLE_SUFFIXES = (".csv", ".parquet", ".pq", ".jsonl", ".json")


def load_feature_table(path: Path, table_format: str | None = None) -> pd.DataFrame:
    """A feature table from CSV, Parquet or JSON lines; DataError naming the file.

    The format comes from the suffix, or from `table_format` ("csv", "parquet", "jsonl") for
    files without one (KFP artifact paths).
    """
    import pandas as pd  # heavy (about a second to import): only where a table is read

    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"feature table not found: {path}")
    suffix = f".{table_format.lower().lstrip('.')}" if table_format else path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path)
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if suffix in (".jsonl", ".json"):
            if path.stat().st_size == 0:
                return pd.DataFrame()
            return pd.read_json(path, lines=suffix == ".jsonl")
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except (ValueError, OSError, ImportError) as error:
        raise DataError(f"cannot read feature table {path}: {error}") from error
    raise DataError(f"unsupported feature table {path}: use one of {', '.join(TABLE_SUFFIXES)}")


def write_feature_table(frame: pd.DataFrame, path: Path, table_format: str | None = None) -> Path:
    """Write a feature table by suffix or `table_format` (CSV, Parquet, JSON lines), atomically."""
    path = Path(path)
    suffix = f".{table_format.lower().lstrip('.')}" if table_format else path.suffix.lower()
    if suffix == ".csv":
        data = frame.to_csv(index=False).encode()
    elif suffix in (".parquet", ".pq"):
        data = frame.to_parquet(index=False)
    elif suffix in (".jsonl", ".json"):
        data = frame.to_json(orient="records", lines=True, date_format="iso").encode()
    else:
        raise UsageError(f"unsupported table format {path.name}: use .csv, .parquet or .jsonl")
    return atomic_write_bytes(path, data)


class FeatureTableReader:
    """A feature table read in batches of rows, so a window of millions of rows never has to be
    in memory at once: Parquet streams its row groups; a DataFrame is sliced; CSV and JSON lines
    (small, hand-made tables) are loaded whole and sliced."""

    def __init__(self, source: pd.DataFrame | Path, table_format: str | None = None) -> None:
        import pandas as pd  # heavy (about a second): only where a table is read

        self._frame: pd.DataFrame | None = None
        self._parquet = None
        if isinstance(source, pd.DataFrame):
            self._frame = source
        else:
            path = Path(source).expanduser()
            suffix = f".{table_format.lower().lstrip('.')}" if table_format else path.suffix
            if suffix.lower() in (".parquet", ".pq") and path.is_file():
                import pyarrow as pa  # pyarrow: loaded only where a table is streamed
                import pyarrow.parquet as pq  # pyarrow: loaded only where a table is streamed

                try:  # pre-buffered, every row group read stays in memory to the end (1.3 GB
                    # for a 10M-row window): a row group at a time instead, no slower
                    self._parquet = pq.ParquetFile(path, pre_buffer=False)
                except (OSError, pa.ArrowException) as error:
                    raise DataError(f"cannot read feature table {path}: {error}") from error
                self.path = path
            else:
                self._frame = load_feature_table(path, table_format)

    @property
    def columns(self) -> list[str]:
        if self._parquet is not None:
            return list(self._parquet.schema_arrow.names)
        assert self._frame is not None
        return [str(c) for c in self._frame.columns]

    @property
    def num_rows(self) -> int:
        if self._parquet is not None:
            return int(self._parquet.metadata.num_rows)
        assert self._frame is not None
        return len(self._frame)

    def batches(self, columns: list[str], rows: int = 131_072) -> Iterator[pd.DataFrame]:
        """The table's `columns`, `rows` rows at a time, in order."""
        if self._parquet is not None:
            import pyarrow as pa  # pyarrow: loaded only where a table is streamed

            try:
                for batch in self._parquet.iter_batches(rows, columns=columns):
                    yield batch.to_pandas()
            except (OSError, pa.ArrowException) as error:
                raise DataError(f"cannot read feature table {self.path}: {error}") from error
            return
        assert self._frame is not None
        for begin in range(0, len(self._frame), rows):
            yield self._frame.iloc[begin : begin + rows].loc[:, columns]
