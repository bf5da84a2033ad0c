"""Inference engines behind one small interface, chosen by name (`--engine`).

A backend only runs the network: float32 NCHW in, the raw head output `[B, 4 + nc, anchors]` out.
Decoding, letterboxing and NMS live once, in `Detector`, so every engine returns the same boxes.
A new engine is one more class registered in `ENGINES`, with the package it runs on in `RUNTIMES`.
"""

from __future__ import annotations

import importlib
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from visionops.errors import EngineUnavailable, InferenceError, ModelLoadError, UsageError

log = logging.getLogger(__name__)


class InferenceBackend(ABC):
    """Runs a YOLOv8 detection network on a batch."""

    name: str = ""

    @property
    def input_size(self) -> tuple[int, int] | None:
        """The fixed input (h, w), or None (the default) when any multiple of the stride is
        accepted."""
        return None

    @property
    def max_batch(self) -> int | None:
        """The fixed batch size of the network, or None (the default) when it is dynamic."""
        return None

    @abstractmethod
    def run(self, batch: np.ndarray) -> np.ndarray:
        """float32 [B, 3, H, W] RGB in [0, 1] -> float32 [B, 4 + nc, anchors]."""

    def warmup(self, batch: np.ndarray) -> np.ndarray:
        """Run `batch` once through everything that may serve a request (first runs are slow)."""
        return self.run(batch)


class SoloSharedBackend(InferenceBackend):
    """Two runners of one network: `_shared` takes inferences that run at once (the server's
    executor calls `run` from several threads), `_solo` (optional, more threads) an inference that
    runs alone, so a lone request uses every core while concurrent ones do not fight over them.

    Subclasses create the runners and say how one runs a batch (`_infer`).
    """

    runtime = ""  # the runtime's name, in messages

    def __init__(self, model_path: Path) -> None:
        self.model_path = Path(model_path)
        self._shared: Any = None
        self._solo: Any = None
        self._input_size: tuple[int, int] | None = None
        self._max_batch: int | None = None
        self._lock = threading.Lock()
        self._running = 0

    @abstractmethod
    def _infer(self, runner: Any, batch: np.ndarray) -> np.ndarray:
        """Run `batch` on one runner (a session, a compiled model)."""

    @property
    def input_size(self) -> tuple[int, int] | None:
        return self._input_size

    @property
    def max_batch(self) -> int | None:
        return self._max_batch

    def warmup(self, batch: np.ndarray) -> np.ndarray:
        try:
            if self._solo is not None:
                self._infer(self._solo, batch)
            return self._infer(self._shared, batch)
        except Exception as error:
            raise ModelLoadError(
                f"{self.model_path} does not run on {self.runtime}: {error}"
            ) from error

    def run(self, batch: np.ndarray) -> np.ndarray:
        with self._lock:
            self._running += 1
            alone = self._running == 1
        runner = self._solo if alone and self._solo is not None else self._shared
        try:
            return self._infer(runner, batch)
        except Exception as error:
            shape = list(batch.shape)
            raise InferenceError(f"{self.runtime} failed on a {shape} batch: {error}") from error
        finally:
            with self._lock:
                self._running -= 1


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
        import onnxruntime as ort

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


def _openvino(
    model_path: Path, *, threads: int = 0, solo_threads: int = 0, imgsz: int | None = None
) -> InferenceBackend:
    from visionops.inference.openvino_backend import OpenVinoBackend

    return OpenVinoBackend(model_path, threads=threads, solo_threads=solo_threads, imgsz=imgsz)


BackendFactory = Callable[..., InferenceBackend]
ENGINES: dict[str, BackendFactory] = {
    OnnxRuntimeBackend.name: OnnxRuntimeBackend,
    "openvino": _openvino,  # the module imports OpenVINO only when a model is loaded
}
# The package each engine runs on, and the extra of this project that installs it.
RUNTIMES: dict[str, tuple[str, str]] = {
    "onnxruntime": ("onnxruntime", "serve"),
    "openvino": ("openvino", "openvino"),
}


def require_runtime(engine: str) -> ModuleType:
    """Import the package `engine` runs on; `EngineUnavailable` names the extra to install.

    The predictor calls it before loading anything, so a missing runtime stops it at start.
    """
    if engine not in ENGINES:
        known = ", ".join(sorted(ENGINES))
        raise UsageError(f"unknown engine {engine!r} (known: {known})")
    package, extra = RUNTIMES[engine]
    try:
        return importlib.import_module(package)
    except ImportError as error:
        raise EngineUnavailable(
            f"the {engine} engine needs the {package} package, which is not installed: "
            f"pip install 'visionops[{extra}]' (the predictor image: docker build "
            f"--build-arg EXTRAS={extra})"
        ) from error


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
