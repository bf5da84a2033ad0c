"""Training with VisionOps tracking against plain Ultralytics training on the same data.

Both train YOLOv8n from the architecture with the same arguments (seed, deterministic, no plots,
no AMP on CPU, workers 0) on a generated dataset, alternating, `--repeat` times. The epoch time is
the step of Ultralytics' own `results.csv` clock between consecutive epochs (epoch 1 is warm-up and
left out), so it includes everything that runs between two epochs: our MLflow logging of the
previous epoch included. Tracking goes to the embedded MLflow store (sqlite), the default a user
gets. The time spent inside VisionOps' callbacks is also timed directly, which stays meaningful
when the machine is shared and epoch times wobble by more than the overhead itself.

    .venv/bin/python benchmarks/training.py [--epochs 6] [--imgsz 160] [--images 24] [--repeat 3]

Goal: tracking overhead at most 5% of the epoch time.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def epoch_seconds(results_csv: Path) -> list[float]:
    """Per-epoch durations from results.csv's cumulative `time` column, warm-up epoch left out."""
    with results_csv.open() as f:
        times = [float(row["time"]) for row in csv.DictReader(f)]
    return [b - a for a, b in itertools.pairwise(times)]


def plain_ultralytics(data_yaml: Path, args: dict[str, Any], project: Path) -> list[float]:
    from ultralytics import YOLO

    from visionops.training.train import _quiet_ultralytics

    model = YOLO("yolov8n.yaml")
    with _quiet_ultralytics(verbose=False):  # as quiet as VisionOps runs it: same console cost
        model.train(data=str(data_yaml), project=str(project), name="plain", exist_ok=True, **args)
    return epoch_seconds(Path(model.trainer.save_dir) / "results.csv")


def timed(record: list[float], function: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*a: Any, **k: Any) -> Any:
        start = time.perf_counter()
        try:
            return function(*a, **k)
        finally:
            record.append(time.perf_counter() - start)

    return wrapper


def tracked(data_yaml: Path, args: dict[str, Any], workdir: Path) -> tuple[list[float], float]:
    """VisionOps `train`; returns epoch durations and seconds spent in our per-epoch callbacks."""
    from visionops.tracking import connect
    from visionops.training import train as train_module

    spent: list[float] = []
    logger = train_module._RunLogger
    originals = {n: getattr(logger, n) for n in ("on_train_epoch_end", "on_fit_epoch_end")}
    for name, function in originals.items():
        setattr(logger, name, timed(spent, function))
    try:
        result = train_module.train(
            data_yaml, epochs=args["epochs"], imgsz=args["imgsz"], batch=args["batch"],
            device="cpu", seed=args["seed"],
        )  # fmt: skip
    finally:
        for name, function in originals.items():
            setattr(logger, name, function)
    client = connect().client
    local = client.download_artifacts(result.run_id, "training/results.csv", str(workdir))
    return epoch_seconds(Path(local)), sum(spent) / max(result.epochs, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--imgsz", type=int, default=160)
    parser.add_argument("--images", type=int, default=24, help="train images per product")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None)
    options = parser.parse_args()

    root = Path(options.dir or tempfile.mkdtemp(prefix="bench-training-"))
    os.environ.setdefault("VISIONOPS_DATA_DIR", str(root / "visionops"))
    from visionops.bootstrap import configure_ultralytics
    from visionops.data.convert import convert
    from visionops.data.synth import synthesize

    configure_ultralytics()
    synthesize(
        root / "vision", products=2, n_train=options.images, n_val=8, n_inference=1,
        imgsz=options.imgsz, seed=0,
    )  # fmt: skip
    data_yaml = convert(root / "vision", root / "yolo").data_yaml
    args = {
        "epochs": options.epochs, "imgsz": options.imgsz, "batch": 8, "seed": 0,
        "deterministic": True, "workers": 0, "plots": False, "amp": False, "device": "cpu",
        "verbose": False,
    }  # fmt: skip

    plain: list[float] = []
    ours: list[float] = []
    callbacks: list[float] = []
    for repeat in range(options.repeat):
        for which in ("plain", "tracked") if repeat % 2 == 0 else ("tracked", "plain"):
            if which == "plain":
                plain += plain_ultralytics(data_yaml, args, root / f"plain-{repeat}")
            else:
                epochs, spent = tracked(data_yaml, args, root / f"tracked-{repeat}")
                ours += epochs
                callbacks.append(spent)
        shown = {
            k: " ".join(f"{v:.2f}" for v in e[-4:]) for k, e in (("plain", plain), ("ours", ours))
        }
        print(f"repeat {repeat}: last epochs (s) plain {shown['plain']} | tracked {shown['ours']}")

    anchor, figure = statistics.median(plain), statistics.median(ours)
    per_epoch = statistics.median(callbacks)
    print(f"data: {data_yaml} ({options.images * 2} train images, imgsz {options.imgsz})")
    print(f"epochs measured: {len(plain)} plain, {len(ours)} tracked (epoch 1 left out)")
    print(f"plain Ultralytics  median epoch {anchor:.3f} s")
    print(f"VisionOps tracked  median epoch {figure:.3f} s")
    print(f"ratio tracked / plain: {figure / anchor:.3f} (goal <= 1.05)")
    print(
        f"time in VisionOps callbacks: {per_epoch * 1000:.1f} ms per epoch "
        f"= {per_epoch / anchor:.2%} of a plain epoch"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
