"""Getting the prediction log's batches into the store, and keeping them while it is down.

The writer (`visionops.monitoring.prediction_log`) cuts records into batches (`Batch`), one object
each under a key chosen once, so every retry, spool and re-ship writes the same object. This
module's thread writes them to the store, oldest first. While the store refuses, batches wait in
memory (at most `max_pending` records), the oldest beyond that go to the spool
(`visionops.monitoring.log_spool`, on the pod's volume), and the store is tried again after a pause
that grows with each failure (at most `MAX_RETRY_WAIT_S`). Whenever it answers, the spool is
shipped (this process's objects and any an earlier process left on the volume), and its loss notes
with it. Kept request images (`visionops.monitoring.image_retention`) travel the same way as
batches without records, ahead of the records that name them; besides the record bound, the images
waiting in memory are bounded in bytes (`max_pending_bytes`), the oldest beyond it spooled too.
`flush()` and `close()` reach the thread as a `Marker`, answered once every batch cut before it was
written, or as soon as the store refuses. What neither the store nor the spool takes goes to the
writer's loss counters (`on_lost`) and into a loss note.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from visionops.monitoring.log_layout import IMAGES_PREFIX, LOSS_REASONS, SPOOL_FULL
from visionops.monitoring.log_spool import IMAGE_SHARE, RESCAN_EVERY_S
from visionops.storage import ObjectStore

if TYPE_CHECKING:
    from visionops.monitoring.log_spool import LogSpool

log = logging.getLogger(__name__)

MAX_RETRY_WAIT_S = 30.0
"""Longest pause between two tries of a store that keeps failing."""


@dataclass
class Batch:
    """One object the log writes, under a key chosen once (idempotent retries and re-ships).

    `records` counts the log records it holds; an object that is not a JSON-lines file of records
    (an image kept beside its record, say) would be a batch with none.
    """

    seq: int
    key: str
    body: bytes
    records: int
    oldest: datetime
    newest: datetime

    @property
    def is_image(self) -> bool:
        return self.records == 0 and is_image_key(self.key)


def is_image_key(key: str) -> bool:
    """Whether a key is a kept request image's (`images/...`)."""
    return key.startswith(f"{IMAGES_PREFIX}/")


@dataclass
class Marker:
    """Queued by flush()/close(): everything queued before it is written when it is reached."""

    done: threading.Event = field(default_factory=threading.Event)
    stop: bool = False
    seq: int = 0  # the last batch cut before the marker: what the caller waits for
    ok: bool = False


