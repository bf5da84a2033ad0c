"""Reading the prediction log back: a time window of it, streamed to a Parquet table.

The writer (`visionops.monitoring.prediction_log`) owns the layout: JSON-lines files in hourly
partitions `dt=YYYY-MM-DD/hour=HH/`, and, once `visionops.monitoring.compact` has run, Parquet
parts `compacted-<digest>.parquet` there that hold what those files held. This module reads both
together, a bounded chunk at a time, so memory does not grow with the window:

- JSON lines are parsed by DuckDB (`read_json` with the columns given, no Python object per row:
  measured the fastest of DuckDB, polars and pyarrow on this log, see the README), S3 objects
  first downloaded a chunk at a time into a temporary folder;
- a Parquet part is read for the projected columns only; its `_source` column names the JSON file
  each row came from, so files a part covers are skipped, and rows of a file that two parts cover
  (two compactions that overlapped) are read once;
- only the record and feature columns are collected (`COLLECTED_COLUMNS`), in file order.

Nothing bad in the log stops a window: a line that is not JSON or has no valid timestamp is
skipped and counted per file, an object or part that cannot be read is skipped and named, keys
this version does not collect (a newer predictor's column) are named with the number of files.
Only a window whose every file failed is an error, never a silently empty table.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from visionops.config import get_settings
from visionops.data.features import FEATURE_COLUMNS
from visionops.errors import StorageError, UsageError
from visionops.monitoring.prediction_log import (
    DETECTIONS,
    RECORD_COLUMNS,
    TIMESTAMP,
    partition_key,
)
from visionops.storage import LocalStore, ObjectStore, default_store, open_store

if TYPE_CHECKING:
    import duckdb  # DuckDB: loaded only where the log is read
    import pandas as pd  # heavy (about a second): only where a table is read
    import pyarrow as pa  # pyarrow: loaded only where a table is streamed

    from visionops.progress import ProgressCallback

log = logging.getLogger(__name__)

RAW_SUFFIX = ".jsonl"
PART_PREFIX = "compacted-"
PART_SUFFIX = ".parquet"
SOURCE = "_source"
"""Column of a compacted part: the name of the JSON-lines file the row came from."""
SOURCES_KEY = b"visionops.sources"
"""Parquet key-value metadata of a part: the JSON list of the file names it covers."""

COLLECTED_COLUMNS: tuple[str, ...] = RECORD_COLUMNS + FEATURE_COLUMNS
DETECTIONS_TYPE = "STRUCT(box DOUBLE[], class_id BIGINT, class_name VARCHAR, score DOUBLE)[]"
"""DuckDB type of a record's detections (`Detections.to_records`)."""

CHUNK_BYTES = 128 << 20  # JSON handed to DuckDB at once: bounds memory and the temporary folder
CHUNK_FILES = 512
DOWNLOAD_THREADS = 8  # S3 objects fetched at once (latency-bound)
MEMORY_LIMIT = "256MB"  # DuckDB's own buffers; it streams the rest
DICTIONARY_COLUMNS = ["model_name", "model_version"]  # dictionaries of floats cost 6x the time
MAX_NAMED = 20  # files listed by name in a summary (all are counted)


def _as_utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


# ---------------------------------------------------------------- what a window reads


def hour_partitions(start: datetime, end: datetime) -> list[str]:
    """The `dt=/hour=` partitions that overlap [start, end)."""
    start, end = _as_utc(start), _as_utc(end)
    if end <= start:
        raise UsageError(f"empty time window: end {end.isoformat()} <= start {start.isoformat()}")
    hour = start.replace(minute=0, second=0, microsecond=0)
    hours = []
    while hour < end:
        hours.append(partition_key(hour))
        hour += timedelta(hours=1)
    return hours


def window_keys(store: ObjectStore, start: datetime, end: datetime) -> dict[str, list[str]]:
    """{partition: its keys (JSON-lines files and compacted parts)} for the hours of [start, end).

    One listing per day; partitions without files are left out.
    """
    wanted = hour_partitions(start, end)
    found: dict[str, list[str]] = {}
    for day in sorted({p.split("/", 1)[0] for p in wanted}):
        for key in store.list_keys(day):
            partition, _, name = key.rpartition("/")
            if name.endswith(RAW_SUFFIX) or _is_part(name):
                found.setdefault(partition, []).append(key)
    return {p: found[p] for p in wanted if p in found}


def _is_part(name: str) -> bool:
    return name.startswith(PART_PREFIX) and name.endswith(PART_SUFFIX)


