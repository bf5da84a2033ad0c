"""Re-submit the training pipeline from a monitoring run: at most one training run per key.

The key is the monitoring run's id (`dsl.PIPELINE_JOB_ID_PLACEHOLDER`), the same for every retry
of its retrain step. A record `pipelines/submissions/<key>.json` in the object store (the data dir
locally) is written *before* submitting (`submitting`) and completed after (`submitted`); a retry
that finds it does not submit again. On a cluster a `submitting` record is settled by asking the
KFP server for the run's deterministic name (`training-after-<key>`): found, it is recorded; not
found, it is submitted now.

Locally there is no KFP server: the new run is `visionops pipeline run training --local` in its
own detached process (its own session, so it outlives the step), logging to
`pipelines/submissions/<key>.log`; the record holds its pid and run folder. A step that runs in a
container (`--docker`, `VISIONOPS_LOCAL_RUNNER=docker`) cannot start one that outlives it: it
records the request (`docker`, `submitting`), and the process that ran the monitoring pipeline
starts `visionops pipeline run training --docker` once (`spawn`, visionops/orchestration/docker.py).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from visionops.cluster import resolve_mode
from visionops.config import Settings, get_settings
from visionops.errors import PipelineError, UsageError
from visionops.orchestration import remote, safe_key
from visionops.orchestration.decisions import record_decision
from visionops.orchestration.local import runs_dir
from visionops.orchestration.params import compiled_package, package_info, parse_params
from visionops.storage import ObjectStore, default_store
from visionops.training.lineage import parse_lineage

log = logging.getLogger(__name__)

SUBMISSIONS_PREFIX = "pipelines/submissions"
TRAINING = "training"
SUBMITTING, SUBMITTED, FAILED = "submitting", "submitted", "failed"
DOCKER = "docker"
MODES = ("auto", "cluster", "local", DOCKER)


@dataclass(frozen=True)
class Submission:
    """One re-submitted training run, as recorded."""

    key: str
    mode: str  # cluster or local
    run_name: str
    params: dict[str, Any]
    status: str  # submitting, then submitted (or failed: nothing was started)
    submitted_at: str
    run_id: str = ""  # KFP run id (cluster); the local run name (local)
    url: str = ""  # cluster: the run in the KFP UI
    pid: int | None = None  # local: the process running it
    log: str = ""  # local: that process's output
    run_dir: str = ""  # local: where the run writes its summary
    error: str = ""  # why a submission failed
    already: bool = field(default=False, compare=False)  # an earlier attempt submitted it

    def to_json(self) -> bytes:
        data = asdict(self)
        data.pop("already")
        return (json.dumps(data, indent=2) + "\n").encode()


def submission_store(settings: Settings | None = None) -> ObjectStore:
    return default_store(SUBMISSIONS_PREFIX, settings)


def read_submission(key: str, settings: Settings | None = None) -> Submission | None:
    """The record for `key`, or None if nothing was submitted for it."""
    store = submission_store(settings)
    name = f"{safe_key(key)}.json"
    if not store.exists(name):
        return None
    return Submission(**json.loads(store.read_bytes(name)))


def list_submissions(settings: Settings | None = None) -> list[Submission]:
    """Every recorded submission, oldest first."""
    store = submission_store(settings)
    records = [
        Submission(**json.loads(store.read_bytes(k)))
        for k in store.list_keys()
        if k.endswith(".json")
    ]
    return sorted(records, key=lambda s: s.submitted_at)


def submit_training(
    key: str, params: dict[str, Any], *, mode: str = "auto", settings: Settings | None = None
) -> Submission:
    """Start one training run for `key` with `params`, unless one was started for it already.

    Returns the submission (`already` True when an earlier attempt made it). UsageError for a
    bad key, mode or parameter; PipelineError when the KFP server refuses.
    """
    settings = settings or get_settings()
    safe = safe_key(key)
    mode = resolve_mode(mode, MODES, "submission mode")
    if mode == "local" and settings.local_runner == DOCKER:
        mode = DOCKER
    package = compiled_package(TRAINING)
    params = parse_params(*package_info(package), params)
    store = submission_store(settings)
    record_key = f"{safe}.json"
    existing = read_submission(key, settings)
    # A local `submitting` record may have a running process behind it, a docker one a request
    # its monitoring run's process will start: never start twice.
    if existing is not None and (
        existing.status == SUBMITTED
        or (existing.status == SUBMITTING and existing.mode in ("local", DOCKER))
    ):
        log.info("training for %s was submitted already: %s", key, existing.run_name)
        return Submission(**{**asdict(existing), "already": True})
    run_name = f"{TRAINING}-after-{safe}"
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    pending = Submission(key, mode, run_name, params, SUBMITTING, stamp)
    store.write_bytes(record_key, pending.to_json())
    try:
        if mode == "cluster":
            unsure = existing is not None and existing.status == SUBMITTING
            submission = _submit_cluster(pending, package, settings, look_up_first=unsure)
        elif mode == DOCKER:
            submission = pending  # requested: the monitoring run's process starts it
        else:
            submission = _spawn_local(pending, settings)
    except (PipelineError, OSError) as error:
        # Refused by the server or not started: nothing runs, so a retry may submit again.
        failed = Submission(**{**asdict(pending), "status": FAILED, "error": str(error)})
        store.write_bytes(record_key, failed.to_json())
        raise
    store.write_bytes(record_key, submission.to_json())
    log.info("submitted %s (%s) for %s", submission.run_name, submission.mode, key)
    return submission


def _submit_cluster(
    pending: Submission, package: Path, settings: Settings, *, look_up_first: bool
) -> Submission:
    """Start the run on the KFP server (uploading `package` if the pipeline is not there yet),
    or find it when an earlier attempt may have started it."""
    from kfp_server_api.exceptions import ApiException  # kfp: heavy, only for a KFP server

    client = remote.connect(settings=settings)
    name = package_info(package)[0]
    try:
        if look_up_first:
            experiment = client.create_experiment(
                settings.kfp_experiment, namespace=settings.kfp_namespace
            )
            found = remote.find_run(client, experiment.experiment_id, pending.run_name)
            if found is not None:
                url = f"{settings.kfp_host.rstrip('/')}/#/runs/details/{found.run_id}"
                done = {"status": SUBMITTED, "run_id": found.run_id, "url": url, "already": True}
                return Submission(**{**asdict(pending), **done})
        pipeline_id = client.get_pipeline_id(name)
        if pipeline_id is None:  # never uploaded: the version installed with this image
            pipeline_id, version_id = remote.upload(client, name, package, pending.run_name)
        else:  # the newest version uploaded, as `hack/run-e2e.sh` or the UI left it
            version_id = remote.latest_version(client, pipeline_id)
        run = remote.start_run(
            client, host=settings.kfp_host, run_name=pending.run_name, pipeline_id=pipeline_id,
            version_id=version_id, params=pending.params, settings=settings,
        )  # fmt: skip
    except ApiException as error:
        raise PipelineError(f"Kubeflow Pipelines refused: {error.status} {error.reason}") from error
    return Submission(
        **{**asdict(pending), "status": SUBMITTED, "run_id": run.run_id, "url": run.url}
    )


def retrain_params(
    training_params: str = "{}",
    *,
    dataset: str = "synthetic",
    new_data: str = "",
    products: str = "",
    epochs: int = 0,
    imgsz: int = 0,
    weights: str = "",
) -> dict[str, Any]:
    """The training pipeline's parameters for a retraining: `training_params` (a JSON object, any
    of its parameters) with the dataset and products set, `new_data` (labeled data of the drifted
    window, comma-separated VISION roots) appended to its `extra_data`, and `epochs`, `imgsz`
    and `weights` where given (0 or empty keep the pipeline's defaults). UsageError for bad JSON.
    """
    try:
        params = dict(json.loads(training_params or "{}"))
    except (TypeError, ValueError) as error:
        raise UsageError(f"training_params must be a JSON object: {error}") from error
    params.update({"dataset": dataset, "products": products})
    extra = [p for p in (params.get("extra_data", ""), new_data) if p]
    params["extra_data"] = ",".join(extra)
    params.update({k: v for k, v in {"epochs": epochs, "imgsz": imgsz}.items() if v})
    if weights:
        params["weights"] = weights
    return params


def retrain_after_drift(
    monitoring_run_id: str,
    drift_result: dict[str, Any],
    *,
    training_params: str = "{}",
    dataset: str = "synthetic",
    new_data: str = "",
    products: str = "",
    epochs: int = 0,
    imgsz: int = 0,
    weights: str = "",
    mode: str = "auto",
    settings: Settings | None = None,
    lineage: str = "",
) -> Submission:
    """The `retrain` step: submit training with `retrain_params(...)` of the other arguments
    (once per monitoring run, see `submit_training`) and record the monitoring run's decision
    (`drift_result`, the drift check's JSON) with the training run it started. `lineage` (the
    drift check's, JSON) becomes the training run's, with the monitoring run added."""
    params = retrain_params(
        training_params, dataset=dataset, new_data=new_data, products=products, epochs=epochs,
        imgsz=imgsz, weights=weights,
    )  # fmt: skip
    links = {**parse_lineage(params.get("lineage") or ""), **parse_lineage(lineage)}
    links.setdefault("trigger", "drift")
    links.setdefault("monitoring_pipeline_run", monitoring_run_id)
    params["lineage"] = json.dumps(links)
    submission = submit_training(monitoring_run_id, params, mode=mode, settings=settings)
    record_decision(
        monitoring_run_id, drift_result, training_run=submission.run_name, settings=settings
    )
    return submission


def local_command(run_name: str, params: dict[str, Any], *, docker: bool = False) -> list[str]:
    """The command line of a local training run with `params` (steps in containers: `docker`)."""
    where = "--docker" if docker else "--local"
    command = [sys.executable, "-m", "visionops", "pipeline", "run", TRAINING, where]
    command += ["--run-name", run_name]
    for name, value in params.items():
        text = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
        command.append(f"--param={name}={text}")
    return command


def spawn(submission: Submission, settings: Settings | None = None) -> Submission:
    """Start a requested training run (`docker`, `submitting`: a step in a container asked for
    it) from this process, and record it as submitted; see the module docstring."""
    settings = settings or get_settings()
    started = _spawn_local(submission, settings)
    submission_store(settings).write_bytes(f"{safe_key(started.key)}.json", started.to_json())
    log.info("started %s for %s (process %s)", started.run_name, started.key, started.pid)
    return started


def _spawn_local(pending: Submission, settings: Settings) -> Submission:
    """Start the local run in its own session; it outlives the step that started it."""
    log_path = settings.data_dir / SUBMISSIONS_PREFIX / f"{safe_key(pending.key)}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # The step runs with KFP's runtime-only SDK switch; the new run needs the whole SDK.
    env = {k: v for k, v in os.environ.items() if k != "_KFP_RUNTIME"}
    with log_path.open("ab") as output:
        process = subprocess.Popen(
            local_command(pending.run_name, pending.params, docker=pending.mode == DOCKER),
            env=env,
            stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=Path.cwd(),
        )  # fmt: skip
    return Submission(
        **{
            **asdict(pending),
            "status": SUBMITTED,
            "run_id": pending.run_name,
            "pid": process.pid,
            "log": str(log_path),
            "run_dir": str(runs_dir(settings) / pending.run_name),
        }
    )
