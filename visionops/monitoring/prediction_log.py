"""The predictor's prediction log: one JSON line per request, written off the request path.

`PredictionLogWriter.submit` only puts the decoded image and its detections on a bounded queue; a
background thread computes the feature row (`features.feature_row`, the same columns the drift
check compares) and cuts the records into batches, one object per hour partition:

    <store>/dt=YYYY-MM-DD/hour=HH/<YYYYmmddTHHMMSSffffff>Z-<uuid>.jsonl

A second thread (`visionops.monitoring.log_shipping`) writes the batches to the store. A batch's
key is chosen once, when it is cut, so every retry, every spool and every re-ship writes the same
object: a write that is repeated never duplicates records. While the store is down, batches wait
in memory (at most `max_pending` records) and then in the local spool
(`visionops.monitoring.log_spool`, on the pod's volume); `close()` spools whatever the store has
not taken by its deadline, and the next start ships it.
Nothing is lost silently: every record is written, spooled, or counted in `lost` with a reason
(a full queue, a full spool, no features). Nothing here ever raises into a request.
The layout (record columns, partitions, loss reasons) is `visionops.monitoring.log_layout`'s;
`visionops.monitoring.collect` reads the records of a time window back.

Image retention rides on the same machinery: `submit(..., encoded=<the request's bytes>)` keeps
them when the policy (`visionops.monitoring.image_retention.ImagePolicy`) wants the image and they
fit the byte bound: the queued arrays, the queued image bytes and the images still waiting for the
store together within `max_queue_bytes`, the images within half of it (`IMAGE_SHARE`: records
always keep the other half); the features thread names the content-addressed key in the
record (`image_key`) and hands the bytes to the uploader ahead of the record. An image that cannot
be kept is counted in `images_lost` with a reason and its record names no key; a record is never
dropped for its image.
"""

from __future__ import annotations

import collections
import json
import logging
import queue
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from visionops.data.features import feature_row
from visionops.errors import UsageError
from visionops.monitoring.image_retention import ImagePolicy, image_key
from visionops.monitoring.log_layout import (
    DETECTIONS,
    IMAGE_KEY,
    IMAGE_LOSS_REASONS,
    LOSS_REASONS,
    MODEL_NAME,
    MODEL_VERSION,
    NO_FEATURES,
    QUEUE_FULL,
    REQUEST_ID,
    SHUTDOWN_TIMEOUT,
    STORE_BEHIND,
    TIMESTAMP,
    partition_key,
)
from visionops.monitoring.log_shipping import Batch, BatchShipper, Marker
from visionops.storage import ObjectStore

if TYPE_CHECKING:
    from visionops.detections import Detections
    from visionops.monitoring.activity import Activity
    from visionops.monitoring.log_spool import LogSpool

log = logging.getLogger(__name__)

IMAGE_SHARE = 0.5
"""The part of `max_queue_bytes` kept images (queued, or waiting for the store) may hold."""
KNOWN_IMAGES = 100_000
"""Keys of images already handed to the store that the writer remembers (a repeated image is
uploaded once a day; about 10 MB of keys)."""


@dataclass
class _Pending:
    image: np.ndarray
    detections: Detections | None
    timestamp: datetime
    meta: dict[str, Any]
    encoded: bytes | None = None  # the request's image bytes, when they are to be kept
    nbytes: int = 0  # the array's memory (what the record bound counts)


