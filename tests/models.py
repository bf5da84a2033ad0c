"""Model fixtures: a real YOLOv8n (untrained weights) exported through the project's own export."""

from __future__ import annotations

from pathlib import Path

from visionops.bootstrap import configure_ultralytics
from visionops.training.export import export_model_dir

DEFAULT_NAMES = ("Cable/break", "Cable/thunderbolt", "Screw/defect")


def untrained_weights(path: Path, names: tuple[str, ...] = DEFAULT_NAMES) -> Path:
    """Save an untrained YOLOv8n with `names` as an Ultralytics checkpoint at `path`."""
    configure_ultralytics()
    from ultralytics import YOLO
    from ultralytics.nn.tasks import DetectionModel

    model = YOLO("yolov8n.yaml")
    model.model = DetectionModel("yolov8n.yaml", nc=len(names), verbose=False)
    model.model.names = dict(enumerate(names))
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(str(path))
    return path


def untrained_model_dir(
    out_dir: Path, names: tuple[str, ...] = DEFAULT_NAMES, imgsz: int = 320
) -> Path:
    """A complete model directory (model.onnx, model.pt, metadata.json) from untrained weights."""
    weights = untrained_weights(out_dir.parent / f"{out_dir.name}-weights.pt", names)
    export_model_dir(weights, out_dir, imgsz=imgsz, dataset_hash="untrained")
    return out_dir
