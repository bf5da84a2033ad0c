"""Every exception VisionOps raises on purpose.

Each one subclasses the builtin it resembles, so callers can catch either. `exit_code` is what the
CLI exits with: 1 for bad data or a failed check, 2 for a usage problem (a wrong flag value, an
unknown product), following the convention of `visionops --help`.
"""

from __future__ import annotations


class VisionOpsError(Exception):
    """Base class: a problem the user can act on, reported as one line without a traceback."""

    exit_code: int = 1


class UsageError(VisionOpsError, ValueError):
    """A flag, parameter or combination of them is wrong (CLI exit 2)."""

    exit_code = 2


class ConfigError(VisionOpsError, ValueError):
    """A setting (environment variable `VISIONOPS_*`) is missing or invalid."""

    exit_code = 2


class DataError(VisionOpsError, ValueError):
    """A dataset is missing, unreadable or malformed (CLI exit 1)."""


class ValidationFailed(DataError):
    """Dataset validation found errors; `report` holds the full report."""

    def __init__(self, message: str, report: object | None = None) -> None:
        super().__init__(message)
        self.report = report


class StorageError(VisionOpsError, OSError):
    """An object store or path could not be read or written (wrong credentials, unreachable)."""


class ModelNotFound(VisionOpsError, LookupError):
    """A model, model version, alias or weights file does not exist."""


class RegistryError(VisionOpsError, RuntimeError):
    """The model registry (MLflow) refused an operation or is unreachable."""


class TrainingError(VisionOpsError, RuntimeError):
    """Training failed (for example, losses became NaN)."""


class GateRejected(VisionOpsError):
    """A model version did not pass the promotion gate; it was kept as challenger."""


class InferenceError(VisionOpsError, RuntimeError):
    """The inference engine failed on input that was valid."""


class ModelLoadError(VisionOpsError, RuntimeError):
    """A model file exists but cannot be loaded (corrupt ONNX, unknown engine or precision)."""


class EngineUnavailable(VisionOpsError, ImportError):
    """An inference engine's runtime is not installed; the message names the extra to install."""


class InvalidImage(VisionOpsError, ValueError):
    """An input is not a decodable image, or exceeds the configured limits (HTTP 400)."""


class PayloadTooLarge(InvalidImage):
    """A request body or image exceeds the configured size limit (HTTP 413)."""


class DriftCheckError(VisionOpsError, ValueError):
    """Reference and current feature tables cannot be compared (columns, values)."""


class PipelineError(VisionOpsError, RuntimeError):
    """A pipeline could not be compiled, submitted or did not succeed."""


class SandboxUnavailable(VisionOpsError, RuntimeError):
    """The offline check cannot isolate a command here: no root, `unshare` or `strace` (CLI exit
    2, so a script tells "could not check" from "something reached for the network")."""

    exit_code = 2


class ContainerError(VisionOpsError, RuntimeError):
    """No Docker engine, an image that is not built, or a container that failed (its log named)."""


class LabelStudioError(VisionOpsError, RuntimeError):
    """Label Studio is unreachable, refused the token, or holds a project that does not fit (its
    labels are not the batch's classes); nothing was written (CLI exit 1)."""
