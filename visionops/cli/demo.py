"""`visionops demo` (what `make demo` runs): the whole platform on this machine, generated data.

The stages and what each does are in `visionops/demo.py`; this module shows them as they happen
and prints the summary table at the end.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from visionops.cli._common import SeedOption, console, err_console
from visionops.cli.pipeline import StepPrinter, mlflow_ui_command
from visionops.config import get_settings

if TYPE_CHECKING:
    from visionops.demo import DemoResult, Scores

QUICK = {"train": 16, "imgsz": 128, "epochs": 3, "retrain_epochs": 1, "min_map50": 0.0}
"""`--quick`: a smoke run in a few minutes; the models learn next to nothing, so the first one
becomes the champion whatever its mAP."""


def demo(
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Where the demo writes (default: <data dir>/demo)."),
    ] = None,
    products: Annotated[
        int, typer.Option("--products", "-p", min=1, max=14, help="How many products.")
    ] = 2,
    train: Annotated[int, typer.Option("--train", min=1, help="Training images per product.")] = 50,
    imgsz: Annotated[
        int, typer.Option("--imgsz", min=64, max=640, help="Image size (multiple of 32).")
    ] = 320,
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="First training.")] = 16,
    retrain_epochs: Annotated[
        int, typer.Option("--retrain-epochs", min=1, help="Fine-tuning after the drift.")
    ] = 8,
    severity: Annotated[
        float, typer.Option("--drift-severity", min=0.1, max=1.0, help="Brightness drift.")
    ] = 0.8,
    quick: Annotated[
        bool, typer.Option("--quick", help="Tiny sizes, a few minutes (a smoke test).")
    ] = False,
    seed: SeedOption = 0,
    docker: Annotated[
        bool,
        typer.Option(
            "--docker",
            help="Every pipeline step in the pipeline image, the predictor in its image (needs "
            "an MLflow and an S3 server: README, Run in containers).",
        ),
    ] = False,
) -> None:
    """The whole loop on generated data: train, serve, drift, retrain, promote if better."""
    from pipelines import PIPELINES, load_pipeline  # kfp: loaded by this command only
    from visionops.demo import DemoConfig, DemoEvents, run_demo  # every library module

    if docker:  # before any work: the servers, the engine and both images
        from visionops.config import get_settings
        from visionops.containers import require_images
        from visionops.orchestration.docker import require_servers

        settings = get_settings()
        require_servers(settings)
        require_images(settings.pipeline_image, settings.predictor_image)
    sizes = {"train": train, "imgsz": imgsz, "epochs": epochs, "retrain_epochs": retrain_epochs}
    if quick:
        sizes = QUICK
    config = DemoConfig(
        products=products, drift_severity=severity, seed=seed, out_dir=out, docker=docker, **sizes
    )
    with StepPrinter(indent="    ") as printer:
        events = DemoEvents(
            stage=lambda title: console.rule(title),
            step=printer,
            info=lambda text: err_console.print(f"  {text}", highlight=False),
        )
        result = run_demo(config, {name: load_pipeline(name) for name in PIPELINES}, events)
    print_summary(result)


def _row(label: str, scores: Scores | None, key: str) -> list[str]:
    if scores is None:
        return [label, "-", "-"]
    return [label, f"{scores.clean[key]:.3f}", f"{scores.drifted[key]:.3f}"]


def print_summary(result: DemoResult) -> None:
    """The table the demo ends with (see README "Quick start")."""

    first, retrained = result.first, result.retrained
    table = Table("model", "clean val", "drifted val", title="mAP50-95 (mAP50)", box=None)
    for label, scores in ((f"v{first.version} first", first), ("retrained", retrained)):
        if scores is not None and scores is retrained:
            label = f"v{scores.version} retrained"
        row = _row(label, scores, "map50_95")
        row50 = _row(label, scores, "map50")
        table.add_row(row[0], f"{row[1]} ({row50[1]})", f"{row[2]} ({row50[2]})")
    console.print(table)

    checks = Table("window", "decision", "drifted share", "drifted columns (score)", box=None)
    for label, check in (("clean", result.clean_check), ("drifted", result.drift_check)):
        strongest = (
            ", ".join(f"{c['column']} ({c['method']} {c['score']:.2g})" for c in check.strongest())
            or "-"
        )
        share = "-" if check.drifted_share is None else f"{check.drifted_share:.0%}"
        checks.add_row(label, check.decision, share, strongest)
    console.print(checks)

    verdict = "promoted" if result.promoted else "kept as challenger"
    console.print(f"retrained model: {verdict}: {result.gate_reason}", highlight=False)
    console.print(
        f"now serving: {result.model_name} v{result.serving_version} (the predictor was stopped)",
        highlight=False,
    )
    for label, path in result.reports:
        console.print(f"report, {label}: {path}", highlight=False)
    timings = ", ".join(f"{k} {v:.0f}s" for k, v in result.timings.items())
    console.print(f"took {sum(result.timings.values()) / 60:.1f} min: {timings}", highlight=False)
    console.print(f"MLflow UI: {mlflow_ui_command(get_settings().tracking_uri)}", highlight=False)
