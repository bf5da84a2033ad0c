"""Image retention in the prediction log: the original bytes kept byte for byte, once a day per
image, as each policy says, within the byte bound, through an S3 outage (spooled, or counted), read
back by collect and compaction, and deleted a whole day at a time when they expire."""

from __future__ import annotations

import hashlib
import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from tests.images import encode, textured
from tests.test_monitoring_log import _GatedStore
from visionops.cli.app import app
from visionops.config import get_settings
from visionops.detections import Detections
from visionops.errors import ConfigError, UsageError
from visionops.inference import decode_image
from visionops.monitoring.collect import collect_to_parquet, read_window
from visionops.monitoring.compact import compact_log
from visionops.monitoring.image_retention import ImagePolicy, image_key, prune_images
from visionops.monitoring.log_layout import COLLECTED_COLUMNS, IMAGE_KEY
from visionops.monitoring.log_spool import LogSpool
from visionops.monitoring.prediction_log import PredictionLogWriter
from visionops.storage import LocalStore, ObjectStore, default_store

T0 = datetime(2026, 3, 1, 10, 15, tzinfo=UTC)
ALL = ImagePolicy.parse("all")


def _png16(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return encode(rng.integers(0, 65536, (40, 56), dtype=np.uint16), ".png")


def _grey(seed: int) -> bytes:
    return encode(textured(48, 64, seed=seed)[:, :, 0], ".png")


def _jpeg(seed: int) -> bytes:
    return encode(textured(48, 64, seed=seed), ".jpg")


def _scores(*scores: float) -> Detections:
    n = len(scores)
    boxes = np.array([[2, 3, 20, 30]] * n, np.float32).reshape(n, 4)
    return Detections(boxes, np.asarray(scores, np.float32), np.zeros(n, np.int64))


def _submit(writer: PredictionLogWriter, data: bytes, at: datetime = T0, **kw) -> bool:  # type: ignore[no-untyped-def]
    return writer.submit(decode_image(data), kw.pop("detections", None), encoded=data,
                         timestamp=at, **kw)  # fmt: skip


def _records(store: ObjectStore, **kw) -> list[dict]:  # type: ignore[no-untyped-def]
    frame = read_window(store, T0 - timedelta(days=3), T0 + timedelta(days=3), **kw)
    return frame.to_dict("records") if len(frame) else []


def test_the_original_bytes_are_kept_byte_for_byte_and_named_by_their_record(tmp_path: Path):
    """JPEG, 16-bit PNG and grey PNG: the store holds exactly what was sent (not the decoded
    8-bit BGR array), under images/dt=<day>/<sha256>.<ext>."""
    store = LocalStore(tmp_path)
    sent = {"jpeg": _jpeg(1), "png16": _png16(2), "grey": _grey(3)}
    assert cv2.imdecode(np.frombuffer(sent["png16"], np.uint8), cv2.IMREAD_UNCHANGED).dtype == (
        np.uint16
    )
    with PredictionLogWriter(store, images=ALL) as writer:
        for name, data in sent.items():
            assert _submit(writer, data, request_id=name)
    assert (writer.images_retained, writer.images_dropped, writer.dropped) == (3, 0, 0)
    assert writer.image_bytes_retained == sum(len(d) for d in sent.values())
    by_id = {r["request_id"]: r for r in _records(store)}
    for name, data in sent.items():
        key = by_id[name][IMAGE_KEY]
        ext = "jpg" if name == "jpeg" else "png"
        assert key == f"images/dt=2026-03-01/{hashlib.sha256(data).hexdigest()}.{ext}"
        assert store.read_bytes(key) == data


def test_a_repeated_image_is_stored_once_a_day(tmp_path: Path):
    store = LocalStore(tmp_path)
    data = _jpeg(5)
    with PredictionLogWriter(store, images=ALL) as writer:
        for i in range(4):
            assert _submit(writer, data, T0 + timedelta(minutes=i), request_id=f"same{i}")
        assert _submit(writer, data, T0 + timedelta(days=1), request_id="next-day")
    keys = store.list_keys("images")
    assert len(keys) == 2 and {k.split("/")[1] for k in keys} == {"dt=2026-03-01", "dt=2026-03-02"}
    records = _records(store)
    assert len({r[IMAGE_KEY] for r in records if r["request_id"].startswith("same")}) == 1
    assert (writer.images_retained, writer.images_repeated) == (2, 3)


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("none", [False] * 6),
        ("all", [True] * 6),
        ("sample:0", [False] * 6),
        ("sample:1", [True] * 6),
        # uncertain (band 0.25..0.6): a score in the band, or nothing at or above 0.6
        ("uncertain", [True, True, False, True, False, True]),
    ],
)
def test_each_policy_keeps_what_it_says(tmp_path: Path, policy: str, expected: list[bool]):
    detections = [
        None,  # no detection at all: nothing the model is sure of
        _scores(0.3),  # hesitant
        _scores(0.9),  # sure
        _scores(0.9, 0.5),  # sure of one, hesitant on another
        _scores(0.6),  # exactly at the upper end: sure
        _scores(0.1),  # below the band (a request with a low conf): nothing sure
    ]
    store = LocalStore(tmp_path)
    with PredictionLogWriter(store, images=ImagePolicy.parse(policy, "0.25,0.6")) as writer:
        for i, found in enumerate(detections):
            assert _submit(writer, _jpeg(i), detections=found, request_id=f"r{i}")
    records = sorted(_records(store), key=lambda r: r["request_id"])
    assert [r[IMAGE_KEY] is not None for r in records] == expected
    assert len(store.list_keys("images")) == sum(expected)
    assert writer.images_dropped == 0


