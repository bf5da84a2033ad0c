"""The prediction log's layout, shared by its writer and its readers: what a record holds, where
it is stored, and why a record can be missing.

The writer (`visionops.monitoring.prediction_log`) writes JSON-lines files in hourly partitions;
compaction (`visionops.monitoring.compact`) turns a closed hour's files into a Parquet part that
names the files it holds; collect (`visionops.monitoring.collect`) reads a window of both:

    <store>/dt=YYYY-MM-DD/hour=HH/<YYYYmmddTHHMMSSffffff>Z-<uuid>.jsonl
    <store>/dt=YYYY-MM-DD/hour=HH/compacted-<digest>.parquet
    <store>/images/dt=YYYY-MM-DD/<sha256>.<ext>      kept request images (`image_key`)
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from visionops.config import get_settings
from visionops.data.features import FEATURE_COLUMNS
from visionops.errors import UsageError
from visionops.storage import ObjectStore, default_store, open_store

TIMESTAMP = "timestamp"
REQUEST_ID = "request_id"
MODEL_NAME = "model_name"
MODEL_VERSION = "model_version"
DETECTIONS = "detections"
IMAGE_KEY = "image_key"
"""The key (relative to the log's store root) of the request's original image bytes, or null
when the image was not kept (`visionops.monitoring.image_retention`; old logs have no such key)."""
RECORD_COLUMNS: tuple[str, ...] = (TIMESTAMP, REQUEST_ID, MODEL_NAME, MODEL_VERSION, IMAGE_KEY)
"""Columns every record has besides the features (and `detections` unless dropped)."""
IMAGES_PREFIX = "images"
"""Where kept images go in the store: beside the `dt=` partitions, never read as records."""
COLLECTED_COLUMNS: tuple[str, ...] = RECORD_COLUMNS + FEATURE_COLUMNS

# Why a record was lost (the `reason` label of visionops_prediction_log_dropped_total).
QUEUE_FULL = "queue_full"  # submit found the queue full (or the writer closed)
NO_FEATURES = "no_features"  # its feature row could not be computed
SPOOL_FULL = "spool_full"  # the store was down and the spool had no room (or no spool)
SHUTDOWN_TIMEOUT = "shutdown_timeout"  # still queued when close()'s deadline passed
LOSS_REASONS = (QUEUE_FULL, NO_FEATURES, SPOOL_FULL, SHUTDOWN_TIMEOUT)
# Why an image the policy wanted was not kept (the `reason` label of
# visionops_prediction_log_images_dropped_total): the reasons above (its record's fate, or the
# image's own: its bytes did not fit the queue's byte bound, no room in the spool), and
STORE_BEHIND = "store_behind"  # images waiting for the store already fill the byte bound
IMAGE_LOSS_REASONS = (QUEUE_FULL, NO_FEATURES, STORE_BEHIND, SPOOL_FULL, SHUTDOWN_TIMEOUT)

RAW_SUFFIX = ".jsonl"
PART_PREFIX = "compacted-"
PART_SUFFIX = ".parquet"
SOURCE = "_source"
"""Column of a compacted part: the name of the JSON-lines file the row came from."""
SOURCES_KEY = b"visionops.sources"
"""Parquet key-value metadata of a part: the JSON list of the file names it covers."""


def as_utc(moment: datetime) -> datetime:
    """`moment` in UTC; a naive one is taken as UTC already (the log's times are UTC)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def partition_key(moment: datetime) -> str:
    """`dt=YYYY-MM-DD/hour=HH` of a UTC moment: the folder its records are written to."""
    moment = moment.astimezone(UTC)
    return f"dt={moment:%Y-%m-%d}/hour={moment:%H}"


def hour_partitions(start: datetime, end: datetime) -> list[str]:
    """The `dt=/hour=` partitions that overlap [start, end)."""
    start, end = as_utc(start), as_utc(end)
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
            if name.endswith(RAW_SUFFIX) or is_part(name):
                found.setdefault(partition, []).append(key)
    return {p: found[p] for p in wanted if p in found}


def is_part(name: str) -> bool:
    """Whether a file name is a compacted part's (else a JSON-lines file or something else)."""
    return name.startswith(PART_PREFIX) and name.endswith(PART_SUFFIX)


def part_sources(metadata: dict[bytes, bytes] | None) -> list[str]:
    """The JSON-lines files a part holds, from its Parquet metadata; empty: not a part of ours."""
    try:
        return list(json.loads((metadata or {})[SOURCES_KEY]))
    except (KeyError, ValueError, TypeError):
        return []


def resolve_window(
    start: str | datetime | None, end: str | datetime | None, hours: float
) -> tuple[datetime, datetime]:
    """[start, end) from ISO-8601 strings or datetimes; a missing end is now, a missing start is
    `hours` before the end. UsageError for unparseable or empty windows."""

    def parse(value: str | datetime | None, name: str) -> datetime | None:
        if value is None or value == "":
            return None
        if isinstance(value, datetime):
            return as_utc(value)
        try:
            return as_utc(datetime.fromisoformat(value))
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


def open_log(location: str = "") -> ObjectStore:
    """The prediction log at `location` (s3://bucket/prefix or a folder); empty: the configured
    one (`VISIONOPS_LOG_PREFIX` in the S3 bucket if configured, else in the data dir)."""
    settings = get_settings()
    return open_store(location, settings) if location else default_store(settings.log_prefix)
