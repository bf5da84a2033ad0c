"""Where a model comes from, resolved to a model directory on local disk: the one place that reads
model URIs.

    DIR                  a local model directory
    s3://bucket/prefix   a model directory in the object store
    models:/NAME@ALIAS   the version that holds ALIAS, looked up on every call (a promotion is seen)
    models:/NAME/N       version N
    runs:/RUN_ID/PATH    an artifact directory of a run (PATH is `model` for a training run)

Training (fine-tuning weights), evaluation, the registry, deploy and the predictor all call
`resolve_model`, the predictor again on every reload. Downloads are atomic: registry versions are
cached once per version, runs once per run (`cache/registry/<server>/...` under the data dir),
`s3://` prefixes are fetched again on every call so that a re-upload is picked up. The version is
MLflow's for `models:/` sources and a hash of the ONNX file for every other source.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from visionops.config import Settings, get_settings
from visionops.errors import ModelNotFound, RegistryError, UsageError, VisionOpsError
from visionops.models.artifact import METADATA_JSON, MODEL_ARTIFACT_DIR, MODEL_ONNX, check_model_dir
from visionops.storage import is_s3_uri, open_store
from visionops.tracking import Tracking, connect, download, mlflow_errors

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.entities.model_registry import ModelVersion

log = logging.getLogger(__name__)

REGISTRY_SCHEME = "models:/"
RUNS_SCHEME = "runs:/"
_MODELS_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[\w-]+)|/(?P<version>\d+))")
_RUNS_URI = re.compile(r"runs:/(?P<run>[0-9a-fA-F]+)/(?P<path>.+)")
_EXPECTED = "models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID/PATH"


@dataclass(frozen=True)
class ResolvedModel:
    """A model directory on local disk, the version it holds and the source it came from."""

    path: Path
    version: str
    source: str


@dataclass(frozen=True)
class ModelURI:
    """A parsed `models:/NAME@ALIAS` (alias set) or `models:/NAME/VERSION` (version set)."""

    name: str
    alias: str | None = None
    version: str | None = None

    def __str__(self) -> str:
        return f"{REGISTRY_SCHEME}{self.name}" + (
            f"@{self.alias}" if self.alias else f"/{self.version}"
        )


def is_registry_uri(source: str) -> bool:
    """True for `models:/...` and `runs:/...`: sources that MLflow resolves."""
    return source.startswith((REGISTRY_SCHEME, RUNS_SCHEME))


def parse_model_uri(uri: str) -> ModelURI:
    """`models:/NAME@ALIAS` or `models:/NAME/VERSION`; UsageError for anything else."""
    match = _MODELS_URI.fullmatch(uri)
    if match is None:
        raise UsageError(f"not a model URI: {uri!r} (expected models:/NAME@ALIAS or /VERSION)")
    return ModelURI(match["name"], match["alias"], match["version"])


def content_version(model_dir: Path, onnx_name: str = MODEL_ONNX) -> str:
    """A version for a model without a registry version: a hash of its ONNX file."""
    digest = hashlib.sha256()
    with (Path(model_dir) / onnx_name).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return f"sha256-{digest.hexdigest()[:12]}"


def cache_dir_for(source: str, settings: Settings) -> Path:
    """The local cache folder of an `s3://` source (one per source URI)."""
    key = hashlib.sha256(source.encode()).hexdigest()[:16]
    return settings.data_dir / "cache" / "serving-models" / key


def resolve_model(source: str | Path, settings: Settings | None = None) -> ResolvedModel:
    """A local model directory for `source` (see the module docstring).

    Raises `ModelNotFound` (nothing there), `StorageError`/`RegistryError` (unreachable),
    `UsageError` (not a source) or `DataError` (corrupt metadata).
    """
    settings = settings or get_settings()
    text = str(source)
    if is_registry_uri(text):
        return _from_registry(text, settings)
    if is_s3_uri(text):
        store = open_store(text, settings)
        target = cache_dir_for(text, settings)
        log.info("downloading model %s -> %s", text, target)
        store.download_tree("", target)
        check_model_dir(target)
        return ResolvedModel(target, content_version(target), text)
    if "://" in text:
        raise UsageError(
            f"unsupported model source {text!r}: use a directory, s3://bucket/prefix "
            f"or {REGISTRY_SCHEME}name@alias"
        )
    path = Path(text).expanduser().resolve()
    check_model_dir(path)
    return ResolvedModel(path, content_version(path), str(path))


def find_version(tracking: Tracking, uri: ModelURI, settings: Settings) -> ModelVersion:
    """The registered version `uri` names (the alias is looked up now); ModelNotFound if none."""
    with mlflow_errors(f"resolve {uri}", settings):
        if uri.alias:
            return tracking.client.get_model_version_by_alias(uri.name, uri.alias)
        return tracking.client.get_model_version(uri.name, uri.version)


def run_artifact_uri(run: Run, path: str = MODEL_ARTIFACT_DIR) -> str:
    """The artifact URI of `path` inside `run` (by default its model directory)."""
    return f"{run.info.artifact_uri.rstrip('/')}/{path.strip('/')}"


def run_model_source(tracking: Tracking, run: Run, settings: Settings) -> str:
    """The model directory URI of a FINISHED run that holds a complete model directory: what a
    registered version's source points at. RegistryError or ModelNotFound otherwise."""
    run_id = run.info.run_id
    if run.info.status != "FINISHED":
        raise RegistryError(
            f"run {run_id} is {run.info.status}; only a FINISHED training run can be registered"
        )
    with mlflow_errors(f"list the model directory of run {run_id}", settings):
        listed = tracking.client.list_artifacts(run_id, MODEL_ARTIFACT_DIR)
    missing = {MODEL_ONNX, METADATA_JSON} - {Path(f.path).name for f in listed}
    if missing:
        raise ModelNotFound(
            f"run {run_id} has no complete model directory ({', '.join(sorted(missing))} "
            f"missing under {MODEL_ARTIFACT_DIR}/)"
        )
    return run_artifact_uri(run)


