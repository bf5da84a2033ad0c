"""`visionops label select` on a prediction log the real writer wrote (a folder and S3): the
budget, no duplicate or near-duplicate images, determinism for a seed, what is skipped and
counted, the reasons, and a drift result that moves the pick towards the drifted images."""

from __future__ import annotations

import hashlib
import json
import shutil
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.labeling_data import T0, T1, LogContents, write_log
from visionops.cli.app import app
from visionops.labeling.batch import read_batch
from visionops.labeling.candidates import (
    NO_BOXES,
    Candidate,
    CandidatePool,
    image_digest,
    plain_key,
    uniform_key,
)
from visionops.labeling.scoring import (
    NUMERIC_COLUMNS,
    box_uncertainty,
    confusion,
    confusions,
    uncertainties,
)
from visionops.monitoring.compact import compact_log
from visionops.monitoring.drift import ColumnDrift, DriftResult
from visionops.storage import LocalStore, S3Store, s3_client

runner = CliRunner()


@pytest.fixture(scope="module")
def prediction_log(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, LogContents]:
    folder = tmp_path_factory.mktemp("log")
    return folder, write_log(LocalStore(folder))


def _select(log: str | Path, out: Path, *extra: str) -> tuple[int, dict, str]:
    result = runner.invoke(
        app,
        ["label", "select", "--log", str(log), "--start", T0.isoformat(), "--end", T1.isoformat(),
         "--out", str(out), *extra],
    )  # fmt: skip
    try:
        summary = json.loads(result.stdout)
    except json.JSONDecodeError:
        summary = {}
    return result.exit_code, summary, result.output


def _digests(out: Path) -> list[str]:
    return [item.sha256 for item in read_batch(out).items]


def test_budget_no_duplicates_and_counts(prediction_log, tmp_path: Path) -> None:
    folder, contents = prediction_log
    code, summary, output = _select(folder, tmp_path / "b", "--budget", "8", "--seed", "3")
    assert code == 0, output
    batch = read_batch(tmp_path / "b")
    digests = [item.sha256 for item in batch.items]
    assert len(digests) == 8 == summary["selected"] and len(set(digests)) == 8
    for item in batch.items:  # the stored bytes, named by their digest
        data = (tmp_path / "b" / item.image).read_bytes()
        assert hashlib.sha256(data).hexdigest() == item.sha256
        assert (item.width, item.height) == (64, 48)
    assert summary["rows"] == 34 and summary["without_image"] == contents.without_image == 4
    assert summary["repeated"] == 2  # the image sent three times counts once
    assert summary["missing_images"] == 1 and contents.gone not in digests  # retention lost it
    assert not set(contents.near) <= set(digests)  # near-duplicates: at most one of them
    assert summary["near_duplicates"] >= 1
    assert (batch.model_name, batch.model_version, batch.seed, batch.budget) == (
        "defects",
        "4",
        3,
        8,
    )
    assert batch.class_names == ["Cable/break", "Cable/thunderbolt", "Cable/torn-apart"]
    assert batch.window.start == T0.isoformat() and batch.window.log == str(folder)

    # Uncertainty and confusion lead: the confused image and the boxes nearest the threshold.
    assert contents.confused in digests
    assert contents.repeated in digests and len(set(contents.near) & set(digests)) == 1
    by_digest = {item.sha256: item for item in batch.items}
    confused = by_digest[contents.confused]
    assert any(r.startswith("class confusion: Cable/break 0.60 and Cable/thunderbolt 0.58")
               for r in confused.reasons)  # fmt: skip
    first = batch.items[0]
    assert first.reasons[0].startswith("least sure box: Cable/thunderbolt at 0.255, 0.005 from")
    assert first.reasons[-1] == "the most useful image of the window"
    assert "sd from the nearest image picked before it" in batch.items[1].reasons[-1]
    for item in batch.items:  # the model's boxes, COCO order
        expected = sorted(contents.boxes[item.sha256])
        got = sorted((p.class_name, list(p.bbox)) for p in item.predictions)
        assert got == expected


