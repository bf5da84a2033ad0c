"""The prediction log's spool: objects the store could not take yet, kept on the pod's volume.

When the object store is down, the prediction log keeps what it could not write in memory for a
while; what outgrows that, and everything still unwritten when the process must stop, lands here
instead, and is shipped to the store as soon as it answers again (at the latest when the next
predictor starts on the same volume). Each spooled file is one object under the very key it would
have had in the store, chosen once when the batch was cut, so shipping twice (a crash between
upload and unlink, two replicas sharing one volume) writes the same object twice, never two.

    <spool>/<store id>/STORE                 the store these objects belong to (its URI)
    <spool>/<store id>/objects/<key>         one object, written atomically (tmp + fsync + rename)
    <spool>/<store id>/lost/<stamp>-<id>.json  records that neither the store nor the spool took
    <spool>/<store id>/lost/counted/...      the same, once counted in a process's metrics

A running writer looks at the volume again every minute, so what a pod stopped during a rolling
update spooled is shipped by the pod that replaced it. The spool is bounded (`max_bytes`, per
process: a volume shared by replicas needs room for each); what does not fit is not silently gone:
its count goes into a loss note. Kept request images spool here too, but only while the spool is
less than half full (`IMAGE_SHARE`): the records always have the other half. Losses at shutdown are
counted again by the next start (so `/metrics` shows them after the process that lost them is
gone), and every note is shipped to the store under `_lost/`, beside the log it is missing from.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import time
import uuid
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from visionops.storage import ObjectStore

log = logging.getLogger(__name__)

LOST_PREFIX = "_lost"
"""Where loss notes go in the store: beside the `dt=` partitions, never read as records."""
RESCAN_EVERY_S = 60.0
"""How often a running writer looks for what other processes spooled on a shared volume."""
IMAGE_SHARE = 0.5
"""The part of the spool kept request images may fill."""
STALE_TEMP_S = 600.0
"""An unfinished atomic write older than this belongs to a process that died: it is removed."""


@dataclass(frozen=True)
class SpoolEntry:
    """One spooled object: its key in the store, size, how many log records it holds (0 for an
    object that is not a JSON-lines file) and when its oldest record was made."""

    key: str
    size: int
    records: int
    oldest: datetime | None


@dataclass(frozen=True)
class LossNote:
    """Records that could not be kept anywhere, and why."""

    records: int
    reason: str
    oldest: str
    newest: str
    store: str


def spool_dir_for(root: Path, store: ObjectStore) -> Path:
    """The spool folder of one store under the spool root: objects never ship to another store."""
    return root / hashlib.sha256(store.uri().encode()).hexdigest()[:16]


def _oldest_timestamp(body: bytes) -> datetime | None:
    """The timestamp of the first record of a JSON-lines object (records are appended in order)."""
    first = body.split(b"\n", 1)[0]
    try:
        return datetime.fromisoformat(json.loads(first)["timestamp"]).astimezone(UTC)
    except (ValueError, KeyError, TypeError):
        return None


def _entry(key: str, body: bytes) -> SpoolEntry:
    if key.endswith(".jsonl"):
        return SpoolEntry(key, len(body), body.count(b"\n"), _oldest_timestamp(body))
    return SpoolEntry(key, len(body), 0, None)


class LogSpool:
    """A bounded folder of log objects for one store; thread-safe within a process."""

    def __init__(self, root: Path, store: ObjectStore, max_bytes: int) -> None:
        self.store = store
        self.dir = spool_dir_for(Path(root), store)
        self.objects = self.dir / "objects"
        self.lost = self.dir / "lost"
        self.reported = self.lost / "counted"
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._entries: dict[str, SpoolEntry] = {}
        self._scanned = 0.0
        self.usable = self._prepare()
        if self.usable:
            self._scan()

    def _prepare(self) -> bool:
        try:
            self.objects.mkdir(parents=True, exist_ok=True)
            self.reported.mkdir(parents=True, exist_ok=True)
            label = self.dir / "STORE"
            if not label.exists():
                label.write_text(self.store.uri() + "\n")
            return True
        except OSError as error:
            log.error("prediction log: spool %s unusable: %s", self.dir, error)
            return False

    def _scan(self) -> None:
        """Index what is on the volume: what an earlier process left, and (on a volume shared
        by replicas) what another one spooled since; forget what another one shipped."""
        found: dict[str, SpoolEntry] = {}
        stale = time.time() - STALE_TEMP_S
        for path in self.objects.rglob("*"):
            if not path.is_file():
                continue
            if path.name.startswith("."):  # an atomic write in progress, or one that died
                with suppress(OSError):
                    if path.stat().st_mtime < stale:
                        path.unlink()
                continue
            key = path.relative_to(self.objects).as_posix()
            with self._lock:
                known = self._entries.get(key)
            if known is not None:
                found[key] = known
                continue
            try:
                found[key] = _entry(key, path.read_bytes())
            except FileNotFoundError:
                continue  # shipped by another process meanwhile
            except OSError as error:
                log.error("prediction log: unreadable spool file %s: %s", path, error)
        with self._lock:
            self._entries = found
        self._scanned = time.monotonic()

    def refresh(self, every_s: float = RESCAN_EVERY_S) -> None:
        """Look at the volume again if the last look is older than `every_s`."""
        if self.usable and time.monotonic() - self._scanned >= every_s:
            try:
                self._scan()
            except OSError as error:
                log.error("prediction log: cannot list the spool %s: %s", self.objects, error)

    # -- state ----------------------------------------------------------------------------------

    def entries(self) -> list[SpoolEntry]:
        """Spooled objects, oldest key first (keys start with the hour partition and a stamp)."""
        with self._lock:
            return sorted(self._entries.values(), key=lambda e: e.key.rsplit("/", 1)[-1])

    @property
    def size(self) -> int:
        with self._lock:
            return sum(e.size for e in self._entries.values())

    @property
    def records(self) -> int:
        with self._lock:
            return sum(e.records for e in self._entries.values())

    def oldest(self) -> datetime | None:
        with self._lock:
            stamps = [e.oldest for e in self._entries.values() if e.oldest is not None]
        return min(stamps) if stamps else None

    # -- writing --------------------------------------------------------------------------------

    def put(self, key: str, body: bytes, *, within: int | None = None) -> bool:
        """Keep one object; False when it does not fit in `max_bytes` (or the smaller `within`:
        kept images may fill only part of the spool, so they never crowd out records) or the
        disk refuses it."""
        if not self.usable:
            return False
        with self._lock:
            held = sum(e.size for k, e in self._entries.items() if k != key)
            if held + len(body) > min(self.max_bytes, within or self.max_bytes):
                return False
            path = self.objects / key
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with tempfile.NamedTemporaryFile(
                    dir=path.parent, prefix=f".{path.name}.", delete=False
                ) as f:
                    f.write(body)
                    f.flush()
                    os.fsync(f.fileno())
                Path(f.name).replace(path)
            except OSError as error:
                log.error("prediction log: could not spool %s: %s", key, error)
                return False
            self._entries[key] = _entry(key, body)
            return True

    def ship(self, entry: SpoolEntry) -> bool:
        """Write one spooled object to the store and forget it; raises StorageError if the store
        refuses. False when the file is gone (another process sharing the volume shipped it)."""
        path = self.objects / entry.key
        try:
            body = path.read_bytes()
        except FileNotFoundError:
            with self._lock:
                self._entries.pop(entry.key, None)
            return False
        self.store.write_bytes(entry.key, body)
        path.unlink(missing_ok=True)
        with self._lock:
            self._entries.pop(entry.key, None)
        return True

    # -- losses ---------------------------------------------------------------------------------

    def note_loss(
        self, records: int, reason: str, oldest: datetime, newest: datetime, *, reported: bool
    ) -> bool:
        """Persist a count of lost records; False if even that failed. `reported`: this process
        already counts them in its metrics (the next start must not count them again)."""
        note = LossNote(records, reason, oldest.isoformat(), newest.isoformat(), self.store.uri())
        name = f"{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}-{uuid.uuid4().hex[:12]}.json"
        folder = self.reported if reported else self.lost
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f".{name}"
            tmp.write_text(json.dumps(note.__dict__))
            tmp.replace(folder / name)
            return True
        except OSError as error:
            log.error("prediction log: could not note %d lost records: %s", records, error)
            return False

    def take_losses(self) -> list[LossNote]:
        """Loss notes of earlier processes not counted yet; each is moved aside as counted."""
        notes = []
        for path in sorted(self.lost.glob("*.json")) if self.usable else []:
            try:
                notes.append(LossNote(**json.loads(path.read_text())))
                self.reported.mkdir(parents=True, exist_ok=True)
                path.replace(self.reported / path.name)
            except (OSError, ValueError, TypeError) as error:
                log.error("prediction log: unreadable loss note %s: %s", path, error)
        return notes

    def unshipped_losses(self) -> list[Path]:
        """Counted loss notes still to be copied to the store."""
        return sorted(self.reported.glob("*.json")) if self.usable else []

    def ship_loss(self, path: Path) -> None:
        """Copy a loss note to the store's `_lost/` and remove it; raises StorageError."""
        try:
            body = path.read_bytes()
        except FileNotFoundError:
            return
        self.store.write_bytes(f"{LOST_PREFIX}/{path.name}", body)
        path.unlink(missing_ok=True)
