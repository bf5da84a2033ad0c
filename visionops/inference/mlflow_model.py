"""The model directory as an MLflow Model: a `python_function` flavour that runs `Detector`.

`write_mlflow_model` adds MLflow's files (MLmodel, requirements, the signature and an input
example) beside `model.onnx` and `metadata.json`, so `mlflow.pyfunc.load_model`, `mlflow models
serve` and KServe's MLflow runtime can use a version while the predictor keeps reading the same
directory: there is one copy of the ONNX graph. MLflow loads it through this module's
`_load_pyfunc` (a loader module, MLflow's documented way to load a model from files it does not
copy); no pickle is involved, which MLflow 3 refuses by default anyway.

Input: a DataFrame column `image` of encoded image bytes (base64 strings too, as JSON carries
them); params `conf`, `iou`, `max_det`. Output: one row per detection.
"""

from __future__ import annotations

import base64
import binascii
import shutil
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel, PythonModelContext
from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema

from visionops.errors import UsageError, VisionOpsError
from visionops.inference.detector import DEFAULT_CONF, DEFAULT_IOU, DEFAULT_MAX_DET, Detector
from visionops.inference.images import decode_image
from visionops.models.artifact import check_model_dir

LOADER_MODULE = __name__
MLMODEL = "MLmodel"
IMAGE_COLUMN = "image"
OUTPUT_COLUMNS = ("image_index", "x1", "y1", "x2", "y2", "score", "class_id", "class_name")
SERVE_REQUIREMENTS = "serve_requirements.txt"
"""The `serve` extra pinned from requirements/constraints.txt (a test keeps them equal)."""

SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec(DataType.binary, IMAGE_COLUMN)]),
    outputs=Schema(
        [
            ColSpec(DataType.long, "image_index"),
            *(ColSpec(DataType.double, c) for c in ("x1", "y1", "x2", "y2", "score")),
            ColSpec(DataType.long, "class_id"),
            ColSpec(DataType.string, "class_name"),
        ]
    ),
    params=ParamSchema(
        [
            ParamSpec("conf", DataType.double, DEFAULT_CONF),
            ParamSpec("iou", DataType.double, DEFAULT_IOU),
            ParamSpec("max_det", DataType.long, DEFAULT_MAX_DET),
        ]
    ),
)


def serve_requirements() -> list[str]:
    """The pinned requirements of the predictor (the `serve` extra), one per line."""
    text = resources.files(__package__).joinpath(SERVE_REQUIREMENTS).read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def invalid(message: str) -> MlflowException:
    """MLflow's invalid-input error (HTTP 400 from `mlflow models serve`)."""
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


class DetectorModel(PythonModel):
    """`Detector` on a model directory's `model.onnx`, with a DataFrame in and a DataFrame out."""

    _skip_type_hint_validation = True  # the signature in MLmodel is the contract, not type hints

    def __init__(self) -> None:
        self.detector: Detector | None = None

    def load_context(self, context: PythonModelContext) -> None:
        self.detector = Detector.from_model_dir(Path(context.artifacts["model_dir"]))

    def predict(  # type: ignore[override]
        self, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """Detections of every row's image, as rows that carry the image's index."""
        if self.detector is None:
            raise MlflowException("the model was not loaded (load_context was not called)")
        if not isinstance(model_input, pd.DataFrame) or IMAGE_COLUMN not in model_input.columns:
            got = list(model_input.columns) if isinstance(model_input, pd.DataFrame) else None
            raise invalid(f"expected a DataFrame with a column {IMAGE_COLUMN!r}, got {got}")
        params = params or {}
        conf = float(params.get("conf", DEFAULT_CONF))
        iou = float(params.get("iou", DEFAULT_IOU))
        max_det = int(params.get("max_det", DEFAULT_MAX_DET))
        images = [_decoded(row, value) for row, value in enumerate(model_input[IMAGE_COLUMN])]
        try:
            found = self.detector.detect(images, conf=conf, iou=iou, max_det=max_det)
        except UsageError as error:
            raise invalid(str(error)) from error
        names = self.detector.names
        rows = [
            (index, *(float(v) for v in box), float(score), int(cid), _name(names, int(cid)))
            for index, detections in enumerate(found)
            for box, score, cid in zip(
                detections.boxes, detections.scores, detections.class_ids, strict=True
            )
        ]
        frame = pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS))
        return frame.astype({"image_index": "int64", "class_id": "int64", "class_name": "object"})


def _name(names: list[str], class_id: int) -> str:
    return names[class_id] if 0 <= class_id < len(names) else str(class_id)


def _decoded(row: int, value: object) -> np.ndarray:
    """Row `row`'s image: encoded bytes, or the same bytes base64-encoded in a string."""
    if isinstance(value, str):
        try:
            value = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as error:
            raise invalid(f"row {row}: column {IMAGE_COLUMN!r} is not base64: {error}") from error
    if not isinstance(value, bytes | bytearray | memoryview):
        raise invalid(
            f"row {row}: column {IMAGE_COLUMN!r} holds {type(value).__name__}, "
            "expected encoded image bytes"
        )
    try:
        return decode_image(bytes(value))
    except VisionOpsError as error:
        raise invalid(f"row {row}: {error}") from error


def _load_pyfunc(path: str) -> DetectorModel:
    """MLflow's entry point: the model directory it downloaded (MLmodel beside model.onnx)."""
    model = DetectorModel()
    model.load_context(PythonModelContext({"model_dir": path}, model_config=None))
    return model


def _input_example(imgsz: int) -> pd.DataFrame:
    """A grey image of the model's input size, PNG-encoded (small: it is stored in MLflow)."""
    ok, png = cv2.imencode(".png", np.full((imgsz, imgsz, 3), 114, np.uint8))
    if not ok:
        raise RuntimeError("OpenCV could not encode the input example")
    return pd.DataFrame({IMAGE_COLUMN: [png.tobytes()]})


def write_mlflow_model(model_dir: Path) -> list[str]:
    """Make `model_dir` an MLflow Model in place; the names of the files added.

    MLflow writes into a fresh folder, so its files are made beside the directory and moved in;
    none of the directory's own files is touched.
    """
    import mlflow.pyfunc

    model_dir = Path(model_dir)
    metadata = check_model_dir(model_dir)
    with tempfile.TemporaryDirectory(prefix=".mlflow-", dir=model_dir.parent) as tmp:
        staging = Path(tmp) / "model"
        mlflow.pyfunc.save_model(
            str(staging),
            loader_module=LOADER_MODULE,
            signature=SIGNATURE,
            input_example=(
                _input_example(metadata.imgsz),
                {"conf": DEFAULT_CONF, "iou": DEFAULT_IOU, "max_det": DEFAULT_MAX_DET},
            ),
            pip_requirements=serve_requirements(),
        )
        added = sorted(p.name for p in staging.iterdir())
        clash = [name for name in added if (model_dir / name).exists() and name != MLMODEL]
        if clash:
            raise UsageError(f"{model_dir} already holds {', '.join(clash)}")
        for name in added:
            if name != MLMODEL:
                shutil.move(staging / name, model_dir / name)
        # MLmodel last: a directory with MLmodel is a complete MLflow Model.
        shutil.move(staging / MLMODEL, model_dir / MLMODEL)
    return added
