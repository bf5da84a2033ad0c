"""MLflow for VisionOps: where runs and registered models live, reached with bounded retries.

Embedded default: a sqlite store and artifacts under `data_dir/mlflow` (or in the S3 bucket when
`VISIONOPS_S3_*` is set), no server to start. With `VISIONOPS_MLFLOW_TRACKING_URI` a remote server
holds both, and stores artifacts wherever it was told (S3/MinIO on a cluster). Every call to MLflow
goes through `mlflow_errors`, which turns an unreachable server or store into one clear error after
MLflow's own bounded retries; nothing ever falls back to local storage silently.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from visionops._compat.mlflow import (
    forget_s3_clients,
    is_failed_download,
    is_missing_alias,
    is_unreachable,
)
from visionops.bootstrap import bootstrap
from visionops.config import Settings, get_settings
from visionops.diagnose import MlflowHealth, error_status, network_problem, probe_mlflow
from visionops.errors import (
    ConfigError,
    ModelNotFound,
    RegistryError,
    StorageError,
    VisionOpsError,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient  # heavy (seconds): imported once MLflow is used

log = logging.getLogger(__name__)

TAG_PREFIX = "visionops."

_S3_CODES = {
    "SignatureDoesNotMatch": "the S3 secret key is wrong",
    "InvalidAccessKeyId": "the S3 access key is not known to the server",
    "AccessDenied": "S3 access denied (check the credentials and the bucket policy)",
    "NoSuchBucket": "the S3 bucket does not exist",
}


EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
"""MLflow 3's experiment type: its UI opens a `custom_model_development` experiment on the runs
table, where an untyped one may open the GenAI view (traces)."""
RUNS_VIEW = "visionops"
"""The shared view of the runs table (`runs_table_url`): the key of an experiment tag
`mlflow.sharedViewState.<key>` holding the table's columns, which the UI reads from the URL."""
RUNS_VIEW_COLUMNS = (
    "metrics.`eval.map50_95`",
    "metrics.`eval.map50`",
    "metrics.`eval.precision`",
    "metrics.`eval.recall`",
    "metrics.`drift.share`",
    "tags.`visionops.drift.decision`",
    "tags.`visionops.lineage.parent_version`",
    "tags.`visionops.lineage.trigger`",
    "tags.`visionops.dataset_hash`",
)
EXPERIMENT_TAGS = {
    EXPERIMENT_KIND_TAG: "custom_model_development",
    f"mlflow.sharedViewState.{RUNS_VIEW}": json.dumps(
        {
            "selectedColumns": list(RUNS_VIEW_COLUMNS),
            "orderByKey": "attributes.start_time",
            "orderByAsc": False,
        }
    ),
}


def runs_table_url(base_url: str, experiment_id: str) -> str:
    """The MLflow UI's runs table of the experiment, with VisionOps' columns (mAP, drift share,
    lineage): what the CLI and the demo print."""
    return (
        f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs?viewStateShareKey={RUNS_VIEW}"
    )


@dataclass(frozen=True)
class Tracking:
    """A connected MLflow client and the experiment VisionOps logs to."""

    client: MlflowClient
    tracking_uri: str
    experiment_id: str
    remote: bool


def _configure_http(settings: Settings) -> None:
    """MLflow reads its retry policy from the environment on every request."""
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(settings.mlflow_retries)
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = str(settings.mlflow_backoff)
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"] = "0.2"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(settings.mlflow_timeout)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    # boto3 (MLflow's S3 artifact client) retries on its own; keep that bounded too.
    os.environ["AWS_MAX_ATTEMPTS"] = str(settings.mlflow_retries + 1)
    os.environ["AWS_RETRY_MODE"] = "standard"


_s3_identity: tuple[str | None, ...] | None = None


def _refresh_s3_clients(settings: Settings) -> None:
    """Rebuild MLflow's S3 clients when the S3 settings changed within this process.

    MLflow's S3 artifact store reads credentials from the environment through boto3, whose default
    session keeps the first credentials it found for the life of the process, and MLflow caches
    its clients; a process that changes settings (a notebook, the tests) would keep the old ones.
    """
    global _s3_identity
    secret = settings.s3_secret_key.get_secret_value() if settings.s3_secret_key else None
    key = settings.s3_access_key.get_secret_value() if settings.s3_access_key else None
    identity = (settings.s3_endpoint, key, secret, settings.s3_region)
    if identity == _s3_identity:
        return
    _s3_identity = identity
    forget_s3_clients()


