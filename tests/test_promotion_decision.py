"""The promotion decision (`visionops.training.promotion`) in a real MLflow registry.

The README's rule: a version becomes `champion` only if the gate says so; when there is a
champion, the candidate is compared on the same evaluation data (same split hash), and a
champion scored on other data is evaluated on the candidate's data first, the result kept on its
version; without that data there is no comparison and no promotion. `visionops model promote`
applies the same decision to an existing version, `--force` skips it.

The registry is MLflow's embedded store (sqlite, local artifacts: the default), a fresh one per
test. The models are real ONNX graphs whose head always outputs one fixed box, and the data is
one 64x64 image whose one ground-truth box that box hits or misses, so every expected score is
known by hand: a model on target scores mAP50-95 1.0 on `val` (class 0 there) and 0.0 on `test`
(class 1 there); a model off target scores 0.0 everywhere. Explicit `Settings` are passed
throughout; the environment points at another, empty registry, so settings that get lost on the
way show up as a model that cannot be found.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from visionops.config import Settings
from visionops.errors import GateRejected, RegistryError
from visionops.models.artifact import METADATA_JSON, MODEL_ARTIFACT_DIR, MODEL_ONNX
from visionops.tracking import connect
from visionops.training.dataset import load_data_yaml
from visionops.training.evaluate import TAG_EVAL_DATA, TAG_EVAL_HASH, TAG_EVAL_SPLIT
from visionops.training.gate import GateDecision
from visionops.training.promotion import decide, promote, register
from visionops.training.registry import (
    CHAMPION,
    TAG_HISTORY,
    TAG_PROMOTED,
    AliasMove,
    Registry,
    eval_tag,
)

NAMES = ["Cable/break", "Screw/defect"]
IMGSZ = 64
ON_TARGET = (32.0, 32.0, 16.0, 16.0)  # cx, cy, w, h in pixels: the ground-truth box below
OFF_TARGET = (8.0, 8.0, 4.0, 4.0)  # no overlap with it
OLD_DATA = "0" * 64  # the hash of evaluation data that is no longer around
MARGIN_WORDS = "on the same evaluation data (margin 0.0100)"
PERFECT = {"map50": 1.0, "map50_95": 1.0, "precision": 1.0, "recall": 1.0}


def _migrated_store() -> Path:
    """An empty, migrated MLflow sqlite database, built once per machine and MLflow version:
    creating one costs 20-50 s of migrations on 2 cores, copying it nothing. Never opened
    after it is built; each test works on its own copy."""
    import mlflow
    from mlflow import MlflowClient

    template = Path(tempfile.gettempdir()) / f"visionops-test-mlflow-{mlflow.__version__}.db"
    if not template.is_file():
        building = template.with_name(f"{template.name}.{os.getpid()}")
        uri = f"sqlite:///{building}"
        MlflowClient(tracking_uri=uri, registry_uri=uri).search_registered_models()
        building.replace(template)
    return template


def _store_settings(data_dir: Path) -> Settings:
    (data_dir / "mlflow").mkdir(parents=True)
    shutil.copyfile(_migrated_store(), data_dir / "mlflow" / "mlflow.db")
    return Settings(
        data_dir=data_dir,
        model_name="gated",
        gate_min_map50=0.1,
        gate_min_map50_95=0.05,
        gate_margin=0.01,
    )


@pytest.fixture
def settings(tmp_path: Path, settings_env: pytest.MonkeyPatch) -> Settings:
    """This test's registry; the environment names another, empty one."""
    elsewhere = _store_settings(tmp_path / "elsewhere")
    settings_env.setenv("VISIONOPS_DATA_DIR", str(elsewhere.data_dir))
    return _store_settings(tmp_path / "registry")


