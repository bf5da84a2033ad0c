"""Reading the prediction log's files, a bounded chunk at a time, so memory does not grow with
the window (`visionops.monitoring.collect` puts them together into a window):

- JSON lines are parsed by DuckDB (`read_json` with the columns given, no Python object per row:
  measured the fastest of DuckDB, polars and pyarrow on this log, see the README), S3 objects
  first downloaded a chunk at a time into a temporary folder;
- a Parquet part is read for the projected columns only; its `_source` column names the JSON file
  each row came from, so rows of a file that two parts cover (two compactions that overlapped)
  are read once.

Nothing bad in a file stops the reading: a line that is not JSON or has no valid timestamp is
skipped and counted per file, an object or part that cannot be read is skipped and named, keys
this version does not collect (a newer predictor's column) are named with the number of files;
all of it lands in `CollectSummary`.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from visionops.config import get_settings
from visionops.data.features import FEATURE_COLUMNS
from visionops.errors import StorageError
from visionops.monitoring.log_layout import (
    COLLECTED_COLUMNS,
    DETECTIONS,
    SOURCE,
    SOURCES_KEY,
    TIMESTAMP,
    part_sources,
)
from visionops.storage import LocalStore, ObjectStore

if TYPE_CHECKING:
    import duckdb  # DuckDB: loaded only where the log is read
    import pyarrow as pa  # pyarrow: loaded only where a table is streamed

    from visionops.progress import ProgressCallback

log = logging.getLogger(__name__)

DETECTIONS_TYPE = "STRUCT(box DOUBLE[], class_id BIGINT, class_name VARCHAR, score DOUBLE)[]"
"""DuckDB type of a record's detections (`Detections.to_records`)."""

CHUNK_BYTES = 128 << 20  # JSON handed to DuckDB at once: bounds memory and the temporary folder
CHUNK_FILES = 512
DOWNLOAD_THREADS = 8  # S3 objects fetched at once (latency-bound)
MEMORY_LIMIT = "256MB"  # DuckDB's own buffers; it streams the rest
MAX_NAMED = 20  # files listed by name in a summary (all are counted)


@dataclass
class CollectSummary:
    """What a collect read, skipped and wrote; `to_dict()` is what the CLI and component print."""

    source: str
    start: datetime
    end: datetime
    rows: int = 0
    raw_files: int = 0
    parts: int = 0
    covered_files: int = 0  # JSON-lines files skipped because a compacted part holds them
    bad_lines: int = 0
    bad_lines_by_file: dict[str, int] = field(default_factory=dict)
    unreadable: dict[str, str] = field(default_factory=dict)  # key -> why
    other_columns: dict[str, int] = field(default_factory=dict)  # key -> files that have it
    duplicate_rows: int = 0  # rows of a file that two overlapping parts both hold
    seconds: float = 0.0
    out: str | None = None

    def count_bad(self, key: str, lines: int) -> None:
        self.bad_lines += lines
        if key in self.bad_lines_by_file or len(self.bad_lines_by_file) < MAX_NAMED:
            self.bad_lines_by_file[key] = self.bad_lines_by_file.get(key, 0) + lines

    def skip(self, key: str, reason: str) -> None:
        log.warning("prediction log: skipped unreadable %s: %s", key, reason)
        self.unreadable[key] = reason

    def problems(self) -> list[str]:
        """One line per kind of problem met, naming files (at most MAX_NAMED of each)."""
        lines = []
        if self.bad_lines:
            named = ", ".join(f"{k} ({n})" for k, n in self.bad_lines_by_file.items())
            lines.append(f"{self.bad_lines} unreadable lines skipped: {named}")
        if self.unreadable:
            named = "; ".join(f"{k}: {why}" for k, why in list(self.unreadable.items())[:MAX_NAMED])
            lines.append(f"{len(self.unreadable)} unreadable files skipped: {named}")
        if self.duplicate_rows:
            lines.append(f"{self.duplicate_rows} rows held by two compacted parts read once")
        return lines

    def notes(self) -> list[str]:
        """Keys of the records this version does not collect (e.g. a newer predictor's column)."""
        if not self.other_columns:
            return []
        named = ", ".join(f"{c} ({n} files)" for c, n in sorted(self.other_columns.items()))
        return [f"columns not collected: {named}"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "rows": self.rows,
            "raw_files": self.raw_files,
            "compacted_parts": self.parts,
            "files_covered_by_parts": self.covered_files,
            "bad_lines": self.bad_lines,
            "bad_lines_by_file": dict(self.bad_lines_by_file),
            "unreadable_files": dict(self.unreadable),
            "other_columns": dict(self.other_columns),
            "duplicate_rows": self.duplicate_rows,
            "seconds": round(self.seconds, 3),
            "out": self.out,
        }


# ---------------------------------------------------------------- DuckDB


