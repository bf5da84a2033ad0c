"""The INT8 variant: training's export quantises, the accuracy guard decides what ships.

The model comes from the session's `detecting` fixture (a `visionops train` run on generated
shapes): its directory is what training produced, INT8 included. Tests that need another verdict
work on copies of it.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.trained import cocoeval_scores
from visionops.errors import ModelNotFound, TrainingError
from visionops.inference import Detector, model_file
from visionops.models.artifact import (
    MODEL_INT8_ONNX,
    MODEL_INT8_OPENVINO_ONNX,
    MODEL_ONNX,
    read_metadata,
    write_metadata,
)
from visionops.training.dataset import load_data_yaml
from visionops.training.quantize import (
    add_int8_variant,
    calibration_sample,
    guard_int8,
    postprocess_nodes,
    quantize_int8,
)

pytestmark = pytest.mark.slow

FP32_ONLY = ["metadata.json", "model.onnx", "model.pt"]


@pytest.fixture
def model_copy(detecting, tmp_path: Path) -> Path:
    """A copy of the trained model directory with only its fp32 variant, as export leaves it."""
    result, _ = detecting
    target = tmp_path / "model"
    target.mkdir()
    for name in FP32_ONLY:  # not the INT8 graphs, nor MLflow's files (written after them)
        shutil.copy2(result.model_dir / name, target / name)
    metadata = read_metadata(target)
    write_metadata(target, metadata.model_copy(update={"variants": {"fp32": {"file": MODEL_ONNX}}}))
    return target


def val_images(data_yaml: Path) -> list[np.ndarray]:
    from visionops.data.features import read_image

    return [read_image(path) for path in load_data_yaml(data_yaml).images("val")]


def test_training_ships_an_int8_variant_within_the_allowed_map_drop(detecting) -> None:
    from visionops.config import get_settings
    from visionops.tracking import connect

    result, data_yaml = detecting
    dataset = load_data_yaml(data_yaml)
    variants = read_metadata(result.model_dir).variants
    fp32, int8 = variants["fp32"], variants["int8"]
    assert (result.model_dir / MODEL_INT8_ONNX).is_file()
    assert int8["shipped"] is True and int8["file"] == MODEL_INT8_ONNX
    assert int8["calibration_images"] == 32 and int8["calibration_split"] == "train"
    for entry in (fp32, int8):
        assert entry["eval_split"] == "val"
        assert entry["eval_data_hash"] == dataset.split_hash("val")
        assert entry["max_map50_95_drop"] == 0.01
    # The recorded numbers are what pycocotools gives the served detections (computed here).
    settings = get_settings()
    scores = {}
    for precision, entry in (("fp32", fp32), ("int8", int8)):
        detector = Detector.from_model_dir(result.model_dir, precision=precision)
        scores[precision] = map50_95, map50 = cocoeval_scores(data_yaml, detector)
        assert entry["map50_95"] == pytest.approx(map50_95, abs=1e-6)
        assert entry["engines"]["onnxruntime"]["map50"] == pytest.approx(map50, abs=1e-6)
    # Each engine runs its own graph: OpenVINO's quantises convolution inputs only.
    assert int8["engines"]["onnxruntime"]["quantized_ops"] == ["all"]
    on_openvino = int8["engines"]["openvino"]
    assert on_openvino["file"] == MODEL_INT8_OPENVINO_ONNX
    assert on_openvino["quantized_ops"] == ["Conv"]
    assert (result.model_dir / MODEL_INT8_OPENVINO_ONNX).is_file() is on_openvino["shipped"]
    assert model_file(result.model_dir, "int8", "openvino").name == MODEL_INT8_OPENVINO_ONNX
    assert model_file(result.model_dir, "int8", "onnxruntime").name == MODEL_INT8_ONNX
    assert scores["fp32"][0] > 0.1, "the fixture must detect for the guard to mean anything"
    drop = scores["fp32"][0] - scores["int8"][0]
    assert int8["map50_95_drop"] == pytest.approx(drop, abs=2e-6) and drop <= 0.01
    # The run's model artifact is the directory with both variants and their scores.
    tracking = connect(settings)
    logged = {a.path for a in tracking.client.list_artifacts(result.run_id, "model")}
    assert {f"model/{MODEL_ONNX}", f"model/{MODEL_INT8_ONNX}", "model/metadata.json"} <= logged


def test_postprocessing_is_found_in_the_graph_whatever_the_node_names(detecting) -> None:
    import onnx

    from visionops.training.quantize import _name_nodes

    result, _ = detecting
    model = onnx.load(str(result.model_dir / MODEL_ONNX))
    producer = {out: node for node in model.graph.node for out in node.output}
    found = set(postprocess_nodes(model))
    by_name = {node.name: node for node in model.graph.node}
    ops = {by_name[name].op_type for name in found}
    assert producer[model.graph.output[0].name].name in found  # the final Concat
    assert {"Concat", "Sigmoid", "Softmax", "Sub", "Add", "Mul", "Div"} <= ops
    dfl = [by_name[name] for name in found if by_name[name].op_type == "Conv"]
    assert len(dfl) == 1 and producer[dfl[0].input[0]].op_type == "Softmax"
    # The head's last convolutions (box and class branch at 3 scales) stay quantised.
    heads = [
        node
        for node in model.graph.node
        if node.op_type == "Conv"
        and node.name not in found
        and any(node.output[0] in by_name[name].input for name in found)
    ]
    assert len(heads) == 6 and not {node.name for node in heads} & found
    # Names play no part: anonymous nodes get generated names and the same nodes are found.
    anonymous = onnx.load(str(result.model_dir / MODEL_ONNX))
    for node in anonymous.graph.node:
        node.name = ""
    _name_nodes(anonymous)
    assert len(postprocess_nodes(anonymous)) == len(found)


def test_a_graph_without_a_detection_head_is_refused() -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")],
        "not-yolo",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])],
    )
    with pytest.raises(TrainingError, match="cannot find a YOLOv8 detection head"):
        postprocess_nodes(helper.make_model(graph))


def test_quantising_the_whole_graph_is_rejected_by_the_guard(
    detecting, model_copy: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The measured failure: one u8 scale for pixel coordinates and scores zeroes every score."""
    _, data_yaml = detecting
    dataset = load_data_yaml(data_yaml)
    candidate = quantize_int8(
        model_copy, model_copy / ".broken.onnx", calibration_sample(dataset.images("train"), 8, 0),
        exclude=[],
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="visionops.training.quantize"):
        metadata = guard_int8(model_copy, {"onnxruntime": candidate}, dataset)
    int8 = metadata.variants["int8"]
    assert int8["shipped"] is False and "file" not in int8
    assert int8["map50_95"] == 0.0  # every score zeroed: no detection, nothing found
    fp32_by_pycocotools = cocoeval_scores(data_yaml, Detector.from_model_dir(model_copy))[0]
    assert int8["map50_95_drop"] == pytest.approx(fp32_by_pycocotools, abs=1e-6)
    assert "VISIONOPS_QUANTIZE_MAX_MAP_DROP" in int8["reason"]
    assert "INT8 variant not shipped" in caplog.text and int8["reason"] in caplog.text
    assert not (model_copy / MODEL_INT8_ONNX).exists() and not candidate.path.exists()
    assert json.loads((model_copy / "metadata.json").read_text())["variants"]["int8"] == int8
    # What is not shipped is not served; auto falls back to fp32.
    with pytest.raises(ModelNotFound, match="int8 variant is not served on onnxruntime"):
        Detector.from_model_dir(model_copy, precision="int8")
    assert Detector.from_model_dir(model_copy, precision="auto").precision == "fp32"


