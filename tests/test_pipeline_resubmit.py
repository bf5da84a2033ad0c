"""Re-submitting training: one training run per monitoring run, even when the step is retried.

Locally the submission is a real `visionops pipeline run training --local` in its own process.
On a cluster it goes through `kfp.Client`; no KFP server can run here, so its REST layer answers
from `tests/kfp_api.py` (the client still builds and parses every request).
"""

# No `from __future__ import annotations`: KFP reads the real annotation objects.
import json
import time
from pathlib import Path

import pytest
from kfp import dsl, local

from components import visionops_component
from tests.kfp_api import API, KfpApi
from visionops.errors import PipelineError
from visionops.orchestration.local import read_run
from visionops.orchestration.resubmit import (
    SUBMITTED,
    list_submissions,
    read_submission,
    submit_training,
)

pytestmark = pytest.mark.filterwarnings("ignore:You may be attemping:RuntimeWarning")


@pytest.fixture
def bad_dataset(tmp_path: Path) -> str:
    """A folder that fetches but fails validation: the submitted run ends within seconds."""
    folder = tmp_path / "not-vision"
    folder.mkdir()
    (folder / "README.txt").write_text("no products here\n")
    return str(folder)


def _wait_for_summary(run_dir: Path, timeout: float = 120):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while (run := read_run(run_dir)) is None:
        assert time.monotonic() < deadline, f"no summary in {run_dir}"
        time.sleep(0.5)
    return run


def test_a_local_submission_starts_one_run_in_its_own_process(bad_dataset: str) -> None:
    first = submit_training("monitor-1", {"dataset": bad_dataset, "epochs": "2"}, mode="local")
    again = submit_training("monitor-1", {"dataset": bad_dataset}, mode="local")

    assert (first.status, first.already, again.already) == (SUBMITTED, False, True)
    assert again.pid == first.pid and again.run_name == first.run_name == "training-after-monitor-1"
    assert [s.key for s in list_submissions() if s.key == "monitor-1"] == ["monitor-1"]
    run = _wait_for_summary(Path(first.run_dir))
    assert run.params == {"dataset": bad_dataset, "epochs": 2}  # typed by the pipeline
    assert run.status == "failed" and run.steps["validate-dataset"].state == "failed"
    assert "pipeline training (local)" in Path(first.log).read_text()


class _StepKilled(BaseException):
    """The step's process killed while it starts the run (SIGKILL, OOM, a node going away)."""


def test_a_local_retry_after_an_interrupted_submission_starts_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """README: the record is written before submitting; a retry that finds it submits nothing.
    Locally a `submitting` record may have a running process behind it (the step died after the
    run started, before it could complete the record), so the retry must not start a second."""
    import subprocess

    started: list[list[str]] = []

    def killed_while_starting(command: list[str], **_: object) -> None:
        started.append(command)
        raise _StepKilled

    monkeypatch.setattr(subprocess, "Popen", killed_while_starting)
    with pytest.raises(_StepKilled):
        submit_training("monitor-6", {"epochs": 1}, mode="local")
    assert len(started) == 1
    assert read_submission("monitor-6").status == "submitting"

    retried = submit_training("monitor-6", {"epochs": 1}, mode="local")

    assert len(started) == 1  # no second process
    assert (retried.already, retried.status) == (True, "submitting")
    assert retried.run_name == "training-after-monitor-6"
    assert read_submission("monitor-6").status == "submitting"


