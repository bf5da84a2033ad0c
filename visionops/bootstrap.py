"""Make a process offline by construction before any third-party library runs.

The CLI, every KFP component, the predictor and the test suite call `bootstrap()` first. Without
it Ultralytics probes the network, downloads fonts and pip-installs packages, ONNX Runtime and
OpenVINO send telemetry from native code and forked children, MLflow and Evidently send theirs,
and matplotlib writes into $HOME (see PLATFORM.md). Everything those libraries write goes under
the project's data dir instead. `visionops doctor offline` proves it below Python: it runs a
command in a network namespace with no route out and reports every DNS query and connection
attempt (`visionops/offline/`).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import shutil
import sys
from pathlib import Path

from visionops.config import Settings, get_settings

log = logging.getLogger(__name__)

_FONT_NAMES = ("Arial.ttf", "Arial.Unicode.ttf")


# Each library's own switch; the README's "Offline by construction" table says what each prevents.
# They are read when the library is imported (ONNX Runtime: once, when its native library loads),
# so `disable_telemetry()` runs before any of them is imported, and children inherit them.
TELEMETRY_OFF: dict[str, str] = {
    "ORT_DISABLE_TELEMETRY": "1",  # ONNX Runtime >= 1.29: no 1DS uploader, device id or cache
    "YOLO_OFFLINE": "1",  # Ultralytics: no online checks, analytics or downloads
    "YOLO_AUTOINSTALL": "0",  # Ultralytics: no pip install during checks and export
    "MLFLOW_DISABLE_TELEMETRY": "true",  # MLflow's usage telemetry (client and server)
    "DO_NOT_TRACK": "1",  # Evidently's telemetry (and MLflow's, again)
    "ITERATIVE_DO_NOT_TRACK": "1",  # iterative-telemetry, which Evidently sends through
    "HF_HUB_OFFLINE": "1",  # Hugging Face Hub, should any library reach for it
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "AWS_EC2_METADATA_DISABLED": "true",  # botocore: no instance-metadata probe for credentials
    "PIP_NO_INDEX": "1",  # a pip started at run time fails at once instead of reaching PyPI
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    "GIT_PYTHON_REFRESH": "quiet",
}


def disable_telemetry() -> None:
    """Switch off every telemetry channel of the libraries VisionOps runs (idempotent).

    Needs no settings, so the engines call it before they import their runtime and the test
    suite before it imports anything.
    """
    late = "onnxruntime" in sys.modules and os.environ.get("ORT_DISABLE_TELEMETRY") != "1"
    os.environ.update(TELEMETRY_OFF)
    if late:
        log.warning(
            "onnxruntime was imported before visionops.bootstrap: its process telemetry event "
            "is already queued; import visionops.bootstrap (or set ORT_DISABLE_TELEMETRY=1) first"
        )
    # `import openvino` sends a Google Analytics event (from a thread that forks a sender) unless
    # the user's consent file ($HOME/intel/openvino_telemetry) says no. Without the
    # openvino-telemetry package, OpenVINO falls back to its own no-op stub; a None entry makes
    # this process behave as if the package were not installed (it is a hard dependency of
    # openvino, so pip keeps installing it), without writing into $HOME.
    if "openvino_telemetry" not in sys.modules:
        sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]
    elif sys.modules["openvino_telemetry"] is not None:
        _warn_once("openvino was imported before visionops.bootstrap: it sent its import event")


@functools.cache
def _warn_once(message: str) -> None:
    log.warning(message)


def offline_environment(settings: Settings) -> dict[str, str]:
    """The environment variables that keep third-party libraries offline and out of $HOME."""
    config_dir = settings.data_dir / "config"
    cache_dir = settings.data_dir / "cache"
    env = {
        **TELEMETRY_OFF,
        "YOLO_CONFIG_DIR": str(config_dir),
        "MPLCONFIGDIR": str(cache_dir / "matplotlib"),
        "TORCH_HOME": str(cache_dir / "torch"),
    }
    if settings.s3_endpoint:
        # Read by MLflow's and KServe's own S3 clients (boto3), which VisionOps does not wrap.
        env["MLFLOW_S3_ENDPOINT_URL"] = settings.s3_endpoint
        env["AWS_ENDPOINT_URL"] = settings.s3_endpoint
        env["AWS_DEFAULT_REGION"] = settings.s3_region
        env["S3_VERIFY_SSL"] = "1" if settings.s3_secure else "0"
        if settings.s3_access_key and settings.s3_secret_key:
            env["AWS_ACCESS_KEY_ID"] = settings.s3_access_key.get_secret_value()
            env["AWS_SECRET_ACCESS_KEY"] = settings.s3_secret_key.get_secret_value()
    return env


def _install_fonts(config_dir: Path) -> None:
    """Give Ultralytics its fonts locally so `check_font` never asks GitHub for them."""
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or spec.origin is None:
        return  # no matplotlib (predictor image): nothing there plots
    source = Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
    target_dir = config_dir / "Ultralytics"
    target_dir.mkdir(parents=True, exist_ok=True)
    for name in _FONT_NAMES:
        target = target_dir / name
        if not target.exists() and source.exists():
            shutil.copyfile(source, target)


def bootstrap(settings: Settings | None = None) -> Settings:
    """Apply the offline environment to this process (idempotent) and return the settings."""
    disable_telemetry()
    settings = settings or get_settings()
    env = offline_environment(settings)
    os.environ.update(env)
    for key in ("YOLO_CONFIG_DIR", "MPLCONFIGDIR", "TORCH_HOME"):
        Path(env[key]).mkdir(parents=True, exist_ok=True)
    _install_fonts(Path(env["YOLO_CONFIG_DIR"]))
    return settings


def configure_ultralytics(settings: Settings | None = None) -> None:
    """Switch off Ultralytics' analytics and integrations; VisionOps owns the MLflow run.

    Imports Ultralytics, so only the code that trains, evaluates with torch or exports calls it.
    """
    settings = bootstrap(settings)
    from ultralytics.utils import SETTINGS  # heavy, import-time side effects

    integrations = ("clearml", "comet", "dvc", "hub", "mlflow", "neptune", "raytune")
    updates: dict[str, object] = {"sync": False, "tensorboard": False, "wandb": False}
    updates.update(dict.fromkeys(integrations, False))
    updates["runs_dir"] = str(settings.data_dir / "runs")
    updates["weights_dir"] = str(settings.data_dir / "weights")
    updates["datasets_dir"] = str(settings.data_dir / "datasets")
    SETTINGS.update({k: v for k, v in updates.items() if k in SETTINGS})
    log.debug("ultralytics settings: %s", dict(SETTINGS))
