"""Where the predictor's model comes from: a local directory, an `s3://` prefix or the registry.

`resolve_model_source` turns a source into a local model directory plus a version string, and is
called again on every reload, so `models:/name@champion` picks up a promotion and an `s3://` prefix
a re-upload. Downloads land in a cache under the data dir, atomically (`download_tree`).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from visionops.config import Settings, get_settings
from visionops.errors import UsageError
from visionops.model_artifact import MODEL_ONNX, check_model_dir
from visionops.storage import is_s3_uri, open_store

log = logging.getLogger(__name__)

REGISTRY_SCHEME = "models:/"
RUNS_SCHEME = "runs:/"


@dataclass(frozen=True)
class ResolvedModel:
    """A model directory on local disk and the version it holds."""

    path: Path
    version: str
    source: str


def content_version(model_dir: Path, onnx_name: str = MODEL_ONNX) -> str:
    """A version for a model without a registry version: a hash of its ONNX file."""
    digest = hashlib.sha256()
    with (Path(model_dir) / onnx_name).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return f"sha256-{digest.hexdigest()[:12]}"


def cache_dir_for(source: str, settings: Settings) -> Path:
    """The local cache folder of a remote source (one per source URI)."""
    key = hashlib.sha256(source.encode()).hexdigest()[:16]
    return settings.data_dir / "cache" / "serving-models" / key


def resolve_model_source(source: str, settings: Settings | None = None) -> ResolvedModel:
    """A local model directory for `source`: a path, `s3://bucket/prefix`, `models:/name@alias`
    (or `models:/name/N`, `runs:/ID/path`).

    Raises `ModelNotFound` (nothing there), `StorageError`/`RegistryError` (unreachable) or
    `DataError` (corrupt metadata).
    """
    settings = settings or get_settings()
    if source.startswith((REGISTRY_SCHEME, RUNS_SCHEME)):
        return _from_registry(source, settings)
    if is_s3_uri(source):
        store = open_store(source, settings)
        target = cache_dir_for(source, settings)
        log.info("downloading model %s -> %s", source, target)
        store.download_tree("", target)
        check_model_dir(target)
        return ResolvedModel(target, content_version(target), source)
    if "://" in source:
        raise UsageError(
            f"unsupported model source {source!r}: use a directory, s3://bucket/prefix "
            f"or {REGISTRY_SCHEME}name@alias"
        )
    path = Path(source).expanduser().resolve()
    check_model_dir(path)
    return ResolvedModel(path, content_version(path), str(path))


def _from_registry(uri: str, settings: Settings) -> ResolvedModel:
    from visionops.training.registry import resolve_model_uri

    path = Path(resolve_model_uri(uri, settings))
    check_model_dir(path)
    # resolve_model_uri caches `models:/NAME@ALIAS` and `models:/NAME/N` by version, in a folder
    # named after the MLflow version number; a run's directory has no version, only its content.
    is_version = uri.startswith(REGISTRY_SCHEME) and path.name.isdigit()
    return ResolvedModel(path, path.name if is_version else content_version(path), uri)
