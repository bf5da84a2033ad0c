"""Compacting the prediction log: each closed hour's JSON-lines files become one Parquet part.

    <store>/dt=YYYY-MM-DD/hour=HH/compacted-<digest>.parquet

A part holds every record of the files it was made from, typed (the record and feature columns,
`detections`, and every other key of a file's first record as JSON text), plus `_source`, the file
each row came from; its Parquet metadata lists those files (`visionops.sources`). It is written
completely (DuckDB into a temporary file, then one atomic put) before any of its files is deleted,
and its name is the digest of the file list, so:

- a writer still adding files to the hour is safe: only the files listed at the start are
  compacted and deleted, later ones stay JSON lines until the next run (a spooled record that
  arrives hours late included);
- a crash between the put and the deletes leaves files the part covers; the reader skips them
  and the next run deletes them; two runs that overlap write the same key or, if they listed
  different files, parts whose shared files the reader reads once (by `_source`);
- running it again changes nothing.

A file with a line that does not parse, has no timestamp or holds a value of the wrong type is
not compacted: it stays as it is (the reader skips and counts its bad lines) and is named. Keys a
file has beyond its first record's are not kept (the writer writes one schema per file).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from visionops.config import get_settings
from visionops.monitoring.log_files import (
    CollectSummary,
    connect_duckdb,
    first_keys,
    json_columns,
    local_files,
    read_json_sql,
    sql_text,
)
from visionops.monitoring.log_layout import (
    COLLECTED_COLUMNS,
    DETECTIONS,
    PART_PREFIX,
    PART_SUFFIX,
    RAW_SUFFIX,
    SOURCE,
    SOURCES_KEY,
    TIMESTAMP,
    is_part,
    open_log,
    part_sources,
    resolve_window,
    window_keys,
)
from visionops.storage import LocalStore, ObjectStore

if TYPE_CHECKING:
    import duckdb  # DuckDB: loaded only where the log is read

    from visionops.progress import ProgressCallback

log = logging.getLogger(__name__)

ROW_GROUP_ROWS = 122_880  # DuckDB's default; a collect reads a part a row group at a time


@dataclass
class HourCompaction:
    """One hour partition's outcome."""

    partition: str
    part: str | None = None  # the key written, if any
    files: int = 0  # JSON-lines files compacted into it
    rows: int = 0
    deleted: int = 0  # JSON-lines files removed (now in a part)
    left: dict[str, str] = field(default_factory=dict)  # file -> why it stays JSON lines
    skipped: str = ""  # why the hour was not touched (still open)


@dataclass
class CompactSummary:
    source: str
    start: datetime
    end: datetime
    hours: list[HourCompaction] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rows(self) -> int:
        return sum(h.rows for h in self.hours)

    def problems(self) -> list[str]:
        left = {f"{h.partition}/{k}": why for h in self.hours for k, why in h.left.items()}
        if not left:
            return []
        named = "; ".join(f"{k}: {why}" for k, why in list(left.items())[:20])
        return [f"{len(left)} files left as JSON lines: {named}"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "rows": self.rows,
            "parts_written": sum(1 for h in self.hours if h.part),
            "files_compacted": sum(h.files for h in self.hours),
            "files_deleted": sum(h.deleted for h in self.hours),
            "files_left": {f"{h.partition}/{k}": w for h in self.hours for k, w in h.left.items()},
            "hours_open": [h.partition for h in self.hours if h.skipped],
            "seconds": round(self.seconds, 3),
        }


def part_key(partition: str, names: Sequence[str]) -> str:
    """The part of exactly these files: the same list always gives the same key."""
    digest = hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()[:16]
    return f"{partition}/{PART_PREFIX}{digest}{PART_SUFFIX}"


def _existing_sources(store: ObjectStore, key: str) -> list[str] | None:
    """The files a part covers; None when the part cannot be read (it is then ignored)."""
    import pyarrow as pa  # pyarrow: loaded only where a table is streamed
    import pyarrow.parquet as pq  # pyarrow: loaded only where a table is streamed

    try:
        if isinstance(store, LocalStore):
            schema = pq.read_schema(store.uri(key))
        else:
            schema = pq.read_schema(io.BytesIO(store.read_bytes(key)))
    except (OSError, ValueError, pa.ArrowException) as error:
        log.warning("prediction log: unreadable part %s ignored: %s", key, error)
        return None
    return part_sources(schema.metadata) or None


_FILE_IN_ERROR = re.compile(r'file "([^"]+)"')