def artifact_root(settings: Settings) -> str:
    """Where an embedded store keeps artifacts: the S3 bucket if configured, else the data dir."""
    if settings.s3_endpoint:
        return f"s3://{settings.s3_bucket}/mlflow"
    return (settings.mlflow_dir / "artifacts").as_uri()


@contextmanager
def mlflow_errors(action: str, settings: Settings | None = None) -> Iterator[None]:
    """Turn MLflow, HTTP and S3 failures into the VisionOps error that says what to fix, naming
    the service that failed (S3, MLflow, or the network to it) and its endpoint."""
    from mlflow.exceptions import MlflowException  # heavy (seconds): imported once MLflow is used

    settings = settings or get_settings()
    where = settings.tracking_uri
    try:
        yield
    except MlflowException as error:
        message = str(error)
        storage = _storage_problem(error, settings)
        if storage is not None:  # MLflow wraps the S3 client's error in its own
            raise StorageError(f"{storage} while trying to {action}") from error
        if is_unreachable(message):
            raise _outage(action, message, settings) from error
        if error.error_code == "RESOURCE_DOES_NOT_EXIST" or is_missing_alias(message):
            if is_failed_download(message) and _is_remote(where):
                # MLflow says this for any failure of a run's artifacts, an outage included.
                health = probe_mlflow(where)
                if health.reachable or health.api or health.artifacts:
                    raise _from_health(action, health, message, "") from error
            raise ModelNotFound(f"{action}: {message}") from error
        raise RegistryError(f"MLflow at {where} refused to {action}: {message}") from error
    except Exception as error:
        storage = _storage_problem(error, settings)
        if storage is not None:
            raise StorageError(f"{storage} while trying to {action}") from error
        network = network_problem(error)
        if network is not None and _is_remote(where) and _from_http_client(error):
            raise RegistryError(
                f"cannot reach MLflow at {where} while trying to {action} (network: {network})"
            ) from error
        raise


def _outage(action: str, message: str, settings: Settings) -> VisionOpsError:
    """The error for a request MLflow's client gave up on: whose fault, after a short probe."""
    where = settings.tracking_uri
    retries = f"gave up after {settings.mlflow_retries} retries"
    if _is_remote(where):
        health = probe_mlflow(where)
        if health.reachable or health.api or health.artifacts:
            return _from_health(action, health, message, retries)
    status = error_status(message)
    if status is not None:
        return RegistryError(
            f"MLflow at {where} failed while trying to {action}: it answered {status} ({retries})"
        )
    network = network_problem(message) or _last_line(message)
    return RegistryError(
        f"cannot reach MLflow at {where} while trying to {action} (network: {network}, {retries})"
    )


def _from_health(action: str, health: MlflowHealth, message: str, retries: str) -> VisionOpsError:
    """The error once a probe said what fails now: the artifact store behind MLflow (S3), the
    server itself, or the network to it."""
    gave_up = f" ({retries})" if retries else ""
    if health.reachable is None and health.api is None and health.artifacts is not None:
        return StorageError(
            f"the artifact store behind MLflow failed while trying to {action}{gave_up}: "
            f"{health.describe()}"
        )
    status = error_status(message)
    said = f"; it answered {status}" if status else ""
    return RegistryError(f"{health.describe()}, so could not {action}{gave_up}{said}")


def _from_http_client(error: BaseException) -> bool:
    """True if the chain holds an error of the HTTP client MLflow talks to its server with."""
    seen = 0
    current: BaseException | None = error
    while current is not None and seen < 8:
        if type(current).__module__.startswith(("requests", "urllib3")):
            return True
        current, seen = current.__cause__ or current.__context__, seen + 1
    return False


def _last_line(message: str) -> str:
    return message.strip().splitlines()[-1][:400]


