"""Feature tables of image folders: the reference the drift check compares a window against.

The evaluation step builds the champion's reference from its evaluation images (image features,
plus prediction features when it has the model's detections); `visionops drift features` builds
one from any split or image folder, e.g. a drifted split written by the simulator.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from visionops.errors import DataError
from visionops.monitoring.features import image_feature_rows

if TYPE_CHECKING:
    import pandas as pd

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
    import pandas as pd

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
