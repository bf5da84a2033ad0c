"""The gated registry against a real `mlflow server` (artifacts in a real S3 server).

Candidates are finished runs holding the session model's directory with evaluation metrics set
by the test (`_candidate`), so better/equal/worse cases need no extra training; every registry
code path is the real one. Each test has its own registered model name (`mlflow_settings`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException
from typer.testing import CliRunner

from tests.trained import ObservedTraining
from visionops.cli.app import app
from visionops.config import Settings, get_settings
from visionops.errors import GateRejected, ModelNotFound, RegistryError, UsageError
from visionops.models.artifact import METADATA_JSON, MODEL_ONNX, check_model_dir
from visionops.models.sources import resolve_model
from visionops.tracking import connect
from visionops.training.dataset import load_data_yaml
from visionops.training.promotion import promote, register
from visionops.training.registry import (
    CHALLENGER,
    CHAMPION,
    TAG_HISTORY,
    Registry,
    rollback,
)
from visionops.training.registry_versions import list_versions

runner = CliRunner()
OLD_DATA = "0" * 64  # the hash of evaluation data that is no longer around


def _candidate(
    settings: Settings,
    trained: ObservedTraining,
    map50_95: float,
    *,
    data_hash: str,
    data_yaml: str = "",
    map50: float = 0.9,
) -> str:
    """A FINISHED run with the session model's directory and the given evaluation."""
    tracking = connect(settings)
    client = tracking.client
    run = client.create_run(
        tracking.experiment_id,
        tags={
            "visionops.dataset_hash": trained.result.dataset_hash,
            "visionops.git_commit": "0123abc",
            "visionops.eval.data_hash": data_hash,
            "visionops.eval.data_yaml": data_yaml,
            "visionops.eval.split": "val",
        },
    )
    run_id = run.info.run_id
    for name in (MODEL_ONNX, METADATA_JSON):
        client.log_artifact(run_id, str(trained.result.model_dir / name), "model")
    client.log_metric(run_id, "eval.map50", map50)
    client.log_metric(run_id, "eval.map50_95", map50_95)
    client.set_terminated(run_id, "FINISHED")
    return run_id


def _champion(settings: Settings) -> str | None:
    holder = Registry(settings=settings).alias(CHAMPION)
    return str(holder.version) if holder else None


def test_first_better_equal_worse_then_rollback(
    mlflow_settings: Settings, trained: ObservedTraining
):
    s, t = mlflow_settings, trained
    first = register(_candidate(s, t, 0.30, data_hash=OLD_DATA))
    assert (first.version, first.alias, first.promoted) == ("1", CHAMPION, True)
    assert first.reason.startswith("first champion")

    equal = register(_candidate(s, t, 0.30, data_hash=OLD_DATA))
    assert (equal.version, equal.alias, equal.promoted) == ("2", CHALLENGER, False)
    assert "does not beat the champion: map50_95 0.3000 vs champion v1 0.3000" in equal.reason

    worse = register(_candidate(s, t, 0.20, data_hash=OLD_DATA))
    assert (worse.alias, _champion(s)) == (CHALLENGER, "1")

    better = register(_candidate(s, t, 0.40, data_hash=OLD_DATA))
    assert (better.version, better.alias, better.previous_champion) == ("4", CHAMPION, "1")
    assert _champion(s) == "4"

    versions = {v.version: v for v in list_versions()}
    assert versions["4"].aliases == [CHAMPION] and versions["3"].aliases == [CHALLENGER]
    assert versions["2"].aliases == [] and "does not beat" in versions["2"].gate
    assert versions["3"].metrics["map50_95"] == pytest.approx(0.20)
    assert versions["1"].tags["visionops.git_commit"] == "0123abc"
    assert versions["1"].dataset_hash == trained.result.dataset_hash
    listed = runner.invoke(app, ["model", "list"])
    assert listed.exit_code == 0 and "champion" in listed.output and "challenger" in listed.output

    result = runner.invoke(app, ["model", "rollback"])
    assert result.exit_code == 0, result.output
    assert "champion v4 -> v1" in result.output
    assert _champion(s) == "1"
    assert "replaced by v1" in Registry().version(4).tags["visionops.rolled_back"]
    client = connect(s).client
    assert json.loads(client.get_registered_model(s.model_name).tags[TAG_HISTORY]) == ["1"]
    with pytest.raises(RegistryError, match="no previous champion before v1"):
        rollback()


def test_first_model_below_the_minimums_stays_challenger(
    mlflow_settings: Settings, trained: ObservedTraining, settings_env: pytest.MonkeyPatch
):
    settings_env.setenv("VISIONOPS_GATE_MIN_MAP50", "0.95")
    get_settings.cache_clear()
    result = register(_candidate(get_settings(), trained, 0.5, data_hash=OLD_DATA, map50=0.9))
    assert (result.alias, result.promoted) == (CHALLENGER, False)
    assert "below the minimums: map50 0.9000 < minimum 0.9500" in result.reason
    assert _champion(get_settings()) is None


