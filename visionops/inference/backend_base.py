"""What every inference engine is: a network runner behind one small interface (`InferenceBackend`),
the two-runner pattern the CPU engines share (`SoloSharedBackend`), and the package each engine
runs on (`RUNTIMES`, `require_runtime`). The engines themselves are in `backends` (ONNX Runtime,
and the registry `ENGINES`) and `openvino_backend`.
"""

from __future__ import annotations

import importlib
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from visionops.bootstrap import disable_telemetry
from visionops.errors import EngineUnavailable, InferenceError, ModelLoadError, UsageError

# The package each engine runs on, and the extra of this project that installs it.
RUNTIMES: dict[str, tuple[str, str]] = {
    "onnxruntime": ("onnxruntime", "serve"),
    "openvino": ("openvino", "openvino"),
}


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


def require_runtime(engine: str) -> ModuleType:
    """Import the package `engine` runs on; `EngineUnavailable` names the extra to install.

    The predictor calls it before loading anything, so a missing runtime stops it at start. Every
    session and compiled model of the project is created after it, and it switches the runtimes'
    telemetry off before their first import (`visionops.bootstrap.disable_telemetry`), so no
    caller can forget to.
    """
    disable_telemetry()
    if engine not in RUNTIMES:
        known = ", ".join(sorted(RUNTIMES))
        raise UsageError(f"unknown engine {engine!r} (known: {known})")
    package, extra = RUNTIMES[engine]
    try:
        runtime = importlib.import_module(package)
    except ImportError as error:
        raise EngineUnavailable(
            f"the {engine} engine needs the {package} package, which is not installed: "
            f"pip install 'visionops[{extra}]' (the predictor image: docker build "
            f"--build-arg EXTRAS={extra})"
        ) from error
    if package == "onnxruntime":
        # Session-level events; the environment variable above already stopped the uploader.
        runtime.disable_telemetry_events()
    return runtime
