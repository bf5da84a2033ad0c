"""`visionops model ...`: register a run through the promotion gate, list, promote, roll back, and
clean up after interrupted registrations."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from visionops.cli._common import console
from visionops.errors import RegistryError

model_app = typer.Typer(
    help="The model registry (MLflow): gated registration, aliases champion and challenger.",
    no_args_is_help=True,
)

NameOption = Annotated[
    str | None, typer.Option("--name", help="Registered model; default: settings.model_name.")
]


@model_app.command("register")
def register_command(
    run_id: Annotated[str, typer.Option("--run-id", help="A finished training run.")],
    data: Annotated[
        Path | None,
        typer.Option("--data", help="Evaluate on this data.yaml first if the run was not."),
    ] = None,
    split: Annotated[str, typer.Option("--split")] = "val",
    name: NameOption = None,
) -> None:
    """Create a version from the run; it becomes champion only if it beats the champion."""
    # cv2, numpy, MLflow: loaded by this command only
    from visionops.training.promotion import register

    result = register(run_id, data_yaml=data, split=split, name=name)
    console.print(
        f"{result.name} v{result.version} -> {result.alias}: {result.reason}", highlight=False
    )


@model_app.command("list")
def list_command(name: NameOption = None) -> None:
    """Every version, newest first, with aliases, metrics and the gate's reason."""
    # cv2, numpy, MLflow: loaded by this command only
    from visionops.training.registry import list_versions

    versions = list_versions(name)
    if not versions:
        console.print("no registered versions")
        return
    table = Table("version")
    for column in ("aliases", "mAP50", "mAP50-95", "created", "run"):
        table.add_column(column, no_wrap=True)
    table.add_column("gate", overflow="fold")
    for v in versions:
        table.add_row(
            v.version,
            ",".join(v.aliases) or ("pending" if v.pending else ""),
            f"{v.metrics.get('map50', float('nan')):.4f}",
            f"{v.metrics.get('map50_95', float('nan')):.4f}",
            v.created[:16].replace("T", " "),
            (v.run_id or "")[:8],
            v.gate,
        )
    console.print(table)


@model_app.command("promote")
def promote_command(
    version: Annotated[str, typer.Argument(help="Version number to make the champion.")],
    force: Annotated[
        bool, typer.Option("--force", help="Skip the gate (a deliberate manual decision).")
    ] = False,
    name: NameOption = None,
) -> None:
    """Make VERSION the champion if it passes the gate against the current champion."""
    # cv2, numpy, MLflow: loaded by this command only
    from visionops.training.promotion import promote

    move = promote(version, force=force, name=name)
    console.print(
        f"{move.name}: champion v{move.previous or '-'} -> v{move.version} ({move.reason})",
        highlight=False,
    )


@model_app.command("rollback")
def rollback_command(name: NameOption = None) -> None:
    """Move champion back to the previous champion."""
    # cv2, numpy, MLflow: loaded by this command only
    from visionops.training.registry import rollback

    move = rollback(name)
    console.print(
        f"{move.name}: champion v{move.previous} -> v{move.version} ({move.reason})",
        highlight=False,
    )


@model_app.command("gc")
def gc_command(
    name: NameOption = None,
    min_age: Annotated[
        int,
        typer.Option(
            "--min-age",
            min=0,
            help="Spare pending versions whose registration renewed its heartbeat less than this "
            "many seconds ago (it may still be running).",
        ),
    ] = 0,
) -> None:
    """Remove versions that interrupted registrations left pending; repair the champion history."""
    from visionops.training.registry import gc

    report = gc(name, min_age_s=min_age)
    removed = ", ".join(f"v{v}" for v in report.removed) or "none"
    console.print(f"{report.name}: removed orphan versions: {removed}", highlight=False)
    if report.completed:
        done = ", ".join(f"v{v}" for v in report.completed)
        console.print(f"marked registered (they hold an alias): {done}", highlight=False)
    if report.kept:
        kept = ", ".join(f"v{v}" for v in report.kept)
        console.print(f"still pending, younger than --min-age: {kept}", highlight=False)
    if report.history_after != report.history_before:
        console.print(
            f"champion history {report.history_before} -> {report.history_after}", highlight=False
        )
    if report.failed:
        failed = ", ".join(f"v{v}" for v in report.failed)
        raise RegistryError(f"could not delete orphan versions {failed}; run gc again later")
