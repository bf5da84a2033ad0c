"""The predictor's prediction log: one JSON line per request, written off the request path.

`PredictionLogWriter.submit` only puts the decoded image and its detections on a bounded queue; a
background thread computes the feature row (`features.feature_row`, the same columns the drift
check compares) and writes JSON-lines files partitioned by the hour of the request:

    <store>/dt=YYYY-MM-DD/hour=HH/<YYYYmmddTHHMMSSffffff>Z-<uuid>.jsonl

A full queue drops the record and counts it in `dropped` (and calls `on_drop`); a failed write is
logged, counted in `write_errors` and retried at the next flush. Nothing here ever raises into a
request. `visionops.monitoring.collect` reads the records of a time window back.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from visionops.data.features import feature_row
from visionops.errors import UsageError
from visionops.storage import ObjectStore

if TYPE_CHECKING:
    from visionops.detections import Detections

log = logging.getLogger(__name__)

TIMESTAMP = "timestamp"
REQUEST_ID = "request_id"
MODEL_NAME = "model_name"
MODEL_VERSION = "model_version"
DETECTIONS = "detections"
RECORD_COLUMNS: tuple[str, ...] = (TIMESTAMP, REQUEST_ID, MODEL_NAME, MODEL_VERSION)
"""Columns every record has besides the features (and `detections` unless dropped)."""


def partition_key(moment: datetime) -> str:
    """`dt=YYYY-MM-DD/hour=HH` of a UTC moment: the folder its records are written to."""
    moment = moment.astimezone(UTC)
    return f"dt={moment:%Y-%m-%d}/hour={moment:%H}"


@dataclass
class _Pending:
    image: np.ndarray
    detections: Detections | None
    timestamp: datetime
    meta: dict[str, Any]


@dataclass
class _Marker:
    """Queued by flush()/close(): everything queued before it is written when it is reached."""

    done: threading.Event = field(default_factory=threading.Event)
    stop: bool = False


class Activity:
    """Counts work in progress (the predictor's inferences) so the writer can wait for a pause."""

    def __init__(self) -> None:
        self._busy = 0
        self._changed = threading.Condition()

    @contextmanager
    def busy(self) -> Iterator[None]:
        with self._changed:
            self._busy += 1
        try:
            yield
        finally:
            with self._changed:
                self._busy -= 1
                if self._busy == 0:
                    self._changed.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """True once nothing is in progress, False if still busy after `timeout` seconds."""
        with self._changed:
            return self._changed.wait_for(lambda: self._busy == 0, timeout)


class PredictionLogWriter:
    """Bounded, non-blocking prediction logging to an object store (S3 or a local folder).

    `names` are the model's class names (stored with each detection; their count normalises the
    class entropy). The queue holds at most `max_queue` records and `max_queue_bytes` of image
    memory; `submit` drops beyond that. Records are written when `batch_size` of them wait, at the
    latest `flush_every_s` after the first one arrived, and at `flush()`/`close()`. The caller must
    not modify an image after submitting it.
    """

    def __init__(
        self,
        store: ObjectStore,
        *,
        names: Sequence[str] = (),
        model_name: str = "",
        model_version: str = "",
        max_queue: int = 512,
        max_queue_bytes: int = 256 << 20,
        batch_size: int = 256,
        flush_every_s: float = 10.0,
        on_drop: Callable[[], None] | None = None,
        activity: Activity | None = None,
    ) -> None:
        if max_queue < 1 or batch_size < 1 or flush_every_s <= 0 or max_queue_bytes < 1:
            raise UsageError("max_queue, max_queue_bytes, batch_size, flush_every_s must be > 0")
        self.store = store
        self.names = list(names)
        self.model_name = model_name
        self.model_version = model_version
        self.batch_size = batch_size
        self.flush_every_s = flush_every_s
        self.max_queue_bytes = max_queue_bytes
        self.on_drop = on_drop
        self.activity = activity
        self.dropped = 0
        self.written = 0
        self.write_errors = 0
        self.feature_errors = 0
        self._queue: queue.Queue[_Pending | _Marker] = queue.Queue(maxsize=max_queue)
        self._queued_bytes = 0
        self._lock = threading.Lock()
        self._closed = False
        self._buffer: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    # -- request path ---------------------------------------------------------------------------

    def submit(
        self,
        image_bgr: np.ndarray,
        detections: Detections | None,
        *,
        model_version: str | None = None,
        request_id: str | None = None,
        timestamp: datetime | None = None,
        **extra: Any,
    ) -> bool:
        """Queue one prediction for logging; never blocks, never raises.

        Returns False when the record was dropped (queue full, writer closed, bad arguments).
        `extra` keyword values (JSON-serialisable) are stored as columns of the record.
        """
        try:
            nbytes = int(getattr(image_bgr, "nbytes", 0))
            with self._lock:
                if self._closed or self._queued_bytes + nbytes > self.max_queue_bytes:
                    return self._drop()
                self._queue.put_nowait(
                    _Pending(
                        image_bgr,
                        detections,
                        timestamp or datetime.now(UTC),
                        {
                            REQUEST_ID: request_id or uuid.uuid4().hex,
                            MODEL_NAME: self.model_name,
                            MODEL_VERSION: model_version or self.model_version,
                            **extra,
                        },
                    )
                )
                self._queued_bytes += nbytes
            return True
        except queue.Full:
            with self._lock:
                return self._drop()
        except Exception:  # the request must never fail because of logging
            log.exception("prediction log: could not queue a record")
            with self._lock:
                return self._drop()

    @property
    def queued(self) -> int:
        """Records waiting for their feature row."""
        return self._queue.qsize()

    def _drop(self) -> bool:
        """Count a dropped record (lock held)."""
        self.dropped += 1
        if self.on_drop is not None:
            try:
                self.on_drop()
            except Exception:
                log.exception("prediction log: on_drop callback failed")
        return False

    # -- control --------------------------------------------------------------------------------

    def flush(self, timeout: float = 30.0) -> bool:
        """Write everything submitted so far; True when it was written within `timeout`."""
        if not self._thread.is_alive():
            return False
        marker = _Marker()
        try:
            self._queue.put(marker, timeout=timeout)
        except queue.Full:
            return False
        return marker.done.wait(timeout) and not self._buffer

    def close(self, timeout: float = 30.0) -> None:
        """Stop accepting records, write what is queued and stop the thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        marker = _Marker(stop=True)
        try:
            self._queue.put(marker, timeout=timeout)
        except queue.Full:
            log.error("prediction log: queue still full after %.0fs; closing anyway", timeout)
        self._thread.join(timeout)
        if self._buffer:
            log.error("prediction log: %d records could not be written", len(self._buffer))

    def __enter__(self) -> PredictionLogWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- background thread ----------------------------------------------------------------------

    def _run(self) -> None:
        deadline: float | None = None
        while True:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                item = self._queue.get(timeout=wait)
            except queue.Empty:
                item = None
            if isinstance(item, _Pending):
                self._wait_for_quiet(deadline)
                with self._lock:
                    self._queued_bytes -= int(getattr(item.image, "nbytes", 0))
                self._add(item)
                if deadline is None:
                    deadline = time.monotonic() + self.flush_every_s
            due = deadline is not None and time.monotonic() >= deadline
            if isinstance(item, _Marker) or due or len(self._buffer) >= self.batch_size:
                self._write()
                deadline = time.monotonic() + self.flush_every_s if self._buffer else None
            if isinstance(item, _Marker):
                item.done.set()
                if item.stop:
                    return

    def _wait_for_quiet(self, deadline: float | None) -> None:
        """Compute features between inferences, not beside them: on a small machine a feature
        row next to a running inference slows that request by about twice its own CPU time.
        Waits at most until the flush deadline, and not at all once the queue is half full."""
        if self.activity is None or self._queue.qsize() >= self._queue.maxsize // 2:
            return
        limit = self.flush_every_s if deadline is None else deadline - time.monotonic()
        self.activity.wait_idle(max(0.0, limit))

    def _add(self, item: _Pending) -> None:
        try:
            row = feature_row(item.image, item.detections, len(self.names))
        except Exception as error:
            self.feature_errors += 1
            log.warning("prediction log: no features for request %s: %s", item.meta, error)
            return
        record: dict[str, Any] = {TIMESTAMP: item.timestamp.isoformat(), **item.meta, **row}
        if item.detections is not None:
            record[DETECTIONS] = item.detections.to_records(self.names)
        self._buffer.append(record)

    def _write(self) -> None:
        """Write the buffer, one file per hour partition; keep what failed for the next try."""
        if not self._buffer:
            return
        groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for record in self._buffer:
            groups[partition_key(datetime.fromisoformat(record[TIMESTAMP]))].append(record)
        failed: list[dict[str, Any]] = []
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        for partition, records in sorted(groups.items()):
            key = f"{partition}/{stamp}-{uuid.uuid4().hex[:12]}.jsonl"
            body = "".join(json.dumps(r, separators=(",", ":"), default=_json_default) + "\n"
                           for r in records)  # fmt: skip
            try:
                self.store.write_bytes(key, body.encode("utf-8"))
                self.written += len(records)
            except Exception as error:
                self.write_errors += 1
                log.error("prediction log: writing %s failed: %s", self.store.uri(key), error)
                failed.extend(records)
        limit = self._queue.maxsize
        if len(failed) > limit:  # bounded memory while the store is down
            with self._lock:
                for _ in range(len(failed) - limit):
                    self._drop()
            failed = failed[-limit:]
        self._buffer = failed


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