@pytest.fixture
def data_yaml(tmp_path: Path) -> Path:
    """One grey 64x64 image; its one box is ON_TARGET, class 0 in `val`, class 1 in `test`."""
    import cv2

    root = tmp_path / "data"
    for split, cls in (("val", 0), ("test", 1)):
        (root / split / "images").mkdir(parents=True)
        (root / split / "labels").mkdir(parents=True)
        image = np.full((IMGSZ, IMGSZ, 3), 114, np.uint8)
        cv2.imwrite(str(root / split / "images" / "part.png"), image)
        cx, cy, w, h = (v / IMGSZ for v in ON_TARGET)
        (root / split / "labels" / "part.txt").write_text(f"{cls} {cx} {cy} {w} {h}\n")
    path = root / "data.yaml"
    path.write_text(
        f"path: .\ntrain: val/images\nval: val/images\ntest: test/images\nnames: {NAMES}\n"
    )
    return path


def _hash(data_yaml: Path, split: str = "val") -> str:
    return load_data_yaml(data_yaml).split_hash(split)


def _model_dir(out: Path, box: tuple[float, ...], run_id: str | None, cls: int = 0) -> Path:
    """A model directory whose ONNX head outputs `box` as class `cls` (score 0.9) for any
    input."""
    from onnx import TensorProto, helper, numpy_helper, save

    head = np.zeros((1, 4 + len(NAMES), 2), np.float32)
    head[0, :4, 0] = box
    head[0, 4 + cls, 0] = 0.9
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["images"], ["mean"], keepdims=1),
            helper.make_node("Mul", ["mean", "zero"], ["zeros"]),
            helper.make_node("Squeeze", ["zeros", "axis"], ["zero_per_image"]),
            helper.make_node("Add", ["zero_per_image", "head"], ["output0"]),
        ],
        "fixed-box",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["b", 3, IMGSZ, IMGSZ])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["b", 4 + len(NAMES), 2])],
        [
            numpy_helper.from_array(np.zeros(1, np.float32), "zero"),
            numpy_helper.from_array(np.array([3], np.int64), "axis"),
            numpy_helper.from_array(head, "head"),
        ],
    )
    out.mkdir(parents=True)
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), out / MODEL_ONNX)
    metadata = {"names": NAMES, "imgsz": IMGSZ, "run_id": run_id}
    (out / METADATA_JSON).write_text(json.dumps(metadata))
    return out


def _run(
    settings: Settings,
    box: tuple[float, ...],
    *,
    evaluated: tuple[str, float] | None = None,
    data_yaml: str | None = None,
    split: str | None = None,
    map50: float = 0.9,
    own_run: bool = True,
    cls: int = 0,
) -> str:
    """A FINISHED run holding a fixed-box model; `evaluated` = (data hash, mAP50-95) logs an
    evaluation as `visionops evaluate` does, with the data and split tags when given. The
    model's metadata names the run when `own_run` (as training writes it); `cls` is the class
    its box is."""
    tracking = connect(settings)
    run_id = tracking.client.create_run(tracking.experiment_id).info.run_id
    model_dir = settings.data_dir / f"model-{run_id}"
    model = _model_dir(model_dir, box, run_id if own_run else None, cls)
    for name in (MODEL_ONNX, METADATA_JSON):
        tracking.client.log_artifact(run_id, str(model / name), MODEL_ARTIFACT_DIR)
    if evaluated is not None:
        data_hash, map50_95 = evaluated
        tracking.client.set_tag(run_id, TAG_EVAL_HASH, data_hash)
        if data_yaml is not None:
            tracking.client.set_tag(run_id, TAG_EVAL_DATA, data_yaml)
        if split is not None:
            tracking.client.set_tag(run_id, TAG_EVAL_SPLIT, split)
        tracking.client.log_metric(run_id, "eval.map50", map50)
        tracking.client.log_metric(run_id, "eval.map50_95", map50_95)
    tracking.client.set_terminated(run_id, "FINISHED")
    return run_id


def _champion(settings: Settings) -> str | None:
    holder = Registry(settings=settings).alias(CHAMPION)
    return str(holder.version) if holder else None