def test_champion_is_reevaluated_on_the_candidates_data(
    mlflow_settings: Settings, trained: ObservedTraining, tiny_data_yaml: Path
):
    s, t = mlflow_settings, trained
    # The champion scored 0.9 on data that is gone; on today's data it scores about 0.
    register(_candidate(s, t, 0.9, data_hash=OLD_DATA))
    today = load_data_yaml(tiny_data_yaml).split_hash("val")
    candidate = register(_candidate(s, t, 0.5, data_hash=today, data_yaml=str(tiny_data_yaml)))
    assert candidate.promoted, candidate.reason
    assert "vs champion v1 0.0" in candidate.reason and "same evaluation data" in candidate.reason
    scored = json.loads(Registry().version(1).tags[f"visionops.eval.{today[:16]}"])
    assert scored["map50_95"] < 0.5

    # Same data again: no re-evaluation, v2's own score on it is the bar.
    worse = register(_candidate(s, t, 0.45, data_hash=today, data_yaml=str(tiny_data_yaml)))
    assert not worse.promoted and "vs champion v2 0.5000" in worse.reason

    # Data that is neither the champion's nor available here: no comparison, no promotion.
    other = "f" * 64
    blind = register(_candidate(s, t, 0.99, data_hash=other, data_yaml="/nowhere/data.yaml"))
    assert not blind.promoted
    assert "cannot compare with champion v2 on the same evaluation data" in blind.reason
    assert _champion(s) == "2"


def test_promote_goes_through_the_gate_unless_forced(
    mlflow_settings: Settings, trained: ObservedTraining
):
    s, t = mlflow_settings, trained
    register(_candidate(s, t, 0.40, data_hash=OLD_DATA))
    register(_candidate(s, t, 0.30, data_hash=OLD_DATA))
    with pytest.raises(GateRejected, match="does not beat the champion"):
        promote(2)
    result = runner.invoke(app, ["model", "promote", "2"])
    assert result.exit_code == 1 and "use --force" in result.output
    result = runner.invoke(app, ["model", "promote", "2", "--force"])
    assert result.exit_code == 0 and "champion v1 -> v2" in result.output
    assert _champion(s) == "2"
    assert "--force" in Registry().version(2).tags["visionops.promoted"]
    assert promote(2).reason == "already the champion"
    assert rollback().version == "1"  # the forced promotion is in the history too

    result = runner.invoke(app, ["model", "promote", "99"])
    assert result.exit_code == 1 and "version=99" in result.output
    result = runner.invoke(app, ["model", "promote", "two"])
    assert result.exit_code == 2 and "a model version is a number" in result.output


def test_unusable_runs_are_refused_and_nothing_is_registered(
    mlflow_settings: Settings, trained: ObservedTraining
):
    tracking = connect(mlflow_settings)
    bare = tracking.client.create_run(tracking.experiment_id)
    tracking.client.set_terminated(bare.info.run_id, "FINISHED")
    with pytest.raises(ModelNotFound, match="no complete model directory"):
        register(bare.info.run_id)
    result = runner.invoke(app, ["model", "register", "--run-id", "0" * 32])
    assert result.exit_code == 1 and "not found" in result.output
    unevaluated = _candidate(mlflow_settings, trained, 0.5, data_hash="")
    with pytest.raises(RegistryError, match="has no evaluation; run `visionops evaluate"):
        register(unevaluated)
    assert list_versions() == []


def test_a_failed_alias_move_leaves_no_half_registered_version(
    mlflow_settings: Settings, trained: ObservedTraining, monkeypatch: pytest.MonkeyPatch
):
    """Fault injection: the server fails exactly when the alias is set (nothing else mocked)."""
    from mlflow import MlflowClient

    def unreachable(*args: object) -> None:
        raise MlflowException("API request to http://mlflow failed with exception boom")

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", unreachable)
    with pytest.raises(RegistryError, match="Now: version 1 was deleted again"):
        register(_candidate(mlflow_settings, trained, 0.5, data_hash=OLD_DATA))
    monkeypatch.undo()
    assert list_versions() == []


