"""The INT8 variant of an exported model, shipped only if it keeps the fp32 model's accuracy.

ONNX Runtime fp32 runs YOLOv8n close to the CPU's fp32 peak; going faster takes lower precision.
What works, measured on 2 cores: static quantisation in QDQ format, per-channel s8 weights held
to 7 bits (`reduce_range`), u8 activations, MinMax calibration on a few dozen training images
letterboxed exactly as the engine does it, with the detection head's post-processing left in
fp32 (about 2x faster, no accuracy loss). Quantising that post-processing too returns no
detections at all: its final Concat holds box coordinates in pixels and class scores in 0..1, and
one u8 scale cannot hold both. Dynamic quantisation gave no speedup.

The 7-bit weights are for CPUs without VNNI (AVX2 and plain AVX-512): their u8 x s8 kernels
(`vpmaddubsw`) add pairs of products in 16 bits, which saturate with full 8-bit weights. On a
2-core AVX2 VM, the test model lost 0.028 mAP50-95 on ONNX Runtime and 0.116 on OpenVINO with 8-bit
weights, and nothing (+0.025, -0.002) with 7-bit ones. The graph is made where training runs and
served wherever the predictor does, so it is always made the way every CPU runs right.

Each engine gets the QDQ graph it runs fastest (`INT8_RECIPES`). ONNX Runtime fuses whole Q/DQ
chains into its QLinear kernels, so every operator its quantiser knows is quantised
(`model.int8.onnx`). OpenVINO fuses a convolution with its SiLU and the next layer's quantisation
on its own, which Q/DQ pairs around the SiLU prevent: its graph quantises convolution inputs only
(`model.int8.openvino.onnx`). Measured on 2 cores, 640 px, one thread per inference: ONNX Runtime
24.7 ms on its graph, 30.6 on OpenVINO's; OpenVINO 18.3 ms on its graph, 20.6 on ONNX Runtime's.

The post-processing is found in the graph itself (`postprocess_nodes`), not by node names: every
node between the head's last convolutions and the output (box distribution decode, anchors and
strides, sigmoid, the final Concat).

The accuracy guard (`add_int8_variant`) scores fp32 and each engine's INT8 graph on the evaluation
split through the serving detector and ships an INT8 file only if its mAP50-95 drop is at most
`VISIONOPS_QUANTIZE_MAX_MAP_DROP`; scores, decisions and reasons go to `metadata.json`'s
`variants` (per engine, with the file that engine runs).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from visionops.config import Settings, get_settings
from visionops.data.features import read_image
from visionops.errors import EngineUnavailable, TrainingError
from visionops.inference import Detector
from visionops.inference.backends import ENGINES, create_backend, require_runtime
from visionops.inference.letterbox import to_input_tensor
from visionops.models.artifact import (
    MODEL_INT8_ONNX,
    MODEL_INT8_OPENVINO_ONNX,
    MODEL_ONNX,
    ModelMetadata,
    read_metadata,
    write_metadata,
)
from visionops.training.dataset import YoloDataset
from visionops.training.evaluate import score_detector

log = logging.getLogger(__name__)

METHOD = (
    "onnxruntime static QDQ: per-channel s8 weights in 7 bits (reduce_range), u8 activations, "
    "MinMax calibration"
)
CALIBRATION_SPLIT = "train"
REFERENCE_ENGINE = "onnxruntime"
EVALUATION_SPLIT = "val"


@dataclass(frozen=True)
class Recipe:
    """How one engine's INT8 graph is made: its file and the operator types quantised."""

    file: str
    op_types: tuple[str, ...] | None  # None: every type ONNX Runtime's quantiser knows


INT8_RECIPES: dict[str, Recipe] = {
    "onnxruntime": Recipe(MODEL_INT8_ONNX, None),
    "openvino": Recipe(MODEL_INT8_OPENVINO_ONNX, ("Conv",)),
}
# Inputs that only give a shape, index or bounds: no tensor values flow through them.
_VALUE_INPUTS = {
    "Reshape": 1, "Expand": 1, "Slice": 1, "Tile": 1, "Gather": 1, "Unsqueeze": 1,
    "Squeeze": 1, "Resize": 1, "Pad": 1, "ConstantOfShape": 0, "Range": 0, "Shape": 0,
}  # fmt: skip