def _decide(settings: Settings, run_id: str) -> GateDecision:
    """The gate for run `run_id`'s logged evaluation against today's champion."""
    from visionops.training.evaluate import logged_evaluation

    registry = Registry(settings=settings)
    evaluation = logged_evaluation(registry.run(run_id))
    assert evaluation is not None
    return decide(registry, evaluation, registry.alias(CHAMPION))


def _scores(settings: Settings, version: str, data_hash: str) -> dict[str, float] | None:
    tags = Registry(settings=settings).version(version).tags
    return json.loads(tags[eval_tag(data_hash)]) if eval_tag(data_hash) in tags else None


def test_the_first_model_needs_only_the_minimums(settings: Settings):
    candidate = _run(settings, OFF_TARGET, evaluated=(OLD_DATA, 0.3))
    assert _decide(settings, candidate) == GateDecision(
        True, "first champion: map50_95 0.3000 meets the minimums"
    )
    first = register(candidate, settings=settings)
    assert (first.version, first.promoted, first.alias) == ("1", True, CHAMPION)
    assert _champion(settings) == "1"


def test_below_the_minimums_is_refused_without_scoring_the_champion(
    settings: Settings, data_yaml: Path, caplog: pytest.LogCaptureFixture
):
    """Scoring the champion would be possible (the data is here) but cannot change the answer."""
    register(_run(settings, ON_TARGET, evaluated=(OLD_DATA, 0.9)), settings=settings)
    today = _hash(data_yaml)
    weak = _run(settings, OFF_TARGET, evaluated=(today, 0.04), data_yaml=str(data_yaml))
    with caplog.at_level(logging.INFO, logger="visionops.training.promotion"):
        decision = _decide(settings, weak)
    assert decision == GateDecision(False, "below the minimums: map50_95 0.0400 < minimum 0.0500")
    assert _scores(settings, "1", today) is None and "re-evaluating" not in caplog.text


def test_the_champion_is_scored_on_the_candidates_data_once(
    settings: Settings, data_yaml: Path, caplog: pytest.LogCaptureFixture
):
    """The champion scored 0.2 on data that is gone; on today's it hits the one box: 1.0."""
    champion_run = _run(settings, ON_TARGET, evaluated=(OLD_DATA, 0.2))
    register(champion_run, settings=settings)
    today = _hash(data_yaml)
    candidate = _run(settings, OFF_TARGET, evaluated=(today, 0.5), data_yaml=str(data_yaml))
    with caplog.at_level(logging.INFO, logger="visionops.training.promotion"):
        decision = _decide(settings, candidate)
    assert (decision.promote, decision.reason, decision.champion_version) == (
        False,
        f"does not beat the champion: map50_95 0.5000 vs champion v1 1.0000 {MARGIN_WORDS}",
        "1",
    )
    assert decision.champion_metrics == pytest.approx(PERFECT)
    assert f"re-evaluating v1 on {data_yaml} (val)" in caplog.messages
    assert _scores(settings, "1", today) == pytest.approx(PERFECT)
    # Scoring the champion is not an evaluation of its run: the run keeps what it logged.
    run = Registry(settings=settings).run(champion_run)
    assert run.data.metrics["eval.map50_95"] == 0.2 and run.data.tags[TAG_EVAL_HASH] == OLD_DATA

    # Same data again: the kept score is the bar, even where the data is not available.
    caplog.clear()
    elsewhere = _run(settings, OFF_TARGET, evaluated=(today, 1.0), data_yaml="/nowhere/data.yaml")
    with caplog.at_level(logging.INFO, logger="visionops.training.promotion"):
        again = _decide(settings, elsewhere)
    assert again.reason == (
        f"does not beat the champion: map50_95 1.0000 vs champion v1 1.0000 {MARGIN_WORDS}"
    )
    assert "re-evaluating" not in caplog.text


