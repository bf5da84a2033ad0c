"""The prediction log: non-blocking submit, partitioned JSON lines, window reads, local and S3,
and what happens to records while the store is down (memory, then the spool, then a count)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from visionops.data.features import FEATURE_COLUMNS, feature_row
from visionops.detections import Detections
from visionops.errors import StorageError
from visionops.monitoring.activity import Activity
from visionops.monitoring.collect import read_window
from visionops.monitoring.log_layout import SPOOL_FULL
from visionops.monitoring.log_spool import LOST_PREFIX, LogSpool
from visionops.monitoring.prediction_log import PredictionLogWriter
from visionops.storage import LocalStore, ObjectStore, default_store

NAMES = ("Cable/break", "Cable/thunderbolt", "Screw/defect")
T0 = datetime(2026, 3, 1, 9, 58, tzinfo=UTC)


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)


def _detections(n: int) -> Detections:
    boxes = np.array([[2, 3, 20, 30]] * n, np.float32).reshape(n, 4)
    return Detections(boxes, np.linspace(0.9, 0.3, n, dtype=np.float32), np.arange(n) % 3)


def _log_some(store: ObjectStore, count: int = 5) -> PredictionLogWriter:
    writer = PredictionLogWriter(store, names=NAMES, model_name="m", model_version="7")
    for i in range(count):
        stamp = T0 + timedelta(minutes=i)  # crosses the 10:00 partition boundary
        assert writer.submit(_image(i), _detections(i), request_id=f"r{i}", timestamp=stamp)
    writer.close()
    return writer


def _check_round_trip(store: ObjectStore) -> None:
    writer = _log_some(store)
    assert (writer.written, writer.dropped, writer.write_errors) == (5, 0, 0)
    keys = store.list_keys()
    assert {k.rsplit("/", 1)[0] for k in keys} == {"dt=2026-03-01/hour=09", "dt=2026-03-01/hour=10"}
    assert all(k.endswith(".jsonl") for k in keys)

    frame = read_window(store, T0, T0 + timedelta(hours=1))
    assert list(frame["request_id"]) == [f"r{i}" for i in range(5)]
    assert set(FEATURE_COLUMNS) <= set(frame.columns)
    assert set(frame["model_version"]) == {"7"}
    expected = feature_row(_image(3), _detections(3), len(NAMES))
    assert frame.loc[3, list(FEATURE_COLUMNS)].to_dict() == pytest.approx(expected)
    assert "detections" not in frame.columns

    later = read_window(store, T0 + timedelta(minutes=2), T0 + timedelta(minutes=4))
    assert list(later["request_id"]) == ["r2", "r3"]
    full = read_window(store, T0, T0 + timedelta(hours=1), with_detections=True)
    assert full.loc[2, "detections"][1]["class_name"] == "Cable/thunderbolt"


def test_log_round_trip_on_local_disk(tmp_path: Path):
    _check_round_trip(LocalStore(tmp_path / "log"))


def test_log_round_trip_on_s3(s3_settings):
    store = default_store(s3_settings.log_prefix, s3_settings)
    assert store.uri().startswith("s3://")
    _check_round_trip(store)


def test_empty_window_reads_as_empty_frame(tmp_path: Path):
    frame = read_window(LocalStore(tmp_path), T0, T0 + timedelta(hours=2))
    assert frame.empty
    assert "timestamp" in frame.columns


class _GatedStore(LocalStore):
    """A real local store whose writes wait for a gate, fail a given number of times, or fail
    while `down` is set (an outage)."""

    def __init__(self, root: Path, *, failures: int = 0) -> None:
        super().__init__(root)
        self.gate = threading.Event()
        self.gate.set()
        self.failures = failures
        self.down = False
        self.writes = 0

    def write_bytes(self, key: str, data: bytes) -> None:
        self.gate.wait(30)
        if self.down:
            raise StorageError("S3 endpoint http://127.0.0.1:1 unreachable (injected)")
        if self.failures:
            self.failures -= 1
            raise StorageError("disk full (injected)")
        super().write_bytes(key, data)
        self.writes += 1


_features_gate = threading.Event()


@dataclass(frozen=True)
class _SlowDetections(Detections):
    """Detections whose log records wait for `_features_gate`: holds the features thread."""

    def to_records(self, names: Sequence[str]) -> list[dict[str, object]]:
        _features_gate.wait(30)
        return super().to_records(names)


def test_full_queue_drops_and_counts_instead_of_blocking(tmp_path: Path):
    store = LocalStore(tmp_path)
    _features_gate.clear()  # the features thread blocks on the first record
    drops: list[int] = []
    writer = PredictionLogWriter(store, max_queue=3, batch_size=1, on_drop=lambda: drops.append(1))
    slow = _SlowDetections(*(lambda d: (d.boxes, d.scores, d.class_ids))(_detections(1)))
    accepted = [writer.submit(_image(i), slow) for i in range(20)]
    assert accepted.count(False) >= 20 - 3 - 1  # queue of 3, one being featurised
    assert writer.dropped == writer.lost["queue_full"] == accepted.count(False) == len(drops)
    _features_gate.set()
    writer.close()
    assert writer.written == accepted.count(True)
    assert len(read_window(store, datetime.now(UTC) - timedelta(hours=1), datetime.now(UTC))) == (
        accepted.count(True)
    )


def test_queue_memory_bound_drops_large_images(tmp_path: Path):
    writer = PredictionLogWriter(LocalStore(tmp_path), max_queue_bytes=10_000)
    assert not writer.submit(np.zeros((100, 100, 3), np.uint8), None)  # 30 kB > 10 kB
    assert writer.dropped == 1
    writer.close()


def test_features_wait_for_a_pause_in_inference(tmp_path: Path):
    activity = Activity()
    writer = PredictionLogWriter(LocalStore(tmp_path), activity=activity, flush_every_s=60)
    with activity.busy():  # an inference is running: the writer holds its records back
        assert writer.submit(_image(0), None) and writer.submit(_image(1), None)
        assert not writer.flush(timeout=0.5)
        assert writer.written == 0
    assert writer.flush(timeout=10)  # the pause came: both are written
    assert writer.written == 2
    writer.close()


def test_busy_inference_delays_features_at_most_until_the_flush(tmp_path: Path):
    activity = Activity()
    writer = PredictionLogWriter(LocalStore(tmp_path), activity=activity, flush_every_s=0.3)
    with activity.busy():  # never a pause: the records still go out by the flush deadline
        assert writer.submit(_image(0), None)
        _wait_for(lambda: writer.written == 1, "the record written while inference stays busy")
    writer.close()


def _wait_for(condition, what: str, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    """Wait for `condition` (bounded): a slow machine takes longer, never fails sooner."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout:.0f}s: {what}"
        time.sleep(0.02)


