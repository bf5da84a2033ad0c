"""How fast a YOLOv8n trained from scratch on CPU learns the synthetic VISION data.

Generates a dataset with `visionops.data.synth`, converts it with `visionops.data.convert`, trains
`YOLO("yolov8n.yaml")` (no pretrained weights, offline) and reports, after every epoch, the val
mAP50 and the wall-clock minutes since training started; it stops at the first epoch that reaches
`--target` (default 0.5) or after `--epochs`. The learning-rate schedule is the one for `--epochs`.

With ~100 training images an epoch is a dozen batches, so the nominal batch size is set to the
batch size (an optimizer step per batch, not one per 64 images) and warmup is off (Ultralytics
warms up for at least 100 iterations, which would be most of the run).

    .venv/bin/python benchmarks/synth_learnability.py [--products 2] [--train 50] [--imgsz 320]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--products", type=int, default=2, help="first N products")
    parser.add_argument("--train", type=int, default=50, help="train images per product")
    parser.add_argument("--val", type=int, default=16, help="val images per product")
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument(
        "--nbs",
        type=int,
        default=8,
        help="nominal batch: Ultralytics' 64 would step once per 8 batches",
    )
    parser.add_argument("--warmup-epochs", type=float, default=0.0)
    parser.add_argument("--target", type=float, default=0.5, help="val mAP50 to reach")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the result as JSON here")
    args = parser.parse_args()

    from visionops.bootstrap import configure_ultralytics

    configure_ultralytics()
    import torch
    from ultralytics import YOLO

    from visionops.data.convert import convert
    from visionops.data.synth import synthesize

    torch.set_num_threads(os.cpu_count() or 1)
    threads = torch.get_num_threads()
    history: list[dict[str, float]] = []
    reached: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="learnability-") as tmp:
        work = Path(tmp)
        synth = synthesize(
            work / "vision",
            products=args.products,
            n_train=args.train,
            n_val=args.val,
            n_inference=1,
            imgsz=args.imgsz,
            seed=args.seed,
        )
        dataset = convert(work / "vision", work / "yolo")
        print(
            f"data: {synth.products}, {sum(dataset.images.values())} images, "
            f"{sum(dataset.boxes.values())} boxes, {len(dataset.names)} classes",
            flush=True,
        )
        model = YOLO("yolov8n.yaml")
        started = time.perf_counter()

        def on_epoch_end(trainer: Any) -> None:
            if reached:  # Ultralytics' final validation of best.pt after the stop
                return
            map50 = float(trainer.metrics.get("metrics/mAP50(B)", 0.0))
            row = {
                "epoch": trainer.epoch + 1,
                "map50": round(map50, 4),
                "minutes": round((time.perf_counter() - started) / 60, 2),
            }
            history.append(row)
            print(
                f"epoch {row['epoch']:3d}  mAP50 {map50:.3f}  {row['minutes']:.1f} min", flush=True
            )
            if map50 >= args.target and not reached:
                reached.update(row)
                trainer.stop = True

        model.add_callback("on_fit_epoch_end", on_epoch_end)
        model.train(
            data=str(dataset.data_yaml),
            epochs=args.epochs,
            imgsz=args.imgsz,
            batch=args.batch,
            nbs=args.nbs,
            warmup_epochs=args.warmup_epochs,
            device="cpu",
            workers=0,
            plots=False,
            amp=False,
            seed=args.seed,
            patience=args.epochs,
            project=str(work / "runs"),
            name="learnability",
            exist_ok=True,
            verbose=False,
        )
    result = {
        "machine": machine(),
        "torch_threads": threads,
        "params": vars(args) | {"out": str(args.out) if args.out else None},
        "classes": dataset.names,
        "train_images": dataset.images["train"],
        "val_images": dataset.images["val"],
        "target": args.target,
        "reached": reached or None,
        "history": history,
    }
    if reached:
        print(
            f"reached val mAP50 {reached['map50']:.3f} >= {args.target} at epoch "
            f"{int(reached['epoch'])} after {reached['minutes']:.1f} min on {result['machine']}"
        )
    else:
        best = max(history, key=lambda r: r["map50"]) if history else {"map50": 0, "epoch": 0}
        print(
            f"did NOT reach {args.target} in {args.epochs} epochs; best {best['map50']:.3f} "
            f"at epoch {int(best['epoch'])}"
        )
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