def test_a_sample_keeps_about_its_fraction():
    policy = ImagePolicy.parse("sample:0.25")
    policy.rng = random.Random(7)
    kept = sum(policy.wants(None) for _ in range(2000))
    assert 400 < kept < 600


@pytest.mark.parametrize(
    ("variable", "value", "problem"),
    [
        ("VISIONOPS_LOG_IMAGES", "some", "must be one of none, all, sample:<fraction>, uncertain"),
        ("VISIONOPS_LOG_IMAGES", "sample:1.5", "a fraction between 0 and 1, got '1.5'"),
        ("VISIONOPS_LOG_IMAGES_UNCERTAIN_BAND", "0.6,0.25", "needs 0 <= low < high <= 1"),
        ("VISIONOPS_LOG_IMAGES_UNCERTAIN_BAND", "0.5", "two scores 'low,high'"),
        ("VISIONOPS_LOG_IMAGES_RETENTION_DAYS", "-1", "greater than or equal to 0"),
    ],
)
def test_a_bad_setting_is_one_line_naming_it(settings_env, variable: str, value: str, problem):  # type: ignore[no-untyped-def]
    settings_env.setenv(variable, value)
    with pytest.raises(ConfigError) as error:
        get_settings()
    message = str(error.value)
    assert "\n" not in message and variable in message and problem in message, message


def test_settings_default_to_uncertain_for_30_days(settings_env):  # type: ignore[no-untyped-def]
    settings = get_settings()
    policy = ImagePolicy.from_settings(settings)
    assert (policy.kind, policy.band, settings.log_images_retention_days) == (
        "uncertain", (0.25, 0.6), 30,
    )  # fmt: skip


def test_an_image_over_the_byte_bound_is_dropped_and_counted_its_record_kept(tmp_path: Path):
    store = LocalStore(tmp_path)
    big = encode(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8), ".png")
    bound = decode_image(big).nbytes + len(big) - 1  # the array fits, the array and bytes do not
    with PredictionLogWriter(store, images=ALL, max_queue_bytes=bound) as writer:
        assert _submit(writer, big, request_id="big")
    assert (writer.written, writer.dropped, writer.images_lost["queue_full"]) == (1, 0, 1)
    (record,) = _records(store)
    assert record[IMAGE_KEY] is None and store.list_keys("images") == []