def resolve_window(
    start: str | datetime | None, end: str | datetime | None, hours: float
) -> tuple[datetime, datetime]:
    """[start, end) from ISO-8601 strings or datetimes; a missing end is now, a missing start is
    `hours` before the end. UsageError for unparseable or empty windows."""

    def parse(value: str | datetime | None, name: str) -> datetime | None:
        if value is None or value == "":
            return None
        if isinstance(value, datetime):
            return _as_utc(value)
        try:
            return _as_utc(datetime.fromisoformat(value))
        except ValueError as error:
            raise UsageError(f"{name} is not an ISO-8601 time: {value!r}") from error

    stop = parse(end, "end") or datetime.now(UTC)
    begin = parse(start, "start")
    if begin is None:
        if not hours > 0:
            raise UsageError(f"the window must last more than 0 hours, got {hours}")
        begin = stop - timedelta(hours=hours)
    if stop <= begin:
        raise UsageError(f"empty time window: end {stop.isoformat()} <= start {begin.isoformat()}")
    return begin, stop


# ---------------------------------------------------------------- the summary


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


def _sql_text(value: str) -> str:
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
    return "{" + ", ".join(f"{_sql_text(c)}: {_sql_text(t)}" for c, t in types.items()) + "}"


def read_json_sql(
    paths: Sequence[Path], columns: str, *, strict: bool = False, filename: bool = False
) -> str:
    """DuckDB's read_json of JSON-lines files. Not strict: a line that does not parse becomes a
    row of NULLs and a value of the wrong type a NULL; strict: either is an error."""
    files = "[" + ", ".join(_sql_text(str(p)) for p in paths) + "]"
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
def _local_files(
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


def _first_keys(path: Path) -> list[str]:
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


def _read_raw(
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
        with _local_files(store, chunk, summary) as files:
            if not files:
                continue
            others: Counter[str] = Counter()
            for _, path in files:
                others.update(k for k in _first_keys(path) if k not in known)
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


def _part_sources(metadata: dict[bytes, bytes] | None) -> list[str]:
    try:
        return list(json.loads((metadata or {})[SOURCES_KEY]))
    except (KeyError, ValueError, TypeError):
        return []


def _read_part(
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
        parquet = pq.ParquetFile(source)
        sources = _part_sources(parquet.schema_arrow.metadata)
        if not sources:
            raise ValueError(f"no {SOURCES_KEY.decode()} metadata: not a compacted part")
        present = set(parquet.schema_arrow.names)
        read = [c for c in columns if c in present]
        seen = covered & set(sources)
        batches = list(parquet.iter_batches(65_536, columns=[*read, SOURCE]))
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
        yield batch.drop_columns([SOURCE])


def _conform(batch: pa.RecordBatch, columns: Sequence[str]) -> pa.RecordBatch:
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


def iter_window(
    store: ObjectStore,
    start: datetime,
    end: datetime,
    summary: CollectSummary,
    *,
    columns: Sequence[str] = COLLECTED_COLUMNS,
    extra: dict[str, str] | None = None,
    progress: ProgressCallback | None = None,
) -> Iterator[pa.RecordBatch]:
    """Record batches of every record with start <= timestamp < end: compacted parts a partition
    at a time, then the JSON-lines files of all partitions in chunks.

    `columns` are log columns (record, feature, `detections`); `extra` maps other keys to DuckDB
    types (read from JSON lines only). Problems are counted in `summary`.
    """
    import pyarrow as pa  # pyarrow: loaded only where a table is streamed

    start, end = _as_utc(start), _as_utc(end)
    conform = not extra and DETECTIONS not in columns  # else the types read are kept
    low = pa.scalar(start, pa.timestamp("us", tz="UTC"))
    high = pa.scalar(end, pa.timestamp("us", tz="UTC"))
    partitions = window_keys(store, start, end)
    raw: list[str] = []
    for partition, keys in partitions.items():
        hour = datetime.strptime(partition, "dt=%Y-%m-%d/hour=%H").replace(tzinfo=UTC)
        whole = start <= hour and hour + timedelta(hours=1) <= end  # no row can fall outside
        covered: set[str] = set()
        for key in sorted(k for k in keys if _is_part(k.rsplit("/", 1)[1])):
            for batch in _read_part(store, key, columns, covered, summary):
                batch = _conform(batch, columns) if conform else batch
                yield from _in_window(batch, None if whole else (low, high), summary)
        files = [k for k in keys if k.endswith(RAW_SUFFIX)]
        fresh = [k for k in files if k.rsplit("/", 1)[1] not in covered]
        summary.covered_files += len(files) - len(fresh)
        raw.extend(fresh)
    con = connect_duckdb()
    try:
        for batch in _read_raw(con, store, raw, columns, summary, extra, progress):
            batch = _conform(batch, columns) if conform else batch
            yield from _in_window(batch, (low, high), summary)
    finally:
        con.close()


def _in_window(
    batch: pa.RecordBatch, bounds: tuple[pa.Scalar, pa.Scalar] | None, summary: CollectSummary
) -> Iterator[pa.RecordBatch]:
    """The rows of `batch` with low <= timestamp < high (all of them without bounds)."""
    import pyarrow.compute as pc  # pyarrow: loaded only where a table is streamed

    if not len(batch):
        return
    kept = batch
    if bounds is not None:
        stamps = batch.column(TIMESTAMP)
        kept = batch.filter(
            pc.and_(pc.greater_equal(stamps, bounds[0]), pc.less(stamps, bounds[1]))
        )
    if len(kept):
        summary.rows += len(kept)
        yield kept


# ---------------------------------------------------------------- entry points


def open_log(location: str = "") -> ObjectStore:
    """The prediction log at `location` (s3://bucket/prefix or a folder); empty: the configured
    one (`VISIONOPS_LOG_PREFIX` in the S3 bucket if configured, else in the data dir)."""
    settings = get_settings()
    return open_store(location, settings) if location else default_store(settings.log_prefix)


def collect_to_parquet(
    store: ObjectStore,
    start: datetime,
    end: datetime,
    out: Path,
    *,
    progress: ProgressCallback | None = None,
) -> CollectSummary:
    """Stream the record and feature columns of [start, end) into the Parquet file `out`.

    Written atomically (a temporary sibling renamed into place); an empty window is an empty table
    with the columns. StorageError when the window has files but none of them could be read.
    """
    import pyarrow.parquet as pq  # pyarrow: loaded only where a table is streamed

    started = time.perf_counter()
    summary = CollectSummary(store.uri(), _as_utc(start), _as_utc(end))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    os.close(handle)
    try:
        schema = output_schema()
        with pq.ParquetWriter(temporary, schema, use_dictionary=DICTIONARY_COLUMNS) as writer:
            for batch in iter_window(store, start, end, summary, progress=progress):
                writer.write_batch(batch)
        read = summary.raw_files + summary.parts
        if summary.unreadable and not read:
            raise StorageError(
                f"none of the {len(summary.unreadable)} files of the window could be read: "
                + "; ".join(f"{k}: {why}" for k, why in list(summary.unreadable.items())[:3])
            )
        Path(temporary).replace(out)
    finally:
        Path(temporary).unlink(missing_ok=True)
    summary.out = str(out)
    summary.seconds = time.perf_counter() - started
    for line in summary.problems():
        log.warning("prediction log %s: %s", store.uri(), line)
    for line in summary.notes():
        log.info("prediction log %s: %s", store.uri(), line)
    log.info("collected %d records from %s, %s .. %s in %.1fs", summary.rows, store.uri(),
             summary.start.isoformat(), summary.end.isoformat(), summary.seconds)  # fmt: skip
    return summary


def collect_window(
    location: str,
    out: Path,
    *,
    start: str | datetime | None = None,
    end: str | datetime | None = None,
    hours: float = 24.0,
    progress: ProgressCallback | None = None,
) -> CollectSummary:
    """`visionops drift collect` and the `collect` component: a window of the log at `location`
    (empty: the configured log) as a Parquet feature table at `out`."""
    begin, stop = resolve_window(start, end, hours)
    return collect_to_parquet(open_log(location), begin, stop, out, progress=progress)


def read_window(
    store: ObjectStore,
    start: datetime,
    end: datetime,
    *,
    with_detections: bool = False,
    summary: CollectSummary | None = None,
) -> pd.DataFrame:
    """A (small) window in memory, sorted by time: the collected columns, the other keys of the
    records as text columns, and `detections` if asked. For tests, the demo and exploration; the
    pipeline streams with `collect_to_parquet`."""
    import pandas as pd  # heavy (about a second): only where a table is read

    summary = summary or CollectSummary(store.uri(), _as_utc(start), _as_utc(end))
    extra = dict.fromkeys(_other_keys(store, start, end), "VARCHAR")
    columns = [*COLLECTED_COLUMNS, *([DETECTIONS] if with_detections else [])]
    batches = list(iter_window(store, start, end, summary, columns=columns, extra=extra))
    if not batches:
        return pd.DataFrame(columns=list(RECORD_COLUMNS))
    frame = pd.concat([b.to_pandas() for b in batches], ignore_index=True)
    return frame.sort_values(TIMESTAMP, kind="stable").reset_index(drop=True)


def _other_keys(store: ObjectStore, start: datetime, end: datetime) -> list[str]:
    """Keys besides the collected ones in the first records of the window's JSON-lines files."""
    known = {*COLLECTED_COLUMNS, DETECTIONS}
    found: dict[str, None] = {}
    keys = [k for ks in window_keys(store, start, end).values() for k in ks]
    sink = CollectSummary(store.uri(), start, end)
    with _local_files(store, [k for k in keys if k.endswith(RAW_SUFFIX)], sink) as files:
        for _, path in files:
            found.update(dict.fromkeys(k for k in _first_keys(path) if k not in known))
    return list(found)
