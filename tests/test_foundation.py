"""The foundation: settings, offline bootstrap, CLI conventions, import hygiene."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from visionops.bootstrap import bootstrap, offline_environment
from visionops.cli.app import app
from visionops.config import Settings, get_settings
from visionops.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def test_settings_read_prefixed_environment(settings_env: pytest.MonkeyPatch, tmp_path: Path):
    settings_env.setenv("VISIONOPS_DATA_DIR", str(tmp_path / "d"))
    settings_env.setenv("VISIONOPS_S3_ENDPOINT", "http://127.0.0.1:9000/")
    settings_env.setenv("VISIONOPS_S3_ACCESS_KEY", "key")
    settings_env.setenv("VISIONOPS_S3_SECRET_KEY", "s3cr3t-value")
    settings = get_settings()
    assert settings.data_dir == (tmp_path / "d").resolve()
    assert settings.s3_endpoint == "http://127.0.0.1:9000"
    assert settings.tracking_uri == f"sqlite:///{tmp_path / 'd' / 'mlflow' / 'mlflow.db'}"
    shown = settings.public_dict()
    assert shown["s3_secret_key"] == "********"
    assert "s3cr3t-value" not in json.dumps(shown, default=str)


def test_config_prints_each_variable_and_one_tracking_uri(
    settings_env: pytest.MonkeyPatch, tmp_path: Path
):
    settings_env.setenv("VISIONOPS_DATA_DIR", str(tmp_path / "d"))
    settings_env.setenv("VISIONOPS_S3_SECRET_KEY", "s3cr3t-value")
    settings_env.setenv("VISIONOPS_S3_ACCESS_KEY", "key")
    result = runner.invoke(app, ["config"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    names = [line.split()[0] for line in lines]
    assert all(name.startswith("VISIONOPS_") for name in names), names
    assert "VISIONOPS_DATA_DIR" in names and "VISIONOPS_DRIFT_SHARE" in names
    tracking = [line.split() for line in lines if "mlflow.db" in line or "TRACKING" in line]
    store = f"sqlite:///{(tmp_path / 'd' / 'mlflow' / 'mlflow.db').resolve()}"
    assert tracking == [
        ["VISIONOPS_MLFLOW_TRACKING_URI", store, "(unset:", "the", "embedded", "store)"]
    ]
    assert "s3cr3t-value" not in result.output
    assert ["VISIONOPS_S3_SECRET_KEY", "********"] in [line.split() for line in lines]


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"VISIONOPS_S3_ENDPOINT": "minio:9000"}, "VISIONOPS_S3_ENDPOINT"),
        ({"VISIONOPS_S3_ACCESS_KEY": "only-one"}, "VISIONOPS_S3_SECRET_KEY"),
        ({"VISIONOPS_IMGSZ": "0"}, "VISIONOPS_IMGSZ"),
    ],
)
def test_invalid_settings_name_the_variable(
    settings_env: pytest.MonkeyPatch, env: dict[str, str], needle: str
):
    for key, value in env.items():
        settings_env.setenv(key, value)
    with pytest.raises(ConfigError, match=needle):
        get_settings()
    result = runner.invoke(app, ["config"])
    assert result.exit_code == 2
    assert needle in result.output


def test_bootstrap_keeps_everything_inside_the_data_dir(tmp_path: Path):
    settings = Settings(data_dir=tmp_path)
    env = offline_environment(settings)
    assert env["YOLO_OFFLINE"] == "1"
    assert env["YOLO_AUTOINSTALL"] == "0"
    assert env["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert env["DO_NOT_TRACK"] == "1"
    for key in ("YOLO_CONFIG_DIR", "MPLCONFIGDIR", "TORCH_HOME"):
        assert Path(env[key]).is_relative_to(tmp_path)
    saved = os.environ.copy()
    try:
        bootstrap(settings)
        font = Path(env["YOLO_CONFIG_DIR"]) / "Ultralytics" / "Arial.ttf"
        assert font.stat().st_size > 100_000  # a real TTF, so check_font never downloads
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_tests_cannot_reach_the_internet():
    with pytest.raises(OSError, match=r"only connect to 127\.0\.0\.1"):
        socket.create_connection(("192.0.2.1", 80), timeout=1)


def test_import_is_light_and_side_effect_free():
    """`import visionops` and the CLI module pull in no heavy library and touch no env var."""
    code = (
        "import os, sys, json; before = dict(os.environ);"
        "import visionops, visionops.config, visionops.cli.app;"
        "heavy = [m for m in ('torch', 'ultralytics', 'kfp', 'kserve', 'mlflow', 'evidently',"
        " 'onnxruntime', 'cv2') if m in sys.modules];"
        "print(json.dumps({'heavy': heavy, 'env_changed': dict(os.environ) != before}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT
    )
    assert json.loads(out.stdout) == {"heavy": [], "env_changed": False}


def test_cli_help_and_exit_codes():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "defect detection" in result.output
    assert runner.invoke(app, ["no-such-command"]).exit_code == 2
    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0
    assert "visionops 0.1.0" in version.output


def test_console_script_is_installed():
    out = subprocess.run(
        [Path(sys.executable).parent / "visionops", "--version"],
        check=True,
        capture_output=True,
        text=True,
    )
    assert out.stdout.strip() == "visionops 0.1.0"
