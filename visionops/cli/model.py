"""`visionops model ...`: register a run through the promotion gate, list, promote, roll back, and
clean up after interrupted registrations."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from visionops.cli._common import NameOption, console, model_name
from visionops.errors import ModelNotFound, RegistryError

model_app = typer.Typer(
    help="The model registry (MLflow): gated registration, aliases champion and challenger.",
    no_args_is_help=True,
)


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


COMPARED_COLUMNS = 2
"""Evaluation-data columns `model list` shows: with version, aliases and date, 80 columns wide."""


@model_app.command("list")
def list_command(name: NameOption = None) -> None:
    """Every version, newest first: aliases, and mAP per evaluation data, side by side.

    Versions compare fairly only within one column: the same evaluation data (the gate compares
    this way). The gate's reasons follow the table, one line each.
    """
    # cv2, numpy, MLflow: loaded by this command only
    from visionops.training.registry_versions import (
        list_versions,
        other_models_hint,
        shared_evaluations,
    )

    name, origin = model_name(name)
    console.print(f"model {name} ({origin})", highlight=False, soft_wrap=True)
    versions = list_versions(name)
    if not versions:
        console.print(
            f"no registered versions of {name}; {other_models_hint(name)}",
            highlight=False,
            soft_wrap=True,
        )
        return
    columns = shared_evaluations(versions)
    shown, hidden = columns[:COMPARED_COLUMNS], columns[COMPARED_COLUMNS:]
    table = Table("version", "aliases", "registered")
    for data in shown:
        table.add_column(f"data {data[:6]}", no_wrap=True)
    for v in versions:
        scored = v.evaluations
        cells = [
            f"{scored[d]['map50_95']:.3f} ({scored[d].get('map50', float('nan')):.3f})"
            if d in scored
            else "-"
            for d in shown
        ]
        aliases = ",".join(v.aliases) or ("pending" if v.pending else "")
        table.add_row(v.version, aliases, v.created[:16].replace("T", " "), *cells)
    console.print(table)
    console.print(
        "mAP50-95 (mAP50) per evaluation data (hash prefix): compare versions within a column."
        + (f" {len(hidden)} more evaluation data: visionops model show VERSION." if hidden else ""),
        highlight=False,
    )
    for v in versions:
        if v.gate:
            console.print(f"v{v.version} gate: {v.gate}", highlight=False)


@model_app.command("show")
def show_command(
    version: Annotated[str, typer.Argument(help="Version number.")],
    name: NameOption = None,
) -> None:
    """One version: aliases, the gate's decision, its scores per evaluation data, and its lineage
    (the versions it was fine-tuned from, the drift checks and pipeline runs that made them)."""
    # cv2, numpy, MLflow: loaded by this command only
    from visionops.training.lineage import chain
    from visionops.training.registry import (
        TAG_DECISION,
        TAG_PROMOTED,
        TAG_REPLACED,
        TAG_ROLLED_BACK,
        Registry,
    )
    from visionops.training.registry_versions import version_infos

    name, origin = model_name(name)
    registry = Registry(name)
    mv = registry.version(version)
    info = next(v for v in version_infos(registry) if v.version == str(mv.version))
    say = console.print
    say(f"model {name} ({origin}) v{info.version}", highlight=False, soft_wrap=True)
    say(f"  aliases: {', '.join(info.aliases) or ('pending' if info.pending else '-')}")
    say(f"  registered: {info.created} from training run {info.run_id}", highlight=False)
    tags = info.tags
    say(f"  gate: {tags.get(TAG_DECISION, '-')}: {info.gate or '-'}", highlight=False)
    for key, label in ((TAG_PROMOTED, "promoted"), (TAG_REPLACED, "replaced"),
                       (TAG_ROLLED_BACK, "rolled back")):  # fmt: skip
        if key in tags:
            say(f"  {label}: {tags[key]}", highlight=False, soft_wrap=True)
    say("  mAP50-95 (mAP50) per evaluation data:")
    for data, metrics in info.evaluations.items():
        mark = " (registered on)" if info.eval_data_hash.startswith(data) else ""
        say(
            f"    data {data[:6]}: {metrics.get('map50_95', float('nan')):.3f} "
            f"({metrics.get('map50', float('nan')):.3f}){mark}",
            highlight=False,
        )

    def read(number: str) -> tuple[str | None, dict[str, str]] | None:
        try:
            found = registry.version(number)
        except ModelNotFound:
            return None
        return found.run_id, dict(found.tags or {})

    say("  lineage, newest first:")
    for link in chain(info.version, read):
        say(f"    {link.describe()}", highlight=False, soft_wrap=True)


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
    from visionops.training.registry_gc import gc

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
