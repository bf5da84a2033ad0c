"""Reading the prediction log back: the files of a time window, and the window's records.

The writer (`visionops.monitoring.prediction_log`) owns the layout; this module only reads it, for
the monitoring pipeline's `collect` step and `visionops drift collect`.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from visionops.config import get_settings
from visionops.errors import StorageError, UsageError
from visionops.monitoring.prediction_log import (
    DETECTIONS,
    RECORD_COLUMNS,
    TIMESTAMP,
    partition_key,
)
from visionops.storage import ObjectStore, default_store, open_store

if TYPE_CHECKING:
    import pandas as pd  # heavy (about a second): only where a window is read

log = logging.getLogger(__name__)


def _as_utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def window_keys(store: ObjectStore, start: datetime, end: datetime) -> list[str]:
    """The log files whose hour partition overlaps [start, end)."""
    start, end = _as_utc(start), _as_utc(end)
    if end <= start:
        raise UsageError(f"empty time window: end {end.isoformat()} <= start {start.isoformat()}")
    first_hour = start.replace(minute=0, second=0, microsecond=0)
    wanted = set()
    hour = first_hour
    while hour < end:
        wanted.add(partition_key(hour))
        hour += timedelta(hours=1)
    keys: list[str] = []
    day = first_hour.date()
    while day <= end.date():
        for key in store.list_keys(f"dt={day:%Y-%m-%d}"):
            if key.endswith(".jsonl") and key.rsplit("/", 1)[0] in wanted:
                keys.append(key)
        day += timedelta(days=1)
    return keys


def read_window(
    store: ObjectStore, start: datetime, end: datetime, *, with_detections: bool = False
) -> pd.DataFrame:
    """Every logged record with start <= timestamp < end, as a DataFrame sorted by time.

    Naive datetimes are taken as UTC. Unparseable lines are skipped with a warning (a partly
    written file never hides the rest of the window). An empty window gives an empty DataFrame
    with the record columns; the caller decides whether that is enough data.
    """
    import pandas as pd  # heavy (about a second): only where a window is read

    start, end = _as_utc(start), _as_utc(end)
    rows: list[dict[str, Any]] = []
    bad = 0
    for key in window_keys(store, start, end):
        try:
            text = store.read_bytes(key).decode("utf-8", errors="replace")
        except StorageError as error:
            log.warning("prediction log: skipped unreadable %s: %s", key, error)
            bad += 1
            continue
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                moment = datetime.fromisoformat(record[TIMESTAMP])
            except (ValueError, KeyError, TypeError):
                bad += 1
                continue
            if start <= _as_utc(moment) < end:
                if not with_detections:
                    record.pop(DETECTIONS, None)
                rows.append(record)
    if bad:
        log.warning("prediction log: skipped %d unreadable lines or files in the window", bad)
    if not rows:
        return pd.DataFrame(columns=list(RECORD_COLUMNS))
    frame = pd.DataFrame.from_records(rows)
    frame[TIMESTAMP] = pd.to_datetime(frame[TIMESTAMP], utc=True, format="ISO8601")
    return frame.sort_values(TIMESTAMP, kind="stable").reset_index(drop=True)


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


def collect_window(
    location: str = "",
    *,
    start: str | datetime | None = None,
    end: str | datetime | None = None,
    hours: float = 24.0,
) -> pd.DataFrame:
    """The prediction log records of a window, from `location` (s3://bucket/prefix or a folder)
    or, when empty, from the configured log store (`VISIONOPS_LOG_PREFIX`, S3 if configured)."""

    settings = get_settings()
    store = open_store(location, settings) if location else default_store(settings.log_prefix)
    begin, stop = resolve_window(start, end, hours)
    frame = read_window(store, begin, stop)
    log.info("collected %d records from %s, %s .. %s", len(frame), store.uri(), begin, stop)
    return frame
