"""OpenVINO on CPU, the second engine (`--engine openvino`), from the same ONNX files.

OpenVINO reads `model.onnx` and the QDQ `model.int8.onnx` directly and runs the quantized layers
in int8. Other layers run in OpenVINO's default floating-point type for the CPU, bf16 where the
CPU has it (`float_type` records which): faster than fp32, with boxes that agree with fp32 ONNX
Runtime. Its INT8 differs more from ONNX Runtime's on the same graph than rounding explains (in
2026.4 one neck convolution after a Concat gets its input zero point compensated wrongly, a
per-channel offset): the accuracy guard judges each engine separately, and tests/test_engines.py
holds every variant an engine serves to fp32 ONNX Runtime's boxes.

A model exported with dynamic input size is compiled for one fixed shape, [1, 3, imgsz, imgsz]:
OpenVINO's CPU plugin runs fixed shapes much faster (measured on 2 cores, 640 px, one thread:
INT8 30.7 -> 21.1 ms, bf16 24.8 -> 22.8 ms), more than the minimal letterbox rectangle that a
dynamic shape allows saves on non-square images. Several images of one request run one by one
(batching gives nothing on a few cores).

Concurrency maps onto OpenVINO streams: with `threads` per inference, the shared compiled model
gets one stream per `threads` cores, and each calling thread keeps its own infer request (a request
is not thread-safe; a stream runs one request at a time). An inference that runs alone goes to a
second, single-stream model with `solo_threads` threads (`SoloSharedBackend`).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from visionops.errors import ModelLoadError, UsageError
from visionops.inference.backend_base import SoloSharedBackend, require_runtime

DEVICE = "CPU"


def stream_config(threads: int, cores: int) -> dict[str, Any]:
    """Compile properties for inferences of `threads` threads each (0: one inference, all cores)."""
    if threads == 0:
        return {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
    streams = max(1, cores // threads)
    return {"NUM_STREAMS": streams, "INFERENCE_NUM_THREADS": streams * threads}


class OpenVinoBackend(SoloSharedBackend):
    """OpenVINO's CPU plugin; dynamic batch and input size, as exported."""

    name = "openvino"
    runtime = "OpenVINO"

    def __init__(
        self,
        model_path: Path,
        *,
        threads: int = 0,
        solo_threads: int = 0,
        imgsz: int | None = None,
    ) -> None:
        if threads < 0 or solo_threads < 0:
            raise UsageError("OpenVINO thread counts must be >= 0 (0: one per core)")
        ov = require_runtime(self.name)
        super().__init__(model_path)
        core = ov.Core()
        try:
            model = core.read_model(str(self.model_path))
        except Exception as error:  # OpenVINO raises RuntimeError subclasses of its own
            raise ModelLoadError(f"cannot load ONNX model {self.model_path}: {error}") from error
        shape = model.inputs[0].get_partial_shape()
        if shape.rank.is_dynamic or shape.rank.get_length() != 4:
            raise ModelLoadError(
                f"{self.model_path} is not a detection model: input has shape {shape}, "
                "expected [batch, 3, height, width]"
            )
        batch, channels, height, width = (None if d.is_dynamic else d.get_length() for d in shape)
        if imgsz and not (height and width):
            batch, height, width = 1, imgsz, imgsz
            model.reshape({model.inputs[0]: ov.PartialShape([1, channels or 3, imgsz, imgsz])})
        self._max_batch = batch
        self._input_size = (height, width) if height and width else None
        cores = len(os.sched_getaffinity(0))
        self._shared = self._compile(core, model, stream_config(threads, cores))
        if solo_threads > max(threads, 1):
            solo = {"NUM_STREAMS": 1, "INFERENCE_NUM_THREADS": solo_threads}
            self._solo = self._compile(core, model, solo)
        self.float_type = self._shared.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        self._local = threading.local()

    def _compile(self, core: Any, model: Any, config: dict[str, Any]) -> Any:
        try:
            return core.compile_model(model, DEVICE, config)
        except Exception as error:
            raise ModelLoadError(f"OpenVINO cannot compile {self.model_path}: {error}") from error

    def _infer(self, runner: Any, batch: np.ndarray) -> np.ndarray:
        """Run on this thread's own infer request of the compiled model `runner`."""
        requests: dict[int, Any] = self._local.__dict__.setdefault("requests", {})
        request = requests.get(id(runner))
        if request is None:
            request = requests[id(runner)] = runner.create_infer_request()
        return np.asarray(request.infer({0: batch})[0])
