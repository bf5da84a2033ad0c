"""Compile every pipeline to YAML for a Kubeflow Pipelines server (upload in its UI or API)."""

from __future__ import annotations

from pathlib import Path


def compile_all(out_dir: Path) -> list[Path]:
    """Write `<out_dir>/<name>.yaml` for each pipeline; the same sources give the same bytes."""
    from pipelines import PIPELINES, compile_pipeline, load_pipeline

    out_dir = Path(out_dir)
    return [compile_pipeline(load_pipeline(name), out_dir / f"{name}.yaml") for name in PIPELINES]
