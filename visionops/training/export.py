"""Turn trained weights into the model directory of `visionops.models.artifact`.

The ONNX graph is exported once here (opset 18, dynamic batch and size, slimmed): evaluation and
the predictor run exactly this file, so the numbers evaluation reports describe what is served.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from visionops.bootstrap import configure_ultralytics
from visionops.errors import ModelNotFound, TrainingError
from visionops.models.artifact import (
    MODEL_ONNX,
    MODEL_PT,
    ModelMetadata,
    write_metadata,
)

log = logging.getLogger(__name__)

ONNX_OPSET = 18


def export_model_dir(
    weights: Path,
    out_dir: Path,
    *,
    imgsz: int,
    dataset_hash: str = "",
    metrics: dict[str, float] | None = None,
    run_id: str | None = None,
    git_commit: str | None = None,
) -> ModelMetadata:
    """Export `weights` (an Ultralytics `.pt`) into `out_dir`: model.onnx, model.pt, metadata.json.

    The directory is built beside `out_dir` and renamed into place, so a failed export leaves no
    half-written model directory behind.
    """
    weights = Path(weights)
    if not weights.is_file():
        raise ModelNotFound(f"weights file {weights} does not exist")
    configure_ultralytics()
    from ultralytics import YOLO  # heavy: imported only where a model is exported

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        # Ultralytics writes the .onnx beside the .pt: export from a private copy.
        pt = staging / MODEL_PT
        shutil.copyfile(weights, pt)
        model = YOLO(str(pt))
        try:
            exported = model.export(
                format="onnx",
                imgsz=imgsz,
                dynamic=True,
                opset=ONNX_OPSET,
                simplify=True,
                device="cpu",
                verbose=False,
            )
        except Exception as error:
            raise TrainingError(f"ONNX export of {weights} failed: {error}") from error
        Path(exported).replace(staging / MODEL_ONNX)
        names = [model.names[i] for i in sorted(model.names)]
        metadata = ModelMetadata(
            names=names,
            imgsz=imgsz,
            stride=int(max(model.model.stride)),
            dataset_hash=dataset_hash,
            metrics=dict(metrics or {}),
            variants={"fp32": {"file": MODEL_ONNX}},
            run_id=run_id,
            git_commit=git_commit,
        )
        write_metadata(staging, metadata)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("exported %s -> %s (%d classes, imgsz %d)", weights, out_dir, len(names), imgsz)
    return metadata
