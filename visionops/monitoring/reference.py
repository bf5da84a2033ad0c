"""Feature tables of image folders: the reference the drift check compares a window against.

The evaluation step builds the champion's reference from its evaluation images (image features,
plus prediction features when it has the model's detections); `visionops drift features` builds
one from any split or image folder, e.g. a drifted split written by the simulator.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from visionops.config import Settings, get_settings
from visionops.data.features import image_feature_rows
from visionops.errors import DataError, ModelNotFound
from visionops.models.sources import find_version, parse_model_uri, run_artifact_uri
from visionops.tracking import connect, download, mlflow_errors
from visionops.training.evaluate import (
    EVALUATION_ARTIFACT_DIR,
    REFERENCE_FEATURES,
    REFERENCE_IMAGES,
)
from visionops.training.registry_versions import other_models_hint

if TYPE_CHECKING:
    import pandas as pd  # heavy (about a second): only where a table is built

    from visionops.progress import ProgressCallback

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
FILE_COLUMN = "file_name"


def image_files(folder: Path) -> list[Path]:
    """Every image below `folder` (recursively, sorted); a split folder, product or VISION root."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataError(f"image folder not found: {folder}")
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.name.startswith(".")
    )


def folder_feature_table(
    folder: Path, *, workers: int = 2, progress: ProgressCallback | None = None
) -> tuple[pd.DataFrame, list[tuple[Path, str]]]:
    """Image features of every image below `folder`, one row each, with its relative file name.

    Returns (table, failures); unreadable images are skipped and listed, never raised. DataError
    when the folder holds no image or none can be read.
    """
    import pandas as pd  # heavy (about a second): only where a table is built

    folder = Path(folder).expanduser().resolve()
    paths = image_files(folder)
    if not paths:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) below {folder}")
    rows, failures = image_feature_rows(
        paths,
        workers=workers,
        progress=progress,
        extra=lambda p: {FILE_COLUMN: p.relative_to(folder).as_posix()},
    )
    if not rows:
        raise DataError(f"none of the {len(paths)} images below {folder} could be read")
    table = pd.DataFrame.from_records(rows)
    return table[[FILE_COLUMN, *[c for c in table.columns if c != FILE_COLUMN]]], failures


CHAMPION_REFERENCE = "champion"


def is_registry_reference(value: str) -> bool:
    """True for `champion` (the configured model's champion) and `models:/...` URIs."""
    return value == CHAMPION_REFERENCE or value.startswith("models:/")


@dataclass(frozen=True)
class Reference:
    """A reference feature table and, for a registered one, which model version it describes and
    thumbnails of a few of the evaluation images the table was built from (drift pages)."""

    path: Path
    model_name: str | None = None
    version: str | None = None
    run_id: str | None = None
    images: tuple[Path, ...] = ()

    def describe(self) -> str:
        """`NAME vN` for a registered reference, else the table's path."""
        if self.model_name and self.version:
            return f"{self.model_name} v{self.version}"
        return str(self.path)


def registry_reference(
    uri: str = CHAMPION_REFERENCE, settings: Settings | None = None, *, name: str | None = None
) -> Path:
    """The evaluation feature table of a registered model version (see `registered_reference`)."""
    return registered_reference(uri, settings, name=name).path


def registered_reference(
    uri: str = CHAMPION_REFERENCE, settings: Settings | None = None, *, name: str | None = None
) -> Reference:
    """The evaluation feature table of a registered model version, downloaded once.

    `uri` is `champion` (the champion of model `name`, default: the configured model),
    `models:/NAME@ALIAS` or `models:/NAME/VERSION`. The table is the
    `evaluation/reference_features.parquet` artifact that `visionops evaluate` logs to the
    version's run, with the thumbnails it logs beside it (`evaluation/reference_images/`; none
    for a version evaluated before they were). ModelNotFound when the alias, version or artifact
    does not exist (naming the models the registry does hold); RegistryError when MLflow cannot
    be reached.
    """
    settings = settings or get_settings()
    if uri == CHAMPION_REFERENCE:
        uri = f"models:/{name or settings.model_name}@{CHAMPION_REFERENCE}"
    model = parse_model_uri(uri)
    tracking = connect(settings)
    try:
        version = find_version(tracking, model, settings)
    except ModelNotFound as error:
        if model.alias is None:
            raise
        raise ModelNotFound(
            f"model {model.name!r} has no version with alias {model.alias!r}; "
            f"{other_models_hint(model.name, settings)}"
        ) from error
    artifact = f"{EVALUATION_ARTIFACT_DIR}/{REFERENCE_FEATURES}"
    with mlflow_errors(f"read the evaluation of run {version.run_id}", settings):
        run = tracking.client.get_run(version.run_id)
        found = tracking.client.list_artifacts(version.run_id, EVALUATION_ARTIFACT_DIR)
    listed = {f.path for f in found}
    if artifact not in listed:
        raise ModelNotFound(
            f"version {version.version} of {model.name!r} has no {artifact} in run "
            f"{version.run_id}: evaluate it first (`visionops evaluate`)"
        )
    target = settings.data_dir / "cache" / "reference" / version.run_id
    path = target / REFERENCE_FEATURES
    if not path.is_file():
        downloaded = download(tracking, run_artifact_uri(run, artifact), target / ".download")
        downloaded.replace(path)
    images = target / REFERENCE_IMAGES
    thumbnails = f"{EVALUATION_ARTIFACT_DIR}/{REFERENCE_IMAGES}"
    if thumbnails in listed and not images.is_dir():
        downloaded = download(tracking, run_artifact_uri(run, thumbnails), target / ".images")
        downloaded.replace(images)
    found_images = tuple(sorted(images.glob("*.jpg"))) if images.is_dir() else ()
    return Reference(path, model.name, str(version.version), version.run_id, found_images)


def resolve_reference(value: str, settings: Settings | None = None) -> Path:
    """A reference feature table: a file path, or a registry reference (`champion`, models:/)."""
    return resolve_reference_source(value, settings).path


def resolve_reference_source(
    value: str, settings: Settings | None = None, *, name: str | None = None
) -> Reference:
    """A reference feature table with the model version it describes (none for a plain file);
    `champion` is the champion of model `name` (default: the configured model)."""
    if is_registry_reference(value):
        return registered_reference(value, settings, name=name)
    return Reference(Path(value).expanduser())