def test_auto_mode_outside_a_pod_submits_locally_and_records_when(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """`auto` (the default) is `local` outside a pod; the record says when, in UTC, and the
    step's log says what was started and, on a retry, that it was started already."""
    import logging
    import subprocess
    from datetime import UTC, datetime

    class _Started:
        pid = 4242

    # No process needed here: test_a_local_submission_starts_one_run_in_its_own_process starts
    # the real one; this holds the mode, the record and the log lines.
    monkeypatch.setattr(subprocess, "Popen", lambda *_, **__: _Started())
    before = datetime.now(UTC).replace(microsecond=0)
    with caplog.at_level(logging.INFO, logger="visionops.orchestration.resubmit"):
        first = submit_training("monitor-7", {"epochs": 1})
        again = submit_training("monitor-7", {"epochs": 1})
    assert (first.mode, first.pid, again.already) == ("local", 4242, True)
    recorded = read_submission("monitor-7")
    assert recorded.mode == "local" and recorded.pid == 4242
    when = datetime.fromisoformat(recorded.submitted_at)
    assert when.utcoffset() is not None and before <= when <= datetime.now(UTC)
    messages = [r.getMessage() for r in caplog.records]
    assert "submitted training-after-monitor-7 (local) for monitor-7" in messages
    assert "training for monitor-7 was submitted already: training-after-monitor-7" in messages


def test_an_unknown_mode_is_a_usage_error_naming_it() -> None:
    from visionops.errors import UsageError

    with pytest.raises(UsageError) as caught:
        submit_training("monitor-8", {}, mode="kubernetes")
    assert str(caught.value) == (
        "unknown submission mode 'kubernetes'; use auto, cluster, local, docker"
    )
    assert read_submission("monitor-8") is None


@visionops_component
def submit_then_fail_once(job_id: str, dataset: str, attempts: str) -> str:
    """Submits, then fails its first attempt as a lost connection would."""
    from pathlib import Path

    from visionops.orchestration.resubmit import submit_training

    submission = submit_training(job_id, {"dataset": dataset}, mode="local")
    counter = Path(attempts)
    done = int(counter.read_text()) if counter.exists() else 0
    counter.write_text(str(done + 1))
    if done == 0:
        raise ConnectionError("lost the connection after submitting")
    return f"{submission.key} {submission.run_name} already={submission.already}"


@dsl.pipeline(name="retried-submission")
def retried_submission(dataset: str, attempts: str) -> str:
    task = submit_then_fail_once(
        job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, dataset=dataset, attempts=attempts
    )
    task.set_retry(num_retries=2, backoff_duration="0s")
    return task.output


def test_a_retried_step_submits_exactly_once(
    bad_dataset: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "out"))
    before = {s.key for s in list_submissions()}

    task = retried_submission(dataset=bad_dataset, attempts=str(tmp_path / "attempts"))

    key, run_name, already = task.output.split(" ")
    assert (tmp_path / "attempts").read_text() == "2"
    assert already == "already=True" and run_name == f"training-after-{key}"
    new = [s for s in list_submissions() if s.key not in before]
    assert [s.key for s in new] == [key]
    _wait_for_summary(Path(new[0].run_dir))  # the one run it started ran


@pytest.fixture
def kfp_api(settings_env: pytest.MonkeyPatch) -> KfpApi:
    from kfp_server_api import rest

    from visionops.config import get_settings

    api = KfpApi(pipelines={"visionops-training": "pipeline-known"})
    api.versions["pipeline-known"] = ["version-uploaded-by-ui"]
    settings_env.setattr(rest.RESTClientObject, "request", lambda _, *a, **k: api.request(*a, **k))
    settings_env.setenv("VISIONOPS_KFP_HOST", "http://kfp.invalid:8888")
    get_settings.cache_clear()
    return api


def test_cluster_submission_runs_the_uploaded_pipeline(kfp_api: KfpApi) -> None:
    submission = submit_training(
        "monitor-2", {"dataset": "s3://visionops/vision", "extra_data": "s3://visionops/new",
                      "epochs": "5"}, mode="cluster",
    )  # fmt: skip

    (create,) = kfp_api.created_runs()
    assert create.body["display_name"] == "training-after-monitor-2"
    assert create.body["experiment_id"] == "exp-1"
    assert create.body["pipeline_version_reference"] == {
        "pipeline_id": "pipeline-known",
        "pipeline_version_id": "version-uploaded-by-ui",
    }
    assert create.body["runtime_config"]["parameters"] == {
        "dataset": "s3://visionops/vision", "extra_data": "s3://visionops/new", "epochs": 5,
    }  # fmt: skip
    assert submission.url == f"http://kfp.invalid:8888/#/runs/details/{submission.run_id}"
    assert read_submission("monitor-2").status == SUBMITTED


