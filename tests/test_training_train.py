"""Training: one MLflow run per training, metrics as epochs end, and every failure made clear.

The session's model (tests/trained.py) is trained once against a real `mlflow server` whose
artifacts live in a real S3 server; these tests read what that run left behind. Failures that
stop before training (bad data, missing weights, unreachable services) cost no training at all.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from tests.servers import S3Server, free_port
from tests.trained import IMGSZ, PRODUCTS, ObservedTraining
from visionops.cli.app import app
from visionops.config import Settings, get_settings
from visionops.errors import (
    DataError,
    ModelNotFound,
    RegistryError,
    StorageError,
    TrainingError,
    UsageError,
)
from visionops.models.artifact import read_metadata
from visionops.storage import open_store
from visionops.tracking import connect
from visionops.training.train import resolve_device, resolve_weights, train

runner = CliRunner()


def _artifacts(settings: Settings, run_id: str, path: str = "") -> set[str]:
    client = connect(settings).client
    found: set[str] = set()
    for entry in client.list_artifacts(run_id, path or None):
        if entry.is_dir:
            found |= _artifacts(settings, run_id, entry.path)
        else:
            found.add(entry.path)
    return found


def test_one_run_holds_params_tags_epochs_and_the_model(trained: ObservedTraining):
    settings, result = trained.settings, trained.result
    # Logged as each epoch ended: while training ran, MLflow already held that epoch.
    assert [(o.epoch, o.run_status, o.logged_steps) for o in trained.observations] == [
        (1, "RUNNING", [1]),
        (2, "RUNNING", [1, 2]),
    ]
    run = connect(settings).client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert (params["epochs"], params["imgsz"], params["batch"], params["seed"]) == (
        "2",
        str(IMGSZ),
        "8",
        "0",
    )
    assert {"lr0", "momentum", "mosaic", "optimizer", "amp", "plots"} <= params.keys()
    tags = run.data.tags
    manifest = json.loads((Path(tags["visionops.data_yaml"]).parent / "manifest.json").read_text())
    assert tags["visionops.dataset_hash"] == manifest["dataset_hash"] == result.dataset_hash
    assert tags["visionops.products"] == ",".join(PRODUCTS)
    assert len(tags["visionops.git_commit"]) == 40
    for package in ("torch", "ultralytics", "onnxruntime"):
        assert tags[f"visionops.version.{package}"][0].isdigit()
    assert {
        "train/box_loss",
        "val/cls_loss",
        "metrics/mAP50-95",
        "lr/pg0",
    } <= run.data.metrics.keys()
    assert "best.map50_95" in run.data.metrics

    files = _artifacts(settings, result.run_id)
    assert {
        "model/model.onnx",
        "model/model.pt",
        "model/metadata.json",
        "training/results.csv",
        "training/label_statistics.json",
    } <= files
    metadata = read_metadata(result.model_dir)
    assert metadata.run_id == result.run_id
    assert metadata.dataset_hash == result.dataset_hash
    assert metadata.imgsz == IMGSZ and len(metadata.names) == 4  # Cable x3 + Screw x1
    assert result.model_uri == f"runs:/{result.run_id}/model"
    assert result.device == "cpu" == resolve_device("auto")  # no GPU on this machine


def test_results_and_label_statistics_are_the_runs_own(trained: ObservedTraining, tmp_path: Path):
    client = connect(trained.settings).client
    local = Path(client.download_artifacts(trained.result.run_id, "training", str(tmp_path)))
    with (local / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(float(r["epoch"])) for r in rows] == [1, 2]
    stats = json.loads((local / "label_statistics.json").read_text())
    assert stats["splits"]["train"]["images"] == 16 and stats["splits"]["val"]["images"] == 8
    assert sum(stats["splits"]["train"]["boxes_per_class"].values()) > 0


def test_the_run_holds_its_training_curves_and_ultralytics_plots(
    trained: ObservedTraining, tmp_path: Path
):
    client = connect(trained.settings).client
    local = Path(client.download_artifacts(trained.result.run_id, "training", str(tmp_path)))
    # Ours, drawn from results.csv: two panels (losses, metrics) of real pixels.
    with Image.open(local / "training_curves.png") as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape[1] > 800 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50
    # Ultralytics' own, with `plots` on (offline: its fonts are local, see bootstrap).
    plots = {p.name for p in (local / "plots").iterdir()}
    assert {"results.png", "labels.jpg", "train_batch0.jpg"} <= plots, plots
    for name in plots:
        with Image.open(local / "plots" / name) as image:
            image.verify()


def test_nan_losses_fail_the_run_and_nothing_is_registered(
    mlflow_settings: Settings, tiny_data_yaml: Path
):
    with pytest.raises(TrainingError, match="NaN"):
        train(tiny_data_yaml, epochs=2, imgsz=IMGSZ, batch=8, overrides={"box": float("nan")})
    client = connect(mlflow_settings).client
    tracking = connect(mlflow_settings)
    (run,) = client.search_runs(
        [tracking.experiment_id],
        "attributes.status = 'FAILED'",
        max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    assert "NaN" in run.data.tags["visionops.error"]
    assert not any(f.startswith("model/") for f in _artifacts(mlflow_settings, run.info.run_id))
    result = runner.invoke(app, ["model", "register", "--run-id", run.info.run_id])
    assert result.exit_code == 1
    assert "FAILED; only a FINISHED training run can be registered" in result.output
    assert client.search_model_versions(f"name = '{mlflow_settings.model_name}'") == []


def _count_runs(settings: Settings) -> int:
    tracking = connect(settings)
    return len(tracking.client.search_runs([tracking.experiment_id], max_results=1000))


def _write_yaml(path: Path, data: object) -> Path:
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


@pytest.mark.parametrize(
    ("case", "error", "message"),
    [
        ("missing", DataError, "data.yaml not found"),
        ("not-yaml", DataError, "is not valid YAML"),
        ("no-val", DataError, "the 'val' split is missing"),
        ("no-names", DataError, "names lists no classes"),
        ("no-images", DataError, "val images not found"),
        ("weights-missing", ModelNotFound, "weights file .* does not exist"),
        ("weights-unknown-model", ModelNotFound, "resolve models:/no-such-model@champion"),
        ("bad-imgsz", UsageError, "imgsz a multiple of 32"),
    ],
)
def test_bad_input_stops_before_any_run(
    mlflow_settings: Settings, tiny_data_yaml: Path, tmp_path: Path, case: str, error, message
):
    good = yaml.safe_load(tiny_data_yaml.read_text())
    data, kwargs = tiny_data_yaml, {}
    if case == "missing":
        data = tmp_path / "nope.yaml"
    elif case == "not-yaml":
        data = _write_yaml(tmp_path / "d.yaml", "names: [a, b\ntrain: :\n")
    elif case == "no-val":
        data = _write_yaml(tmp_path / "d.yaml", {k: v for k, v in good.items() if k != "val"})
    elif case == "no-names":
        data = _write_yaml(tmp_path / "d.yaml", {**good, "names": [], "nc": 0})
    elif case == "no-images":
        data = _write_yaml(tmp_path / "d.yaml", {**good, "val": "images/absent"})
    elif case == "weights-missing":
        kwargs = {"weights": tmp_path / "nope.pt"}
    elif case == "weights-unknown-model":
        kwargs = {"weights": "models:/no-such-model@champion"}
    else:
        kwargs = {"imgsz": 100}
    before = _count_runs(mlflow_settings)
    with pytest.raises(error, match=message):
        train(data, epochs=1, **kwargs)
    assert _count_runs(mlflow_settings) == before


def test_cli_reports_bad_input_with_exit_code(tmp_path: Path):
    result = runner.invoke(app, ["train", "--data", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 1
    assert "data.yaml not found" in result.output


def test_auto_device_takes_the_gpu_when_torch_sees_one(monkeypatch: pytest.MonkeyPatch):
    # No GPU can run here: torch's CUDA probe is the one thing replaced, to check the choice.
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda:0"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    assert resolve_device("cuda:1") == "cuda:1"


def test_unknown_device_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown device 'gpu'"):
        resolve_device("gpu")


def test_unreachable_mlflow_is_a_clear_error_after_bounded_retries(
    settings_env: pytest.MonkeyPatch, tiny_data_yaml: Path
):
    url = f"http://127.0.0.1:{free_port()}"
    settings_env.setenv("VISIONOPS_MLFLOW_TRACKING_URI", url)
    settings_env.setenv("VISIONOPS_MLFLOW_RETRIES", "2")
    settings_env.setenv("VISIONOPS_MLFLOW_BACKOFF", "0")
    result = runner.invoke(app, ["train", "--data", str(tiny_data_yaml), "--epochs", "1"])
    assert result.exit_code == 1
    assert f"cannot reach MLflow at {url} (network: connection refused)" in result.output
    assert "gave up after 2 retries" in result.output
    with pytest.raises(RegistryError, match="cannot reach MLflow"):
        connect(get_settings())
    result = runner.invoke(app, ["model", "list"])
    assert result.exit_code == 1 and "cannot reach MLflow" in result.output


def test_unreachable_s3_is_a_clear_error_before_training(
    settings_env: pytest.MonkeyPatch, tiny_data_yaml: Path, tmp_path: Path
):
    """Embedded MLflow whose artifact store is an S3 endpoint nobody listens on."""
    endpoint = f"http://127.0.0.1:{free_port()}"
    settings_env.setenv("VISIONOPS_S3_ENDPOINT", endpoint)
    settings_env.setenv("VISIONOPS_S3_ACCESS_KEY", "k")
    settings_env.setenv("VISIONOPS_S3_SECRET_KEY", "s")
    settings_env.setenv("VISIONOPS_MLFLOW_EXPERIMENT", "s3-down")
    settings_env.setenv("VISIONOPS_MLFLOW_RETRIES", "1")
    get_settings.cache_clear()
    with pytest.raises(StorageError, match=rf"cannot reach S3 at {endpoint} \(network: "):
        train(tiny_data_yaml, epochs=1, imgsz=IMGSZ)
    with pytest.raises(StorageError, match=f"cannot reach S3 at {endpoint} to download"):
        resolve_weights("s3://bucket/model.pt", tmp_path, get_settings())


def test_wrong_s3_credentials_fail_before_training(
    s3: S3Server, s3_settings: Settings, settings_env: pytest.MonkeyPatch, tiny_data_yaml: Path
):
    """Embedded MLflow with its artifacts in S3: a wrong secret is found before any epoch."""
    settings_env.setenv("VISIONOPS_MLFLOW_EXPERIMENT", "s3-artifacts")
    settings_env.setenv("VISIONOPS_S3_SECRET_KEY", "not-the-secret")
    settings_env.setenv("VISIONOPS_MLFLOW_RETRIES", "0")
    get_settings.cache_clear()
    with pytest.raises(StorageError, match="the S3 secret key is wrong"):
        train(tiny_data_yaml, epochs=1, imgsz=IMGSZ)
    tracking = connect(get_settings())
    (run,) = tracking.client.search_runs([tracking.experiment_id], max_results=5)
    assert run.info.status == "FAILED"
    assert run.info.artifact_uri.startswith(f"s3://{s3_settings.s3_bucket}/mlflow/")
    with pytest.raises(StorageError, match=r"AccessDenied: access denied \(check the credentials"):
        resolve_weights(
            f"s3://{s3_settings.s3_bucket}/w/model.pt", tiny_data_yaml.parent, get_settings()
        )


def test_weights_from_s3_are_downloaded(
    s3_settings: Settings, trained: ObservedTraining, tmp_path: Path
):
    store = open_store(f"s3://{s3_settings.s3_bucket}/champion", s3_settings)
    store.upload_file(trained.result.model_dir / "model.pt", "model.pt")
    for uri in (f"s3://{s3_settings.s3_bucket}/champion/model.pt", store.uri()):
        local = Path(resolve_weights(uri, tmp_path / uri[-8:].replace("/", "_"), s3_settings))
        assert local.read_bytes() == (trained.result.model_dir / "model.pt").read_bytes()
    with pytest.raises(ModelNotFound, match="do not exist"):
        resolve_weights(f"s3://{s3_settings.s3_bucket}/absent.pt", tmp_path, s3_settings)
