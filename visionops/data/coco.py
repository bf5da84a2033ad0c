"""Read and write COCO annotation files (`_annotations.coco.json`).

Reading parses JSON only; the schema is checked by `visionops.data.validate`, so a loader can open
a dataset that validation will then explain. Writing is atomic.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from visionops.data.files import atomic_write_text
from visionops.errors import DataError

ANNOTATIONS_FILE = "_annotations.coco.json"
BACKGROUND_KEY = "visionops_background"
"""An image entry with this key true is defect-free on purpose (a background image: no boxes)."""


def load_coco(path: Path) -> dict[str, Any]:
    """The parsed COCO file; DataError naming the file when it is missing or not a JSON object."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as error:
        raise DataError(f"annotations file not found: {path}") from error
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read annotations file {path}: {error}") from error
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(
            f"invalid JSON in {path} (line {error.lineno}, column {error.colno}): {error.msg}"
        ) from error
    if not isinstance(data, dict):
        raise DataError(f"{path}: a COCO file must hold a JSON object, not {type(data).__name__}")
    return data


def write_coco(path: Path, data: dict[str, Any]) -> Path:
    """Write a COCO dict as JSON, atomically; the same dict always gives the same bytes."""
    return atomic_write_text(Path(path), json.dumps(data, separators=(",", ":")) + "\n")


def empty_coco(categories: list[dict[str, Any]]) -> dict[str, Any]:
    """A COCO dict with the given categories and no images (the start of every split)."""
    return {
        "info": {"description": "VisionOps", "version": "1.0"},
        "licenses": [],
        "categories": categories,
        "images": [],
        "annotations": [],
    }