@dataclass(frozen=True)
class QuantizedModel:
    """An INT8 model file and how it was made."""

    path: Path
    calibration_images: int
    excluded_nodes: list[str]
    op_types: tuple[str, ...] | None = None

    def details(self) -> dict[str, Any]:
        return {
            "method": METHOD,
            "calibration_split": CALIBRATION_SPLIT,
            "calibration_images": self.calibration_images,
            "fp32_nodes": len(self.excluded_nodes),
        }

    def engine_details(self) -> dict[str, Any]:
        """What differs between engines' graphs besides the file: the operators quantised."""
        return {"quantized_ops": list(self.op_types or ["all"])}


def _name_nodes(model: Any) -> None:
    """Give every node a unique name: exclusion from quantisation works by name."""
    seen: set[str] = set()
    for index, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{index}"
        seen.add(node.name)


def postprocess_nodes(model: Any) -> list[str]:
    """Names of the nodes after the last convolutions of a YOLOv8 detection head.

    Walks from the graph output back along the inputs that carry values, and stops at each
    convolution: those are the head's last learned layers (box and class branches at every
    scale). The one convolution it walks through is the distribution-to-distance decode (DFL), a
    fixed 1x1 convolution applied to a Softmax. Every node visited is post-processing.
    """
    graph = model.graph
    producer = {output: node for node in graph.node for output in node.output}
    visited: dict[str, Any] = {}
    heads: list[str] = []
    pending = [producer[output.name] for output in graph.output if output.name in producer]
    while pending:
        node = pending.pop()
        if node.name in visited:
            continue
        source = producer.get(node.input[0]) if node.input else None
        if node.op_type == "Conv" and (source is None or source.op_type != "Softmax"):
            heads.append(node.name)
            continue
        visited[node.name] = node
        value_inputs = node.input[: _VALUE_INPUTS.get(node.op_type, len(node.input))]
        pending.extend(producer[name] for name in value_inputs if name in producer)
    if not heads or not any(node.op_type == "Concat" for node in visited.values()):
        raise TrainingError(
            "cannot find a YOLOv8 detection head in the ONNX graph (no convolution feeding a "
            "Concat before the output)"
        )
    return sorted(visited)


def calibration_sample(images: Sequence[Path], count: int, seed: int) -> list[Path]:
    """`count` images drawn without replacement (all of them if there are fewer), seeded."""
    ordered = sorted(images)
    if len(ordered) <= count:
        return ordered
    chosen = np.random.default_rng(seed).choice(len(ordered), size=count, replace=False)
    return [ordered[i] for i in sorted(chosen)]