def test_deterministic_for_a_seed_and_bounded_by_the_budget(prediction_log, tmp_path: Path) -> None:
    folder, _ = prediction_log
    assert _select(folder, tmp_path / "a", "--budget", "5")[0] == 0
    assert _select(folder, tmp_path / "b", "--budget", "5")[0] == 0
    manifest = (tmp_path / "a" / "manifest.json").read_bytes()
    assert manifest == (tmp_path / "b" / "manifest.json").read_bytes()
    # Selecting again into the same folder replaces it whole with the same batch.
    assert _select(folder, tmp_path / "a", "--budget", "5")[0] == 0
    assert (tmp_path / "a" / "manifest.json").read_bytes() == manifest
    assert len(list((tmp_path / "a" / "images").iterdir())) == 5

    # A budget above what the window holds: every distinct usable image once, never more.
    code, summary, _ = _select(folder, tmp_path / "all", "--budget", "100")
    assert code == 0
    digests = _digests(tmp_path / "all")
    usable = 15 + 6 + 1 + 1 + 2 + 2  # the near twin is left out as a near-duplicate
    assert len(digests) == len(set(digests)) == summary["selected"] == usable - 1
    assert summary["candidates"] == usable + 1  # the image retention lost is a candidate


def test_a_drift_result_moves_the_pick_to_the_drifted_columns(
    prediction_log, tmp_path: Path
) -> None:
    folder, contents = prediction_log
    bright = ColumnDrift("brightness_mean", "numerical", "ks", 0.001, 1e-30, True, True,
                         "wasserstein", 0.4, 2.5, True, {"mean": 128.0, "std": 12.0})  # fmt: skip
    steady = ColumnDrift("sharpness", "numerical", "ks", 0.001, 0.5, False, False,
                         "wasserstein", 0.4, 0.01, False, {"mean": 50.0, "std": 5.0})  # fmt: skip
    result = DriftResult("drift", "1 of 2 columns drifted", 100, 34, 50, 0.04, 0.5,
                         [bright, steady])  # fmt: skip
    drift = tmp_path / "drift.json"
    drift.write_text(json.dumps(result.to_dict()))

    assert _select(folder, tmp_path / "plain", "--budget", "6")[0] == 0
    code, summary, output = _select(
        folder, tmp_path / "drift", "--budget", "6", "--drift", str(drift)
    )
    assert code == 0, output
    assert summary["drifted_columns"] == ["brightness_mean"]
    plain, drifted = _digests(tmp_path / "plain"), _digests(tmp_path / "drift")
    assert len(contents.dark & set(drifted)) >= len(contents.dark & set(plain)) + 2
    reasons = [r for item in read_batch(tmp_path / "drift").items for r in item.reasons]
    assert any(r.startswith("drifted: brightness_mean") for r in reasons)


