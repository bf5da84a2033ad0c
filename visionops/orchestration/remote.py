"""Submit a pipeline to a Kubeflow Pipelines server through `kfp.Client`.

A thin layer over the client: upload the compiled package (a new pipeline, or a new version of
the existing one), create the run in the VisionOps experiment, optionally follow it to the end.
Inside a cluster the KFP token of the pod's service account is sent when it is mounted.
"""

from __future__ import annotations

import json
import logging
import tempfile
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from visionops._compat.kfp import kfp_client_class
from visionops.config import Settings, get_settings
from visionops.errors import PipelineError
from visionops.orchestration.params import typed_params

if TYPE_CHECKING:
    import kfp

log = logging.getLogger(__name__)

KFP_TOKEN = Path("/var/run/secrets/kubeflow/pipelines/token")
FINISHED = ("succeeded", "failed", "skipped", "error", "canceled")


@dataclass(frozen=True)
class RemoteRun:
    """A run on a KFP server and where to see it."""

    host: str
    run_id: str
    run_name: str
    pipeline_id: str
    version_id: str
    experiment_id: str
    state: str

    @property
    def url(self) -> str:
        return f"{self.host.rstrip('/')}/#/runs/details/{self.run_id}"


def connect(host: str | None = None, settings: Settings | None = None) -> kfp.Client:
    """A client for `host` (default: the `kfp_host` setting), with the in-cluster token if any."""
    Client = kfp_client_class()  # noqa: N806 (a class)
    settings = settings or get_settings()
    token = KFP_TOKEN.read_text().strip() if KFP_TOKEN.is_file() else None
    warnings.filterwarnings("ignore", "This client only works with Kubeflow", FutureWarning)
    try:
        return Client(
            host=host or settings.kfp_host,
            existing_token=token,
            namespace=settings.kfp_namespace or "kubeflow",
        )
    except Exception as error:  # the client calls the server's health endpoint at once
        raise PipelineError(
            f"Kubeflow Pipelines at {host or settings.kfp_host}: {error}"
        ) from error


def _filter(key: str, value: str) -> str:
    return json.dumps({"predicates": [{"operation": "EQUALS", "key": key, "stringValue": value}]})


def upload(client: kfp.Client, name: str, package: Path, version_name: str) -> tuple[str, str]:
    """Upload `package` as pipeline `name`, or as version `version_name` if it exists already.

    Returns (pipeline id, version id).
    """
    pipeline_id = client.get_pipeline_id(name)
    if pipeline_id is None:
        pipeline = client.upload_pipeline(str(package), pipeline_name=name)
        pipeline_id = pipeline.pipeline_id
        return pipeline_id, latest_version(client, pipeline_id)
    version = client.upload_pipeline_version(
        str(package), pipeline_version_name=version_name, pipeline_id=pipeline_id
    )
    return pipeline_id, version.pipeline_version_id


def latest_version(client: kfp.Client, pipeline_id: str) -> str:
    """The id of the newest version of a pipeline."""
    listed = client.list_pipeline_versions(pipeline_id, page_size=1, sort_by="created_at desc")
    if not listed.pipeline_versions:
        raise PipelineError(f"pipeline {pipeline_id} has no version")
    return listed.pipeline_versions[0].pipeline_version_id


def find_run(client: kfp.Client, experiment_id: str, run_name: str) -> Any | None:
    """The run called `run_name` in the experiment, if one exists."""
    listed = client.list_runs(experiment_id=experiment_id, filter=_filter("display_name", run_name))
    return (listed.runs or [None])[0]


def start_run(
    client: kfp.Client,
    *,
    host: str,
    run_name: str,
    pipeline_id: str,
    version_id: str,
    params: dict[str, Any],
    settings: Settings,
) -> RemoteRun:
    """Create a run of a pipeline version in the VisionOps experiment."""
    experiment = client.create_experiment(settings.kfp_experiment, namespace=settings.kfp_namespace)
    run = client.run_pipeline(
        experiment.experiment_id, run_name, params=params,
        pipeline_id=pipeline_id, version_id=version_id,
    )  # fmt: skip
    log.info("started run %s (%s)", run.run_id, run_name)
    return RemoteRun(
        host, run.run_id, run_name, pipeline_id, version_id,
        experiment.experiment_id, str(run.state or "pending").lower(),
    )  # fmt: skip


def wait(client: kfp.Client, run: RemoteRun, timeout: float) -> RemoteRun:
    """Follow `run` until it finishes (TimeoutError after `timeout` seconds)."""
    finished = client.wait_for_run_completion(run.run_id, timeout=int(timeout), sleep_duration=10)
    state = str(finished.state or "unknown").lower()
    return RemoteRun(**{**run.__dict__, "state": state})


def run_remote(
    name: str,
    pipeline: Any,
    params: dict[str, Any] | list[str] | None = None,
    *,
    host: str | None = None,
    run_name: str | None = None,
    wait_seconds: float | None = None,
    settings: Settings | None = None,
) -> RemoteRun:
    """Compile `pipeline` (called `name`), upload it as a new version, start a run; with
    `wait_seconds`, follow it to the end. PipelineError when the server refuses or the run does
    not succeed."""
    from kfp_server_api.exceptions import ApiException  # kfp: heavy, only for a KFP server

    # kfp's compiler: not in the runtime-only SDK a pipeline step runs with (see `connect`)
    from visionops.orchestration.compile import compile_pipeline

    settings = settings or get_settings()
    params = typed_params(pipeline, params)
    stamp = f"{datetime.now(UTC):%Y%m%d-%H%M%S}"
    client = connect(host, settings)
    try:
        with tempfile.TemporaryDirectory(prefix="visionops-kfp-") as tmp:
            package = compile_pipeline(pipeline, Path(tmp) / f"{name}.yaml")
            pipeline_id, version_id = upload(client, pipeline.name, package, f"{name}-{stamp}")
        run = start_run(
            client, host=host or settings.kfp_host, run_name=run_name or f"{name}-{stamp}",
            pipeline_id=pipeline_id,
            version_id=version_id, params=params, settings=settings,
        )  # fmt: skip
        if wait_seconds:
            run = wait(client, run, wait_seconds)
    except ApiException as error:
        raise PipelineError(f"Kubeflow Pipelines refused: {error.status} {error.reason}") from error
    if wait_seconds and run.state != "succeeded":
        raise PipelineError(f"run {run.run_name} ended {run.state}: {run.url}")
    return run
