"""Which ONNX variant of a model directory to run: `--precision fp32|int8|auto`.

Training records every variant in `metadata.json` with its accuracy on the evaluation split and
whether it passed the accuracy guard (`visionops.training.quantize`). `auto` takes the fastest of
the variants that passed, timed on the engine that will serve them: which one wins depends on the
engine and the CPU (INT8 needs VNNI to pay off; OpenVINO's bf16 can beat its own INT8).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from visionops.errors import ModelNotFound
from visionops.inference.backends import InferenceBackend
from visionops.inference.letterbox import PAD_VALUE
from visionops.models.artifact import ModelMetadata

log = logging.getLogger(__name__)

AUTO = "auto"
TIMED_RUNS = 5


def variant_file(metadata: ModelMetadata, precision: str, engine: str) -> str | None:
    """The file `engine` runs for `precision`: its own graph if the guard recorded one (INT8
    graphs differ per engine), else the variant's file."""
    variant = metadata.variants.get(precision, {})
    own = variant.get("engines", {}).get(engine, {}).get("file")
    return own or variant.get("file")


def variant_status(metadata: ModelMetadata, precision: str, engine: str) -> str | None:
    """Why `precision` may not be served on `engine` (the guard's reason), or None if it may.

    A variant the guard never saw (a model exported before it, or an engine that was not
    installed where the model was trained) is not refused here.
    """
    variant = metadata.variants.get(precision, {})
    if variant.get("shipped") is False:
        return variant.get("reason") or "it did not pass the accuracy guard"
    on_engine = variant.get("engines", {}).get(engine, {})
    if on_engine.get("shipped") is False:
        return on_engine.get("reason") or f"it did not pass the accuracy guard on {engine}"
    return None


def verified(metadata: ModelMetadata, precision: str, engine: str) -> bool:
    """Whether the accuracy guard scored `precision` on `engine`."""
    return engine in metadata.variants.get(precision, {}).get("engines", {})


def require_variant(metadata: ModelMetadata, model_dir: Path, precision: str, engine: str) -> None:
    """Refuse a variant the guard rejected on `engine`; warn about one it never checked there."""
    reason = variant_status(metadata, precision, engine)
    if reason is not None:
        raise ModelNotFound(
            f"model directory {model_dir}: the {precision} variant is not served on {engine}: "
            f"{reason}"
        )
    if metadata.variants.get(precision, {}).get("engines") and not verified(
        metadata, precision, engine
    ):
        log.warning(
            "%s: the accuracy guard did not check the %s variant on %s (not installed where the "
            "model was trained)", model_dir, precision, engine,
        )  # fmt: skip


def auto_precisions(metadata: ModelMetadata, model_dir: Path, engine: str) -> list[str]:
    """The variants `auto` chooses from on `engine`, fp32 first: those that passed the accuracy
    guard there. An unchecked fp32 counts (a model exported before the guard has only it)."""
    if not metadata.variants:
        return ["fp32"]
    chosen = [
        name
        for name in metadata.variants
        if variant_file(metadata, name, engine)
        and variant_status(metadata, name, engine) is None
        and (name == "fp32" or verified(metadata, name, engine))
    ]
    if not chosen:
        reasons = "; ".join(
            f"{name}: {variant_status(metadata, name, engine) or 'not checked'}"
            for name in metadata.variants
        )
        raise ModelNotFound(f"model directory {model_dir} has no variant for {engine}: {reasons}")
    return sorted(chosen, key=lambda name: (name != "fp32", name))


def fastest_backend(
    candidates: Mapping[str, Callable[[], InferenceBackend]],
    imgsz: int,
    *,
    runs: int = TIMED_RUNS,
) -> tuple[str, InferenceBackend, dict[str, float]]:
    """Build each candidate, warm it up, time `runs` interleaved runs of each on a grey image.

    Returns the name and backend with the lowest median latency and every median (ms). A single
    candidate is returned as built, untimed.
    """
    backends = {name: build() for name, build in candidates.items()}
    if len(backends) == 1:
        ((name, backend),) = backends.items()
        return name, backend, {}
    probes = {
        name: np.full((1, 3, *(backend.input_size or (imgsz, imgsz))), PAD_VALUE / 255, np.float32)
        for name, backend in backends.items()
    }
    for name, backend in backends.items():
        backend.warmup(probes[name])
    seconds: dict[str, list[float]] = {name: [] for name in backends}
    for _ in range(runs):
        for name, backend in backends.items():
            start = time.perf_counter()
            backend.run(probes[name])
            seconds[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) * 1000 for name, values in seconds.items()}
    best = min(medians, key=medians.__getitem__)
    log.info(
        "precision auto: %s (median ms: %s)",
        best, ", ".join(f"{name} {ms:.1f}" for name, ms in medians.items()),
    )  # fmt: skip
    return best, backends[best], medians
