"""The detector: decoded images in, `Detections` out, on any engine of `backends`.

Serving and evaluation both run images through `Detector.detect`, so the numbers evaluation
reports describe exactly what the predictor serves.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np

from visionops.detections import Detections
from visionops.errors import InvalidImage, ModelLoadError, ModelNotFound, UsageError
from visionops.inference.backends import InferenceBackend, create_backend
from visionops.inference.letterbox import PAD_VALUE, letterbox, to_input_tensor
from visionops.inference.postprocess import detections_from_output
from visionops.inference.variants import (
    AUTO,
    auto_precisions,
    fastest_backend,
    require_variant,
    variant_file,
)
from visionops.models.artifact import (
    MODEL_INT8_ONNX,
    MODEL_ONNX,
    ModelMetadata,
    check_model_dir,
    read_metadata,
)

log = logging.getLogger(__name__)

DEFAULT_CONF = 0.25
DEFAULT_IOU = 0.7
DEFAULT_MAX_DET = 300
PRECISION_FILES = {"fp32": MODEL_ONNX, "int8": MODEL_INT8_ONNX}


def model_file(model_dir: Path, precision: str = "fp32", engine: str = "onnxruntime") -> Path:
    """The ONNX file `engine` runs for `precision` in a model directory (from metadata.json's
    variants)."""
    if not Path(model_dir).is_dir():
        raise ModelNotFound(f"model directory {model_dir} does not exist")
    metadata = read_metadata(model_dir)
    name = variant_file(metadata, precision, engine) or PRECISION_FILES.get(precision)
    if name is None:
        known = sorted({*PRECISION_FILES, *metadata.variants, AUTO})
        raise UsageError(f"unknown precision {precision!r} (known: {', '.join(known)})")
    check_model_dir(model_dir, name)
    return Path(model_dir) / name


def check_thresholds(conf: float, iou: float, max_det: int) -> None:
    """Raise `UsageError` naming the first out-of-range detection parameter."""
    if not 0.0 <= conf <= 1.0:
        raise UsageError(f"conf must be between 0 and 1, got {conf}")
    if not 0.0 <= iou <= 1.0:
        raise UsageError(f"iou must be between 0 and 1, got {iou}")
    if max_det < 1:
        raise UsageError(f"max_det must be at least 1, got {max_det}")


class Detector:
    """YOLOv8 detection with Ultralytics' letterbox and NMS on an `InferenceBackend`."""

    def __init__(
        self,
        backend: InferenceBackend,
        metadata: ModelMetadata,
        *,
        batch_size: int = 1,
        precision: str = "fp32",
    ) -> None:
        if batch_size < 1:
            raise UsageError(f"batch_size must be at least 1, got {batch_size}")
        self.backend = backend
        self.metadata = metadata
        self.batch_size = min(batch_size, backend.max_batch or batch_size)
        self.precision = precision  # the variant loaded (what `auto` chose)

    @classmethod
    def from_model_dir(
        cls,
        model_dir: Path,
        *,
        engine: str = "onnxruntime",
        precision: str = "fp32",
        threads: int = 0,
        solo_threads: int = 0,
        batch_size: int = 1,
    ) -> Detector:
        """Load the model directory's ONNX file of `precision` on `engine`.

        `precision` `auto` loads every variant that passed the accuracy guard on `engine` and
        keeps the fastest there (`visionops.inference.variants`). `threads` per inference (0: the
        engine's default, every core); see `OnnxRuntimeBackend` for `solo_threads`. Raises
        `ModelNotFound`, `DataError`, `ModelLoadError` or `EngineUnavailable`.
        """
        model_dir = Path(model_dir)
        metadata = check_model_dir(model_dir)
        if precision == AUTO:
            choices = auto_precisions(metadata, model_dir, engine)
        else:
            require_variant(metadata, model_dir, precision, engine)
            choices = [precision]
        paths = {name: model_file(model_dir, name, engine) for name in choices}
        precision, backend, _ = fastest_backend(
            {
                name: partial(
                    create_backend,
                    engine,
                    path,
                    threads=threads,
                    solo_threads=solo_threads,
                    imgsz=metadata.imgsz,
                )
                for name, path in paths.items()
            },
            metadata.imgsz,
        )
        log.info(
            "loaded %s (%s, %s) on %s: %d classes, imgsz %d",
            model_dir, precision, backend.input_size or "dynamic size", engine,
            len(metadata.names), metadata.imgsz,
        )  # fmt: skip
        return cls(backend, metadata, batch_size=batch_size, precision=precision)

    @property
    def engine(self) -> str:
        return self.backend.name

    @property
    def names(self) -> list[str]:
        return self.metadata.names

    def letterboxed(self, image: np.ndarray) -> np.ndarray:
        """A BGR image resized and padded as the network sees it (INT8 calibration uses it too).

        A model with dynamic input size gets the minimum rectangle (a multiple of the stride), as
        Ultralytics' predict does; a fixed-size model the square.
        """
        fixed = self.backend.input_size
        new_shape = fixed or (self.metadata.imgsz, self.metadata.imgsz)
        return letterbox(image, new_shape, stride=self.metadata.stride, auto=not fixed)

    def warmup(self) -> None:
        """Run one grey input through the backend; check the head matches the class names."""
        size = self.backend.input_size or (self.metadata.imgsz, self.metadata.imgsz)
        output = self.backend.warmup(np.full((1, 3, *size), PAD_VALUE / 255, np.float32))
        if output.ndim != 3:
            raise ModelLoadError(
                f"the model's output has shape {list(output.shape)}, expected "
                "[batch, 4 + classes, anchors] (a YOLOv8 detection head exported without NMS)"
            )
        classes = output.shape[1] - 4
        if classes != len(self.names):
            raise ModelLoadError(
                f"the model predicts {classes} classes but metadata.json names {len(self.names)}"
            )

    def detect(
        self,
        images: Sequence[np.ndarray],
        *,
        conf: float = DEFAULT_CONF,
        iou: float = DEFAULT_IOU,
        max_det: int = DEFAULT_MAX_DET,
    ) -> list[Detections]:
        """Detections for each BGR uint8 image [H, W, 3], in the order given.

        Each image is `letterboxed`; images of the same shape run together in batches of
        `batch_size`.
        """
        check_thresholds(conf, iou, max_det)
        fixed = self.backend.input_size
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for index, image in enumerate(images):
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise InvalidImage(
                    f"image {index}: expected a BGR uint8 array [H, W, 3], "
                    f"got {image.dtype} {list(image.shape)}"
                )
            groups[() if fixed else image.shape[:2]].append(index)
        results: list[Detections] = [Detections.empty()] * len(images)
        for indices in groups.values():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                boxed = [self.letterboxed(images[i]) for i in chunk]
                output = self.backend.run(to_input_tensor(boxed))
                for row, i in enumerate(chunk):
                    results[i] = detections_from_output(
                        output[row],
                        input_shape=boxed[row].shape[:2],
                        image_shape=images[i].shape[:2],
                        conf=conf,
                        iou=iou,
                        max_det=max_det,
                    )
        return results