class BatchShipper:
    """The upload thread of a prediction log writer, and the batches it has not written yet.

    Counts what it did: `written` (records the store took), `write_errors` (each refused try of
    each object), `spooled` (records put in the spool), `shipped` (records shipped from it),
    `images_written` and `image_bytes_written` (kept images the store took, spooled ones once
    shipped). Images neither the store nor the spool takes go to `on_image_lost`.
    """

    def __init__(
        self,
        store: ObjectStore,
        spool: LogSpool | None,
        *,
        max_pending: int,
        retry_every_s: float,
        on_lost: Callable[[str, int], None],
        max_pending_bytes: int | None = None,
        on_image_lost: Callable[[str, int], None] | None = None,
    ) -> None:
        self.store = store
        self.spool = spool
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self.retry_every_s = retry_every_s
        self.on_lost = on_lost
        self.on_image_lost = on_image_lost
        self.written = 0
        self.write_errors = 0
        self.spooled = 0
        self.shipped = 0
        self.images_written = 0
        self.image_bytes_written = 0
        self.images_spooled = 0
        self.pending_image_bytes = 0  # bytes of images in _pending (guarded by _cond)
        self._seq = 0
        self._pending: collections.deque[Batch] = collections.deque()
        self._requests: collections.deque[Marker] = collections.deque()
        self._cond = threading.Condition()  # guards _seq, _pending, _requests, _abandoned
        self._abandoned = False  # close() spooled what was still pending: nothing uploads now
        self._thread = threading.Thread(target=self._run, name="prediction-log-upload", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def add(self, batches: list[Batch]) -> None:
        """Hand cut batches to the thread (straight to the spool once `abandon()` ran)."""
        with self._cond:
            late = self._abandoned
            for batch in batches if not late else ():
                self._seq += 1
                batch.seq = self._seq
                self._pending.append(batch)
                if batch.is_image:
                    self.pending_image_bytes += len(batch.body)
            self._cond.notify_all()
        if late:
            self.keep(batches, at_shutdown=True)

    def request(self, marker: Marker) -> None:
        """Answer `marker` once every batch added before it is written (or the store refused)."""
        with self._cond:
            marker.seq = self._seq
            self._requests.append(marker)
            self._cond.notify_all()

    @property
    def pending(self) -> int:
        """Records in batches that the store has not taken yet (in memory)."""
        with self._cond:
            return sum(b.records for b in self._pending)

    def oldest(self) -> datetime | None:
        """When the oldest record of the pending batches was made."""
        with self._cond:
            return min((b.oldest for b in self._pending), default=None)

    def abandon(self) -> None:
        """At close()'s deadline: spool what the store has not taken (the thread may be stuck in
        a slow write; the same keys make a late success harmless), and upload nothing more."""
        with self._cond:
            leftover = list(self._pending)
            self._pending.clear()
            self.pending_image_bytes = 0
            self._abandoned = True
        if leftover:
            log.warning("prediction log: the store did not take %d batches in time", len(leftover))
            self.keep(leftover, at_shutdown=True)

    def count_earlier_losses(self) -> None:
        """Losses that an earlier process could only note on its way out count here."""
        if self.spool is None:
            return
        for note in self.spool.take_losses():
            reason = note.reason if note.reason in LOSS_REASONS else SPOOL_FULL
            self.on_lost(reason, note.records)
            log.error(
                "prediction log: an earlier process lost %d records (%s) made %s .. %s",
                note.records, note.reason, note.oldest, note.newest,
            )  # fmt: skip

    # -- upload thread --------------------------------------------------------------------------

    def _run(self) -> None:
        failures = 0
        retry_at = 0.0  # monotonic time before which a failing store is left alone
        while True:
            request = self._next_request(retry_at)
            stopping = request is not None and request.stop
            ok = self._write_pending()
            if ok and not stopping:
                ok = self._ship_spool(everything=request is not None)
            if ok:
                failures, retry_at = 0, 0.0
            else:
                failures += 1
                retry_at = time.monotonic() + min(MAX_RETRY_WAIT_S, self.retry_every_s * failures)
                if not stopping:
                    self._overflow()
            if request is None:
                continue
            with self._cond:
                self._requests.popleft()
                leftover = [] if self._abandoned or not stopping else list(self._pending)
                if stopping:
                    self._pending.clear()
                    self.pending_image_bytes = 0
            if leftover:
                self.keep(leftover, at_shutdown=True)
            request.ok = ok
            request.done.set()
            if stopping:
                return

    def _next_request(self, retry_at: float) -> Marker | None:
        """Wait for something to do: a flush/close request (returned), or batches and spooled
        objects to write once the store may be tried again (None)."""
        with self._cond:
            while True:
                if self._requests:
                    return self._requests[0]
                work = bool(self._pending) or self._spool_waiting()
                now = time.monotonic()
                if work and now >= retry_at:
                    return None
                idle = RESCAN_EVERY_S if self.spool is not None else None  # look for others'
                self._cond.wait(retry_at - now if work else idle)

    def _write_pending(self) -> bool:
        """Write the waiting batches, oldest first; stop at the first refusal (False)."""
        while True:
            with self._cond:
                if not self._pending:
                    return True
                batch = self._pending[0]
            try:
                self.store.write_bytes(batch.key, batch.body)
            except Exception as error:
                self.write_errors += 1
                log.error("prediction log: writing %s failed: %s", self.store.uri(batch.key), error)
                return False
            with self._cond:
                if self._pending and self._pending[0] is batch:
                    self._pending.popleft()
                    self.written += batch.records
                    if batch.is_image:
                        self.pending_image_bytes -= len(batch.body)
                        self.images_written += 1
                        self.image_bytes_written += len(batch.body)

    def _spool_waiting(self) -> bool:
        spool = self.spool
        if spool is None:
            return False
        spool.refresh()
        return bool(spool.entries() or spool.unshipped_losses())

    def _ship_spool(self, *, everything: bool) -> bool:
        """Ship spooled objects and loss notes (a few per round unless `everything`); False when
        the store refuses."""
        spool = self.spool
        if spool is None:
            return True
        entries = spool.entries()
        for entry in entries if everything else entries[:8]:
            try:
                if spool.ship(entry):
                    self.shipped += entry.records
                    if entry.records == 0 and is_image_key(entry.key):
                        self.images_written += 1
                        self.image_bytes_written += entry.size
                    log.info("prediction log: shipped spooled %s (%d records)", entry.key,
                             entry.records)  # fmt: skip
            except Exception as error:
                self.write_errors += 1
                log.error("prediction log: shipping spooled %s failed: %s", entry.key, error)
                return False
        for path in spool.unshipped_losses():
            try:
                spool.ship_loss(path)
            except Exception as error:
                self.write_errors += 1
                log.error("prediction log: shipping loss note %s failed: %s", path.name, error)
                return False
        return True

    def _overflow(self) -> None:
        """Keep memory bounded while the store is down: the oldest batches beyond `max_pending`
        records (or `max_pending_bytes` of images) move to the spool (or are counted lost without
        one)."""
        moved = []
        image_bound = self.max_pending_bytes
        with self._cond:
            records = sum(b.records for b in self._pending)
            while self._pending and (
                records > self.max_pending
                or (image_bound is not None and self.pending_image_bytes > image_bound)
            ):
                batch = self._pending.popleft()
                records -= batch.records
                if batch.is_image:
                    self.pending_image_bytes -= len(batch.body)
                moved.append(batch)
        if moved:
            self.keep(moved, at_shutdown=False)

    def keep(self, batches: list[Batch], *, at_shutdown: bool) -> None:
        """Spool batches the store did not take; count (and note) what the spool refuses."""
        lost: list[Batch] = []
        kept: list[Batch] = []
        for batch in batches:
            spool = self.spool
            within = int(spool.max_bytes * IMAGE_SHARE) if spool and batch.is_image else None
            if spool is not None and spool.put(batch.key, batch.body, within=within):
                self.spooled += batch.records
                self.images_spooled += batch.is_image
                kept.append(batch)
            elif batch.is_image:
                self._lose_image(batch)
            else:
                lost.append(batch)
        if self.spool is not None and kept:
            log.warning(
                "prediction log: spooled %d records in %d objects to %s",
                sum(b.records for b in kept), len(kept), self.spool.dir,
            )  # fmt: skip
        if not lost:
            return
        count = sum(b.records for b in lost)
        self.on_lost(SPOOL_FULL, count)
        log.error(
            "prediction log: %d records lost: the store did not take them and the spool %s",
            count, "is full" if self.spool is not None else "is off",
        )  # fmt: skip
        if self.spool is not None:
            oldest = min(b.oldest for b in lost)
            newest = max(b.newest for b in lost)
            # At shutdown this process's metrics die with it: the next start counts the note.
            self.spool.note_loss(count, SPOOL_FULL, oldest, newest, reported=not at_shutdown)

    def _lose_image(self, batch: Batch) -> None:
        """An image neither the store nor the spool took: counted, and named in the log (its
        record still names the key; the image is missing from the store)."""
        log.error(
            "prediction log: image %s (%d bytes) lost: the store did not take it and the spool %s",
            batch.key, len(batch.body), "is full" if self.spool is not None else "is off",
        )  # fmt: skip
        if self.on_image_lost is not None:
            self.on_image_lost(SPOOL_FULL, 1)
