"""`visionops doctor offline --small`: each part of the platform once and small, in minutes.

The training pipeline run locally (training, the INT8 accuracy guard on both engines,
evaluation, registration), the predictor on ONNX Runtime and on OpenVINO under traffic, and a
drift check (Evidently) recorded in MLflow: every library that could phone home, exercised once.
Built from the demo's pieces (`visionops.demo`); what `make test` runs with no network route.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from visionops.config import Settings, get_settings
from visionops.data.tables import load_feature_table
from visionops.demo import DemoConfig, DemoEvents, DemoSession, prepare_data, reset_model
from visionops.local_predictor import (
    inference_folders,
    inference_images,
    predictor,
    send_images,
    wait_for_log,
)
from visionops.monitoring.collect import read_window
from visionops.monitoring.drift import DriftConfig
from visionops.monitoring.publish import CheckContext, check_and_publish
from visionops.monitoring.reference import resolve_reference_source
from visionops.storage import LocalStore

SMALL = DemoConfig(
    products=2, train=8, val=8, inference=8, imgsz=64, epochs=1, batch=8, drift_severity=1.0,
    min_map50=0.0,
)  # fmt: skip
"""The small loop's sizes: tiny, as the pipeline tests train; every step still runs for real."""


@dataclass(frozen=True)
class SmallLoopResult:
    """What the small loop did: the version it trained, what each engine answered, the check."""

    version: str
    sent: int
    answered: dict[str, int]
    drift_decision: str
    drift_mlflow_run: str | None


def run_small_loop(
    pipelines: Mapping[str, Any],
    events: DemoEvents | None = None,
    settings: Settings | None = None,
) -> SmallLoopResult:
    """Each part of the platform that a library could phone home from, once and small: the
    training pipeline run locally (training, the INT8 accuracy guard on both engines, evaluation,
    registration), the predictor on ONNX Runtime and on OpenVINO under traffic, and a drift check
    (Evidently) recorded in MLflow. What `visionops doctor offline --small` runs; the quick demo
    does all of it and more, in about three times as long."""
    demo = DemoSession(SMALL, pipelines, events or DemoEvents(), settings or get_settings())
    name, root = demo.name, demo.root
    with demo.stage("data"):
        data = prepare_data(SMALL, root, demo.events)
        reset_model(name, demo.settings)
    with demo.stage("train"):
        version = demo.train_first(data)
    images = inference_images(data.vision) + inference_images(data.drifted)
    answered: dict[str, int] = {}
    log_dir = root / "prediction-log"
    start = datetime.now(UTC)
    for engine in ("onnxruntime", "openvino"):
        with (
            demo.stage(f"serve + traffic: {engine}"),
            predictor(name, log_dir, root, engine) as url,
        ):
            answered[engine] = send_images(url, name, images)
    end = datetime.now(UTC)
    wait_for_log(log_dir, start, end, sum(answered.values()))
    with demo.stage("drift check"):
        source = resolve_reference_source(f"models:/{name}@champion", demo.settings)
        context = CheckContext(
            window_start=start.isoformat(), window_end=end.isoformat(), reference=source,
            current_images=(*inference_folders(data.vision), *inference_folders(data.drifted)),
            log=LocalStore(log_dir),
        )  # fmt: skip
        check = check_and_publish(
            load_feature_table(source.path), read_window(LocalStore(log_dir), start, end),
            config=DriftConfig.from_settings(demo.settings, min_rows=10),
            report_dir=root / "drift-check", model_name=name, log_to_mlflow=True,
            settings=demo.settings, context=context,
        )  # fmt: skip
    return SmallLoopResult(
        version, len(images), answered, check.result.decision, check.mlflow_run_id
    )
