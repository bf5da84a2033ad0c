"""`visionops train` and `visionops evaluate`: one MLflow run per training, scored as served."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from visionops.cli._common import SeedOption, console, progress

DataOption = Annotated[
    Path, typer.Option("--data", help="Ultralytics data.yaml (from `visionops data convert`).")
]


def train_command(
    data: DataOption,
    epochs: Annotated[
        int | None, typer.Option("--epochs", min=1, help="Default: VISIONOPS_EPOCHS (30).")
    ] = None,
    imgsz: Annotated[
        int | None,
        typer.Option("--imgsz", min=32, max=2048, help="Multiple of 32; default VISIONOPS_IMGSZ."),
    ] = None,
    batch: Annotated[int | None, typer.Option("--batch", min=1)] = None,
    weights: Annotated[
        str | None,
        typer.Option(
            "--weights",
            help="Start from: a .pt file, s3://..., or models:/NAME@ALIAS; default yolov8n.yaml.",
        ),
    ] = None,
    device: Annotated[
        str | None, typer.Option("--device", help="auto (GPU when present), cpu, cuda:0, ...")
    ] = None,
    seed: SeedOption = 0,
) -> None:
    """Train YOLOv8n offline; logs the run (params, per-epoch metrics, model) to MLflow."""
    # torch, Ultralytics, MLflow: loaded by this command only
    from visionops.training.train import train

    with progress("training (epochs)") as callback:
        result = train(
            data, epochs=epochs, imgsz=imgsz, batch=batch, weights=weights, device=device,
            seed=seed, progress=callback,
        )  # fmt: skip
    summary = " ".join(f"{k}={v:.4f}" for k, v in result.metrics.items())
    console.print(f"run {result.run_id} finished on {result.device}: {summary}", highlight=False)
    console.print(f"model {result.model_uri} (local copy {result.model_dir})", highlight=False)


def evaluate_command(
    data: DataOption,
    model: Annotated[
        str | None,
        typer.Option(
            "--model", help="runs:/ID/model, models:/NAME@ALIAS, s3://... or a model directory."
        ),
    ] = None,
    compare: Annotated[
        tuple[str, str] | None,
        typer.Option(
            "--compare",
            metavar="FIRST SECOND",
            help="Two models side by side on the same data, with the gate's decision between "
            "them (e.g. models:/NAME/1 models:/NAME/2); logs nothing.",
        ),
    ] = None,
    split: Annotated[str, typer.Option("--split", help="Split of data.yaml to score.")] = "val",
    out: Annotated[
        Path | None, typer.Option("--out", help="Output folder; default under the data dir.")
    ] = None,
    run_id: Annotated[
        str | None, typer.Option("--run-id", help="Log to this run; default: the model's run.")
    ] = None,
) -> None:
    """Score the served ONNX model: mAP, precision, recall, per-class AP, confusion matrix, and
    report.html (curves, heatmap, per product, worst images)."""
    from visionops.errors import UsageError

    if (model is None) == (compare is None):
        raise UsageError("give either --model or --compare FIRST SECOND")
    if compare is not None and run_id:
        raise UsageError("--run-id logs one model's evaluation; --compare logs nothing")
    # cv2, MLflow: this command only
    from visionops.training.comparison import compare as compare_models
    from visionops.training.evaluate import evaluate

    if compare is not None:
        with progress(f"comparing on {split}") as callback:
            both = compare_models(*compare, data, split=split, out_dir=out, progress=callback)
        console.print(both.markdown(), highlight=False)
        console.print(f"wrote {both.files['report_html']}", highlight=False)
        return
    assert model is not None
    with progress(f"evaluating on {split}") as callback:
        result = evaluate(model, data, split=split, out_dir=out, run_id=run_id, progress=callback)
    console.print(result.markdown(), highlight=False)
    console.print(json.dumps(result.metrics.summary()), highlight=False)
    logged = f"logged to run {result.run_id}" if result.run_id else "not logged to MLflow"
    console.print(f"wrote {result.out_dir} ({logged})", highlight=False)
    console.print(f"report {result.files['report_html']}", highlight=False)
