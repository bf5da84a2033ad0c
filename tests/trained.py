"""A tiny generated YOLO dataset and a model trained on it, for training/registry tests.

Training is the expensive part of those tests, so the session trains once (2 epochs at imgsz 64)
and watches MLflow while it does: at the end of every epoch it records what the tracking server
already holds, which shows that metrics are logged as epochs end, not replayed afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from visionops.config import Settings
from visionops.training.train import TrainResult

PRODUCTS = ("Cable", "Screw")
IMGSZ = 64


def tiny_dataset(root: Path) -> Path:
    """Synthesize 2 products (8 train, 4 val images each) and convert them; returns data.yaml."""
    from visionops.data.convert import convert
    from visionops.data.synth import synthesize

    synthesize(
        root / "vision", products=list(PRODUCTS), n_train=8, n_val=4, n_inference=2,
        imgsz=96, seed=3,
    )  # fmt: skip
    return convert(root / "vision", root / "yolo").data_yaml


@dataclass
class EpochObservation:
    """What MLflow held when an epoch's progress was reported."""

    epoch: int
    run_status: str
    logged_steps: list[int]


@dataclass
class ObservedTraining:
    result: TrainResult
    settings: Settings
    observations: list[EpochObservation] = field(default_factory=list)


def train_observed(data_yaml: Path, settings: Settings, *, epochs: int = 2) -> ObservedTraining:
    """Train with `settings`, recording MLflow's view of the running run after each epoch."""
    from visionops.tracking import connect
    from visionops.training.train import train

    tracking = connect(settings)
    observations: list[EpochObservation] = []

    def watch(done: int, total: int) -> None:
        if done == 0:
            return
        (run,) = tracking.client.search_runs(
            [tracking.experiment_id], "attributes.status = 'RUNNING'", max_results=1
        )
        history = tracking.client.get_metric_history(run.info.run_id, "train/box_loss")
        observations.append(
            EpochObservation(done, run.info.status, sorted(m.step for m in history))
        )

    result = train(
        data_yaml, epochs=epochs, imgsz=IMGSZ, batch=8, device="cpu", seed=0,
        progress=watch, settings=settings,
    )  # fmt: skip
    return ObservedTraining(result, settings, observations)
