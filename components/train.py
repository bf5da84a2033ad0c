"""KFP component `train_model`: YOLOv8n on a YOLO Dataset, one MLflow run, the model directory."""

# No `from __future__ import annotations` here: KFP reads the real annotation objects.

from typing import NamedTuple

from kfp.dsl import Dataset, Input, Model, Output

from components import visionops_component


@visionops_component
def train_model(
    dataset: Input[Dataset],
    model: Output[Model],
    epochs: int = 0,
    imgsz: int = 0,
    batch: int = 0,
    weights: str = "",
    device: str = "auto",
    seed: int = 0,
    train_args: str = "",
    lineage: str = "",
    pipeline_run_id: str = "",
) -> NamedTuple("TrainOutputs", [("run_id", str), ("map50_95", float)]):  # type: ignore[valid-type]
    """Train on `dataset` (a folder holding data.yaml); `model.path` is the model directory.

    `epochs`/`imgsz`/`batch` of 0 mean the settings' values; `weights` may be empty (train from
    the architecture), a path, an s3:// URI or models:/NAME@ALIAS (fine-tune the champion). The
    MLflow run id is an output and in the model's metadata, for `evaluate_model` and
    `register_model`. `train_args`: a JSON object of further Ultralytics train arguments (e.g.
    `{"nbs": 16, "warmup_epochs": 0}`, which small datasets learn much faster with).
    `lineage` (JSON, `visionops.training.lineage.FIELDS`) and `pipeline_run_id` (this training
    pipeline's run) are tagged on the MLflow run, and copied to the version it registers.
    """
    import json
    import shutil
    from collections import namedtuple
    from pathlib import Path

    from visionops.bootstrap import bootstrap

    bootstrap()
    from visionops.errors import UsageError
    from visionops.training.lineage import parse_lineage
    from visionops.training.train import train

    try:
        overrides = dict(json.loads(train_args or "{}"))
    except (TypeError, ValueError) as error:
        raise UsageError(f"train_args must be a JSON object: {error}") from error
    links = parse_lineage(lineage)
    if pipeline_run_id:
        links["training_pipeline_run"] = pipeline_run_id
    data_yaml = Path(dataset.path) / dataset.metadata.get("data_yaml", "data.yaml")
    result = train(
        data_yaml,
        epochs=epochs or None,
        imgsz=imgsz or None,
        batch=batch or None,
        weights=weights or None,
        device=device,
        seed=seed,
        overrides=overrides,
        lineage=links,
    )
    shutil.copytree(result.model_dir, model.path, dirs_exist_ok=True)
    model.metadata.update(
        {
            "run_id": result.run_id,
            "model_uri": result.model_uri,
            "dataset_hash": result.dataset_hash,
            "epochs": result.epochs,
            "device": result.device,
            **result.metrics,
        }
    )
    print(f"run {result.run_id}: {result.metrics}")
    return namedtuple("TrainOutputs", ["run_id", "map50_95"])(
        result.run_id, float(result.metrics.get("map50_95", 0.0))
    )
