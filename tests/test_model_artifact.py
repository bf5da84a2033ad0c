"""The model directory contract: export writes it, everyone else reads it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tests.models import DEFAULT_NAMES
from visionops.errors import DataError, ModelNotFound
from visionops.models.artifact import METADATA_JSON, check_model_dir, read_metadata
from visionops.training.export import export_model_dir


def test_export_writes_a_servable_model_dir(untrained_model: Path):
    assert sorted(p.name for p in untrained_model.iterdir()) == [
        "metadata.json",
        "model.onnx",
        "model.pt",
    ]
    meta = check_model_dir(untrained_model)
    assert meta.names == list(DEFAULT_NAMES)
    assert (meta.imgsz, meta.stride) == (320, 32)
    session = ort.InferenceSession(str(untrained_model / "model.onnx"))
    (inp,) = session.get_inputs()
    assert inp.name == "images"
    assert inp.shape[:2] == ["batch", 3]  # dynamic batch and size
    (out,) = session.run(None, {"images": np.zeros((2, 3, 256, 320), np.float32)})
    # 4 box coordinates + one score per class, for every anchor of strides 8, 16, 32
    anchors = sum((256 // s) * (320 // s) for s in (8, 16, 32))
    assert out.shape == (2, 4 + len(DEFAULT_NAMES), anchors)


def test_missing_weights_leave_nothing_behind(tmp_path: Path):
    with pytest.raises(ModelNotFound, match="does not exist"):
        export_model_dir(tmp_path / "nope.pt", tmp_path / "model", imgsz=320)
    assert list(tmp_path.iterdir()) == []


def test_corrupt_or_missing_metadata_is_a_clear_error(untrained_model: Path, tmp_path: Path):
    with pytest.raises(ModelNotFound, match="model directory"):
        check_model_dir(tmp_path / "absent")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.onnx").write_bytes(b"")
    with pytest.raises(ModelNotFound, match=METADATA_JSON):
        check_model_dir(broken)
    data = json.loads((untrained_model / METADATA_JSON).read_text())
    data["names"] = []
    (broken / METADATA_JSON).write_text(json.dumps(data))
    with pytest.raises(DataError, match="names"):
        read_metadata(broken)