def test_resolve_model_follows_the_alias_and_caches_by_version(
    mlflow_settings: Settings, trained: ObservedTraining
):
    s, t = mlflow_settings, trained
    name = s.model_name
    register(_candidate(s, t, 0.30, data_hash=OLD_DATA))
    resolved = resolve_model(f"models:/{name}@champion")
    first = resolved.path
    assert (resolved.version, resolved.source) == ("1", f"models:/{name}@champion")
    assert check_model_dir(first).names == check_model_dir(t.result.model_dir).names
    marker = first / "cached.marker"
    marker.write_text("still the same download")
    assert resolve_model(f"models:/{name}/1").path == first and marker.exists()

    register(_candidate(s, t, 0.50, data_hash=OLD_DATA))
    second = resolve_model(f"models:/{name}@champion")
    assert second.path != first and second.version == "2"
    run = resolve_model(t.result.model_uri).path
    assert (run / MODEL_ONNX).read_bytes() == (t.result.model_dir / MODEL_ONNX).read_bytes()

    with pytest.raises(ModelNotFound):
        resolve_model(f"models:/{name}/99")
    with pytest.raises(ModelNotFound, match="alias"):
        resolve_model(f"models:/{name}@nobody")
    with pytest.raises(UsageError, match="not a registry URI"):
        resolve_model(f"models:/{name}")


def test_embedded_store_needs_no_server(
    settings_env: pytest.MonkeyPatch, trained: ObservedTraining, tmp_path: Path
):
    """The default: sqlite and artifacts in the data dir, nothing written where we stand."""
    settings_env.chdir(tmp_path)
    settings_env.setenv("VISIONOPS_MLFLOW_EXPERIMENT", "embedded")
    settings_env.setenv("VISIONOPS_MODEL_NAME", "embedded-model")
    get_settings.cache_clear()
    settings = get_settings()
    assert settings.mlflow_tracking_uri is None
    result = register(_candidate(settings, trained, 0.3, data_hash=OLD_DATA))
    assert (result.version, result.alias) == ("1", CHAMPION)
    served = resolve_model("models:/embedded-model@champion").path
    assert check_model_dir(served).names == check_model_dir(trained.result.model_dir).names
    mlflow_dir = settings.data_dir / "mlflow"
    assert (mlflow_dir / "mlflow.db").is_file()
    assert list((mlflow_dir / "artifacts").rglob(f"model/{MODEL_ONNX}"))
    assert list(tmp_path.iterdir()) == []
    # A model-training experiment (MLflow 3 opens it on the runs table, not the GenAI view),
    # with the runs table's VisionOps columns as a shared view.
    experiment = connect(settings).client.get_experiment_by_name("embedded")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(experiment.tags["mlflow.sharedViewState.visionops"])
    assert "metrics.`eval.map50_95`" in view["selectedColumns"]


def _run_holding(settings: Settings, model_dir: Path) -> str:
    """A FINISHED run whose `model/` is `model_dir`, not evaluated yet."""
    tracking = connect(settings)
    run_id = tracking.client.create_run(tracking.experiment_id).info.run_id
    for name in (MODEL_ONNX, METADATA_JSON):
        tracking.client.log_artifact(run_id, str(model_dir / name), "model")
    tracking.client.set_terminated(run_id, "FINISHED")
    return run_id


def test_a_known_better_model_is_promoted_and_a_known_worse_one_is_not(
    mlflow_settings: Settings, detecting, tmp_path: Path
):
    """Two real models on the same data: one trained until it detects (the session's
    `detecting` model) and an untrained YOLOv8n with the same classes. pycocotools scores both
    here, independently of the gate; the gate evaluates them itself and must promote the trained
    one over the untrained champion, and keep the trained champion over the untrained one."""
    from tests.detecting import IMGSZ, NAMES
    from tests.models import untrained_model_dir
    from tests.trained import cocoeval_map

    result, shapes = detecting
    untrained = untrained_model_dir(tmp_path / "untrained", names=NAMES, imgsz=IMGSZ)
    good, bad = cocoeval_map(shapes, result.model_dir), cocoeval_map(shapes, untrained)
    assert good > bad + 0.1, (good, bad)

    first = register(_run_holding(mlflow_settings, untrained), data_yaml=shapes)
    assert (first.version, first.promoted) == ("1", True)  # the first model needs the minimums
    assert first.metrics["map50_95"] == pytest.approx(bad, abs=1e-9)

    better = register(_run_holding(mlflow_settings, result.model_dir), data_yaml=shapes)
    assert (better.version, better.promoted, better.alias) == ("2", True, CHAMPION)
    assert better.reason == (
        f"beats the champion: map50_95 {good:.4f} vs champion v1 {bad:.4f} "
        "on the same evaluation data (margin 0.0050)"
    )

    worse = register(_run_holding(mlflow_settings, untrained), data_yaml=shapes)
    assert (worse.version, worse.promoted, worse.alias) == ("3", False, CHALLENGER)
    assert worse.reason == (
        f"does not beat the champion: map50_95 {bad:.4f} vs champion v2 {good:.4f} "
        "on the same evaluation data (margin 0.0050)"
    )
    assert _champion(mlflow_settings) == "2"