def test_cluster_retry_after_a_lost_answer_finds_the_run_instead_of_a_second(
    kfp_api: KfpApi,
) -> None:
    kfp_api.drop_next_run_create = True
    with pytest.raises(Exception, match="Connection aborted"):
        submit_training("monitor-3", {"epochs": 1}, mode="cluster")
    assert read_submission("monitor-3").status == "submitting"

    retried = submit_training("monitor-3", {"epochs": 1}, mode="cluster")

    assert len(kfp_api.created_runs()) == 1
    assert retried.already and retried.run_id == kfp_api.runs[0]["run_id"]
    assert read_submission("monitor-3").status == SUBMITTED


def test_the_settings_given_decide_where_the_record_is(kfp_api: KfpApi, tmp_path: Path) -> None:
    from visionops.config import get_settings

    elsewhere = get_settings().model_copy(update={"data_dir": tmp_path / "elsewhere"})
    submit_training("monitor-9", {}, mode="cluster", settings=elsewhere)
    assert read_submission("monitor-9", elsewhere).status == SUBMITTED
    assert read_submission("monitor-9") is None  # not in the default data dir
    again = submit_training("monitor-9", {}, mode="cluster", settings=elsewhere)
    assert again.already and len(kfp_api.created_runs()) == 1


def test_cluster_submission_uploads_the_installed_pipeline_when_missing(kfp_api: KfpApi) -> None:
    kfp_api.pipelines.clear()
    submit_training("monitor-4", {}, mode="cluster")

    (upload,) = [r for r in kfp_api.requests if r.path == f"{API}/pipelines/upload"]
    assert upload.query["name"] == "visionops-training"
    filename, content, _ = dict(upload.files)["uploadfile"]
    assert filename.endswith("training.yaml") and b"visionops-training" in content
    (create,) = kfp_api.created_runs()
    assert create.body["pipeline_version_reference"]["pipeline_id"] == "pipeline-0"


def test_a_refused_cluster_submission_can_be_retried(kfp_api: KfpApi) -> None:
    kfp_api.refuse_next_run_create = True
    with pytest.raises(PipelineError, match="500") as refused:
        submit_training("monitor-5", {}, mode="cluster")
    failed = read_submission("monitor-5")
    assert (failed.status, failed.error) == ("failed", str(refused.value))

    assert not submit_training("monitor-5", {}, mode="cluster").already
    assert len(kfp_api.created_runs()) == 2  # the refused one created nothing


def test_remote_run_uploads_a_new_version_and_follows_the_run(kfp_api: KfpApi) -> None:
    from pipelines import load_pipeline
    from visionops.orchestration.remote import run_remote

    monitoring = load_pipeline("monitoring")
    run = run_remote(
        "monitoring", monitoring, ["min_rows=20"], host="http://kfp.invalid:8888", wait_seconds=30
    )
    assert run.state == "succeeded"
    first = [r.path for r in kfp_api.requests if r.method == "POST"]
    assert first == [f"{API}/pipelines/upload", f"{API}/runs"]  # a new pipeline
    (create,) = kfp_api.created_runs()
    assert create.body["runtime_config"]["parameters"] == {"min_rows": 20}

    kfp_api.final_state = "FAILED"
    with pytest.raises(PipelineError, match="ended failed"):
        run_remote("monitoring", monitoring, [], host="http://kfp.invalid:8888", wait_seconds=30)
    (upload,) = [r for r in kfp_api.requests if r.path.endswith("/upload_version")]
    assert upload.query["pipelineid"] == kfp_api.pipelines["visionops-monitoring"]
    assert json.dumps(create.body)  # the request body is plain JSON