def test_images_hold_at_most_half_the_byte_bound_and_records_keep_the_rest(tmp_path: Path):
    """Inference busy (the log defers its features): images are taken until they hold half of
    `max_queue_bytes`, then dropped and counted while their records are still queued."""
    from visionops.monitoring.activity import Activity

    pixels = [_image_array(i) for i in range(8)]  # 768 bytes each
    blobs = [np.random.default_rng(i).bytes(4000) for i in range(8)]
    bound = 8 * pixels[0].nbytes + 3 * 4000  # images may hold 9072 bytes: two of them
    activity = Activity()
    writer = PredictionLogWriter(LocalStore(tmp_path), images=ALL, activity=activity,
                                 max_queue_bytes=bound, flush_every_s=60)  # fmt: skip
    with activity.busy():
        accepted = [writer.submit(p, None, encoded=b, request_id=f"r{i}")
                    for i, (p, b) in enumerate(zip(pixels, blobs, strict=True))]  # fmt: skip
        assert accepted == [True] * 8  # every record
        assert writer.images_lost["queue_full"] == 6  # the images beyond their half
    writer.close()
    assert (writer.images_retained, writer.written, writer.dropped) == (2, 8, 0)
    keys = LocalStore(tmp_path).list_keys("images")
    assert len(keys) == 2 and all(k.endswith(".bin") for k in keys)


def _image_array(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)


def test_s3_down_images_wait_in_the_spool_within_their_share_and_the_rest_is_counted(
    tmp_path: Path,
):
    """The store refuses: records and images go to the spool, images only into their half of
    it; what does not fit is counted (spool_full), no record is lost, and once the store is back
    every spooled image is shipped and counted retained."""
    store = _GatedStore(tmp_path / "store")
    store.down = True
    images = [encode(np.random.default_rng(i).integers(0, 256, (40, 40), np.uint8), ".png")
              for i in range(12)]  # fmt: skip  # about 1.6 kB each, incompressible
    spool_bytes = 12_000  # images may use 6 kB: 3 of them
    spool = LogSpool(tmp_path / "spool", store, spool_bytes)
    writer = PredictionLogWriter(store, images=ALL, spool=spool, batch_size=4)
    for i, data in enumerate(images):
        assert _submit(writer, data, T0 + timedelta(seconds=i), request_id=f"r{i}")
    writer.close(timeout=5)
    kept_images = [e for e in spool.entries() if e.key.startswith("images/")]
    assert len(kept_images) == writer._shipper.images_spooled >= 2
    assert sum(e.size for e in kept_images) <= spool_bytes // 2
    assert writer.images_lost["spool_full"] == 12 - len(kept_images)
    assert (writer.dropped, writer.spooled) == (0, 12)

    store.down = False
    restarted = PredictionLogWriter(store, spool=LogSpool(tmp_path / "spool", store, spool_bytes))
    assert restarted.flush(timeout=10)
    restarted.close()
    assert restarted.images_retained == len(kept_images)
    records = _records(store)
    assert len(records) == 12
    present = [r for r in records if store.exists(r[IMAGE_KEY])]
    assert len(present) == len(kept_images)
    for record in present:
        assert store.read_bytes(record[IMAGE_KEY]) == images[int(record["request_id"][1:])]


def test_collect_and_compaction_carry_the_image_key_and_old_logs_read_as_null(tmp_path: Path):
    store = LocalStore(tmp_path / "log")
    old = {"timestamp": T0.isoformat(), "request_id": "old", "model_name": "m",
           "model_version": "1", "brightness_mean": 0.5}  # fmt: skip
    store.write_bytes("dt=2026-03-01/hour=10/20260301T101500000000Z-old.jsonl",
                      (json.dumps(old) + "\n").encode())  # fmt: skip
    with PredictionLogWriter(store, images=ALL) as writer:
        assert _submit(writer, _jpeg(9), T0 + timedelta(seconds=1), request_id="new")
    compact_log(store, T0 - timedelta(hours=1), T0 + timedelta(hours=1), settle_s=0)
    assert any(k.endswith(".parquet") for k in store.list_keys("dt=2026-03-01"))
    out = tmp_path / "window.parquet"
    collect_to_parquet(store, T0 - timedelta(hours=1), T0 + timedelta(hours=1), out)
    import pyarrow.parquet as pq

    table = pq.read_table(out)
    assert table.schema.names == list(COLLECTED_COLUMNS) and IMAGE_KEY in table.schema.names
    keys = dict(zip(table["request_id"].to_pylist(), table[IMAGE_KEY].to_pylist(), strict=True))
    assert keys == {"old": None, "new": image_key(_jpeg(9), T0)}


