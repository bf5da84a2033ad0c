"""The registry under faults: a real `mlflow server` (artifacts in a real SeaweedFS) behind a
fault-injecting proxy, killed and restarted for real. Each scenario counts exactly what exists
afterwards: versions, aliases, the champion history, and what `visionops model list` shows.

Candidates are finished runs whose model directory holds small stand-in files: registration never
opens them (every candidate is scored on the same evaluation data, so the gate compares tags).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.faultproxy import Fault
from visionops.cli.app import app
from visionops.config import Settings, get_settings
from visionops.errors import RegistryError, StorageError, VisionOpsError
from visionops.models.artifact import METADATA_JSON, MODEL_ONNX
from visionops.tracking import connect
from visionops.training.promotion import register
from visionops.training.registry import (
    CHALLENGER,
    CHAMPION,
    TAG_HISTORY,
    Registry,
    rollback,
)
from visionops.training.registry_versions import list_versions, version_infos
from visionops.training.train import train

pytestmark = pytest.mark.faults

runner = CliRunner()
DATA = "0" * 64  # every candidate's evaluation data
CREATE = r"/model-versions/create$"
ALIAS = r"/registered-models/alias"
MODEL_TAG = r"/registered-models/set-tag$"
TRIES = 2  # MLflow's client tries each call twice here (VISIONOPS_MLFLOW_RETRIES=1, conftest)


def _candidate(settings: Settings, tmp: Path, map50_95: float) -> str:
    """A FINISHED run with a model directory and an evaluation on DATA."""
    tracking = connect(settings)
    client = tracking.client
    run = client.create_run(
        tracking.experiment_id,
        tags={"visionops.eval.data_hash": DATA, "visionops.git_commit": "0123abc"},
    )
    run_id = run.info.run_id
    folder = tmp / run_id
    folder.mkdir(parents=True)
    (folder / MODEL_ONNX).write_bytes(b"stand-in: registration never opens it")
    (folder / METADATA_JSON).write_text(json.dumps({"names": ["a"], "imgsz": 64}))
    client.log_artifacts(run_id, str(folder), "model")
    client.log_metric(run_id, "eval.map50", 0.9)
    client.log_metric(run_id, "eval.map50_95", map50_95)
    client.set_terminated(run_id, "FINISHED")
    return run_id


def _state(settings: Settings) -> dict[str, object]:
    """Everything a user could see of the model: versions, pending ones, aliases, history."""
    registry = Registry(settings=settings)
    versions = version_infos(registry)
    holders = {a: registry.alias(a) for a in (CHAMPION, CHALLENGER)}
    raw = json.loads(
        connect(settings)
        .client.get_registered_model(settings.model_name)
        .tags.get(TAG_HISTORY, "[]")
    )
    return {
        "versions": sorted(int(v.version) for v in versions),
        "pending": sorted(int(v.version) for v in versions if v.pending),
        CHAMPION: int(holders[CHAMPION].version) if holders[CHAMPION] else None,
        CHALLENGER: int(holders[CHALLENGER].version) if holders[CHALLENGER] else None,
        "history": [int(v) for v in raw],
    }


def _cli(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["model", *args])
    return result.exit_code, " ".join(result.output.split())  # rich wraps long lines


def test_server_killed_right_after_it_created_the_version(faults, tmp_path: Path):
    """SIGKILL the server the moment its answer to the create is on its way: the version exists,
    nothing else does. The error says so; registering the run again finishes that version."""
    settings = get_settings()
    run_id = _candidate(settings, tmp_path, 0.3)
    faults.mlflow_proxy.add(Fault("pass", CREATE, "POST", then=faults.mlflow.process.kill))
    code, output = _cli("register", "--run-id", run_id)
    assert code == 1, output
    assert f"cannot reach MLflow at {faults.mlflow_proxy.url}" in output
    assert "Now: version 1 was created and is marked pending (never served)" in output
    assert f"registering run {run_id} again finishes it, `visionops model gc` removes it" in output

    faults.mlflow.process.start()  # the server is back, with what it had stored
    assert _state(settings) == {
        "versions": [1], "pending": [1], CHAMPION: None, CHALLENGER: None, "history": [],
    }  # fmt: skip
    code, output = _cli("list")
    assert code == 0 and "pending" in output, output

    code, output = _cli("register", "--run-id", run_id)
    assert code == 0 and "v1 -> champion: first champion" in output, output
    assert _state(settings) == {
        "versions": [1], "pending": [], CHAMPION: 1, CHALLENGER: None, "history": [1],
    }  # fmt: skip
    code, output = _cli("register", "--run-id", run_id)  # once more: nothing new
    assert code == 0 and "v1 -> champion: already registered as v1" in output, output
    assert faults.mlflow_proxy.count(CREATE, "POST") == 1
    assert _state(settings)["versions"] == [1]


def test_a_lost_create_answer_is_retried_by_mlflow_without_a_second_version(faults, tmp_path: Path):
    """The answer to the create never arrives, the server stays up: MLflow's client repeats the
    POST (a second version on the server), VisionOps keeps the first and deletes the repeat."""
    settings = get_settings()
    register(_candidate(settings, tmp_path, 0.3))
    run_id = _candidate(settings, tmp_path, 0.5)
    faults.mlflow_proxy.add(Fault("drop", CREATE, "POST"))
    result = register(run_id)
    assert (result.version, result.alias, result.previous_champion) == ("2", CHAMPION, "1")
    assert faults.mlflow_proxy.count(CREATE, "POST") == 3  # v1, then v2 and its repeat v3
    assert _state(settings) == {
        "versions": [1, 2], "pending": [], CHAMPION: 2, CHALLENGER: None, "history": [1, 2],
    }  # fmt: skip


def test_a_create_answered_after_the_client_timeout_makes_one_version(
    faults, tmp_path: Path, settings_env: pytest.MonkeyPatch
):
    """A slow server: the create's answer comes after the client's timeout, so MLflow's client
    repeats the POST while the first one already made a version. One version is left."""
    settings = get_settings()
    run_id = _candidate(settings, tmp_path, 0.3)
    settings_env.setenv("VISIONOPS_MLFLOW_TIMEOUT", "3")  # for the registration only
    get_settings.cache_clear()
    faults.mlflow_proxy.add(Fault("delay", CREATE, "POST", seconds=6))
    result = register(run_id)
    assert (result.version, result.alias) == ("1", CHAMPION)
    assert faults.mlflow_proxy.count(CREATE, "POST") == TRIES
    assert _state(settings) == {
        "versions": [1], "pending": [], CHAMPION: 1, CHALLENGER: None, "history": [1],
    }  # fmt: skip


def test_a_lost_create_answer_then_a_dead_server_leaves_an_orphan_that_gc_removes(
    faults, tmp_path: Path
):
    settings = get_settings()
    run_id = _candidate(settings, tmp_path, 0.3)
    faults.mlflow_proxy.add(Fault("drop", CREATE, "POST", then=faults.mlflow.process.kill))
    code, output = _cli("register", "--run-id", run_id)
    assert code == 1, output
    assert "Whether a version was created cannot be checked now" in output
    assert f"registering run {run_id} again finishes it, `visionops model gc` removes it" in output
    faults.mlflow.process.start()
    assert _state(settings)["pending"] == [1]  # it was created: the answer got lost

    code, output = _cli("promote", "1", "--force")  # an orphan is never promoted
    assert code == 1 and "version 1 is an unfinished registration" in output, output
    code, output = _cli("list")
    assert code == 0 and "pending" in output, output
    # --min-age spares a version whose registration beat recently: it may still be running.
    code, output = _cli("gc", "--min-age", "3600")
    assert code == 0 and "still pending, younger than --min-age: v1" in output, output
    code, output = _cli("gc")
    assert code == 0 and "removed orphan versions: v1" in output, output
    assert _state(settings) == {
        "versions": [], "pending": [], CHAMPION: None, CHALLENGER: None, "history": [],
    }  # fmt: skip
    code, output = _cli("list")
    assert code == 0 and "pending" not in output, output


def test_the_next_registration_removes_the_orphans_of_a_dead_registration(
    faults, tmp_path: Path, settings_env: pytest.MonkeyPatch
):
    """Both answers to a create lost (MLflow's client tries twice), and the lookup after it
    refused: two versions exist, pending, and nothing renews their heartbeat. The very next
    registration removes them once they are VISIONOPS_REGISTRY_ORPHAN_AFTER_S without a heartbeat
    (waiting for that if need be), and `model list` shows none."""
    settings_env.setenv("VISIONOPS_REGISTRY_ORPHAN_AFTER_S", "2")
    get_settings.cache_clear()
    settings = get_settings()
    run_id = _candidate(settings, tmp_path, 0.3)
    lookups = Fault("status", r"/model-versions/search", "GET", times=0)  # armed by the drop

    def arm() -> None:
        lookups.times = TRIES

    faults.mlflow_proxy.add(Fault("drop", CREATE, "POST", times=TRIES, then=arm))
    faults.mlflow_proxy.add(lookups)
    with pytest.raises(RegistryError, match="Whether a version was created cannot be checked"):
        register(run_id)
    assert _state(settings)["pending"] == [1, 2]
    result = register(_candidate(settings, tmp_path, 0.4))
    assert (result.version, result.alias) == ("3", CHAMPION)
    assert _state(settings) == {
        "versions": [3], "pending": [], CHAMPION: 3, CHALLENGER: None, "history": [3],
    }  # fmt: skip
    code, output = _cli("list")
    assert code == 0 and "pending" not in output, output


def test_a_registration_that_is_alive_keeps_its_version(
    faults, tmp_path: Path, settings_env: pytest.MonkeyPatch
):
    """A pending version whose registration is still beating is not an orphan: a registration
    beside it leaves it alone (after a bounded wait) and becomes champion; once the beating stops,
    the next registration waits for the heartbeat to go stale and removes it."""
    settings_env.setenv("VISIONOPS_REGISTRY_ORPHAN_AFTER_S", "3")
    get_settings.cache_clear()
    settings = get_settings()
    registry = Registry(settings=settings)
    registry.ensure_model()
    slow = _candidate(settings, tmp_path, 0.9)
    version = registry.create_version(slow, f"runs:/{slow}/model", {}, "slow-registration")
    with registry.heartbeat(version, every_s=0.2):
        beside = register(_candidate(settings, tmp_path, 0.4))
        assert (beside.version, beside.alias) == ("2", CHAMPION)
        assert _state(settings)["pending"] == [1]
    after = register(_candidate(settings, tmp_path, 0.5))
    assert (after.version, after.alias) == ("3", CHAMPION)
    assert _state(settings) == {
        "versions": [2, 3], "pending": [], CHAMPION: 3, CHALLENGER: None, "history": [2, 3],
    }  # fmt: skip


def test_refused_alias_calls_change_nothing(faults, tmp_path: Path):
    """Every alias move answered 503: the new version is deleted again, the champion, the
    challenger and the history stay as they were, and rollback moves nothing either."""
    settings = get_settings()
    register(_candidate(settings, tmp_path, 0.3))
    register(_candidate(settings, tmp_path, 0.5))
    before = _state(settings)
    assert before == {
        "versions": [1, 2], "pending": [], CHAMPION: 2, CHALLENGER: None, "history": [1, 2],
    }  # fmt: skip
    faults.mlflow_proxy.add(Fault("status", ALIAS, "POST", times=None))
    run_id = _candidate(settings, tmp_path, 0.9)
    code, output = _cli("register", "--run-id", run_id)
    assert code == 1, output
    assert f"MLflow at {faults.mlflow_proxy.url} failed while trying to make v3 the champion" in (
        output
    )
    assert "it answered 503" in output and "Now: version 3 was deleted again" in output
    code, output = _cli("rollback")
    assert code == 1 and "it answered 503" in output, output
    faults.mlflow_proxy.clear()
    assert _state(settings) == before


def test_a_history_that_cannot_be_written_moves_the_alias_back(faults, tmp_path: Path):
    settings = get_settings()
    register(_candidate(settings, tmp_path, 0.3))
    faults.mlflow_proxy.add(Fault("status", MODEL_TAG, "POST", times=None))
    with pytest.raises(RegistryError, match=r"champion stays v1.*Now: version 2 was deleted again"):
        register(_candidate(settings, tmp_path, 0.5))
    faults.mlflow_proxy.clear()
    assert _state(settings) == {
        "versions": [1], "pending": [], CHAMPION: 1, CHALLENGER: None, "history": [1],
    }  # fmt: skip


def test_two_failures_in_a_row_are_reported_and_gc_repairs_the_history(faults, tmp_path: Path):
    """The history write refused, then the move back refused too: the error says champion moved
    and the history lags; the version is kept (it serves); `gc` marks it and fixes the history."""
    settings = get_settings()
    register(_candidate(settings, tmp_path, 0.3))
    move_back = Fault("status", ALIAS, "POST", times=0)  # armed by the refused history write

    def arm() -> None:
        move_back.times = TRIES

    faults.mlflow_proxy.add(Fault("status", MODEL_TAG, "POST", times=TRIES, then=arm))
    faults.mlflow_proxy.add(move_back)
    run_id = _candidate(settings, tmp_path, 0.5)
    code, output = _cli("register", "--run-id", run_id)
    assert code == 1, output
    assert "champion moved to v2, but the history could not record it" in output
    assert "`visionops model gc` adds it to the history" in output
    assert "Now: version 2 exists and holds champion" in output
    assert _state(settings) == {
        "versions": [1, 2], "pending": [2], CHAMPION: 2, CHALLENGER: None, "history": [1],
    }  # fmt: skip
    code, output = _cli("gc")
    assert code == 0 and "marked registered (they hold an alias): v2" in output, output
    assert "champion history ['1'] -> ['1', '2']" in output
    assert _state(settings) == {
        "versions": [1, 2], "pending": [], CHAMPION: 2, CHALLENGER: None, "history": [1, 2],
    }  # fmt: skip


def test_history_and_rollback_skip_versions_that_no_longer_exist(faults, tmp_path: Path):
    settings = get_settings()
    for score in (0.3, 0.4, 0.5):
        register(_candidate(settings, tmp_path, score))
    connect(settings).client.delete_model_version(settings.model_name, "2")  # by hand, in MLflow
    assert Registry().history() == ["1", "3"]
    move = rollback()
    assert (move.previous, move.version) == ("3", "1")
    assert _state(settings) == {
        "versions": [1, 3], "pending": [], CHAMPION: 1, CHALLENGER: None, "history": [1],
    }  # fmt: skip
    code, output = _cli("gc")
    assert code == 0 and "removed orphan versions: none" in output, output


def test_outages_name_the_service_that_failed(
    faults, tmp_path: Path, tiny_data_yaml: Path, settings_env: pytest.MonkeyPatch
):
    """S3 behind MLflow down, MLflow down, MLflow not answering: each error says which, and
    where, in the register, evaluate and train paths (train stops before training)."""
    settings = get_settings()
    run_id = _candidate(settings, tmp_path, 0.3)
    mlflow = faults.mlflow_proxy.url

    faults.s3_proxy.down()  # the S3 behind the MLflow server
    code, output = _cli("register", "--run-id", run_id)
    assert code == 1, output
    assert "the artifact store behind MLflow failed while trying to list the model directory" in (
        output
    )
    assert f"MLflow at {mlflow} answers, but its artifact store does not" in output
    assert "unreachable" not in output and "too many 500" not in output
    result = runner.invoke(app, ["evaluate", "--model", f"runs:/{run_id}/model",
                                 "--data", str(tiny_data_yaml)])  # fmt: skip
    assert result.exit_code == 1 and "artifact store behind MLflow" in result.output
    with pytest.raises(StorageError, match="artifact store behind MLflow failed while trying to "
                       "reach the artifact store of run"):  # fmt: skip
        train(tiny_data_yaml, epochs=1, imgsz=64)
    faults.s3_proxy.up()

    faults.mlflow_proxy.down()  # MLflow itself
    refused = f"cannot reach MLflow at {mlflow} (network: connection refused)"
    code, output = _cli("register", "--run-id", run_id)
    assert code == 1 and refused in output, output
    result = runner.invoke(app, ["evaluate", "--model", f"runs:/{run_id}/model",
                                 "--data", str(tiny_data_yaml)])  # fmt: skip
    assert result.exit_code == 1 and refused in " ".join(result.output.split()), result.output
    with pytest.raises(VisionOpsError, match=re.escape(refused)):
        train(tiny_data_yaml, epochs=1, imgsz=64)
    faults.mlflow_proxy.up()

    settings_env.setenv("VISIONOPS_MLFLOW_TIMEOUT", "2")
    get_settings.cache_clear()
    faults.mlflow_proxy.add(Fault("hang", r"/runs/get", times=None))  # up, but never answers
    code, output = _cli("register", "--run-id", run_id)
    assert code == 1 and f"cannot reach MLflow at {mlflow}" in output, output
    assert "no answer within the timeout" in output, output
    result = runner.invoke(app, ["evaluate", "--model", f"runs:/{run_id}/model",
                                 "--data", str(tiny_data_yaml)])  # fmt: skip
    output = " ".join(result.output.split())
    assert result.exit_code == 1 and f"cannot reach MLflow at {mlflow}" in output, output
    assert "no answer within the timeout" in output, output
    faults.mlflow_proxy.clear()
    assert list_versions() == []