def connect_duckdb(threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB that stays offline (no extension downloads) and reads times as UTC."""
    import duckdb  # DuckDB: loaded only where the log is read

    con = duckdb.connect(config={"autoinstall_known_extensions": False,
                                 "autoload_known_extensions": False})  # fmt: skip
    con.execute("SET TimeZone = 'UTC'")
    if threads is None:
        threads = get_settings().log_read_threads
    con.execute(f"SET threads = {int(threads)}")
    con.execute(f"SET memory_limit = '{MEMORY_LIMIT}'")
    con.execute("SET preserve_insertion_order = false")
    return con


def sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def json_columns(columns: Sequence[str], extra: dict[str, str] | None = None) -> str:
    """The `columns={...}` argument of DuckDB's read_json for these log columns."""

    def kind(column: str) -> str:
        if column == TIMESTAMP:
            return "TIMESTAMPTZ"
        if column == DETECTIONS:
            return DETECTIONS_TYPE
        return "DOUBLE" if column in FEATURE_COLUMNS else "VARCHAR"

    types = {c: kind(c) for c in columns} | (extra or {})
    return "{" + ", ".join(f"{sql_text(c)}: {sql_text(t)}" for c, t in types.items()) + "}"


def read_json_sql(
    paths: Sequence[Path], columns: str, *, strict: bool = False, filename: bool = False
) -> str:
    """DuckDB's read_json of JSON-lines files. Not strict: a line that does not parse becomes a
    row of NULLs and a value of the wrong type a NULL; strict: either is an error."""
    files = "[" + ", ".join(sql_text(str(p)) for p in paths) + "]"
    errors = "false" if strict else "true"
    return (f"read_json({files}, format = 'newline_delimited', columns = {columns}, "
            f"ignore_errors = {errors}, filename = {str(filename).lower()})")  # fmt: skip


# ---------------------------------------------------------------- reading


def output_schema(columns: Sequence[str] = COLLECTED_COLUMNS) -> pa.Schema:
    import pyarrow as pa  # pyarrow: loaded only where a table is streamed

    def kind(column: str) -> pa.DataType:
        if column == TIMESTAMP:
            return pa.timestamp("us", tz="UTC")
        return pa.float64() if column in FEATURE_COLUMNS else pa.string()

    return pa.schema([pa.field(c, kind(c)) for c in columns])


@contextmanager
def local_files(
    store: ObjectStore, keys: Sequence[str], summary: CollectSummary
) -> Iterator[list[tuple[str, Path]]]:
    """(key, local path) of the readable keys: the files themselves on a local store, else
    downloaded into a temporary folder that is removed afterwards. Failures are named."""
    if isinstance(store, LocalStore):
        yield [(k, Path(store.uri(k))) for k in keys]
        return
    folder = Path(tempfile.mkdtemp(prefix="visionops-collect-"))
    try:

        def fetch(item: tuple[int, str]) -> tuple[str, Path | None]:
            index, key = item
            path = folder / str(index) / key.rsplit("/", 1)[-1]  # keeps the file's name
            try:
                store.download_file(key, path)
            except (StorageError, OSError) as error:
                summary.skip(key, str(error))
                return key, None
            return key, path

        with ThreadPoolExecutor(DOWNLOAD_THREADS) as pool:
            fetched = list(pool.map(fetch, enumerate(keys)))
        yield [(k, p) for k, p in fetched if p is not None]
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def first_keys(path: Path) -> list[str]:
    """The keys of a file's first record (the writer writes one schema per file)."""
    try:
        with path.open("rb") as f:
            first = f.readline(1 << 20)
        record = json.loads(first)
    except (OSError, ValueError):
        return []
    return list(record) if isinstance(record, dict) else []


def _raw_chunks(keys: Sequence[str], store: ObjectStore) -> Iterator[list[str]]:
    """Keys in chunks of at most CHUNK_FILES files (and about CHUNK_BYTES on a local store)."""
    chunk: list[str] = []
    size = 0
    for key in keys:
        if isinstance(store, LocalStore):
            with suppress(OSError):
                size += Path(store.uri(key)).stat().st_size
        chunk.append(key)
        if len(chunk) >= CHUNK_FILES or size >= CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def read_raw(
    con: duckdb.DuckDBPyConnection,
    store: ObjectStore,
    keys: Sequence[str],
    columns: Sequence[str],
    summary: CollectSummary,
    extra: dict[str, str] | None = None,
    progress: ProgressCallback | None = None,
) -> Iterator[pa.RecordBatch]:
    """Record batches of JSON-lines files (lines without a valid timestamp dropped, counted)."""
    import pyarrow.compute as pc  # pyarrow: loaded only where a table is streamed

    spec = json_columns(columns, extra)
    known = {*columns, *(extra or {}), DETECTIONS}
    done = 0
    for chunk in _raw_chunks(keys, store):
        done += len(chunk)
        if progress is not None:
            progress(done - len(chunk), len(keys))
        with local_files(store, chunk, summary) as files:
            if not files:
                continue
            others: Counter[str] = Counter()
            for _, path in files:
                others.update(k for k in first_keys(path) if k not in known)
            for column, count in others.items():
                summary.other_columns[column] = summary.other_columns.get(column, 0) + count
            summary.raw_files += len(files)
            batches: list[pa.RecordBatch] = []  # a chunk's rows (tens of MB) before any leaves:
            try:  # a failure half way must not yield a file's rows twice
                reader = con.sql(f"SELECT * FROM {read_json_sql([p for _, p in files], spec)}")
                bad = 0
                for batch in reader.to_arrow_reader(65_536):
                    valid = pc.is_valid(batch.column(TIMESTAMP))
                    dropped = len(batch) - pc.sum(valid).as_py() if len(batch) else 0
                    bad += dropped
                    batches.append(batch.filter(valid) if dropped else batch)
            except Exception as error:  # duckdb.Error: a file vanished or is not text at all
                yield from _read_one_by_one(con, files, spec, summary, error)
                continue
            if bad:
                _name_bad_lines(con, files, summary)
            yield from batches
    if progress is not None:
        progress(done, len(keys))


def _read_one_by_one(
    con: duckdb.DuckDBPyConnection,
    files: Sequence[tuple[str, Path]],
    spec: str,
    summary: CollectSummary,
    error: Exception,
) -> Iterator[pa.RecordBatch]:
    """A chunk DuckDB refused as a whole, file by file, so one bad file names itself."""
    import pyarrow.compute as pc  # pyarrow: loaded only where a table is streamed

    log.warning("prediction log: reading %d files one by one after: %s", len(files), error)
    for key, path in files:
        try:
            table = con.sql(f"SELECT * FROM {read_json_sql([path], spec)}").to_arrow_table()
        except Exception as failure:  # duckdb.Error
            summary.skip(key, str(failure).splitlines()[0])
            summary.raw_files -= 1
            continue
        valid = pc.is_valid(table.column(TIMESTAMP))
        dropped = len(table) - pc.sum(valid).as_py() if len(table) else 0
        if dropped:
            summary.count_bad(key, dropped)
        yield from table.filter(valid).to_batches()


def _name_bad_lines(
    con: duckdb.DuckDBPyConnection, files: Sequence[tuple[str, Path]], summary: CollectSummary
) -> None:
    """Which files of a chunk had the lines without a timestamp (a second, narrow read)."""
    by_path = {str(p): k for k, p in files}
    source = read_json_sql([p for _, p in files], json_columns([TIMESTAMP]), filename=True)
    rows = con.sql(
        f"SELECT filename, count(*) FROM {source} WHERE {TIMESTAMP} IS NULL GROUP BY filename"
    ).fetchall()
    for name, count in rows:
        summary.count_bad(by_path.get(name, name), int(count))


def read_part(
    store: ObjectStore,
    key: str,
    columns: Sequence[str],
    covered: set[str],
    summary: CollectSummary,
) -> Iterator[pa.RecordBatch]:
    """Batches of a compacted part, without rows of files an earlier part already gave."""
    import pyarrow as pa  # pyarrow: loaded only where a table is streamed
    import pyarrow.compute as pc  # pyarrow: loaded only where a table is streamed
    import pyarrow.parquet as pq  # pyarrow: loaded only where a table is streamed

    try:
        source: Any = (
            store.uri(key) if isinstance(store, LocalStore) else io.BytesIO(store.read_bytes(key))
        )
        parquet = pq.ParquetFile(source, pre_buffer=False)  # else its chunks stay in memory
        sources = part_sources(parquet.schema_arrow.metadata)
        if not sources:
            raise ValueError(f"no {SOURCES_KEY.decode()} metadata: not a compacted part")
        present = set(parquet.schema_arrow.names)
        read = [c for c in columns if c in present]
        seen = covered & set(sources)
        with_source = bool(seen) or not read  # `_source` only to drop rows read before
        wanted = [*read, SOURCE] if with_source else read
        batches = list(parquet.iter_batches(65_536, columns=wanted))
    except (OSError, ValueError, pa.ArrowException, StorageError) as error:
        summary.skip(key, f"unreadable Parquet part: {error}")
        return
    summary.parts += 1
    covered.update(sources)
    for batch in batches:
        if seen:
            keep = pc.invert(pc.is_in(batch.column(SOURCE), pa.array(sorted(seen))))
            summary.duplicate_rows += len(batch) - pc.sum(keep).as_py()
            batch = batch.filter(keep)
        yield batch.drop_columns([SOURCE]) if with_source else batch


def conform_batch(batch: pa.RecordBatch, columns: Sequence[str]) -> pa.RecordBatch:
    """The batch with exactly the collected columns (absent ones null), in their order."""
    import pyarrow as pa  # pyarrow: loaded only where a table is streamed

    schema = output_schema(columns)
    arrays = []
    for f in schema:
        if f.name in batch.schema.names:
            arrays.append(batch.column(f.name).cast(f.type))
        else:
            arrays.append(pa.nulls(len(batch), f.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)