def _from_registry(uri: str, settings: Settings) -> ResolvedModel:
    """A `models:/` or `runs:/` source, downloaded once per version (or run) into the cache."""
    models, runs = _MODELS_URI.fullmatch(uri), _RUNS_URI.fullmatch(uri)
    if models is None and runs is None:
        raise UsageError(f"not a registry URI: {uri!r} (expected {_EXPECTED})")
    tracking = connect(settings)
    root = settings.data_dir / "cache" / "registry"
    root /= hashlib.sha256(tracking.tracking_uri.encode()).hexdigest()[:12]
    if models is not None:
        version = find_version(tracking, parse_model_uri(uri), settings)
        name = models["name"]
        target = _download_once(
            tracking, version.source, root / "models" / name / str(version.version)
        )
        log.info("%s -> %s", uri, target)
        return ResolvedModel(target, str(version.version), uri)
    assert runs is not None
    path = runs["path"].strip("/")
    with mlflow_errors(f"resolve {uri}", settings):
        run = tracking.client.get_run(runs["run"])
    target = _download_once(
        tracking, run_artifact_uri(run, path), root / "runs" / runs["run"] / path
    )
    log.info("%s -> %s", uri, target)
    return ResolvedModel(target, content_version(target), uri)


def _download_once(tracking: Tracking, source: str, target: Path) -> Path:
    """`target`, a complete model directory: kept from an earlier call, else downloaded into a
    staging folder beside it and renamed into place (a concurrent download of the same source
    finishing first wins; a corrupt leftover is replaced)."""
    if target.is_dir():
        try:
            check_model_dir(target)
            return target
        except VisionOpsError:
            shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        local = download(tracking, source, staging)
        check_model_dir(local)
        try:
            local.rename(target)
        except OSError:  # another process finished the same download first: use that one
            check_model_dir(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
