"""`visionops demo` (what `make demo` runs): the whole platform on this machine, generated data.

The stages and what each does are in `visionops/demo.py`; this module shows them as they happen
and prints the summary table at the end.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from visionops.cli._common import SeedOption, console, err_console
from visionops.cli.pipeline import StepPrinter, mlflow_ui_command

if TYPE_CHECKING:
    from visionops.demo import DemoResult

QUICK = {
    "train": 16, "imgsz": 128, "epochs": 3, "retrain_epochs": 1, "window": 32, "min_map50": 0.0
}  # fmt: skip
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
    window: Annotated[
        int,
        typer.Option(
            "--window", min=25, help="New drifted parts per product the line sends after the drift."
        ),
    ] = 48,
    label_budget: Annotated[
        int,
        typer.Option(
            "--label-budget", min=0, help="Drifted images to label at most (0: all kept)."
        ),
    ] = 0,
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
    """The whole loop on generated data: train, serve, drift, label the drifted images in Label
    Studio (a scripted stand-in for people), retrain on those labels, promote if better."""
    from pipelines import PIPELINES, load_pipeline  # kfp: loaded by this command only
    from visionops.demo import DemoConfig, DemoEvents, run_demo  # every library module

    if docker:  # before any work: the servers, the engine and both images
        from visionops.config import get_settings
        from visionops.containers import require_images
        from visionops.orchestration.docker import require_servers

        settings = get_settings()
        require_servers(settings)
        require_images(settings.pipeline_image, settings.predictor_image)
    sizes = {"train": train, "imgsz": imgsz, "epochs": epochs, "retrain_epochs": retrain_epochs,
             "window": window}  # fmt: skip
    if quick:
        sizes = QUICK
    config = DemoConfig(
        products=products, drift_severity=severity, seed=seed, out_dir=out, docker=docker,
        label_budget=label_budget, **sizes,
    )  # fmt: skip
    with StepPrinter(indent="    ") as printer:
        events = DemoEvents(
            stage=lambda title: console.rule(title),
            step=printer,
            info=lambda text: err_console.print(f"  {text}", highlight=False),
        )
        result = run_demo(config, {name: load_pipeline(name) for name in PIPELINES}, events)
    print_summary(result, gate_scores(result))


def _cell(metrics: dict[str, float] | None) -> str:
    if not metrics or "map50_95" not in metrics:
        return "-"
    return f"{metrics['map50_95']:.3f} ({metrics.get('map50', float('nan')):.3f})"


def gate_scores(result: DemoResult) -> dict[str, dict[str, float]]:
    """Each demo version's mAP on the data the gate compared them on (the retrained version's
    evaluation data: clean + drifted val), from the registry's evaluation tags."""
    # MLflow: loaded only once the demo is over
    from visionops.training.registry_versions import list_versions

    if result.retrained is None:
        return {}
    versions = {v.version: v for v in list_versions(result.model_name)}
    retrained = versions.get(result.retrained.version)
    if retrained is None or not retrained.eval_data_hash:
        return {}
    data = retrained.eval_data_hash[:16]
    return {
        version: v.evaluations[data]
        for version, v in versions.items()
        if data in v.evaluations and version in (result.first.version, result.retrained.version)
    }


def next_steps(result: DemoResult) -> list[str]:
    """Commands to look further, each runnable as printed from where the demo ran."""
    name, root = result.model_name, result.out_dir
    cli = _tool("visionops")
    window = root / "window.parquet"
    return [
        f"{cli} model list --name {name}",
        f"{cli} model show {result.serving_version} --name {name}",
        f"{cli} drift collect --log {root / 'prediction-log'} --hours 24 --out {window}",
        f"{cli} drift check --name {name} --reference champion --current {window} "
        f"--report-dir {root / 'reports' / 'drift-now'}",
        f"MLflow UI: {mlflow_ui_command()}",
    ]


def _tool(name: str) -> str:
    """The console script `name` beside this interpreter, relative to here when it is below."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        return name
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def print_summary(result: DemoResult, gate: dict[str, dict[str, float]] | None = None) -> None:
    """The table the demo ends with (see README "Quick start"): every version scored on the same
    data in each column, the gate's data included (`gate`: version -> metrics there)."""

    first, retrained = result.first, result.retrained
    gate = gate or {}
    table = Table(
        "model", "clean val", "drifted val", "gate's data", title="mAP50-95 (mAP50)", box=None
    )
    for label, scores in ((f"v{first.version} first", first), ("retrained", retrained)):
        if scores is None:
            table.add_row(label, "-", "-", "-")
            continue
        if scores is retrained:
            label = f"v{scores.version} retrained"
        table.add_row(
            label, _cell(scores.clean), _cell(scores.drifted), _cell(gate.get(scores.version))
        )
    console.print(table)
    console.print(
        "each column: both versions on the same images; gate's data: clean + drifted val, "
        "what the promotion compared",
        highlight=False,
    )

    if result.loop is not None:
        loop = result.loop
        labelled = loop.annotation.annotated if loop.annotation else 0
        console.print(
            f"data loop: the predictor kept {loop.kept} of the {loop.sent} drifted images, "
            f"{loop.selected} selected for labelling ({loop.project}), {labelled} labelled by the "
            f"scripted annotator (a stand-in for people), {loop.labelled} harvested for the "
            "retraining",
            highlight=False,
            soft_wrap=True,
        )
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
    console.print("next steps:", highlight=False)
    for line in next_steps(result):
        console.print(f"  {line}", highlight=False, soft_wrap=True)