def test_a_champion_that_misses_is_beaten_on_the_candidates_split(
    settings: Settings, data_yaml: Path
):
    """On `test` the one box is class 1: the champion's class-0 box scores 0 there."""
    register(_run(settings, ON_TARGET, evaluated=(OLD_DATA, 0.9)), settings=settings)
    on_test = _hash(data_yaml, "test")
    candidate = _run(
        settings, OFF_TARGET, evaluated=(on_test, 0.5), data_yaml=str(data_yaml), split="test"
    )
    result = register(candidate, settings=settings)
    assert (result.version, result.promoted, result.alias, result.previous_champion) == (
        "2", True, CHAMPION, "1",
    )  # fmt: skip
    assert result.reason == (
        f"beats the champion: map50_95 0.5000 vs champion v1 0.0000 {MARGIN_WORDS}"
    )
    assert _scores(settings, "1", on_test) == {
        "map50": 0.0, "map50_95": 0.0, "precision": 0.0, "recall": 0.0,
    }  # fmt: skip
    assert _champion(settings) == "2"


@pytest.mark.parametrize(
    ("data", "why"),
    [
        ("", "the evaluation data (unknown) is not available here to re-evaluate champion v1"),
        (
            "/nowhere/data.yaml",
            "the evaluation data /nowhere/data.yaml is not available here to re-evaluate "
            "champion v1",
        ),
    ],
)
def test_no_comparison_without_the_candidates_data(settings: Settings, data: str, why: str):
    register(_run(settings, OFF_TARGET, evaluated=(OLD_DATA, 0.2)), settings=settings)
    candidate = _run(settings, ON_TARGET, evaluated=("f" * 64, 0.99), data_yaml=data)
    assert _decide(settings, candidate) == GateDecision(
        False, f"cannot compare with champion v1 on the same evaluation data: {why}", "1"
    )


def test_no_comparison_when_the_data_changed_since_the_candidates_evaluation(
    settings: Settings, data_yaml: Path
):
    register(_run(settings, OFF_TARGET, evaluated=(OLD_DATA, 0.2)), settings=settings)
    stale = "f" * 64
    candidate = _run(settings, ON_TARGET, evaluated=(stale, 0.99), data_yaml=str(data_yaml))
    result = register(candidate, settings=settings)
    assert (result.promoted, result.reason) == (
        False,
        "cannot compare with champion v1 on the same evaluation data: "
        f"{data_yaml} changed since the candidate was evaluated on it "
        f"(hash {_hash(data_yaml)[:12]} != {stale[:12]})",
    )
    assert _scores(settings, "1", stale) is None and _champion(settings) == "1"


def test_registering_with_data_evaluates_the_run_there_unless_it_was(
    settings: Settings, data_yaml: Path
):
    today = _hash(data_yaml)
    # Evaluated on today's data already (0.5 logged): that evaluation counts, not a new one.
    logged = _run(settings, ON_TARGET, evaluated=(today, 0.5), data_yaml=str(data_yaml))
    first = register(logged, data_yaml=data_yaml, settings=settings)
    assert (first.promoted, first.metrics["map50_95"]) == (True, 0.5)

    # Not evaluated (a model directory whose metadata names no run): evaluated now, on the
    # run, and compared on that data with the champion, which scores 1.0 there too.
    fresh = _run(settings, ON_TARGET, own_run=False)
    second = register(fresh, data_yaml=data_yaml, settings=settings)
    assert second.metrics == pytest.approx(PERFECT)
    assert (second.promoted, second.reason) == (
        True,
        f"beats the champion: map50_95 1.0000 vs champion v1 0.5000 {MARGIN_WORDS}",
    )
    tags = Registry(settings=settings).run(fresh).data.tags
    assert (tags[TAG_EVAL_HASH], tags[TAG_EVAL_SPLIT]) == (today, "val")

    # On `test` the same model misses; its champion would have to be scored there too.
    on_test = _run(settings, ON_TARGET, own_run=False)
    third = register(on_test, data_yaml=data_yaml, split="test", settings=settings)
    assert (third.promoted, third.reason) == (
        False,
        "below the minimums: map50 0.0000 < minimum 0.1000; map50_95 0.0000 < minimum 0.0500",
    )


