"""Compile pipelines to YAML for a Kubeflow Pipelines server (upload in its UI or API)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kfp import compiler


def compile_pipeline(pipeline: Any, path: Path) -> Path:
    """Compile `pipeline` to YAML at `path` (deterministic: same source, same bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline, str(path))
    return path


def compile_all(pipelines: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """Write `<out_dir>/<name>.yaml` for each of `pipelines` (name -> pipeline object)."""
    out_dir = Path(out_dir)
    return [
        compile_pipeline(pipeline, out_dir / f"{name}.yaml") for name, pipeline in pipelines.items()
    ]
