"""Every engine and precision against fp32 ONNX Runtime, `--precision auto`, the predictor's
engine and precision reporting, and a clear stop when OpenVINO is not installed.

The model is the session's `detecting` fixture (trained with `visionops train`, so its directory
holds the INT8 variant and the accuracy guard's per-engine verdicts).
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.detecting import matched_ious
from tests.servers import predictor_server
from tests.trained import cocoeval_scores
from visionops.config import DEFAULT_MODEL_NAME as MODEL
from visionops.detections import Detections
from visionops.errors import ModelNotFound
from visionops.inference import Detector
from visionops.inference.backends import InferenceBackend
from visionops.inference.variants import auto_precisions, fastest_backend, variant_status
from visionops.models.artifact import read_metadata
from visionops.training.dataset import load_data_yaml

pytestmark = pytest.mark.slow

CONF = 0.25
COMBINATIONS = [(e, p) for e in ("onnxruntime", "openvino") for p in ("fp32", "int8")]


@pytest.fixture(scope="module")
def model_dir(detecting) -> Path:
    return detecting[0].model_dir


@pytest.fixture(scope="module")
def val_files(detecting) -> list[Path]:
    return load_data_yaml(detecting[1]).images("val")


@pytest.fixture(scope="module")
def reference(model_dir: Path, val_files: list[Path]) -> list[Detections]:
    """fp32 on ONNX Runtime at the served confidence: what every other variant must reproduce."""
    from visionops.data.features import read_image

    images = [read_image(path) for path in val_files]
    return Detector.from_model_dir(model_dir).detect(images, conf=CONF)


def assert_agrees(reference: list[Detections], found: list[Detections]) -> None:
    """Matched boxes overlap with IoU >= 0.9, and at most 10% of all boxes go unmatched (a box
    whose score sits right at the threshold may fall on the other side of it)."""
    ious, unpaired = [], 0
    for ours, theirs in zip(reference, found, strict=True):
        pairs, missing = matched_ious(ours, theirs)
        ious += pairs
        unpaired += missing
    boxes = sum(len(d) for d in reference) + sum(len(d) for d in found)
    assert sum(len(d) for d in reference) >= 8, "the fixture must detect at conf 0.25"
    assert min(ious) >= 0.9, sorted(ious)[:5]
    assert unpaired <= 0.1 * boxes, f"{unpaired} of {boxes} boxes unmatched"


@pytest.mark.parametrize(("engine", "precision"), COMBINATIONS)
def test_each_engine_and_precision_agrees_with_fp32_onnxruntime_or_is_not_served(
    engine: str, precision: str, model_dir: Path, val_files: list[Path], reference
) -> None:
    from visionops.data.features import read_image

    reason = variant_status(read_metadata(model_dir), precision, engine)
    if reason is not None:  # the accuracy guard rejected it: refused, with the guard's reason
        with pytest.raises(ModelNotFound, match=r"accuracy guard|VISIONOPS_QUANTIZE_MAX_MAP_DROP"):
            Detector.from_model_dir(model_dir, engine=engine, precision=precision)
        return
    detector = Detector.from_model_dir(model_dir, engine=engine, precision=precision)
    assert (detector.engine, detector.precision) == (engine, precision)
    assert_agrees(reference, detector.detect([read_image(p) for p in val_files], conf=CONF))


def test_the_guard_verdicts_cover_every_installed_engine(model_dir: Path, detecting) -> None:
    """INT8 on ONNX Runtime and fp32 (bf16 where the CPU has it) on OpenVINO pass on this model;
    every (engine, precision) has scores and a verdict, and every graph still on disk is scored
    here by pycocotools (independently of the guard's own metrics): the recorded score is that
    one, and the verdict is the README's rule applied to it (at most 0.01 below fp32 on ONNX
    Runtime). A rejected INT8 graph is deleted, so only its recorded reason can be checked."""
    from visionops.inference.backends import create_backend

    metadata = read_metadata(model_dir)
    variants = metadata.variants
    scored = {}
    for engine, precision in COMBINATIONS:
        entry = variants[precision]["engines"][engine]
        path = model_dir / entry.get("file", variants["fp32"]["file"])
        if path.is_file():
            backend = create_backend(engine, path, imgsz=metadata.imgsz)
            detector = Detector(backend, metadata, precision=precision)
            scored[engine, precision] = cocoeval_scores(detecting[1], detector)[0]
            assert entry["map50_95"] == pytest.approx(scored[engine, precision], abs=1e-6)
        else:
            assert entry["shipped"] is False
        assert entry["shipped"] or "VISIONOPS_QUANTIZE_MAX_MAP_DROP" in entry["reason"]
    reference = scored["onnxruntime", "fp32"]
    for (engine, precision), score in scored.items():
        shipped = variants[precision]["engines"][engine]["shipped"]
        assert shipped == (reference - score <= 0.01), (engine, precision, reference, score)
    assert variants["int8"]["engines"]["onnxruntime"]["shipped"]
    assert variants["fp32"]["engines"]["openvino"]["shipped"]


class _Sleeper(InferenceBackend):
    """A backend that takes a fixed time per run: `fastest_backend` must pick by it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.runs = 0

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.runs += 1
        time.sleep(self.seconds)
        return np.zeros((1, 6, 1), np.float32)


