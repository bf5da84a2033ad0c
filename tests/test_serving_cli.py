"""Starting the predictor: flag mistakes stop it with exit code 2 and a message naming them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from visionops.cli.app import app


def test_serve_refuses_two_model_sources(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["serve", "--model-dir", str(tmp_path), "--model-uri", "s3://bucket/model"]
    )
    assert result.exit_code == 2
    assert "give --model-dir or --model-uri, not both" in result.output


def test_python_m_serving_refuses_several_uvicorn_workers(untrained_model: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "serving", "--model-dir", str(untrained_model), "--workers=2",
         "--host=127.0.0.1", "--prediction-log=off"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert "--workers must be 1" in done.stderr


def test_python_m_serving_rejects_bad_flag_values() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "serving", "--confidence=1.5"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "argument --confidence: must be between 0 and 1, got 1.5" in done.stderr


def test_the_predictor_never_imports_torch() -> None:
    """The predictor image has no torch: serving, its engine and registry resolution stay off it."""
    code = (
        "import sys, serving.server, serving.model, visionops.models.sources\n"
        "heavy = sorted(m for m in ('torch', 'ultralytics', 'torchvision') if m in sys.modules)\n"
        "assert not heavy, heavy"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