def _write_part(
    con: duckdb.DuckDBPyConnection,
    files: dict[str, Path],
    target: Path,
    hour: HourCompaction,
) -> list[str]:
    """COPY the files into `target` strictly; files that fail are moved to `hour.left` and the
    rest retried. Returns the names compacted (empty: nothing written)."""
    names = dict(files)
    while names:
        extra: dict[str, str] = {}
        for path in names.values():
            for key in first_keys(path):
                if key not in COLLECTED_COLUMNS and key != DETECTIONS:
                    extra.setdefault(key, "JSON")
        spec = json_columns([*COLLECTED_COLUMNS, DETECTIONS], extra)
        source = read_json_sql(list(names.values()), spec, strict=True, filename=True)
        sources = json.dumps(sorted(names))
        query = (
            f"COPY (SELECT * EXCLUDE (filename), parse_filename(filename) AS {SOURCE} "
            f"FROM {source}) TO {sql_text(str(target))} (FORMAT parquet, "
            f"ROW_GROUP_SIZE {ROW_GROUP_ROWS}, "
            f"KV_METADATA {{{sql_text(SOURCES_KEY.decode())}: {sql_text(sources)}}})"
        )
        try:
            con.execute(query)
        except Exception as error:  # duckdb.Error: a line of some file does not parse
            bad = _blame(con, names, spec, error)
            for name in bad:
                hour.left[name] = str(error).splitlines()[0][:300]
                del names[name]
            continue
        untimed = con.sql(
            f"SELECT DISTINCT {SOURCE} FROM read_parquet({sql_text(str(target))}) "
            f"WHERE {TIMESTAMP} IS NULL"
        ).fetchall()
        if not untimed:
            return sorted(names)
        for (name,) in untimed:
            hour.left[name] = "a line without a valid timestamp"
            names.pop(name, None)
    return []


def _blame(
    con: duckdb.DuckDBPyConnection, names: dict[str, Path], spec: str, error: Exception
) -> list[str]:
    """The files a strict read failed on: the one DuckDB named, else each file tried alone."""
    by_path = {str(p): n for n, p in names.items()}
    match = _FILE_IN_ERROR.search(str(error))
    if match and match.group(1) in by_path:
        return [by_path[match.group(1)]]
    bad = []
    for name, path in names.items():
        try:
            con.execute(f"SELECT count(*) FROM {read_json_sql([path], spec, strict=True)}")
        except Exception:  # duckdb.Error
            bad.append(name)
    return bad or list(names)


def compact_hour(
    store: ObjectStore,
    partition: str,
    keys: Sequence[str],
    con: duckdb.DuckDBPyConnection,
) -> HourCompaction:
    """Compact the JSON-lines files of one hour that no part covers yet; delete covered ones."""
    hour = HourCompaction(partition)
    covered: set[str] = set()
    for key in keys:
        if is_part(key.rsplit("/", 1)[1]):
            covered.update(_existing_sources(store, key) or [])
    raw = {k.rsplit("/", 1)[1]: k for k in keys if k.endswith(RAW_SUFFIX)}
    for name in sorted(covered & set(raw)):  # a run that stopped before its deletes
        store.delete(raw.pop(name))
        hour.deleted += 1
    if not raw:
        return hour
    sink = CollectSummary(store.uri(), datetime.now(UTC), datetime.now(UTC))
    with (
        tempfile.TemporaryDirectory(prefix="visionops-compact-") as tmp,
        local_files(store, list(raw.values()), sink) as local,
    ):
        for key, why in sink.unreadable.items():
            hour.left[key.rsplit("/", 1)[1]] = why
        files = {key.rsplit("/", 1)[1]: path for key, path in local}
        target = Path(tmp) / "part.parquet"
        names = _write_part(con, files, target, hour)
        if not names:
            return hour
        counted = con.sql(f"SELECT count(*) FROM read_parquet({sql_text(str(target))})")
        hour.rows = int(counted.fetchall()[0][0])
        hour.part = part_key(partition, names)
        store.upload_file(target, hour.part)
    hour.files = len(names)
    for name in names:
        store.delete(raw[name])
        hour.deleted += 1
    return hour


def compact_log(
    store: ObjectStore,
    start: datetime,
    end: datetime,
    *,
    settle_s: float,
    now: datetime | None = None,
    progress: ProgressCallback | None = None,
) -> CompactSummary:
    """Compact every hour of [start, end) that ended at least `settle_s` seconds before `now`.

    Hours still being written are listed as open and left alone; they are compacted by a later run.
    """
    started = time.perf_counter()
    now = now or datetime.now(UTC)
    summary = CompactSummary(store.uri(), start, end)
    partitions = window_keys(store, start, end)
    con = connect_duckdb()
    try:
        for done, (partition, keys) in enumerate(partitions.items(), 1):
            hour_start = datetime.strptime(partition, "dt=%Y-%m-%d/hour=%H").replace(tzinfo=UTC)
            if hour_start + timedelta(hours=1, seconds=settle_s) > now:
                summary.hours.append(HourCompaction(partition, skipped="still open"))
                continue
            summary.hours.append(compact_hour(store, partition, keys, con))
            if progress is not None:
                progress(done, len(partitions))
    finally:
        con.close()
    summary.seconds = time.perf_counter() - started
    for line in summary.problems():
        log.warning("prediction log %s: %s", store.uri(), line)
    log.info("compacted %d rows of %s in %.1fs", summary.rows, store.uri(), summary.seconds)
    return summary


def compact_window(
    location: str,
    *,
    start: str | datetime | None = None,
    end: str | datetime | None = None,
    hours: float = 24.0,
    progress: ProgressCallback | None = None,
) -> CompactSummary:
    """`visionops drift compact` and the `compact` component: the closed hours of a window of the
    log at `location` (empty: the configured log)."""
    begin, stop = resolve_window(start, end, hours)
    settle = get_settings().log_compact_after_s
    return compact_log(open_log(location), begin, stop, settle_s=settle, progress=progress)
