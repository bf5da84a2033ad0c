"""Make a process offline by construction before any third-party library runs.

The CLI, every KFP component, the predictor and the test suite call `bootstrap()` first. Without
it Ultralytics probes the network, downloads fonts and pip-installs packages, MLflow and Evidently
send telemetry, and matplotlib writes into $HOME (see PLATFORM.md). Everything those libraries
write goes under the project's data dir instead.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from pathlib import Path

from visionops.config import Settings, get_settings

log = logging.getLogger(__name__)

_FONT_NAMES = ("Arial.ttf", "Arial.Unicode.ttf")


def offline_environment(settings: Settings) -> dict[str, str]:
    """The environment variables that keep third-party libraries offline and out of $HOME."""
    config_dir = settings.data_dir / "config"
    cache_dir = settings.data_dir / "cache"
    env = {
        "YOLO_OFFLINE": "1",
        "YOLO_AUTOINSTALL": "0",
        "YOLO_CONFIG_DIR": str(config_dir),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "1",
        "MPLCONFIGDIR": str(cache_dir / "matplotlib"),
        "HF_HUB_OFFLINE": "1",
        "TORCH_HOME": str(cache_dir / "torch"),
        "GIT_PYTHON_REFRESH": "quiet",
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
