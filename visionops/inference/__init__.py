"""The inference engine: image decoding with limits, letterbox, ONNX Runtime (or another backend),
NMS. Plain numpy/OpenCV; serving and evaluation both use it. The engines' runtimes (ONNX Runtime,
OpenVINO) load with the first model."""

from visionops.inference.detector import (
    DEFAULT_CONF,
    DEFAULT_IOU,
    DEFAULT_MAX_DET,
    Detector,
    check_thresholds,
    model_file,
)
from visionops.inference.images import decode_image, image_size

__all__ = [
    "DEFAULT_CONF",
    "DEFAULT_IOU",
    "DEFAULT_MAX_DET",
    "Detector",
    "check_thresholds",
    "decode_image",
    "image_size",
    "model_file",
]