class PredictionLogWriter:
    """Bounded, non-blocking prediction logging to an object store (S3 or a local folder).

    `names` are the model's class names (stored with each detection; their count normalises the
    class entropy). The queue holds at most `max_queue` records and `max_queue_bytes` of image
    memory (decoded arrays, and kept images' bytes until the store takes them, at most half of
    it); `submit` drops beyond that. Records are cut into batches when `batch_size` of them
    wait, at the latest `flush_every_s` after the first one arrived, and at `flush()`/`close()`.
    Batches the store refuses wait in memory up to `max_pending` records (default `max_queue`),
    then go to `spool` if there is one. The caller must not modify an image after submitting it.
    `images` decides which request images are kept (default: none).
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
        max_pending: int | None = None,
        spool: LogSpool | None = None,
        on_drop: Callable[[], None] | None = None,
        activity: Activity | None = None,
        images: ImagePolicy | None = None,
    ) -> None:
        if max_queue < 1 or batch_size < 1 or flush_every_s <= 0 or max_queue_bytes < 1:
            raise UsageError("max_queue, max_queue_bytes, batch_size, flush_every_s must be > 0")
        self.store = store
        self.spool = spool
        self.names = list(names)
        self.model_name = model_name
        self.model_version = model_version
        self.batch_size = batch_size
        self.flush_every_s = flush_every_s
        self.max_queue_bytes = max_queue_bytes
        self.max_pending = max_pending or max_queue
        self.on_drop = on_drop
        self.activity = activity
        self.feature_errors = 0
        self.lost: collections.Counter[str] = collections.Counter(dict.fromkeys(LOSS_REASONS, 0))
        self.images = images or ImagePolicy()
        self.images_lost: collections.Counter[str] = collections.Counter(
            dict.fromkeys(IMAGE_LOSS_REASONS, 0)
        )
        self.images_repeated = 0  # records naming an image already handed to the store today
        self._known: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._queue: queue.Queue[_Pending | Marker] = queue.Queue(maxsize=max_queue)
        self._queued_bytes = 0  # the queued arrays
        self._queued_image_bytes = 0  # the queued bytes of images to keep
        self._lock = threading.Lock()  # submit's bookkeeping and the loss counters
        self._closed = False
        self._deadline = float("inf")  # close(): past it, queued records are counted lost
        self._buffer: list[dict[str, Any]] = []  # features thread only
        self._late: tuple[datetime, datetime, int] | None = None  # records past close()'s deadline
        self._shipper = BatchShipper(
            store,
            spool,
            max_pending=self.max_pending,
            retry_every_s=flush_every_s,
            on_lost=self._lose,
            max_pending_bytes=max_queue_bytes // 4,  # then spooled, making room for more
            on_image_lost=self._lose_images,
        )
        self._shipper.count_earlier_losses()
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()
        self._shipper.start()

    # -- request path ---------------------------------------------------------------------------

    def submit(
        self,
        image_bgr: np.ndarray,
        detections: Detections | None,
        *,
        encoded: bytes | None = None,
        model_version: str | None = None,
        request_id: str | None = None,
        timestamp: datetime | None = None,
        **extra: Any,
    ) -> bool:
        """Queue one prediction for logging; never blocks, never raises.

        Returns False when the record was dropped (queue full, writer closed, bad arguments).
        `encoded`: the image as the request sent it, kept if the image policy wants it and it fits
        the byte bound (else counted in `images_lost`; the record is queued all the same).
        `extra` keyword values (JSON-serialisable) are stored as columns of the record.
        """
        keep = False
        try:
            keep = encoded is not None and self.images.enabled and self.images.wants(detections)
            nbytes = int(getattr(image_bgr, "nbytes", 0))
            with self._lock:
                behind = self._shipper.pending_image_bytes
                images = self._queued_image_bytes + behind
                held = self._queued_bytes + images + nbytes
                if self._closed or held > self.max_queue_bytes:
                    self._lose_image_locked(QUEUE_FULL, keep)
                    return self._drop(QUEUE_FULL)
                kept = bytes(encoded) if keep and encoded is not None else None
                if kept is not None and (
                    images + len(kept) > self.max_queue_bytes * IMAGE_SHARE
                    or held + len(kept) > self.max_queue_bytes
                ):  # images never take more than their share: records keep the rest
                    reason = STORE_BEHIND if behind > self._queued_image_bytes else QUEUE_FULL
                    kept = self._lose_image_locked(reason, True)
                pending = _Pending(
                    image_bgr,
                    detections,
                    timestamp or datetime.now(UTC),
                    {
                        REQUEST_ID: request_id or uuid.uuid4().hex,
                        MODEL_NAME: self.model_name,
                        MODEL_VERSION: model_version or self.model_version,
                        IMAGE_KEY: None,
                        **extra,
                    },
                    kept,
                    nbytes,
                )
                self._queue.put_nowait(pending)
                self._queued_bytes += nbytes
                self._queued_image_bytes += len(kept or b"")
            return True
        except queue.Full:
            with self._lock:
                self._lose_image_locked(QUEUE_FULL, keep)
                return self._drop(QUEUE_FULL)
        except Exception:  # the request must never fail because of logging
            log.exception("prediction log: could not queue a record")
            with self._lock:
                self._lose_image_locked(QUEUE_FULL, keep)
                return self._drop(QUEUE_FULL)

    def _lose_image_locked(self, reason: str, wanted: bool) -> None:
        """Count an image the policy wanted and the log cannot keep (lock held)."""
        if wanted:
            self.images_lost[reason] += 1

    def _lose_images(self, reason: str, count: int) -> None:
        """Count images the store and the spool did not take (the upload thread's losses)."""
        with self._lock:
            self.images_lost[reason] += count

    def _drop(self, reason: str, count: int = 1) -> bool:
        """Count lost records (lock held)."""
        self.lost[reason] += count
        if self.on_drop is not None:
            for _ in range(count):
                try:
                    self.on_drop()
                except Exception:
                    log.exception("prediction log: on_drop callback failed")
        return False

    def _lose(self, reason: str, count: int) -> None:
        """Count records the store and the spool did not take (the upload thread's losses)."""
        with self._lock:
            self._drop(reason, count)

    # -- state ----------------------------------------------------------------------------------

    @property
    def queued(self) -> int:
        """Records waiting for their feature row."""
        return self._queue.qsize()

    @property
    def closed(self) -> bool:
        """True once `close()` was called: records submitted now are dropped."""
        return self._closed

    @property
    def dropped(self) -> int:
        """Records lost, for any reason (see `lost`)."""
        return sum(self.lost.values())

    @property
    def pending(self) -> int:
        """Records cut into batches that the store has not taken yet (in memory)."""
        return self._shipper.pending

    @property
    def images_retained(self) -> int:
        """Kept images the store took (spooled ones once shipped)."""
        return self._shipper.images_written

    @property
    def image_bytes_retained(self) -> int:
        """Bytes of the kept images the store took."""
        return self._shipper.image_bytes_written

    @property
    def images_dropped(self) -> int:
        """Images the policy wanted and the log could not keep, for any reason (`images_lost`)."""
        return sum(self.images_lost.values())

    @property
    def written(self) -> int:
        """Records the store took."""
        return self._shipper.written

    @property
    def write_errors(self) -> int:
        """Writes the store refused (each try of each object)."""
        return self._shipper.write_errors

    @property
    def spooled(self) -> int:
        """Records this process put in the spool."""
        return self._shipper.spooled

    @property
    def shipped(self) -> int:
        """Records shipped from the spool to the store."""
        return self._shipper.shipped

    def oldest_unwritten(self) -> datetime | None:
        """When the oldest record not yet in the store (in memory or spooled) was made."""
        pending = self._shipper.oldest()
        stamps = [pending] if pending is not None else []
        buffer = self._buffer
        if buffer:
            with suppress(IndexError, KeyError, ValueError):
                stamps.append(datetime.fromisoformat(buffer[0][TIMESTAMP]))
        spooled = self.spool.oldest() if self.spool is not None else None
        if spooled is not None:
            stamps.append(spooled)
        return min(stamps) if stamps else None

    # -- control --------------------------------------------------------------------------------

    def flush(self, timeout: float = 30.0) -> bool:
        """Write everything submitted so far, and what the spool holds; True when the store took
        all of it within `timeout` (False as soon as the store refuses)."""
        if not self._thread.is_alive():
            return False
        marker = Marker()
        try:
            self._queue.put(marker, timeout=timeout)
        except queue.Full:
            return False
        return marker.done.wait(timeout) and marker.ok

    def close(self, timeout: float = 30.0) -> None:
        """Stop accepting records and, within `timeout`, write what is held or spool it.

        Whatever the store has not taken by the deadline goes to the spool (the uploader may be
        stuck in a slow write; the same keys make a late success harmless); what the spool cannot
        take is counted lost and noted in the spool for the next start.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        deadline = time.monotonic() + timeout
        self._deadline = deadline
        marker = Marker(stop=True)
        try:
            self._queue.put(marker, timeout=max(0.0, deadline - time.monotonic()))
        except queue.Full:
            log.error("prediction log: queue still full after %.0fs; closing anyway", timeout)
        # Leave a little of the budget to spool what the store did not take.
        reserve = min(2.0, timeout / 4)
        self._thread.join(max(0.0, deadline - reserve - time.monotonic()))
        self._shipper.join(max(0.0, deadline - reserve - time.monotonic()))
        self._shipper.abandon()
        # Past the deadline the features thread only counts what is left, and spools what it
        # still cuts; the uploader may be spooling too.
        self._thread.join(max(0.0, deadline - time.monotonic()) + reserve)
        self._shipper.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            log.error("prediction log: features still running at the deadline")
        if self._late and self.spool is not None:  # this process's metrics die with it
            oldest, newest, count = self._late
            self.spool.note_loss(count, SHUTDOWN_TIMEOUT, oldest, newest, reported=False)
        held = self.spool.records if self.spool is not None else 0
        log.info(
            "prediction log closed: %d records written, %d in the spool, %d lost %s; "
            "%d images kept, %d in the spool, %d not kept %s",
            self.written, held, self.dropped, dict(+self.lost), self.images_retained,
            self._shipper.images_spooled, self.images_dropped, dict(+self.images_lost),
        )  # fmt: skip

    def __enter__(self) -> PredictionLogWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- features thread ------------------------------------------------------------------------

    def _run(self) -> None:
        deadline: float | None = None
        while True:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                item = self._queue.get(timeout=wait)
            except queue.Empty:
                item = None
            if isinstance(item, _Pending):
                with self._lock:
                    self._queued_bytes -= item.nbytes
                    self._queued_image_bytes -= len(item.encoded or b"")
                if time.monotonic() > self._deadline:  # closing and out of time
                    with self._lock:
                        self._lose_image_locked(SHUTDOWN_TIMEOUT, item.encoded is not None)
                        self._drop(SHUTDOWN_TIMEOUT)
                    oldest, newest, count = self._late or (item.timestamp, item.timestamp, 0)
                    self._late = (min(oldest, item.timestamp), max(newest, item.timestamp),
                                  count + 1)  # fmt: skip
                    continue
                self._wait_for_quiet(deadline)
                self._add(item)
                if deadline is None:
                    deadline = time.monotonic() + self.flush_every_s
            due = deadline is not None and time.monotonic() >= deadline
            if isinstance(item, Marker) or due or len(self._buffer) >= self.batch_size:
                self._cut()
                deadline = None
            if isinstance(item, Marker):
                self._shipper.request(item)
                if item.stop:
                    return

    def _wait_for_quiet(self, deadline: float | None) -> None:
        """Compute features between inferences, not beside them: on a small machine a feature
        row next to a running inference slows that request by about twice its own CPU time.
        Waits at most until the flush deadline, and not at all once the queue is half full."""
        if self.activity is None or self._queue.qsize() >= self._queue.maxsize // 2:
            return
        if self._closed:
            return
        limit = self.flush_every_s if deadline is None else deadline - time.monotonic()
        self.activity.wait_idle(max(0.0, limit))

    def _add(self, item: _Pending) -> None:
        try:
            row = feature_row(item.image, item.detections, len(self.names))
        except Exception as error:
            self.feature_errors += 1
            with self._lock:
                self._lose_image_locked(NO_FEATURES, item.encoded is not None)
                self._drop(NO_FEATURES)
            log.warning("prediction log: no features for request %s: %s", item.meta, error)
            return
        record: dict[str, Any] = {TIMESTAMP: item.timestamp.isoformat(), **item.meta, **row}
        if item.detections is not None:
            record[DETECTIONS] = item.detections.to_records(self.names)
        if item.encoded is not None:
            record[IMAGE_KEY] = self._keep_image(item.encoded, item.timestamp)
        self._buffer.append(record)

    def _keep_image(self, data: bytes, moment: datetime) -> str:
        """Hand the bytes to the uploader under their content-addressed key (once a day for a
        repeated image); returns the key the record names."""
        key = image_key(data, moment)
        if key in self._known:
            self._known.move_to_end(key)
            self.images_repeated += 1
            return key
        self._shipper.add([Batch(0, key, data, 0, moment, moment)])
        self._known[key] = None
        if len(self._known) > KNOWN_IMAGES:
            self._known.popitem(last=False)
        return key

    def _cut(self) -> None:
        """Turn the buffer into batches, one per hour partition, and hand them to the uploader."""
        if not self._buffer:
            return
        groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for record in self._buffer:
            groups[partition_key(datetime.fromisoformat(record[TIMESTAMP]))].append(record)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        batches = []
        for partition, records in sorted(groups.items()):
            body = "".join(json.dumps(r, separators=(",", ":"), default=_json_default) + "\n"
                           for r in records)  # fmt: skip
            stamps = [r[TIMESTAMP] for r in records]
            batches.append(
                Batch(
                    0,
                    f"{partition}/{stamp}-{uuid.uuid4().hex[:12]}.jsonl",
                    body.encode("utf-8"),
                    len(records),
                    datetime.fromisoformat(min(stamps)),
                    datetime.fromisoformat(max(stamps)),
                )
            )
        self._buffer = []
        self._shipper.add(batches)


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