def test_write_failure_is_counted_and_retried(tmp_path: Path):
    store = _GatedStore(tmp_path, failures=1)
    writer = PredictionLogWriter(store, batch_size=10)
    for i in range(2):
        writer.submit(_image(i), _detections(1), timestamp=T0)
    assert not writer.flush()  # the first write failed, the records are kept
    assert writer.write_errors == 1
    assert writer.flush()
    writer.close()
    assert writer.written == 2
    assert len(read_window(store, T0, T0 + timedelta(seconds=1))) == 2


def test_bad_submissions_never_raise(tmp_path: Path):
    writer = PredictionLogWriter(LocalStore(tmp_path))
    assert writer.submit(None, None)  # type: ignore[arg-type]
    assert writer.submit(np.zeros((0, 5), np.uint8), None)
    assert writer.submit(_image(0), None, timestamp=T0, camera="line-3")
    writer.close()
    assert (writer.feature_errors, writer.written) == (2, 1)
    assert not writer.submit(_image(0), None)  # closed: dropped, not raised
    frame = read_window(LocalStore(tmp_path), T0, T0 + timedelta(seconds=1))
    assert frame.loc[0, "camera"] == "line-3"


class _Unsized:
    """An image whose size cannot be read: the kinds of failure a bad argument brings."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    @property
    def nbytes(self) -> int:
        raise self.error


@pytest.mark.parametrize(
    "bad",
    [
        {"image_bgr": _Unsized(RuntimeError("buffer released"))},
        {"image_bgr": _Unsized(MemoryError())},
        {"image_bgr": type("Sized", (), {"nbytes": "many"})()},  # int("many"): ValueError
        {"image_bgr": type("Sized", (), {"nbytes": None})()},  # int(None): TypeError
        {"image_bgr": np.zeros((4, 4, 3), np.uint8), "timestamp": np.array([1, 2])},
    ],
    ids=["runtime-error", "memory-error", "value-error", "type-error", "ambiguous-timestamp"],
)
def test_submit_drops_and_counts_what_it_cannot_queue_and_never_raises(tmp_path: Path, bad: dict):
    """README: the log never fails a request. `submit` returns False for a record it cannot
    queue, whatever the error, counts it as dropped, and the writer goes on logging."""
    drops: list[int] = []
    writer = PredictionLogWriter(LocalStore(tmp_path), on_drop=lambda: drops.append(1))
    assert writer.submit(detections=None, **bad) is False
    assert (writer.dropped, writer.lost["queue_full"], len(drops)) == (1, 1, 1)
    assert writer.submit(_image(0), None, timestamp=T0)
    assert writer.flush(timeout=30)
    writer.close()
    assert (writer.written, writer.dropped) == (1, 1)
    assert len(read_window(LocalStore(tmp_path), T0, T0 + timedelta(seconds=1))) == 1


def test_a_failed_queue_is_logged_with_its_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    writer = PredictionLogWriter(LocalStore(tmp_path))
    with caplog.at_level(logging.ERROR, logger="visionops.monitoring.prediction_log"):
        assert not writer.submit(_Unsized(RuntimeError("buffer released")), None)
    (record,) = caplog.records
    assert record.getMessage() == "prediction log: could not queue a record"
    assert record.exc_info is not None and "buffer released" in caplog.text
    writer.close()


def test_a_failing_drop_callback_is_logged_and_the_drop_still_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    def broken() -> None:
        raise ValueError("metrics backend gone")

    writer = PredictionLogWriter(LocalStore(tmp_path), max_queue_bytes=10, on_drop=broken)
    with caplog.at_level(logging.ERROR, logger="visionops.monitoring.prediction_log"):
        assert writer.submit(np.zeros((4, 4, 3), np.uint8), None) is False  # 48 bytes > 10
    assert writer.dropped == 1
    (record,) = caplog.records
    assert record.getMessage() == "prediction log: on_drop callback failed"
    assert "metrics backend gone" in caplog.text
    writer.close()


def test_the_memory_bound_counts_the_queued_image_bytes(tmp_path: Path):
    """`max_queue_bytes` bounds the image memory waiting in the queue: up to it is accepted,
    past it dropped; an object without `nbytes` takes no room. The writer takes one record off
    the queue, then waits for inference (busy here) to pause: once it holds that first record,
    nothing else leaves the queue meanwhile."""
    activity = Activity()
    writer = PredictionLogWriter(
        LocalStore(tmp_path), max_queue_bytes=100, activity=activity, flush_every_s=60
    )
    with activity.busy():
        assert writer.submit(None, None)  # type: ignore[arg-type]
        _wait_for(lambda: writer.queued == 0, "the writer holding the first record")
        assert writer.submit(np.zeros(60, np.uint8), None)
        assert writer.submit(np.zeros(40, np.uint8), None)  # exactly at the bound
        assert writer.submit(None, None)  # type: ignore[arg-type]
        assert not writer.submit(np.zeros(1, np.uint8), None)  # one byte over
        assert (writer.dropped, writer.lost["queue_full"], writer.queued) == (1, 1, 3)
    writer.close()


def test_records_without_a_timestamp_get_the_current_utc_time(tmp_path: Path):
    writer = PredictionLogWriter(LocalStore(tmp_path))
    before = datetime.now(UTC)
    assert writer.submit(_image(0), None)
    writer.close()
    (key,) = LocalStore(tmp_path).list_keys()
    stamp = datetime.fromisoformat(json.loads(LocalStore(tmp_path).read_bytes(key))["timestamp"])
    assert stamp.utcoffset() == timedelta(0) and before <= stamp <= datetime.now(UTC)


def test_unreadable_lines_are_skipped(tmp_path: Path):
    store = LocalStore(tmp_path)
    _log_some(store, count=2)
    store.write_bytes("dt=2026-03-01/hour=09/broken.jsonl", b'{"timestamp": "2026-03-01T09:59\n')
    assert len(read_window(store, T0, T0 + timedelta(hours=1))) == 2


# -- the store down: memory, then the spool, then a count; shipped when the store is back ------


def _stored_records(store: LocalStore) -> list[str]:
    """Request ids of every record in the store (each object read once)."""
    frame = read_window(store, T0 - timedelta(days=1), datetime.now(UTC) + timedelta(hours=1))
    return list(frame["request_id"]) if len(frame) else []


def _submit(writer: PredictionLogWriter, count: int, start: int = 0) -> None:
    for i in range(start, start + count):
        stamp = T0 + timedelta(seconds=i)
        assert writer.submit(_image(i), _detections(1), request_id=f"r{i}", timestamp=stamp)


def test_an_outage_moves_records_from_memory_to_the_spool_and_ships_them_after(tmp_path: Path):
    store = _GatedStore(tmp_path / "store")
    store.down = True
    spool = LogSpool(tmp_path / "spool", store, max_bytes=10 << 20)
    writer = PredictionLogWriter(store, batch_size=2, max_pending=4, spool=spool)
    _submit(writer, 10)
    assert not writer.flush(timeout=10)  # refused: the oldest beyond 4 records are spooled
    assert writer.write_errors >= 1 and writer.written == 0
    assert (writer.pending, spool.records, writer.dropped) == (4, 6, 0)
    assert writer.oldest_unwritten() == T0
    store.down = False
    assert writer.flush(timeout=10)  # the store is back: memory first, then the spool
    assert sorted(_stored_records(store)) == sorted(f"r{i}" for i in range(10))
    assert (writer.written, writer.shipped, spool.records, writer.oldest_unwritten()) == (
        4, 6, 0, None,
    )  # fmt: skip
    writer.close()


def test_closing_while_the_store_is_down_spools_and_the_next_start_ships(tmp_path: Path):
    """A rolling update during an S3 outage: nothing is lost, nothing is written twice."""
    store = _GatedStore(tmp_path / "store")
    store.down = True
    writer = PredictionLogWriter(store, spool=LogSpool(tmp_path / "spool", store, 10 << 20))
    _submit(writer, 100)
    started = time.monotonic()
    writer.close(timeout=10)
    assert time.monotonic() - started < 10
    assert (writer.written, writer.spooled, writer.dropped) == (0, 100, 0)

    store.down = False
    spool = LogSpool(tmp_path / "spool", store, 10 << 20)  # the next process, same volume
    assert spool.records == 100
    restarted = PredictionLogWriter(store, spool=spool)
    assert restarted.flush(timeout=10)
    restarted.close()
    assert sorted(_stored_records(store)) == sorted(f"r{i}" for i in range(100))
    assert (restarted.shipped, spool.records, restarted.dropped) == (100, 0, 0)


def test_a_stuck_store_cannot_hold_up_shutdown_and_a_late_write_duplicates_nothing(
    tmp_path: Path,
):
    store = _GatedStore(tmp_path / "store")
    spool = LogSpool(tmp_path / "spool", store, 10 << 20)
    writer = PredictionLogWriter(store, batch_size=5, spool=spool)
    store.gate.clear()  # every write hangs, as behind a network that drops packets
    _submit(writer, 20)
    started = time.monotonic()
    writer.close(timeout=3)
    assert time.monotonic() - started < 4
    assert (writer.spooled, writer.dropped) == (20, 0)
    store.gate.set()  # the hung write goes through after all, under the same key
    time.sleep(0.5)
    restarted = PredictionLogWriter(store, spool=LogSpool(tmp_path / "spool", store, 10 << 20))
    assert restarted.flush(timeout=10)
    restarted.close()
    assert sorted(_stored_records(store)) == sorted(f"r{i}" for i in range(20))


def test_what_the_spool_cannot_take_is_counted_and_reported_by_the_next_start(tmp_path: Path):
    store = _GatedStore(tmp_path / "store")
    store.down = True
    writer = PredictionLogWriter(store, spool=LogSpool(tmp_path / "spool", store, max_bytes=100))
    _submit(writer, 7)
    writer.close(timeout=5)
    assert (writer.written, writer.spooled, writer.lost[SPOOL_FULL]) == (0, 0, 7)

    store.down = False
    restarted = PredictionLogWriter(store, spool=LogSpool(tmp_path / "spool", store, 100))
    assert restarted.lost[SPOOL_FULL] == 7  # /metrics of the new process shows the old loss
    assert restarted.flush(timeout=10)
    restarted.close()
    (note,) = store.list_keys(LOST_PREFIX)
    assert json.loads(store.read_bytes(note))["records"] == 7
    again = PredictionLogWriter(store, spool=LogSpool(tmp_path / "spool", store, 100))
    assert again.dropped == 0  # counted once, not at every start
    again.close()


def test_records_still_queued_at_the_deadline_are_counted_and_reported_by_the_next_start(
    tmp_path: Path,
):
    """The features thread is held past close()'s deadline: what it had not started is counted
    lost (shutdown_timeout) and noted; what it finishes is spooled; nothing disappears."""
    store = LocalStore(tmp_path / "store")
    writer = PredictionLogWriter(store, spool=LogSpool(tmp_path / "spool", store, 10 << 20))
    slow = _SlowDetections(*(lambda d: (d.boxes, d.scores, d.class_ids))(_detections(1)))
    _features_gate.clear()
    for i in range(5):
        assert writer.submit(_image(i), slow, timestamp=T0 + timedelta(seconds=i))
    threading.Timer(4.3, _features_gate.set).start()  # after the deadline, within the reserve
    writer.close(timeout=4)
    late = writer.lost["shutdown_timeout"]
    assert (late, writer.spooled + late, writer.written) == (4, 5, 0)

    restarted = PredictionLogWriter(store, spool=LogSpool(tmp_path / "spool", store, 10 << 20))
    assert restarted.lost["shutdown_timeout"] == 4
    assert restarted.flush(timeout=10)
    restarted.close()
    assert len(_stored_records(store)) == 1
