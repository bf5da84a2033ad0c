"""The prediction log: non-blocking submit, partitioned JSON lines, window reads, local and S3."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from visionops.data.features import FEATURE_COLUMNS, feature_row
from visionops.detections import Detections
from visionops.errors import StorageError
from visionops.monitoring.collect import read_window
from visionops.monitoring.prediction_log import Activity, PredictionLogWriter
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
    """A real local store whose writes wait for a gate, or fail a given number of times."""

    def __init__(self, root: Path, *, failures: int = 0) -> None:
        super().__init__(root)
        self.gate = threading.Event()
        self.gate.set()
        self.failures = failures

    def write_bytes(self, key: str, data: bytes) -> None:
        self.gate.wait(30)
        if self.failures:
            self.failures -= 1
            raise StorageError("disk full (injected)")
        super().write_bytes(key, data)


def test_full_queue_drops_and_counts_instead_of_blocking(tmp_path: Path):
    store = _GatedStore(tmp_path)
    store.gate.clear()  # the writer thread blocks on its first write
    drops: list[int] = []
    writer = PredictionLogWriter(store, max_queue=3, batch_size=1, on_drop=lambda: drops.append(1))
    accepted = [writer.submit(_image(i), None) for i in range(20)]
    assert accepted.count(False) >= 20 - 3 - 2  # queue of 3, one in flight, one buffered
    assert writer.dropped == accepted.count(False) == len(drops)
    store.gate.set()
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
    assert (writer.dropped, len(drops)) == (1, 1)
    assert writer.submit(_image(0), None, timestamp=T0)
    assert writer.flush(timeout=30)
    writer.close()
    assert (writer.written, writer.dropped) == (1, 1)
    assert len(read_window(LocalStore(tmp_path), T0, T0 + timedelta(seconds=1))) == 1


def test_unreadable_lines_are_skipped(tmp_path: Path):
    store = LocalStore(tmp_path)
    _log_some(store, count=2)
    store.write_bytes("dt=2026-03-01/hour=09/broken.jsonl", b'{"timestamp": "2026-03-01T09:59\n')
    assert len(read_window(store, T0, T0 + timedelta(hours=1))) == 2
