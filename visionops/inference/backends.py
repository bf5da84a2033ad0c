"""The inference engines, chosen by name (`--engine`): ONNX Runtime here, OpenVINO in
`openvino_backend`, both registered in `ENGINES`.

A backend only runs the network: float32 NCHW in, the raw head output `[B, 4 + nc, anchors]` out.
Decoding, letterboxing and NMS live once, in `Detector`, so every engine returns the same boxes.
A new engine is one more class registered in `ENGINES`, with the package it runs on in `RUNTIMES`
(`backend_base`, which also holds the interface every engine implements).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from visionops.errors import ModelLoadError, UsageError
from visionops.inference.backend_base import (
    RUNTIMES,
    InferenceBackend,
    SoloSharedBackend,
    require_runtime,
)
from visionops.inference.openvino_backend import OpenVinoBackend

__all__ = [
    "ENGINES",
    "RUNTIMES",
    "InferenceBackend",
    "OnnxRuntimeBackend",
    "SoloSharedBackend",
    "create_backend",
    "require_runtime",
]


class OnnxRuntimeBackend(SoloSharedBackend):
    """ONNX Runtime on CPU: one session of `threads` intra-op threads serves concurrent
    inferences; with `solo_threads` greater than `threads`, a second session takes a lone one."""

    name = "onnxruntime"
    runtime = "ONNX Runtime"

    def __init__(
        self,
        model_path: Path,
        *,
        threads: int = 0,
        solo_threads: int = 0,
        imgsz: int | None = None,  # unused: ORT runs dynamic sizes as fast as fixed ones
    ) -> None:
        if threads < 0 or solo_threads < 0:
            raise UsageError("ONNX Runtime thread counts must be >= 0 (0: one per core)")
        super().__init__(model_path)
        self._shared = self._session(threads)
        self._solo = self._session(solo_threads) if solo_threads > max(threads, 1) else None
        meta = self._shared.get_inputs()[0]
        self._input_name = meta.name
        self._output_name = self._shared.get_outputs()[0].name
        if len(meta.shape) != 4:
            raise ModelLoadError(
                f"{self.model_path} is not a detection model: input {meta.name} has shape "
                f"{meta.shape}, expected [batch, 3, height, width]"
            )
        batch, _, height, width = meta.shape
        self._max_batch = batch if isinstance(batch, int) else None
        fixed = isinstance(height, int) and isinstance(width, int)
        self._input_size = (height, width) if fixed else None

    def _session(self, threads: int):  # type: ignore[no-untyped-def]
        ort = require_runtime(self.name)  # the engine's runtime, its telemetry off first

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Worker threads that spin between operators make any other work on the cores (the
        # prediction log's feature thread, the event loop, a second inference) a straggler that
        # every parallel operator waits for. Measured on 2 cores, 640 px: without spinning the
        # server answered a lone request with the log on in 33 ms instead of 39, and served 8
        # concurrent clients 10% faster; in-process alone it costs about 2 ms.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        try:
            return ort.InferenceSession(
                str(self.model_path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # ORT raises its own pybind exception types
            raise ModelLoadError(f"cannot load ONNX model {self.model_path}: {error}") from error

    def _infer(self, runner: Any, batch: np.ndarray) -> np.ndarray:
        return runner.run([self._output_name], {self._input_name: batch})[0]


BackendFactory = Callable[..., InferenceBackend]
ENGINES: dict[str, BackendFactory] = {
    OnnxRuntimeBackend.name: OnnxRuntimeBackend,
    OpenVinoBackend.name: OpenVinoBackend,  # imports OpenVINO only when a model is loaded
}


def create_backend(
    engine: str,
    model_path: Path,
    *,
    threads: int = 0,
    solo_threads: int = 0,
    imgsz: int | None = None,
) -> InferenceBackend:
    """The backend called `engine` for the model file at `model_path`.

    `imgsz` is the model's training size: an engine that runs fixed shapes faster (OpenVINO)
    compiles a dynamic-size model for `imgsz` x `imgsz` inputs, one image per run.
    """
    require_runtime(engine)
    return ENGINES[engine](model_path, threads=threads, solo_threads=solo_threads, imgsz=imgsz)
