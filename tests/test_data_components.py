"""The `validate_dataset` and `convert_dataset` components under KFP's local runner.

The steps run in subprocesses exactly as in the training pipeline; only the KFP API server (and
the cluster's artifact store) is absent.
"""

# No `from __future__ import annotations`: KFP reads the real annotation objects.
import json
from pathlib import Path

import pytest
import yaml
from kfp import dsl

from components.convert import convert_dataset
from components.validate import validate_dataset
from tests.data_builders import copy_dataset, small_dataset

# Locally the steps run in this venv, not in the pipeline image KFP warns about.
pytestmark = pytest.mark.filterwarnings("ignore:You may be attemping:RuntimeWarning")


@dsl.pipeline(name="data-steps-test")
def data_steps(dataset_dir: str, extra_dir: str) -> dsl.Dataset:
    check = validate_dataset(dataset_dir=dataset_dir)
    yolo = convert_dataset(dataset_dir=dataset_dir, extra_dirs=extra_dir, products="Cable")
    yolo.after(check)
    return yolo.outputs["yolo"]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_dataset(tmp_path_factory.mktemp("kfp") / "v", products=["Cable", "Ring"])


def test_pipeline_validates_then_converts(root: Path, tmp_path: Path, local_kfp: Path):
    extra = small_dataset(tmp_path / "extra", products=["Cable"], seed=5, n_train=2, n_val=1)
    task = data_steps(dataset_dir=str(root), extra_dir=str(extra))
    yolo = task.output
    data = yaml.safe_load((Path(yolo.path) / "data.yaml").read_text())
    assert data["path"] == yolo.path
    assert list(data["names"].values()) == ["Cable/break", "Cable/thunderbolt", "Cable/torn-apart"]
    assert (Path(yolo.path) / "images" / "train" / "Cable" / "extra1").is_dir()
    manifest = json.loads((Path(yolo.path) / "manifest.json").read_text())
    assert yolo.metadata["dataset_hash"] == manifest["dataset_hash"]
    assert yolo.metadata["names"] == manifest["names"]
    assert yolo.metadata["images"]["train"] == 8 + 2

    summary = next(local_kfp.rglob("validate-dataset/summary")).read_text()
    assert summary.startswith("# Dataset validation: passed")
    report = json.loads(next(local_kfp.rglob("validate-dataset/report")).read_text())
    assert report["ok"] is True and report["products"] == ["Cable", "Ring"]


def test_validation_errors_fail_the_step(root: Path, tmp_path: Path, local_kfp: Path):
    broken = copy_dataset(root, tmp_path / "broken")
    (broken / "Ring" / "train" / "_annotations.coco.json").write_text("{")
    with pytest.raises(RuntimeError, match="validate-dataset"):
        data_steps(dataset_dir=str(broken), extra_dir="")
    report = json.loads(next(local_kfp.rglob("validate-dataset/report")).read_text())
    assert report["ok"] is False
    assert report["findings"][0]["check"] == "json_syntax"
    assert not list(local_kfp.rglob("convert-dataset"))  # the conversion never ran

    task = validate_dataset(dataset_dir=str(broken), fail_on_error=False)
    assert task.outputs["ok"] is False and task.outputs["errors"] == 1
    assert "json_syntax" in Path(task.outputs["summary"].path).read_text()
