"""The model directory every stage agrees on: `model.onnx`, `metadata.json`, `model.pt`.

Training writes it, the registry stores it as MLflow artifacts, evaluation and the predictor read
it. The predictor needs only the ONNX file and the metadata, so it never imports torch.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError, field_validator

from visionops.errors import DataError, ModelNotFound

MODEL_ONNX = "model.onnx"
MODEL_INT8_ONNX = "model.int8.onnx"
MODEL_INT8_OPENVINO_ONNX = "model.int8.openvino.onnx"
MODEL_PT = "model.pt"
METADATA_JSON = "metadata.json"
MODEL_ARTIFACT_DIR = "model"
"""Where an MLflow run keeps its model directory (a registered version's source points there)."""
FORMAT_VERSION = 1


class ModelMetadata(BaseModel):
    """What a consumer of the model directory needs besides the weights."""

    names: list[str] = Field(min_length=1, description="class names, index = class id")
    imgsz: int = Field(gt=0, description="square input size the model was trained at")
    stride: int = Field(32, gt=0)
    dataset_hash: str = ""
    metrics: dict[str, float] = Field(default_factory=dict)
    variants: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per ONNX variant (fp32, int8): file and accuracy"
    )
    run_id: str | None = None
    git_commit: str | None = None
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat())
    format_version: int = FORMAT_VERSION

    @field_validator("names")
    @classmethod
    def _names_are_unique(cls, names: list[str]) -> list[str]:
        if len(set(names)) != len(names):
            raise ValueError("class names must be unique")
        return names


def read_metadata(model_dir: Path) -> ModelMetadata:
    """Parse `metadata.json`; a missing or corrupt file is a clear, typed error."""
    path = Path(model_dir) / METADATA_JSON
    try:
        return ModelMetadata.model_validate_json(path.read_bytes())
    except FileNotFoundError as error:
        raise ModelNotFound(f"no {METADATA_JSON} in model directory {model_dir}") from error
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "file"
        raise DataError(f"corrupt {path}: {where}: {first['msg']}") from error


def write_metadata(model_dir: Path, metadata: ModelMetadata) -> Path:
    """Write `metadata.json` atomically."""
    path = Path(model_dir) / METADATA_JSON
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(metadata.model_dump(), indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path


def check_model_dir(model_dir: Path, onnx_name: str = MODEL_ONNX) -> ModelMetadata:
    """The metadata of a servable model directory; raises if the ONNX file or metadata is absent."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelNotFound(f"model directory {model_dir} does not exist")
    if not (model_dir / onnx_name).is_file():
        raise ModelNotFound(f"no {onnx_name} in model directory {model_dir}")
    return read_metadata(model_dir)
