"""The train, evaluate and register components under KFP's local runner, as one small pipeline.

Each step runs in its own subprocess exactly as on a cluster, against the session's real MLflow
server (artifacts in S3); only the KFP API server is absent.
"""

# No `from __future__ import annotations`: KFP reads the real annotation objects.
import json
from pathlib import Path

import pandas as pd
import pytest
from kfp import dsl

from components.evaluate import evaluate_model
from components.register import register_model
from components.train import train_model
from visionops.config import Settings
from visionops.models.artifact import read_metadata
from visionops.tracking import connect
from visionops.training.dataset import load_data_yaml
from visionops.training.registry import CHAMPION, Registry

# Locally the steps run in this venv, not in the pipeline image KFP warns about.
pytestmark = pytest.mark.filterwarnings("ignore:You may be attemping:RuntimeWarning")


@dsl.pipeline(name="training-steps-test")
def training_steps(dataset_dir: str, model_name: str):
    data = dsl.importer(
        artifact_uri=dataset_dir, artifact_class=dsl.Dataset, metadata={"data_yaml": "data.yaml"}
    )
    trained = train_model(dataset=data.output, epochs=1, imgsz=64, batch=8, device="cpu")
    scored = evaluate_model(model=trained.outputs["model"], dataset=data.output)
    register_model(
        run_id=trained.outputs["run_id"], dataset=data.output, model_name=model_name
    ).after(scored)


def _executor_outputs(root: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in root.rglob("executor_output.json")}


def test_train_evaluate_register_pipeline(
    mlflow_settings: Settings, tiny_data_yaml: Path, local_kfp: Path
):
    root = local_kfp
    training_steps(dataset_dir=str(tiny_data_yaml.parent), model_name=mlflow_settings.model_name)

    outputs = _executor_outputs(root)
    train_out = outputs["train-model"]["parameterValues"]
    run_id = train_out["run_id"]
    model_dir = next(root.rglob("train-model/model"))
    assert (model_dir / "model.onnx").is_file() and (model_dir / "metadata.json").is_file()

    evaluation = outputs["evaluate-model"]["artifacts"]
    metrics = evaluation["metrics"]["artifacts"][0]["metadata"]
    assert {"map50", "map50_95", "precision", "recall"} <= metrics.keys()
    confusion = evaluation["confusion"]["artifacts"][0]["metadata"]["confusionMatrix"]
    names = [c["displayName"] for c in confusion["annotationSpecs"]]
    assert names[-1] == "background" and len(confusion["rows"]) == len(names)
    report = next(root.rglob("evaluate-model/report")).read_text()
    assert "| class | instances | AP50 | AP50-95 |" in report
    # The HTML output the Kubeflow UI shows: the evaluation's own report.html, as logged to MLflow.
    page = next(root.rglob("evaluate-model/report_html")).read_text()
    assert page.startswith("<!DOCTYPE html>") and 'id="confusion"' in page
    logged = connect(mlflow_settings).client.download_artifacts(
        run_id, "evaluation/report.html", str(root / "logged")
    )
    assert Path(logged).read_text() == page
    reference = pd.read_parquet(next(root.rglob("evaluate-model/reference")))
    assert len(reference) == 8

    registered = outputs["register-model"]["parameterValues"]
    assert registered["version"] == "1" and registered["promoted"] is True
    assert registered["alias"] == CHAMPION and registered["reason"].startswith("first champion")
    champion = Registry(settings=mlflow_settings).alias(CHAMPION)
    assert champion is not None and champion.run_id == run_id

    # The model card: the version's description on the MLflow server, and register's Markdown.
    card = next(root.rglob("register-model/card")).read_text()
    assert Registry(settings=mlflow_settings).version(1).description == card
    run = Registry(settings=mlflow_settings).run(run_id)
    assert "**Gate: champion** (no champion to compare with): first champion" in card
    assert f"- dataset hash: `{run.data.tags['visionops.dataset_hash']}`" in card
    assert f"- products: {run.data.tags['visionops.products']}" in card
    assert f"- git commit: `{run.data.tags['visionops.git_commit']}`" in card
    assert f"| map50_95 | {run.data.metrics['eval.map50_95']:.4f} |" in card
    train = load_data_yaml(tiny_data_yaml).label_statistics()["splits"]["train"]
    for name, count in train["boxes_per_class"].items():
        ap = run.data.metrics[f"eval.per_class/ap50_95.{name.replace('/', '.')}"]
        assert f"| {name} | {count} | " in card and f" | {ap:.4f} |" in card
    guard = read_metadata(model_dir).variants
    for precision in ("fp32", "int8"):
        for engine, s in guard[precision].get("engines", {}).items():
            served = "yes" if s["shipped"] else "no"
            row = f"| {precision} | {engine} | {s['map50_95']:.4f} | {s['map50_95_drop']:.4f} | "
            assert row + f"{served} |" in card
    assert "| epochs | 1 |" in card and "| imgsz | 64 |" in card
