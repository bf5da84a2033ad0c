"""Collecting and compacting the prediction log: the CLI on logs the real writer wrote (local and
S3), with the faults a production log has: broken lines, a newer schema, half-written parts, an
S3 read that fails, a writer still adding files, and compactions that crashed or overlapped."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from visionops.cli.app import app
from visionops.data.features import FEATURE_COLUMNS
from visionops.detections import Detections
from visionops.errors import StorageError
from visionops.monitoring.collect import collect_to_parquet
from visionops.monitoring.compact import compact_log
from visionops.monitoring.log_layout import COLLECTED_COLUMNS
from visionops.monitoring.prediction_log import PredictionLogWriter
from visionops.storage import LocalStore, ObjectStore, S3Store, default_store

runner = CliRunner()
T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
DAY_END = T0 + timedelta(hours=3)
NAMES = ("Cable/break", "Screw/defect")


def _write(store: ObjectStore, count: int, start: datetime, spacing_s: float, seed: int = 0):
    """`count` predictions from the real writer, `spacing_s` apart, 20 records per file."""
    rng = np.random.default_rng(seed)
    writer = PredictionLogWriter(store, names=NAMES, model_name="m", model_version="1",
                                 batch_size=20, max_queue=4096)  # fmt: skip
    for i in range(count):
        image = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
        n = i % 3
        detections = Detections(np.array([[1, 2, 10, 12]] * n, np.float32).reshape(n, 4),
                                np.full(n, 0.5, np.float32), np.arange(n) % 2)  # fmt: skip
        stamp = start + timedelta(seconds=i * spacing_s)
        assert writer.submit(image, detections, request_id=f"r{seed}-{i}", timestamp=stamp)
    writer.close()
    assert writer.written == count


def _collect(location: str | Path, out: Path, *extra: str) -> tuple[int, dict, str]:
    result = runner.invoke(
        app,
        ["drift", "collect", "--log", str(location), "--start", T0.isoformat(),
         "--end", DAY_END.isoformat(), "--out", str(out), *extra],
    )  # fmt: skip
    try:
        payload = json.loads(result.stdout)
    except json.JSONDecodeError:
        payload = {}
    return result.exit_code, payload, result.output


def _rows(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path).sort_values(["timestamp", "request_id"]).reset_index(drop=True)


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    """Three hours of a log: 180 records, one a minute."""
    _write(LocalStore(tmp_path / "log"), 180, T0, 60.0)
    return tmp_path / "log"


def test_collect_streams_the_window_to_parquet(log_dir: Path, tmp_path: Path):
    code, payload, output = _collect(log_dir, tmp_path / "w.parquet")
    assert code == 0, output
    assert payload["rows"] == 180 and payload["raw_files"] == 9 and payload["bad_lines"] == 0
    assert payload["other_columns"] == {}  # the writer's own records hold only known keys
    table = pq.read_table(tmp_path / "w.parquet")
    assert table.schema.names == list(COLLECTED_COLUMNS)  # no detections, typed columns
    assert str(table.schema.field("timestamp").type) == "timestamp[us, tz=UTC]"
    frame = _rows(tmp_path / "w.parquet")
    assert frame["det_count"].tolist()[:3] == [0.0, 1.0, 2.0]
    assert set(frame["model_version"]) == {"1"}

    half = runner.invoke(app, ["drift", "collect", "--log", str(log_dir), "--out",
                               str(tmp_path / "h.parquet"), "--start", T0.isoformat(),
                               "--end", (T0 + timedelta(minutes=30)).isoformat()])  # fmt: skip
    assert half.exit_code == 0 and json.loads(half.stdout)["rows"] == 30

    code, payload, _ = _collect(tmp_path / "nothing-here", tmp_path / "e.parquet")
    assert (code, payload["rows"]) == (0, 0)
    assert pq.read_table(tmp_path / "e.parquet").schema.names == list(COLLECTED_COLUMNS)

    bad = runner.invoke(app, ["drift", "collect", "--log", str(log_dir), "--out",
                              str(tmp_path / "w.csv")])  # fmt: skip
    assert bad.exit_code == 2 and ".parquet" in bad.output
    bad = runner.invoke(app, ["drift", "collect", "--log", str(log_dir), "--out",
                              str(tmp_path / "w.parquet"), "--start", "yesterday"])  # fmt: skip
    assert bad.exit_code == 2 and "not an ISO-8601 time" in bad.output


def test_broken_lines_files_and_a_newer_schema_are_counted_and_named(log_dir: Path, tmp_path: Path):
    hour = log_dir / "dt=2026-03-01" / "hour=09"
    good = sorted(hour.glob("*.jsonl"))[0]
    lines = good.read_text().splitlines()
    newer = json.loads(lines[0]) | {"hue_mean": 3.5, "request_id": "newer"}
    (hour / "broken.jsonl").write_text(
        lines[1] + "\n" + "{not json\n" + '{"brightness_mean": 1.0}\n'  # no timestamp
        + '{"timestamp": "2026-03-01T09:30:00+00:00", "brightness_mean": "loud"}\n'
        + lines[2][: len(lines[2]) // 2]  # truncated: the writer died mid-line
    )  # fmt: skip
    (hour / "newer.jsonl").write_text(json.dumps(newer) + "\n")
    (hour / "junk.jsonl").write_bytes(b"\x00\xff\xfe\x00")
    (hour / "empty.jsonl").write_bytes(b"")

    code, payload, output = _collect(log_dir, tmp_path / "w.parquet")
    assert code == 0, output
    assert payload["bad_lines"] == 4  # not JSON, no timestamp, truncated, junk
    named = payload["bad_lines_by_file"]
    assert named == {"dt=2026-03-01/hour=09/broken.jsonl": 3,
                     "dt=2026-03-01/hour=09/junk.jsonl": 1}  # fmt: skip
    assert payload["other_columns"] == {"hue_mean": 1}
    assert "4 unreadable lines skipped" in output and "hue_mean (1 files)" in output
    frame = _rows(tmp_path / "w.parquet")
    assert len(frame) == 180 + 2 + 1  # a duplicate of a good line, the "loud" one, the newer one
    loud = frame.loc[frame["brightness_mean"].isna() & frame["request_id"].isna()]
    assert len(loud) == 1  # a value of the wrong type is missing, not a crash
    assert frame.loc[frame["request_id"] == "newer", "brightness_mean"].notna().all()


def test_compaction_is_lossless_idempotent_and_read_with_json_lines(log_dir: Path, tmp_path: Path):
    store = LocalStore(log_dir)
    before = collect_to_parquet(store, T0, DAY_END, tmp_path / "before.parquet")
    later = datetime(2026, 3, 1, 10, 30, tzinfo=UTC)  # hour 10 is still being written
    result = runner.invoke(app, ["drift", "compact", "--log", str(log_dir), "--start",
                                 T0.isoformat(), "--end", DAY_END.isoformat()])  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["parts_written"], summary["files_compacted"], summary["rows"]) == (3, 9, 180)
    assert not list(log_dir.rglob("*.jsonl"))
    parts = sorted(log_dir.rglob("compacted-*.parquet"))
    table = pq.read_table(parts[0])
    assert {"detections", "_source", *FEATURE_COLUMNS} <= set(table.schema.names)
    rows = {r["request_id"]: r for r in table.to_pylist()}
    assert rows["r0-2"]["detections"][1]["class_name"] == "Screw/defect"  # nothing is lost

    after = collect_to_parquet(store, T0, DAY_END, tmp_path / "after.parquet")
    assert (after.rows, after.parts, after.raw_files) == (180, 3, 0)
    pd.testing.assert_frame_equal(_rows(tmp_path / "before.parquet"),
                                  _rows(tmp_path / "after.parquet"))  # fmt: skip
    assert before.rows == 180

    again = compact_log(store, T0, DAY_END, settle_s=0)
    assert again.to_dict()["parts_written"] == 0 and again.to_dict()["files_deleted"] == 0
    assert sorted(log_dir.rglob("compacted-*.parquet")) == parts

    # A writer still adding to hour 10 (and a spooled record for hour 8): new files stay JSON
    # lines, are read beside the parts, and a later run compacts them into a second part.
    _write(store, 5, later, 1.0, seed=1)
    _write(store, 1, T0 + timedelta(minutes=5), 1.0, seed=2)
    open_hour = compact_log(store, T0, DAY_END, settle_s=600, now=later + timedelta(minutes=1))
    assert open_hour.to_dict()["hours_open"] == ["dt=2026-03-01/hour=10"]
    mixed = collect_to_parquet(store, T0, DAY_END, tmp_path / "mixed.parquet")
    assert (mixed.rows, mixed.parts, mixed.raw_files) == (186, 4, 1)
    compact_log(store, T0, DAY_END, settle_s=0)
    assert collect_to_parquet(store, T0, DAY_END, tmp_path / "m.parquet").rows == 186
    assert not list(log_dir.rglob("*.jsonl"))


def test_a_crashed_or_overlapping_compaction_never_duplicates_rows(log_dir: Path, tmp_path: Path):
    store = LocalStore(log_dir)
    hour = log_dir / "dt=2026-03-01" / "hour=08"
    saved = tmp_path / "saved"
    shutil.copytree(hour, saved)
    compact_log(store, T0, DAY_END, settle_s=0)
    for path in saved.glob("*.jsonl"):  # as if the run died after its put, before its deletes
        shutil.copy(path, hour / path.name)
    summary = collect_to_parquet(store, T0, DAY_END, tmp_path / "w.parquet")
    assert (summary.rows, summary.covered_files, summary.raw_files) == (180, 3, 0)

    # A second compaction that listed only two of the three files wrote another part.
    from visionops.monitoring.compact import compact_hour
    from visionops.monitoring.log_files import connect_duckdb

    part = next(hour.glob("compacted-*.parquet"))
    hidden = tmp_path / part.name
    part.rename(hidden)
    first_two = sorted(f"dt=2026-03-01/hour=08/{p.name}" for p in hour.glob("*.jsonl"))[:2]
    third = sorted(hour.glob("*.jsonl"))[2]
    third.rename(tmp_path / third.name)
    con = connect_duckdb()
    compact_hour(store, "dt=2026-03-01/hour=08", first_two, con)
    con.close()
    hidden.rename(part)  # both parts now cover the first two files
    summary = collect_to_parquet(store, T0, DAY_END, tmp_path / "w.parquet")
    assert summary.rows == 180 and summary.duplicate_rows == 40
    assert _rows(tmp_path / "w.parquet")["request_id"].is_unique


def test_a_half_written_part_is_named_and_repaired(log_dir: Path, tmp_path: Path):
    store = LocalStore(log_dir)
    hour = log_dir / "dt=2026-03-01" / "hour=09"
    saved = {p.name: p.read_bytes() for p in hour.glob("*.jsonl")}
    compact_log(store, T0, DAY_END, settle_s=0)
    part = next(hour.glob("compacted-*.parquet"))
    part.write_bytes(part.read_bytes()[:500])  # a copy that stopped half way
    for name, data in saved.items():  # its files are still there (never deleted before)
        (hour / name).write_bytes(data)
    summary = collect_to_parquet(store, T0, DAY_END, tmp_path / "w.parquet")
    assert summary.rows == 180  # read from the JSON lines instead
    assert list(summary.unreadable) == [f"dt=2026-03-01/hour=09/{part.name}"]
    assert "unreadable Parquet part" in summary.problems()[0]
    compact_log(store, T0, DAY_END, settle_s=0)  # the same files: the same part, rewritten
    assert collect_to_parquet(store, T0, DAY_END, tmp_path / "w.parquet").unreadable == {}


def test_a_file_that_does_not_parse_stays_json_lines(log_dir: Path):
    store = LocalStore(log_dir)
    hour = log_dir / "dt=2026-03-01" / "hour=08"
    line = next(hour.glob("*.jsonl")).read_text().splitlines()[0]
    (hour / "bad.jsonl").write_text(line + "\n{oops\n")
    summary = compact_log(store, T0, DAY_END, settle_s=0)
    assert summary.to_dict()["files_left"].keys() == {"dt=2026-03-01/hour=08/bad.jsonl"}
    assert (hour / "bad.jsonl").is_file() and summary.rows == 180
    assert "files left as JSON lines" in summary.problems()[0]


class _FlakyS3(S3Store):
    """The real S3 store whose reads of one object fail, as S3Store reports a failed read."""

    def __init__(self, store: S3Store, failing: str) -> None:
        super().__init__(store.client, store.bucket, store.prefix, store.endpoint)
        self.failing = failing

    def download_file(self, key: str, path: Path) -> None:
        if self.failing in key:
            raise StorageError(f"S3 endpoint {self.endpoint} unreachable while trying to read")
        super().download_file(key, path)


def test_collect_and_compact_on_s3_with_a_failing_read(s3_settings, tmp_path: Path):
    store = default_store(s3_settings.log_prefix, s3_settings)
    assert isinstance(store, S3Store)
    _write(store, 180, T0, 60.0)
    code, payload, output = _collect(store.uri(), tmp_path / "w.parquet")
    assert code == 0, output
    assert payload["rows"] == 180 and payload["raw_files"] == 9

    victim = store.list_keys("dt=2026-03-01/hour=09")[0]
    flaky = _FlakyS3(store, victim)
    summary = collect_to_parquet(flaky, T0, DAY_END, tmp_path / "f.parquet")
    assert summary.rows == 160 and list(summary.unreadable) == [victim]  # named, not silent
    down = _FlakyS3(store, "hour=09")  # every read of the window fails: an error, not 0 rows
    with pytest.raises(StorageError, match="none of the 3 files"):
        collect_to_parquet(down, T0 + timedelta(hours=1), T0 + timedelta(minutes=61),
                           tmp_path / "g.parquet")  # fmt: skip
    assert not (tmp_path / "g.parquet").exists()

    compacted = compact_log(store, T0, DAY_END, settle_s=0)
    assert compacted.rows == 180 and not [k for k in store.list_keys() if k.endswith(".jsonl")]
    code, payload, output = _collect(store.uri(), tmp_path / "c.parquet")
    assert (code, payload["rows"], payload["compacted_parts"]) == (0, 180, 3), output
    pd.testing.assert_frame_equal(_rows(tmp_path / "w.parquet"), _rows(tmp_path / "c.parquet"))


def test_the_writer_thread_stops_at_the_first_failure_on_either_side(tmp_path: Path):
    """Collect writes in a thread of its own while it reads: a batch the writer refuses, or a
    read that fails, is raised to the caller (who deletes the temporary file), the reading stops
    there, and no writer thread is left behind."""
    import threading

    import pyarrow as pa

    from visionops.monitoring.collect import write_behind
    from visionops.monitoring.log_files import output_schema

    schema = output_schema()
    good = pa.RecordBatch.from_pylist([], schema=schema)
    other = pa.RecordBatch.from_pydict({"timestamp": pa.array([1], pa.int64())})
    read: list[int] = []

    def batches(failure: Exception | None = None):  # type: ignore[no-untyped-def]
        for i, batch in enumerate([good, other, *[good] * 50]):
            read.append(i)
            if failure is not None and i == 1:
                raise failure
            yield batch

    with (
        pq.ParquetWriter(tmp_path / "a.parquet", schema) as writer,
        pytest.raises(ValueError, match="schema"),
    ):
        write_behind(writer, batches())
    assert len(read) < 52  # stopped after the refused batch, not read to the end
    read.clear()
    failing = batches(StorageError("the store went away"))
    with (
        pq.ParquetWriter(tmp_path / "b.parquet", schema) as writer,
        pytest.raises(StorageError, match="the store went away"),
    ):
        write_behind(writer, failing)
    assert read == [0, 1]
    assert not [t for t in threading.enumerate() if t.name == "collect-writer"]