def test_bad_input_is_one_line_and_writes_nothing(prediction_log, tmp_path: Path) -> None:
    folder, _ = prediction_log
    code, _, output = _select(folder, tmp_path / "b", "--budget", "0")
    assert code == 2 and "--budget must be at least 1" in output and len(output.splitlines()) == 1
    result = runner.invoke(app, ["label", "select", "--log", str(folder), "--start", "yesterday",
                                 "--budget", "3", "--out", str(tmp_path / "b")])  # fmt: skip
    assert result.exit_code == 2 and "start is not an ISO-8601 time: 'yesterday'" in result.output
    assert len(result.output.splitlines()) == 1
    code, _, output = _select(
        folder, tmp_path / "b", "--budget", "3", "--drift", str(tmp_path / "x")
    )
    assert code == 1 and "drift result not found" in output and len(output.splitlines()) == 1
    (tmp_path / "b.json").write_text('{"decision": "drift"}')
    code, _, output = _select(
        folder, tmp_path / "b", "--budget", "3", "--drift", str(tmp_path / "b.json")
    )
    assert code == 1 and "is not a drift result" in output
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    code, _, output = _select(folder, tmp_path / "mine", "--budget", "3")
    assert code == 2 and "is not a selection batch" in output
    assert not (tmp_path / "b").exists() and (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_selects_from_an_s3_log(s3_settings, prediction_log, tmp_path: Path) -> None:
    folder, _ = prediction_log
    store = S3Store(s3_client(s3_settings), s3_settings.s3_bucket, "predictions",
                    endpoint=s3_settings.s3_endpoint)  # fmt: skip
    for path in folder.rglob("*"):
        if path.is_file():
            store.write_bytes(path.relative_to(folder).as_posix(), path.read_bytes())
    location = f"s3://{s3_settings.s3_bucket}/predictions"
    code, summary, output = _select(location, tmp_path / "s3", "--budget", "8", "--seed", "3")
    assert code == 0, output
    assert _select(folder, tmp_path / "local", "--budget", "8", "--seed", "3")[0] == 0
    assert _digests(tmp_path / "s3") == _digests(tmp_path / "local")
    assert summary["missing_images"] == 1 and read_batch(tmp_path / "s3").window.log == location


def test_the_pool_is_bounded_and_does_not_depend_on_read_order() -> None:
    rng = np.random.default_rng(0)
    digests = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(300)]
    digests += digests[:40]  # images sent twice
    usefulness = rng.random(len(digests))
    features = rng.random((len(digests), len(NUMERIC_COLUMNS)))
    tiebreak = np.array([uniform_key(5, d) for d in digests])
    candidates = [Candidate(f"images/{d}.png", d, f"r{i}", i, NO_BOXES, 0, 0)
                  for i, d in enumerate(digests)]  # fmt: skip

    def pooled(order: np.ndarray) -> tuple[list[str], np.ndarray]:
        pool = CandidatePool(40)
        for chunk in np.array_split(order, 7):
            pool.add([candidates[i] for i in chunk], features[chunk], usefulness[chunk],
                     tiebreak[chunk])  # fmt: skip
        pool.prune()
        return [c.sha256 for c in pool.items], pool.features

    first, first_features = pooled(np.arange(len(digests)))
    second, second_features = pooled(rng.permutation(len(digests)))
    assert first == second and np.array_equal(first_features, second_features)
    assert len(first) == len(set(first)) <= 40
    best = {}
    for d, u in zip(digests, usefulness, strict=True):
        best[d] = max(best.get(d, 0.0), u)
    top = sorted(best, key=lambda d: -best[d])[:20]
    assert set(top) <= set(first)  # the most useful half is kept whatever the order


def test_a_compacted_window_gives_the_same_batch(prediction_log, tmp_path: Path) -> None:
    folder, _ = prediction_log
    copy = tmp_path / "log"
    shutil.copytree(folder, copy)
    compacted = compact_log(LocalStore(copy), T0, T1, settle_s=0, now=T1 + timedelta(hours=2))
    assert compacted.to_dict()["parts_written"] >= 1
    assert not list(copy.rglob("*.jsonl"))  # the JSON lines are gone: only parts are read
    assert _select(folder, tmp_path / "a", "--budget", "8")[0] == 0
    assert _select(copy, tmp_path / "b", "--budget", "8")[0] == 0
    first = json.loads((tmp_path / "a" / "manifest.json").read_text())
    second = json.loads((tmp_path / "b" / "manifest.json").read_text())
    second["window"]["log"] = first["window"]["log"]
    assert first == second


def test_vectorised_scores_equal_the_per_image_ones() -> None:
    rng = np.random.default_rng(1)
    counts = rng.integers(0, 6, 200)
    owner = np.repeat(np.arange(200), counts)
    n = len(owner)
    corner = rng.uniform(0, 10, (n, 2))
    boxes = np.hstack([corner, corner + rng.uniform(20, 30, (n, 2))])
    scores = rng.uniform(0.1, 1.0, n)
    classes = rng.integers(0, 3, n)
    unc = uncertainties(scores, owner, 200, 0.3)
    mix = confusions(classes, scores, boxes, owner, 200)
    assert (mix > 0).sum() > 40
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    for row, (start, count) in enumerate(zip(starts, counts, strict=True)):
        span = range(start, start + count)
        found = [
            {"box": boxes[i].tolist(), "class_id": int(classes[i]), "score": float(scores[i]),
             "class_name": str(classes[i])}
            for i in span
        ]  # fmt: skip
        expected = max((box_uncertainty(d["score"], 0.3) for d in found), default=0.5)
        assert unc[row] == pytest.approx(expected)
        assert mix[row] == pytest.approx(confusion(found).value)


def test_image_keys_as_older_compactions_stored_them() -> None:
    """A part compacted before `image_key` was a record column holds it as JSON text."""
    key = "images/dt=2026-01-01/" + "a" * 64 + ".png"
    assert plain_key(json.dumps(key)) == key == plain_key(key)
    assert plain_key(None) is None and plain_key("") is None and plain_key('"broken') is None
    assert image_digest(key) == "a" * 64
