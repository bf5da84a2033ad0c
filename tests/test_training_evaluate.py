"""Evaluation of the served ONNX model: outputs, MLflow logging, and agreement with COCOeval.

The session model (2 epochs) finds next to nothing on its own data, so the agreement test scores
it on labels made from its own detections (shifted, some dropped): a real, non-trivial mAP over
`detections.json` as the predictor's pre/post-processing produced it.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from tests.trained import ObservedTraining
from visionops.cli.app import app
from visionops.config import Settings
from visionops.data.features import FEATURE_COLUMNS, read_image
from visionops.errors import DataError, ModelNotFound
from visionops.inference import Detector
from visionops.tracking import connect
from visionops.training.dataset import label_path, load_data_yaml
from visionops.training.evaluate import evaluate

runner = CliRunner()


def test_cli_evaluates_and_logs_everything_to_the_run(
    mlflow_settings: Settings, trained: ObservedTraining, tiny_data_yaml: Path, tmp_path: Path
):
    run_id = trained.result.run_id
    out = tmp_path / "eval"
    result = runner.invoke(
        app,
        ["evaluate", "--model", f"runs:/{run_id}/model", "--data", str(tiny_data_yaml),
         "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "| mAP50 | mAP50-95 | precision | recall |" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    names = load_data_yaml(tiny_data_yaml).names
    assert metrics["images"] == 8 and metrics["run_id"] == run_id
    assert set(metrics["per_class"]) == set(names)
    matrix = np.array(metrics["confusion_matrix"]["matrix"])
    assert matrix.shape == (len(names) + 1, len(names) + 1)
    assert metrics["confusion_matrix"]["labels"] == [*names, "background"]
    ground_truth = json.loads((out / "ground_truth.json").read_text())
    assert len(ground_truth["images"]) == 8
    assert sum(metrics["per_class"][n]["instances"] for n in names) == len(
        ground_truth["annotations"]
    )
    assert isinstance(json.loads((out / "detections.json").read_text()), list)
    reference = pd.read_parquet(out / "reference_features.parquet")
    assert len(reference) == 8 and set(FEATURE_COLUMNS) <= set(reference.columns)
    assert reference["file_name"].str.startswith("images/val/").all()

    run = connect(mlflow_settings).client.get_run(run_id)
    assert run.data.metrics["eval.map50_95"] == pytest.approx(metrics["map50_95"])
    assert run.data.tags["visionops.eval.data_hash"] == metrics["data_hash"]
    assert run.data.tags["visionops.eval.data_yaml"] == str(tiny_data_yaml)
    logged = {f.path for f in connect(mlflow_settings).client.list_artifacts(run_id, "evaluation")}
    assert {
        f"evaluation/{n}"
        for n in ("detections.json", "ground_truth.json", "metrics.json", "report.md",
                  "reference_features.parquet")
    } <= logged  # fmt: skip


def _pseudo_labeled(data_yaml: Path, model_dir: Path, root: Path) -> Path:
    """A copy of the val split whose labels are the model's own top detections, perturbed."""
    dataset = load_data_yaml(data_yaml)
    detector = Detector.from_model_dir(model_dir)
    rng = np.random.default_rng(0)
    for image_path in dataset.images("val"):
        relative = image_path.relative_to(dataset.root)
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(image_path)
        image = read_image(image_path)
        height, width = image.shape[:2]
        (found,) = detector.detect([image], conf=0.001)
        rows = []
        for box, cls in zip(found.boxes[:4], found.class_ids[:4], strict=True):
            if rng.uniform() < 0.2:
                continue  # some detections become false positives
            size = np.tile(box[2:] - box[:2], 2)
            x1, y1, x2, y2 = box + rng.normal(0, 0.06, 4) * size  # IoUs spread over 0.5..1
            rows.append(
                f"{cls} {(x1 + x2) / 2 / width} {(y1 + y2) / 2 / height} "
                f"{(x2 - x1) / width} {(y2 - y1) / height}"
            )
        if rng.uniform() < 0.3:  # an object the model does not see
            rows.append(f"{rng.integers(0, len(dataset.names))} 0.5 0.5 0.3 0.2")
        label = label_path(target)
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("\n".join(rows) + "\n")
    data = {"path": str(root), "train": "images/val", "val": "images/val"}
    out = root / "data.yaml"
    out.write_text(yaml.safe_dump({**data, "names": dict(enumerate(dataset.names))}))
    return out


def test_map_agrees_with_pycocotools_on_the_written_detections(
    trained: ObservedTraining, tiny_data_yaml: Path, tmp_path: Path
):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    data = _pseudo_labeled(tiny_data_yaml, trained.result.model_dir, tmp_path / "pseudo")
    result = evaluate(trained.result.model_dir, data, log_run=False, out_dir=tmp_path / "eval")
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(result.files["ground_truth"]))
        coco = COCOeval(truth, truth.loadRes(str(result.files["detections"])), "bbox")
        coco.evaluate()
        coco.accumulate()
        coco.summarize()
    assert 0.05 < coco.stats[0] < coco.stats[1] < 0.95, coco.stats  # a real score, not 0 == 0
    # README: "a test holds it to COCOeval (equal to 1e-9)", on the very detections.json.
    assert result.metrics.map50_95 == pytest.approx(coco.stats[0], abs=1e-9)
    assert result.metrics.map50 == pytest.approx(coco.stats[1], abs=1e-9)
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert written["map50_95"] == pytest.approx(coco.stats[0], abs=1e-9)


def test_a_dataset_with_other_classes_is_refused(
    trained: ObservedTraining, tiny_data_yaml: Path, tmp_path: Path
):
    source = load_data_yaml(tiny_data_yaml)
    other = tmp_path / "other.yaml"
    other.write_text(
        yaml.safe_dump(
            {"path": str(source.root), "train": "images/train", "val": "images/val",
             "names": {i: f"other/{i}" for i in range(len(source.names))}}
        )
    )  # fmt: skip
    with pytest.raises(DataError, match="classes differ"):
        evaluate(trained.result.model_dir, other, log_run=False)


def test_an_unknown_model_is_a_clear_error(mlflow_settings: Settings, tiny_data_yaml: Path):
    with pytest.raises(ModelNotFound, match="no-such-model"):
        evaluate("models:/no-such-model@champion", tiny_data_yaml)
    result = runner.invoke(
        app, ["evaluate", "--model", "models:/no-such-model/3", "--data", str(tiny_data_yaml)]
    )
    assert result.exit_code == 1 and "not found" in result.output