# -- retention: whole expired days -------------------------------------------------------------


def _fill_days(store: ObjectStore, days: list[str]) -> None:
    for day in days:
        for i in range(3):
            store.write_bytes(f"images/dt={day}/{i:064x}.jpg", b"\xff\xd8\xff" + day.encode())
    store.write_bytes("dt=2026-01-01/hour=00/records.jsonl", b"{}\n")  # records: never touched
    store.write_bytes("images/README", b"not a day")


def _check_prune(store: ObjectStore) -> None:
    days = ["2026-02-27", "2026-02-28", "2026-03-01", "2026-03-02"]
    _fill_days(store, days)
    now = datetime(2026, 3, 3, 1, 0, tzinfo=UTC)
    dry = prune_images(store, 3, now=now, dry_run=True)
    assert (dry.days_deleted, dry.objects_deleted) == (["2026-02-27"], 3)
    assert len(store.list_keys("images")) == 13
    summary = prune_images(store, 3, now=now)  # keeps 2026-02-28 .. today
    assert summary.days_deleted == ["2026-02-27"] and summary.objects_deleted == 3
    assert summary.days_kept == days[1:]
    left = store.list_keys("images")
    assert len(left) == 10 and not any("2026-02-27" in k for k in left)
    assert store.exists("dt=2026-01-01/hour=00/records.jsonl") and store.exists("images/README")
    assert prune_images(store, 0, now=now + timedelta(days=400)).days_deleted == []
    assert prune_images(store, 1, now=now).days_deleted == ["2026-02-28", "2026-03-01"]


def test_prune_deletes_only_the_expired_days_on_local_disk(tmp_path: Path):
    _check_prune(LocalStore(tmp_path))
    assert not (tmp_path / "images" / "dt=2026-02-27").exists()


def test_prune_deletes_only_the_expired_days_on_s3(s3_settings):  # type: ignore[no-untyped-def]
    _check_prune(default_store(s3_settings.log_prefix, s3_settings))


def test_prune_images_command(tmp_path: Path):
    store = LocalStore(tmp_path / "log")
    today = datetime.now(UTC).date()
    expired, kept = today - timedelta(days=8), today - timedelta(days=2)
    _fill_days(store, [expired.isoformat(), kept.isoformat()])
    runner = CliRunner()
    result = runner.invoke(app, ["drift", "prune-images", "--log", str(store.root), "--days", "7"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["days_deleted"] == [expired.isoformat()] and summary["objects_deleted"] == 3
    assert summary["days_kept"] == [kept.isoformat()]
    bad = runner.invoke(app, ["drift", "prune-images", "--log", str(store.root), "--days", "-2"])
    assert bad.exit_code == 2 and "Invalid value for '--days'" in bad.output


def test_prune_refuses_a_negative_retention(tmp_path: Path):
    with pytest.raises(UsageError, match="0 \\(keep forever\\) or more days"):
        prune_images(LocalStore(tmp_path), -1)


@pytest.mark.filterwarnings("ignore:You may be attemping:RuntimeWarning")
def test_the_monitoring_pipelines_prune_step_under_kfps_local_runner(
    local_kfp: Path, tmp_path: Path
):
    """The `prune_images` step as the monitoring pipeline runs it (a subprocess of KFP's local
    runner): expired days deleted, the others and the records kept; a second run deletes none."""
    from components.prune_images import prune_images as prune_step

    store = LocalStore(tmp_path / "log")
    today = datetime.now(UTC).date()
    days = [(today - timedelta(days=n)).isoformat() for n in (40, 31, 29, 0)]
    _fill_days(store, days)
    task = prune_step(log_location=str(store.root))  # -1: the setting's 30 days
    assert (task.outputs["days"], task.outputs["images"]) == (2, 6)
    assert sorted({k.split("/")[1] for k in store.list_keys("images") if "dt=" in k}) == [
        f"dt={d}" for d in sorted(days[2:])
    ]
    assert store.exists("dt=2026-01-01/hour=00/records.jsonl")
    again = prune_step(log_location=str(store.root), retention_days=30)
    assert (again.outputs["days"], again.outputs["images"]) == (0, 0)
