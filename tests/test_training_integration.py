"""End to end on real servers (127.0.0.1): S3 (SeaweedFS) and an `mlflow server` using it.

Train (the session run), evaluate and register through the CLI, check the alias, download
`models:/...@champion` and run its model.onnx in ONNX Runtime; then retrain from the champion, as
the monitoring loop does, and let the gate compare the two on evaluation data on which the
champion is known to be unbeatable (so the registration has exactly one right outcome).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
from minio import Minio
from typer.testing import CliRunner

from tests.servers import MlflowServer
from tests.trained import IMGSZ, ObservedTraining, cocoeval_map, labeled_by
from visionops.cli.app import app
from visionops.config import Settings
from visionops.data.features import read_image
from visionops.inference.letterbox import letterbox, to_input_tensor
from visionops.models.artifact import MODEL_ONNX, MODEL_PT, read_metadata
from visionops.models.sources import resolve_model
from visionops.tracking import connect
from visionops.training.dataset import load_data_yaml
from visionops.training.promotion import register
from visionops.training.registry import CHALLENGER, CHAMPION
from visionops.training.train import train

runner = CliRunner()


def test_train_evaluate_register_serve_and_retrain(
    mlflow: MlflowServer,
    mlflow_settings: Settings,
    trained: ObservedTraining,
    tiny_data_yaml: Path,
    tmp_path: Path,
):
    name, run_id = mlflow_settings.model_name, trained.result.run_id
    # The run's artifacts are objects in the S3 bucket behind the MLflow server.
    s3 = mlflow.s3
    bucket, prefix = mlflow.artifacts.removeprefix("s3://").split("/", 1)
    client = Minio(s3.endpoint.removeprefix("http://"), s3.access_key, s3.secret_key, secure=False)
    keys = {o.object_name for o in client.list_objects(bucket, prefix=f"{prefix}/", recursive=True)}
    assert any(k.endswith(f"{run_id}/artifacts/model/{MODEL_ONNX}") for k in keys)

    model_uri = f"runs:/{run_id}/model"
    result = runner.invoke(app, ["evaluate", "--model", model_uri, "--data", str(tiny_data_yaml)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["model", "register", "--run-id", run_id])
    assert result.exit_code == 0, result.output
    assert f"{name} v1 -> champion: first champion" in result.output
    tracking = connect(mlflow_settings)
    champion = tracking.client.get_model_version_by_alias(name, CHAMPION)
    assert (champion.version, champion.run_id) == ("1", run_id)
    assert champion.tags["visionops.dataset_hash"] == trained.result.dataset_hash

    served = resolve_model(f"models:/{name}@{CHAMPION}").path
    onnx = (served / MODEL_ONNX).read_bytes()
    assert onnx == (trained.result.model_dir / MODEL_ONNX).read_bytes()
    metadata = read_metadata(served)
    session = ort.InferenceSession(str(served / MODEL_ONNX), providers=["CPUExecutionProvider"])
    image = read_image(load_data_yaml(tiny_data_yaml).images("val")[0])
    square = letterbox(image, (metadata.imgsz,) * 2, stride=metadata.stride, auto=False)
    batch = to_input_tensor([square])
    (output,) = session.run(None, {session.get_inputs()[0].name: batch})
    anchors = sum((IMGSZ // s) ** 2 for s in (8, 16, 32))
    assert output.shape == (1, 4 + len(metadata.names), anchors)
    assert np.isfinite(output).all()

    # Retraining starts from the champion; registering evaluates it on the same data first.
    retrained = train(
        tiny_data_yaml, epochs=1, imgsz=IMGSZ, batch=8, weights=f"models:/{name}@{CHAMPION}"
    )
    run = tracking.client.get_run(retrained.run_id)
    assert run.data.tags["visionops.weights"] == f"models:/{name}@{CHAMPION}"
    assert run.data.tags["visionops.weights_file"] == str(served / MODEL_PT)
    # On evaluation data labeled with the champion's own detections the champion is perfect
    # (pycocotools: 1.0), so no candidate can beat it: the retrained model must stay challenger.
    on_champion = labeled_by(trained.result.model_dir, tiny_data_yaml, tmp_path / "champion")
    assert cocoeval_map(on_champion, trained.result.model_dir) == 1.0
    retrained_score = cocoeval_map(on_champion, retrained.model_dir)
    second = register(retrained.run_id, data_yaml=on_champion)
    assert (second.version, second.promoted, second.alias, second.previous_champion) == (
        "2", False, CHALLENGER, "1",
    )  # fmt: skip
    assert second.reason == (
        f"does not beat the champion: map50_95 {retrained_score:.4f} vs champion v1 1.0000 "
        "on the same evaluation data (margin 0.0050)"
    )
    assert tracking.client.get_model_version_by_alias(name, CHAMPION).version == "1"