def quantize_int8(
    model_dir: Path,
    out: Path,
    images: Sequence[Path],
    *,
    exclude: Sequence[str] | None = None,
    op_types: Sequence[str] | None = None,
    engine: str = REFERENCE_ENGINE,
) -> QuantizedModel:
    """Quantise the model directory's fp32 ONNX to static QDQ INT8 at `out`.

    Calibration runs `images` through the letterbox of the detector that will serve the graph,
    `engine`'s (ONNX Runtime: the minimal rectangle; OpenVINO: the fixed square, whose padding
    widens the activation ranges: seeds 0-3 of the accuracy model lost 0.005-0.007 mAP50-95
    calibrated on squares, 0.005-0.015 on rectangles). `exclude`: the nodes left in fp32
    (default: `postprocess_nodes`); `op_types`: the operator types to quantise (default: every
    type the quantiser knows). Raises `TrainingError` when quantisation fails.
    """
    import onnx  # heavy, training only (not in the predictor image)
    from onnxruntime.quantization import (  # heavy, training only
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if not images:
        raise TrainingError("INT8 calibration needs at least one training image")
    detector = Detector.from_model_dir(model_dir, engine=engine)
    source = Path(model_dir) / MODEL_ONNX
    model = onnx.load(str(source))
    _name_nodes(model)
    excluded = list(exclude) if exclude is not None else postprocess_nodes(model)
    input_name = model.graph.input[0].name

    class Letterboxed(CalibrationDataReader):  # type: ignore[misc]
        """One letterboxed training image per calibration batch, decoded as it is needed."""

        def __init__(self) -> None:
            self._tensors: Iterator[np.ndarray] = (
                to_input_tensor([detector.letterboxed(read_image(path))]) for path in images
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            tensor = next(self._tensors, None)
            return None if tensor is None else {input_name: tensor}

    try:
        quantize_static(
            model,
            str(out),
            Letterboxed(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
            calibrate_method=CalibrationMethod.MinMax,
            op_types_to_quantize=list(op_types) if op_types else None,
        )
    except Exception as error:  # ORT's quantiser raises plain exceptions of many kinds
        Path(out).unlink(missing_ok=True)
        raise TrainingError(f"INT8 quantisation of {source} failed: {error}") from error
    log.info(
        "quantised %s -> %s (%d calibration images, %d nodes kept in fp32)",
        source, out, len(images), len(excluded),
    )  # fmt: skip
    return QuantizedModel(Path(out), len(images), excluded, tuple(op_types) if op_types else None)


def installed_engines() -> list[str]:
    """The engines whose runtime is installed here, the reference (ONNX Runtime) first."""
    found = []
    for engine in sorted(ENGINES, key=lambda name: (name != REFERENCE_ENGINE, name)):
        try:
            require_runtime(engine)
        except EngineUnavailable:
            log.info("accuracy guard: %s not installed, its variants stay unverified", engine)
            continue
        found.append(engine)
    return found


def _judged(metrics: Any, reference: float, max_drop: float, what: str, split: str) -> dict:
    """Scores of one variant on one engine and the guard's decision against the reference."""
    entry: dict[str, Any] = {name: round(value, 6) for name, value in metrics.summary().items()}
    drop = reference - metrics.map50_95
    entry["map50_95_drop"] = round(drop, 6)
    entry["shipped"] = drop <= max_drop + 1e-9  # float noise must not reject "equal to the limit"
    if not entry["shipped"]:
        entry["reason"] = (
            f"{what}: mAP50-95 {metrics.map50_95:.4f} is {drop:.4f} below fp32 on "
            f"{REFERENCE_ENGINE}'s {reference:.4f} on {split}, more than the allowed {max_drop:g} "
            "(VISIONOPS_QUANTIZE_MAX_MAP_DROP)"
        )
    return entry


def guard_int8(
    model_dir: Path,
    candidates: Mapping[str, QuantizedModel],
    dataset: YoloDataset,
    *,
    split: str = EVALUATION_SPLIT,
    settings: Settings | None = None,
) -> ModelMetadata:
    """Score fp32 and INT8 on `split`, on every installed engine, against fp32 on ONNX Runtime;
    ship each engine's INT8 candidate as its recipe's file if it passes there, else delete it.

    `candidates` maps engines to their INT8 graph (`INT8_RECIPES`); an engine without one runs
    the reference engine's. A variant passes on an engine when its mAP50-95 there is at most
    `quantize_max_map_drop` below the reference's. Engines compute differently (OpenVINO runs
    fp32 graphs in bf16 where the CPU has it, and its own INT8 kernels), so each engine gets its
    own verdict; the predictor serves a variant only on engines where it passed. Scores,
    verdicts, files and reasons go to metadata.json.
    """
    settings = settings or get_settings()
    model_dir = Path(model_dir)
    metadata = read_metadata(model_dir)
    owner = {engine: engine if engine in candidates else REFERENCE_ENGINE
             for engine in installed_engines()}  # fmt: skip
    files = {
        "fp32": dict.fromkeys(owner, model_dir / MODEL_ONNX),
        "int8": {engine: candidates[source].path for engine, source in owner.items()},
    }
    scores: dict[str, dict[str, Any]] = {precision: {} for precision in files}
    for engine in owner:
        for precision, paths in files.items():
            detector = Detector(
                create_backend(engine, paths[engine], imgsz=metadata.imgsz),
                metadata,
                batch_size=4,
                precision=precision,
            )
            scores[precision][engine] = score_detector(detector, dataset, split, settings=settings)
    reference = scores["fp32"][REFERENCE_ENGINE].map50_95
    max_drop = settings.quantize_max_map_drop
    common = {
        "eval_split": split,
        "eval_data_hash": dataset.split_hash(split),
        "max_map50_95_drop": max_drop,
    }
    variants = dict(metadata.variants)
    for precision in files:
        engines = {
            engine: _judged(metrics, reference, max_drop, f"{precision} on {engine}", split)
            for engine, metrics in scores[precision].items()
        }
        for engine, entry in engines.items():
            log.info(
                "accuracy guard: %s on %s: mAP50-95 %.4f (drop %.4f): %s",
                precision, engine, entry["map50_95"], entry["map50_95_drop"],
                "passed" if entry["shipped"] else "REJECTED",
            )  # fmt: skip
            if precision == "int8":
                candidate = candidates[owner[engine]]
                entry.update(candidate.engine_details(), file=INT8_RECIPES[owner[engine]].file)
        passed = [engine for engine, entry in engines.items() if entry["shipped"]]
        entry: dict[str, Any] = {
            **variants.get(precision, {}),
            **(candidates[REFERENCE_ENGINE].details() if precision == "int8" else {}),
            **{k: engines[REFERENCE_ENGINE][k] for k in ("map50", "map50_95", "map50_95_drop")},
            **common,
            "engines": engines,
            "shipped": bool(passed),
        }
        entry.pop("file", None)
        if precision == "fp32":
            entry["file"] = MODEL_ONNX
        elif engines[REFERENCE_ENGINE]["shipped"]:
            entry["file"] = MODEL_INT8_ONNX
        if not passed:
            entry["reason"] = "; ".join(e["reason"] for e in engines.values())
        variants[precision] = entry
    for source, candidate in candidates.items():
        target = model_dir / INT8_RECIPES[source].file
        runs_it = [engine for engine in owner if owner[engine] == source]
        if any(variants["int8"]["engines"][engine]["shipped"] for engine in runs_it):
            candidate.path.replace(target)
        else:
            candidate.path.unlink(missing_ok=True)
            target.unlink(missing_ok=True)
    if not variants["int8"]["shipped"]:
        log.warning("INT8 variant not shipped: %s", variants["int8"]["reason"])
    metadata = metadata.model_copy(update={"variants": variants})
    write_metadata(model_dir, metadata)
    return metadata


def add_int8_variant(
    model_dir: Path,
    dataset: YoloDataset,
    *,
    split: str = EVALUATION_SPLIT,
    settings: Settings | None = None,
) -> ModelMetadata:
    """Quantise the exported model, calibrated on a sample of the training images, and ship the
    INT8 variant if the accuracy guard (`guard_int8`) lets it through.

    A quantisation that fails is recorded as a rejection with its reason; the fp32 model stays
    as exported. `quantize_calibration_images` 0 skips the INT8 variant.
    """
    settings = settings or get_settings()
    model_dir = Path(model_dir)
    count = settings.quantize_calibration_images
    if count == 0:
        log.info("no INT8 variant: VISIONOPS_QUANTIZE_CALIBRATION_IMAGES is 0")
        return read_metadata(model_dir)
    sample = calibration_sample(dataset.images(CALIBRATION_SPLIT), count, settings.seed)
    recipes = {engine: INT8_RECIPES[engine] for engine in installed_engines()}
    paths = {engine: model_dir / f".{recipe.file}.candidate" for engine, recipe in recipes.items()}
    try:
        try:
            candidates = {
                engine: quantize_int8(
                    model_dir, paths[engine], sample, op_types=recipe.op_types, engine=engine
                )
                for engine, recipe in recipes.items()
            }
        except TrainingError as error:
            metadata = read_metadata(model_dir)
            reason = str(error)
            log.warning("INT8 variant not shipped: %s", reason)
            variants = {**metadata.variants, "int8": {"shipped": False, "reason": reason}}
            metadata = metadata.model_copy(update={"variants": variants})
            write_metadata(model_dir, metadata)
            return metadata
        return guard_int8(model_dir, candidates, dataset, split=split, settings=settings)
    finally:
        for path in paths.values():
            path.unlink(missing_ok=True)