def _with_lineage(settings: Settings, run_id: str, **lineage: str) -> str:
    """Tag a candidate run with lineage, as the training component does."""
    client = connect(settings).client
    for key, value in lineage.items():
        client.set_tag(run_id, f"visionops.lineage.{key}", value)
    return run_id


def test_lineage_the_gate_tags_and_the_fair_table_after_a_retraining(
    mlflow_settings: Settings, trained: ObservedTraining, tiny_data_yaml: Path
):
    """A first model, then one fine-tuned from it after a drift check: the version carries its
    run's lineage, the replaced champion says when and by what, `model show` prints the chain and
    `model list` puts both versions' scores on the same data in one column, in 80 columns."""
    s, t = mlflow_settings, trained
    first_run = _with_lineage(
        s, _candidate(s, t, 0.9, data_hash=OLD_DATA), trigger="manual", training_pipeline_run="p1"
    )
    register(first_run)
    today = load_data_yaml(tiny_data_yaml).split_hash("val")
    window = "2026-12-07T10:00:00+00:00 .. 2026-12-07T11:00:00+00:00"
    second_run = _with_lineage(
        s, _candidate(s, t, 0.5, data_hash=today, data_yaml=str(tiny_data_yaml)),
        trigger="drift", parent_model=s.model_name, parent_version="1", drift_run="d0c",
        drift_window=window, drift_reference=f"{s.model_name} v1",
        monitoring_pipeline_run="m1", training_pipeline_run="p2",
    )  # fmt: skip
    assert register(second_run).promoted

    registry = Registry()
    second, first = registry.version(2).tags, registry.version(1).tags
    assert second["visionops.lineage.parent_version"] == "1"
    assert second["visionops.lineage.drift_window"] == window
    assert second["visionops.gate.decision"] == CHAMPION
    assert first["visionops.gate.decision"] == "replaced"
    assert first["visionops.replaced"].startswith("by v2 at 20")
    assert f"registration of run {second_run}" in first["visionops.replaced"]

    shown = runner.invoke(app, ["model", "show", "2"])
    assert shown.exit_code == 0, shown.output
    text = " ".join(shown.output.split())
    assert f"model {s.model_name} (VISIONOPS_MODEL_NAME) v2" in text
    assert (
        f"v2: fine-tuned from v1 of {s.model_name} after drift check d0c on window {window} "
        f"against {s.model_name} v1 (training run {second_run}, training pipeline p2, "
        "monitoring pipeline m1)"
    ) in text
    assert f"v1: trained from scratch (training run {first_run}, training pipeline p1)" in text

    listed = runner.invoke(app, ["model", "list"])
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    assert f"model {s.model_name} (VISIONOPS_MODEL_NAME)" in lines[0]  # a name as long as it is
    assert max(len(line) for line in lines[1:]) <= 80, listed.output
    header = next(line for line in lines if "version" in line)
    assert header.split("┃")[4].strip() == f"data {today[:6]}"  # the data both were scored on
    rows = {line.split("│")[1].strip(): line.split("│") for line in lines if line.startswith("│")}
    assert rows["2"][4].strip() == "0.500 (0.900)"
    assert float(rows["1"][4].split()[0]) < 0.5  # v1 re-evaluated there by the gate
    assert any(line.startswith("v2 gate: beats the champion") for line in lines)

    other = runner.invoke(app, ["model", "list", "--name", "nothing-here"])
    assert other.exit_code == 0, other.output
    said = " ".join(other.output.split())
    assert "model nothing-here (--name)" in said
    # The registry the session shares holds other tests' models too: each is listed, with the flag.
    assert "no registered versions of nothing-here" in said and "this registry holds" in said
    assert f"{s.model_name} (2 versions, champion v2)" in said and "pass --name " in said


def test_lineage_fields_are_checked_and_a_chain_stops_at_a_missing_parent():
    from visionops.training.lineage import chain, parse_lineage

    assert parse_lineage('{"trigger": "drift", "drift_run": ""}') == {"trigger": "drift"}
    with pytest.raises(UsageError, match="unknown lineage fields \\['parent'\\]"):
        parse_lineage('{"parent": "1"}')
    with pytest.raises(UsageError, match="JSON object"):
        parse_lineage("[1]")
    tags = {
        "3": {"visionops.lineage.parent_version": "2"},
        "2": {"visionops.lineage.parent_version": "1"},
    }
    links = chain("3", lambda v: (f"r{v}", tags[v]) if v in tags else None)
    assert [link.version for link in links] == ["3", "2"]  # v1 was deleted
    loop = {"1": {"visionops.lineage.parent_version": "1"}}
    assert len(chain("1", lambda v: (None, loop[v]))) == 1