def _add_int8_with(variable: str, value: str, model_dir: Path, data_yaml: Path, env) -> Any:
    from visionops.config import get_settings

    env.setenv(variable, value)
    return add_int8_variant(model_dir, load_data_yaml(data_yaml), settings=get_settings())


def test_a_negative_max_drop_rejects_even_a_lossless_int8(
    detecting, model_copy: Path, settings_env: pytest.MonkeyPatch
) -> None:
    metadata = _add_int8_with(
        "VISIONOPS_QUANTIZE_MAX_MAP_DROP", "-0.5", model_copy, detecting[1], settings_env
    )
    int8 = metadata.variants["int8"]
    assert int8["shipped"] is False and "more than the allowed -0.5" in int8["reason"]
    assert int8["max_map50_95_drop"] == -0.5
    assert sorted(p.name for p in model_copy.iterdir()) == FP32_ONLY


def test_zero_calibration_images_means_no_int8_variant(
    detecting, model_copy: Path, settings_env: pytest.MonkeyPatch
) -> None:
    metadata = _add_int8_with(
        "VISIONOPS_QUANTIZE_CALIBRATION_IMAGES", "0", model_copy, detecting[1], settings_env
    )
    assert list(metadata.variants) == ["fp32"] and not (model_copy / MODEL_INT8_ONNX).exists()


def test_a_failed_quantisation_is_recorded_and_fp32_stays(detecting, model_copy: Path) -> None:
    """A graph the quantiser cannot place (no detection head) is a recorded rejection, not a
    failed training."""
    from onnx import TensorProto, helper, save

    _, data_yaml = detecting
    graph = helper.make_graph(
        [helper.make_node("Relu", ["images"], ["output0"], name="relu")],
        "not-yolo",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["b", 3, "h", "w"])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["b", 3, "h", "w"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    save(model, model_copy / MODEL_ONNX)
    before = (model_copy / MODEL_ONNX).read_bytes()
    metadata = add_int8_variant(model_copy, load_data_yaml(data_yaml))
    int8 = metadata.variants["int8"]
    assert int8 == {"shipped": False, "reason": int8["reason"]}
    assert "cannot find a YOLOv8 detection head" in int8["reason"]
    assert read_metadata(model_copy).variants["int8"] == int8
    assert (model_copy / MODEL_ONNX).read_bytes() == before
    assert sorted(p.name for p in model_copy.iterdir()) == FP32_ONLY


def test_calibration_sample_is_seeded_and_never_repeats(tmp_path: Path) -> None:
    images = [tmp_path / f"{i:02d}.jpg" for i in range(50)]
    sample = calibration_sample(images, 32, seed=7)
    assert len(set(sample)) == 32 and set(sample) <= set(images)
    assert sample == calibration_sample(list(reversed(images)), 32, seed=7)
    assert sample != calibration_sample(images, 32, seed=8)
    assert calibration_sample(images[:5], 32, seed=7) == images[:5]
