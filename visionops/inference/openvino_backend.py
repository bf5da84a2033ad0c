"""OpenVINO on CPU, the second engine (`--engine openvino`), from the same ONNX files.

OpenVINO reads `model.onnx` and the QDQ `model.int8.onnx` directly and runs the quantized layers
in int8. Other layers run in OpenVINO's default floating-point type for the CPU, bf16 where the
CPU has it (`float_type` records which): faster than fp32, with boxes that agree with fp32 ONNX
Runtime (tests/test_engines.py holds every engine and precision to that).

Concurrency maps onto OpenVINO streams: with `threads` per inference, the shared compiled model
gets one stream per `threads` cores, and each calling thread keeps its own infer request (a request
is not thread-safe; a stream runs one request at a time). As in `OnnxRuntimeBackend`, an inference
that runs alone goes to a second, single-stream model with `solo_threads` threads.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from visionops.errors import InferenceError, ModelLoadError, UsageError
from visionops.inference.backends import InferenceBackend, require_runtime

log = logging.getLogger(__name__)

DEVICE = "CPU"


def stream_config(threads: int, cores: int) -> dict[str, Any]:
    """Compile properties for inferences of `threads` threads each (0: one inference, all cores)."""
    if threads == 0:
        return {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
    streams = max(1, cores // threads)
    return {"NUM_STREAMS": streams, "INFERENCE_NUM_THREADS": streams * threads}


class OpenVinoBackend(InferenceBackend):
    """OpenVINO's CPU plugin; dynamic batch and input size, as exported."""

    name = "openvino"

    def __init__(self, model_path: Path, *, threads: int = 0, solo_threads: int = 0) -> None:
        if threads < 0 or solo_threads < 0:
            raise UsageError("OpenVINO thread counts must be >= 0 (0: one per core)")
        ov = require_runtime(self.name)
        self.model_path = Path(model_path)
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
        batch, _, height, width = (None if d.is_dynamic else d.get_length() for d in shape)
        self._max_batch = batch
        self._input_size = (height, width) if height and width else None
        cores = len(os.sched_getaffinity(0))
        self._shared = self._compile(core, model, stream_config(threads, cores))
        self._solo = (
            self._compile(core, model, {"NUM_STREAMS": 1, "INFERENCE_NUM_THREADS": solo_threads})
            if solo_threads > max(threads, 1)
            else None
        )
        self.float_type = self._shared.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        self._local = threading.local()
        self._lock = threading.Lock()
        self._running = 0

    def _compile(self, core: Any, model: Any, config: dict[str, Any]) -> Any:
        try:
            return core.compile_model(model, DEVICE, config)
        except Exception as error:
            raise ModelLoadError(f"OpenVINO cannot compile {self.model_path}: {error}") from error

    @property
    def input_size(self) -> tuple[int, int] | None:
        return self._input_size

    @property
    def max_batch(self) -> int | None:
        return self._max_batch

    def _infer(self, compiled: Any, batch: np.ndarray) -> np.ndarray:
        """Run on this thread's own infer request of `compiled`."""
        requests: dict[int, Any] = self._local.__dict__.setdefault("requests", {})
        request = requests.get(id(compiled))
        if request is None:
            request = requests[id(compiled)] = compiled.create_infer_request()
        return np.asarray(request.infer({0: batch})[0])

    def warmup(self, batch: np.ndarray) -> np.ndarray:
        try:
            if self._solo is not None:
                self._infer(self._solo, batch)
            return self._infer(self._shared, batch)
        except Exception as error:
            raise ModelLoadError(f"{self.model_path} does not run on OpenVINO: {error}") from error

    def run(self, batch: np.ndarray) -> np.ndarray:
        with self._lock:
            self._running += 1
            alone = self._running == 1
        compiled = self._solo if alone and self._solo is not None else self._shared
        try:
            return self._infer(compiled, batch)
        except Exception as error:
            shape = list(batch.shape)
            raise InferenceError(f"OpenVINO failed on a {shape} batch: {error}") from error
        finally:
            with self._lock:
                self._running -= 1
