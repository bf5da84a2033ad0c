"""Pipeline overhead: the training pipeline under KFP's local runner against the same steps called
directly, one after the other, in one Python process, on the same data.

Heavy libraries are imported once before timing (warm page cache for both). Both do fetch
(hard links) -> validate -> convert -> train -> evaluate -> register, with the same
parameters, into a fresh data dir with its own MLflow store and two registered models (each run's
model is its first champion, so neither gate re-evaluates a champion). The pipeline pays what a
pipeline costs: one subprocess per step (imports of kfp, visionops, MLflow, torch, Ultralytics
each time), artifact copies into KFP's outputs, the "extra data" fetch and the deploy step. The
goal is an overhead of at most 10% of the pipeline's wall time at the demo's sizes. CPU time
(this process and the step subprocesses) is printed too: on a machine shared with other jobs it
is the steadier figure.

    .venv/bin/python benchmarks/pipeline.py [--epochs 16] [--imgsz 320] [--train 50] [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def direct(vision: Path, work: Path, args: argparse.Namespace, name: str) -> dict[str, float]:
    """The steps as plain library calls in this process; seconds per step."""
    from visionops.data.convert import convert
    from visionops.data.fetch import fetch_datasets
    from visionops.data.validate import validate
    from visionops.training.evaluate import evaluate
    from visionops.training.promotion import register
    from visionops.training.train import train

    seconds: dict[str, float] = {}

    def timed(step: str, call: Any) -> Any:
        started = time.perf_counter()
        result = call()
        seconds[step] = time.perf_counter() - started
        return result

    fetched = timed("fetch", lambda: fetch_datasets([str(vision)], work / "fetched"))
    report = timed("validate", lambda: validate(fetched.out_dir))
    assert report.ok, report.summary()
    converted = timed("convert", lambda: convert([fetched.out_dir], work / "yolo"))
    trained = timed("train", lambda: train(
        converted.data_yaml, epochs=args.epochs, imgsz=args.imgsz, batch=args.batch,
        device="cpu", seed=0, overrides=_train_args(args),
    ))  # fmt: skip
    timed("evaluate", lambda: evaluate(trained.model_dir, converted.data_yaml))
    result = timed("register", lambda: register(
        trained.run_id, data_yaml=converted.data_yaml, name=name
    ))  # fmt: skip
    assert result.promoted, result.reason
    return seconds


def pipeline(vision: Path, args: argparse.Namespace, name: str, run: str) -> dict[str, float]:
    """The training pipeline locally; seconds per step as its runner reported them."""
    from pipelines import load_pipeline
    from visionops.orchestration.local import run_local

    result = run_local("training", load_pipeline("training"), {
        "dataset": str(vision), "epochs": args.epochs, "imgsz": args.imgsz, "batch": args.batch,
        "device": "cpu", "model_name": name, "deploy_target": "none", "min_map50": 0,
        "train_args": json.dumps(_train_args(args)),
    }, run_name=run)  # fmt: skip
    assert result.output("register-model", "promoted"), result.output("register-model", "reason")
    return {step.display_name: step.seconds for step in result.steps.values()}


def warm_up() -> None:
    """Import the heavy libraries once, untimed: the page cache then holds them for both sides,
    and the direct side, like any long-lived process, pays their import once, not per step."""
    from visionops.bootstrap import configure_ultralytics

    configure_ultralytics()
    import mlflow  # noqa: F401
    import onnxruntime  # noqa: F401
    import ultralytics  # noqa: F401


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--products", type=int, default=2)
    parser.add_argument("--train", type=int, default=50, help="train images per product")
    parser.add_argument("--val", type=int, default=32, help="val images per product")
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--epochs", type=int, default=16, help="the demo trains 16")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=1, help="pairs of runs, alternating")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        work = Path(tmp)
        os.environ["VISIONOPS_DATA_DIR"] = str(work / "data")  # fresh MLflow store and caches
        os.environ["VISIONOPS_GATE_MIN_MAP50"] = "0"
        from visionops.bootstrap import bootstrap
        from visionops.data.synth import synthesize

        bootstrap()
        warm_up()
        vision = synthesize(
            work / "vision", products=args.products, n_train=args.train, n_val=args.val,
            n_inference=1, imgsz=args.imgsz, seed=0,
        ).root  # fmt: skip
        walls: dict[str, list[float]] = {"direct": [], "pipeline": []}
        cpus: dict[str, list[float]] = {"direct": [], "pipeline": []}
        for i in range(args.repeat):
            for side in ("direct", "pipeline"):
                started, cpu = time.perf_counter(), _cpu_seconds()
                if side == "direct":
                    steps = direct(vision, work / f"direct-{i}", args, f"bench-direct-{i}")
                else:
                    steps = pipeline(vision, args, f"bench-pipeline-{i}", f"bench-{i}")
                walls[side].append(time.perf_counter() - started)
                cpus[side].append(_cpu_seconds() - cpu)
                print(f"{side:<8} {walls[side][-1]:7.1f} s wall {cpus[side][-1]:7.1f} s CPU  "
                      + _steps(steps), flush=True)  # fmt: skip
    sizes = (f"{args.products} products x {args.train} images, imgsz {args.imgsz}, "
             f"{args.epochs} epochs, {os.cpu_count()} cores, medians of {args.repeat}")  # fmt: skip
    for what, values in (("wall", walls), ("CPU", cpus)):
        ours, anchor = statistics.median(values["pipeline"]), statistics.median(values["direct"])
        print(
            f"{what}: training pipeline (local runner) {ours:.1f} s vs the same steps in one "
            f"process {anchor:.1f} s: ratio {ours / anchor:.2f}, overhead "
            f"{(ours - anchor) / ours:.1%} of the pipeline's (goal <= 10%); {sizes}"
        )


def _cpu_seconds() -> float:
    """CPU time of this process and of the children it has waited for (the pipeline's steps)."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _train_args(args: argparse.Namespace) -> dict[str, Any]:
    """As the demo trains: an optimizer step per batch, no warmup."""
    return {"nbs": args.batch, "warmup_epochs": 0}


def _steps(seconds: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.1f}" for k, v in seconds.items())


if __name__ == "__main__":
    main()