def test_registering_with_data_scores_the_champion_on_it(settings: Settings, data_yaml: Path):
    """The data a run is evaluated on at registration is the data its champion is scored on."""
    register(_run(settings, OFF_TARGET, evaluated=(OLD_DATA, 0.9)), settings=settings)
    result = register(_run(settings, ON_TARGET), data_yaml=data_yaml, settings=settings)
    assert (result.promoted, result.reason) == (
        True,
        f"beats the champion: map50_95 1.0000 vs champion v1 0.0000 {MARGIN_WORDS}",
    )
    assert _scores(settings, "1", _hash(data_yaml)) == {
        "map50": 0.0, "map50_95": 0.0, "precision": 0.0, "recall": 0.0,
    }  # fmt: skip


def test_registering_on_a_split_scores_the_champion_on_that_split(
    settings: Settings, data_yaml: Path
):
    """On `test` the box is class 1: a class-1 model hits it, the class-0 champion misses."""
    register(_run(settings, ON_TARGET, evaluated=(OLD_DATA, 0.9)), settings=settings)
    candidate = _run(settings, ON_TARGET, cls=1)
    result = register(candidate, data_yaml=data_yaml, split="test", settings=settings)
    assert (result.promoted, result.reason) == (
        True,
        f"beats the champion: map50_95 1.0000 vs champion v1 0.0000 {MARGIN_WORDS}",
    )
    assert _scores(settings, "1", _hash(data_yaml, "test"))["map50_95"] == 0.0


def test_promote_goes_through_the_gate_unless_forced(settings: Settings):
    s = settings
    register(_run(s, OFF_TARGET, evaluated=(OLD_DATA, 0.4)), settings=s)
    register(_run(s, OFF_TARGET, evaluated=(OLD_DATA, 0.3)), settings=s)
    with pytest.raises(GateRejected) as refused:
        promote(2, settings=s)
    assert str(refused.value) == (
        "version 2 not promoted: does not beat the champion: map50_95 0.3000 vs champion v1 "
        f"0.4000 {MARGIN_WORDS} (use --force to promote anyway)"
    )
    assert _champion(s) == "1"

    forced = "promoted by hand with --force (gate skipped)"
    assert promote("2", force=True, settings=s) == AliasMove("gated", "2", "1", forced)
    assert _champion(s) == "2"
    assert Registry(settings=s).version(2).tags[TAG_PROMOTED] == forced
    assert promote(2, settings=s) == AliasMove("gated", "2", "2", "already the champion")

    # v1 beats the forced champion by more than the margin: promoted through the gate.
    gated = (
        "promoted by hand: beats the champion: map50_95 0.4000 vs champion v2 0.3000 "
        + MARGIN_WORDS
    )
    assert promote(1, settings=s) == AliasMove("gated", "1", "2", gated)
    registry = Registry(settings=s)
    assert registry.version(1).tags[TAG_PROMOTED] == gated
    history = registry.client.get_registered_model("gated").tags[TAG_HISTORY]
    assert json.loads(history) == ["1", "2", "1"]


@pytest.mark.parametrize("split", [None, "test"])
def test_promote_scores_the_champion_on_the_versions_data(
    settings: Settings, data_yaml: Path, split: str | None
):
    """v1 was evaluated on today's data (its run names the data and the split, or no split:
    `val`); champion v2 was not, and misses there."""
    s, today = settings, _hash(data_yaml, split or "val")
    v1 = _run(s, ON_TARGET, evaluated=(today, 0.5), data_yaml=str(data_yaml), split=split)
    register(v1, settings=s)
    register(_run(s, OFF_TARGET, evaluated=(OLD_DATA, 0.2)), settings=s)
    promote(2, force=True, settings=s)
    move = promote(1, settings=s)
    assert move == AliasMove(
        "gated", "1", "2",
        f"promoted by hand: beats the champion: map50_95 0.5000 vs champion v2 0.0000 "
        f"{MARGIN_WORDS}",
    )  # fmt: skip
    assert _scores(s, "2", today) == {
        "map50": 0.0, "map50_95": 0.0, "precision": 0.0, "recall": 0.0,
    }  # fmt: skip