def _storage_problem(error: BaseException | None, settings: Settings) -> str | None:
    """Words naming S3 and its endpoint if `error` or its cause comes from boto3, else None."""
    seen = 0
    while error is not None and seen < 5:
        if type(error).__module__.startswith(("botocore", "boto3", "s3transfer")):
            endpoint = settings.s3_endpoint or "(boto3's default endpoint)"
            network = network_problem(error)
            if network is not None:
                return f"cannot reach S3 at {endpoint} (network: {network})"
            code = getattr(error, "response", {}).get("Error", {}).get("Code", "")
            problem = _S3_CODES.get(code, f"{type(error).__name__}: {error}")
            return f"S3 at {endpoint} refused: {problem}"
        error, seen = error.__cause__ or error.__context__, seen + 1
    return None


def _is_remote(uri: str) -> bool:
    return uri.startswith(("http://", "https://", "databricks"))


def connect(settings: Settings | None = None) -> Tracking:
    """Connect to the configured MLflow and make sure VisionOps' experiment exists.

    Raises RegistryError when a remote server does not answer (after bounded retries), and
    ConfigError when the embedded experiment was created for another artifact store.
    """
    settings = bootstrap(settings)
    _configure_http(settings)
    _refresh_s3_clients(settings)
    from mlflow import MlflowClient  # heavy (seconds): imported once MLflow is used

    uri = settings.tracking_uri
    remote = _is_remote(uri)
    if not remote:
        settings.mlflow_dir.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    name = settings.mlflow_experiment
    with mlflow_errors(f"open experiment {name!r}", settings):
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            location = None if remote else artifact_root(settings)
            experiment_id = client.create_experiment(
                name, artifact_location=location, tags=EXPERIMENT_TAGS
            )
            log.info("created MLflow experiment %r at %s", name, uri)
        else:
            experiment_id = experiment.experiment_id
            for key, value in EXPERIMENT_TAGS.items():  # an experiment made before these existed
                if experiment.tags.get(key) != value:
                    client.set_experiment_tag(experiment_id, key, value)
            expected = artifact_root(settings)
            if not remote and experiment.artifact_location != expected:
                raise ConfigError(
                    f"MLflow experiment {name!r} keeps artifacts at "
                    f"{experiment.artifact_location}, but the settings say {expected}; set "
                    "VISIONOPS_MLFLOW_EXPERIMENT to a new name or restore the S3 settings"
                )
    return Tracking(client, uri, experiment_id, remote)


def download(tracking: Tracking, artifact_uri: str, destination: Path) -> Path:
    """Download an artifact directory to `destination`; returns the local path."""
    import mlflow.artifacts  # heavy (seconds): imported once MLflow is used

    destination.mkdir(parents=True, exist_ok=True)
    with mlflow_errors(f"download {artifact_uri}"):
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=artifact_uri,
            dst_path=str(destination),
            tracking_uri=tracking.tracking_uri,
        )
    return Path(local)


def metric_key(name: str) -> str:
    """`name` as an MLflow metric key: Ultralytics' `mAP50(B)` loses `(B)`, odd characters `_`."""
    return re.sub(r"[^\w\-. :/]", "_", name.replace("(B)", ""))


def log_metrics(
    tracking: Tracking, run_id: str, values: dict[str, float], *, step: int = 0
) -> None:
    """Log finite `values` to a run in one call (NaN/inf are left out: MLflow cannot chart them)."""
    from mlflow.entities import Metric  # heavy (seconds): imported once MLflow is used

    now = int(time.time() * 1000)
    metrics = [
        Metric(metric_key(k), float(v), now, step)
        for k, v in values.items()
        if isinstance(v, int | float) and math.isfinite(float(v))
    ]
    with mlflow_errors(f"log metrics to run {run_id}"):
        for start in range(0, len(metrics), 1000):
            tracking.client.log_batch(run_id, metrics=metrics[start : start + 1000])


@functools.cache
def _git_head() -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def git_commit(settings: Settings | None = None) -> str | None:
    """The code version to record: VISIONOPS_GIT_COMMIT (images) or the checkout's HEAD."""
    settings = settings or get_settings()
    return settings.git_commit or _git_head()


def library_versions() -> dict[str, str]:
    """Versions of the libraries that decide what a trained model is."""
    versions = {}
    for package in ("torch", "ultralytics", "onnxruntime", "onnx", "mlflow", "visionops"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "absent"
    return versions