def test_auto_keeps_the_fastest_variant_that_passed_on_the_engine(model_dir: Path) -> None:
    slow, fast = _Sleeper(0.03), _Sleeper(0.001)
    name, backend, medians = fastest_backend({"fp32": lambda: slow, "int8": lambda: fast}, 32)
    assert (name, backend) == ("int8", fast) and medians["fp32"] > medians["int8"]
    assert slow.runs == fast.runs == 6  # one warm-up, five timed
    single = _Sleeper(0.0)
    assert fastest_backend({"fp32": lambda: single}, 32) == ("fp32", single, {})
    assert single.runs == 0  # nothing to choose: no time spent
    metadata = read_metadata(model_dir)
    for engine in ("onnxruntime", "openvino"):
        passed = auto_precisions(metadata, model_dir, engine)
        chosen = Detector.from_model_dir(model_dir, engine=engine, precision="auto")
        assert chosen.engine == engine and chosen.precision in passed
        assert all(variant_status(metadata, p, engine) is None for p in passed)


def _metrics(client: httpx.Client) -> list[dict[str, str]]:
    return [
        sample.labels
        for family in text_string_to_metric_families(client.get("/metrics").text)
        for sample in family.samples
        if sample.name == "visionops_model_info"
    ]


@pytest.mark.parametrize(("engine", "precision"), [("openvino", "auto"), ("onnxruntime", "int8")])
def test_the_predictor_serves_and_reports_engine_and_precision(
    engine: str,
    precision: str,
    model_dir: Path,
    val_files: list[Path],
    reference,
    tmp_path: Path,
) -> None:
    args = [
        "--model-dir", str(model_dir), "--engine", engine, "--precision", precision,
        "--prediction-log", "off",
    ]  # fmt: skip
    metadata = read_metadata(model_dir)
    loaded = auto_precisions(metadata, model_dir, engine) if precision == "auto" else [precision]
    with (
        predictor_server(tmp_path, args) as server,
        httpx.Client(base_url=server.http, timeout=60) as client,
    ):
        parameters = client.get(f"/v2/models/{MODEL}").json()["parameters"]
        assert parameters["engine"] == engine and parameters["precision"] in loaded
        assert parameters["requested_precision"] == precision
        (info,) = _metrics(client)
        assert (info["engine"], info["precision"]) == (engine, parameters["precision"])
        found = []
        for path in val_files:
            body = {
                "inputs": [
                    {"name": "image", "datatype": "BYTES", "shape": [1],
                     "data": [base64.b64encode(path.read_bytes()).decode()]}
                ]
            }  # fmt: skip
            response = client.post(f"/v2/models/{MODEL}/infer", json=body)
            assert response.status_code == 200, response.text
            outputs = {o["name"]: o for o in response.json()["outputs"]}
            found.append(
                Detections(
                    np.array(outputs["boxes"]["data"], np.float32).reshape(-1, 4),
                    np.array(outputs["scores"]["data"], np.float32),
                    np.array(outputs["class_ids"]["data"], np.int64),
                )
            )
    assert_agrees(reference, found)


def test_without_openvino_the_predictor_stops_at_start_naming_the_extra(
    model_dir: Path, tmp_path: Path
) -> None:
    """OpenVINO made unimportable in a child process, as on an image built without the extra."""
    hide = tmp_path / "hide-openvino"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['openvino'] = None\n")
    env = {"PYTHONPATH": f"{hide}:{Path(__file__).resolve().parents[1]}"}
    started = subprocess.run(
        [sys.executable, "-m", "serving", "--model-dir", str(model_dir), "--engine", "openvino",
         "--host", "127.0.0.1", "--http_port", "0", "--grpc_port", "0"],
        capture_output=True, text=True, timeout=120, env={**os.environ, **env}, cwd=tmp_path,
    )  # fmt: skip
    assert started.returncode == 1, started.stderr[-2000:]
    assert "the openvino engine needs the openvino package, which is not installed" in (
        started.stderr
    )
    assert "pip install 'visionops[openvino]'" in started.stderr
    library = subprocess.run(
        [sys.executable, "-c",
         "from visionops.inference import Detector\n"
         f"Detector.from_model_dir({str(model_dir)!r}, engine='openvino')"],
        capture_output=True, text=True, timeout=120, env={**os.environ, **env},
    )  # fmt: skip
    assert library.returncode != 0
    assert "EngineUnavailable" in library.stderr and "visionops[openvino]" in library.stderr