def test_promote_gates_a_version_made_without_a_run_on_its_tags(settings: Settings):
    """A version created in MLflow by hand, with an evaluation tag but no run."""
    s = settings
    register(_run(s, OFF_TARGET, evaluated=(OLD_DATA, 0.4)), settings=s)
    registry = Registry(settings=s)
    scores = {"map50": 0.9, "map50_95": 0.5}
    tags = {TAG_EVAL_HASH: OLD_DATA, eval_tag(OLD_DATA): json.dumps(scores)}
    registry.client.create_model_version("gated", registry.version(1).source, tags=tags)
    assert promote(2, settings=s) == AliasMove(
        "gated", "2", "1",
        f"promoted by hand: beats the champion: map50_95 0.5000 vs champion v1 0.4000 "
        f"{MARGIN_WORDS}",
    )  # fmt: skip


def test_promote_refuses_what_cannot_be_gated(settings: Settings):
    s = settings
    registry = Registry(settings=s)
    registry.ensure_model()
    run_id = _run(s, OFF_TARGET)
    source = f"{registry.run(run_id).info.artifact_uri}/{MODEL_ARTIFACT_DIR}"
    unevaluated = registry.create_version(run_id, source, {}, key="unevaluated")
    registry.complete(unevaluated)
    with pytest.raises(RegistryError) as refused:
        promote(unevaluated, settings=s)
    assert str(refused.value) == "version 1 carries no evaluation to gate on"

    pending = registry.create_version(run_id, source, {TAG_EVAL_HASH: OLD_DATA}, key="pending")
    with pytest.raises(RegistryError) as refused:
        promote(pending, force=True, settings=s)
    assert str(refused.value) == (
        f"version 2 is an unfinished registration and is never promoted: register run {run_id} "
        "again to finish it, or `visionops model gc` to remove it"
    )
    assert _champion(s) is None


def test_promote_acts_on_the_model_it_names(settings: Settings, caplog: pytest.LogCaptureFixture):
    """Another registered model than the settings' one; its first champion was set out of band
    (no history): promoting by hand still records it, so a rollback returns to it."""
    from visionops.training.registry import rollback

    s = settings
    for score in (0.4, 0.3):
        register(_run(s, OFF_TARGET, evaluated=(OLD_DATA, score)), name="line-b", settings=s)
    client = Registry("line-b", settings=s).client
    client.delete_registered_model_tag("line-b", TAG_HISTORY)
    with caplog.at_level(logging.INFO, logger="visionops.training.promotion"):
        move = promote(2, force=True, name="line-b", settings=s)
    forced = "promoted by hand with --force (gate skipped)"
    assert move == AliasMove("line-b", "2", "1", forced)
    assert f"line-b: champion v1 -> v2 ({forced})" in caplog.messages
    assert _champion(s) is None  # the settings' model was never touched
    history = client.get_registered_model("line-b").tags[TAG_HISTORY]
    assert json.loads(history) == ["1", "2"]
    assert rollback("line-b", settings=s).version == "1"


def test_forcing_the_first_champion(settings: Settings):
    registry = Registry(settings=settings)
    registry.ensure_model()
    run_id = _run(settings, OFF_TARGET)
    source = f"{registry.run(run_id).info.artifact_uri}/{MODEL_ARTIFACT_DIR}"
    version = registry.create_version(run_id, source, {}, key="by-hand")
    registry.complete(version)
    forced = "promoted by hand with --force (gate skipped)"
    assert promote(version, force=True, settings=settings) == AliasMove("gated", "1", None, forced)
    assert _champion(settings) == "1"
