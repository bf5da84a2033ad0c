"""`visionops label ...`: the data loop. Pick the images of a window worth labelling, export them
with the model's boxes to an annotation tool, import the corrected labels as a VISION root.

Each command prints its summary as JSON on stdout. Exit codes: 0 ok, 1 bad input (an unreadable
log, a batch or COCO file that does not hold together, a box outside its image, an unknown class,
a missing image; nothing is written then), 2 a wrong flag.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from visionops.cli._common import SeedOption, err_console, progress
from visionops.cli.drift import EndOption, HoursOption, LogOption, StartOption
from visionops.errors import UsageError

label_app = typer.Typer(
    help="The data loop: pick images worth labelling, export them, import the labels.",
    no_args_is_help=True,
)

EXPORT_TARGETS = ("coco",)
IMPORT_SOURCES = ("coco",)


def _echo(summary: dict[str, Any]) -> None:
    typer.echo(json.dumps(summary, indent=2))


@label_app.command("select")
def select_command(
    budget: Annotated[int, typer.Option("--budget", help="Images to pick at most.")],
    out: Annotated[Path, typer.Option("--out", help="The batch folder to write.")],
    log: LogOption = "",
    start: StartOption = None,
    end: EndOption = None,
    hours: HoursOption = 24.0,
    seed: SeedOption = 0,
    drift: Annotated[
        Path | None,
        typer.Option(
            "--drift", help="A `visionops drift check` result (JSON): favour its drifted columns."
        ),
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(
            "--threshold",
            help="The confidence threshold the predictor used (default: VISIONOPS_SERVE_CONF).",
        ),
    ] = None,
    classes: Annotated[
        Path | None,
        typer.Option(
            "--classes",
            help="The model's class names: its metadata.json, a class_map.json or a JSON list "
            "(default: the classes its detections in the window name).",
        ),
    ] = None,
) -> None:
    """Pick the N images of a window of the prediction log most worth labelling."""
    # DuckDB, pyarrow, numpy: loaded by this command only
    from visionops.labeling.scoring import read_drift_result
    from visionops.labeling.select import check_selection, read_class_names, select_window
    from visionops.monitoring.log_layout import resolve_window

    check_selection(out, budget, threshold)
    begin, stop = resolve_window(start, end, hours)
    names = read_class_names(classes) if classes is not None else []
    focus = read_drift_result(drift) if drift is not None else None
    with progress("reading the window") as callback:
        summary = select_window(
            log, out, budget=budget, start=begin, end=stop, seed=seed,
            drift=focus, threshold=threshold, class_names=names, progress=callback,
        )  # fmt: skip
    _echo(summary.to_dict())
    skipped = summary.without_image + summary.missing_images
    if skipped:
        err_console.print(
            f"[yellow]skipped[/] {summary.without_image} records without a kept image, "
            f"{summary.missing_images} images gone from the store",
            highlight=False,
        )
    err_console.print(
        f"selected {summary.selected} of {summary.candidates} images "
        f"({summary.rows} records) into {out}",
        highlight=False,
    )


@label_app.command("export")
def export_command(
    batch: Annotated[Path, typer.Argument(help="A batch folder written by `label select`.")],
    to: Annotated[str, typer.Option("--to", help=f"Target: {', '.join(EXPORT_TARGETS)}.")],
    out: Annotated[
        Path | None, typer.Option("--out", help="--to coco: the folder to write.")
    ] = None,
) -> None:
    """Export a selection batch with the model's boxes as annotations to correct."""
    if to not in EXPORT_TARGETS:
        raise UsageError(f"unknown --to {to!r}; choose {', '.join(EXPORT_TARGETS)}")
    if out is None:
        raise UsageError("--to coco needs --out DIR")
    from visionops.labeling.coco_exchange import export_coco  # PIL: loaded by this command only

    summary = export_coco(batch, out)
    _echo(summary)
    err_console.print(
        f"exported {summary['images']} images, {summary['boxes']} boxes to {summary['coco']}",
        highlight=False,
    )


@label_app.command("import")
def import_command(
    source: Annotated[str, typer.Option("--from", help=f"Source: {', '.join(IMPORT_SOURCES)}.")],
    out: Annotated[Path, typer.Option("--out", help="The VISION root to write.")],
    file: Annotated[
        Path | None, typer.Argument(help="--from coco: the COCO file.", show_default=False)
    ] = None,
    images: Annotated[
        Path | None, typer.Option("--images", help="--from coco: the folder of its images.")
    ] = None,
    base: Annotated[
        Path | None,
        typer.Option(
            "--base", help="A VISION root whose class map the classes must belong to (checked)."
        ),
    ] = None,
    seed: SeedOption = 0,
    val_fraction: Annotated[
        float, typer.Option("--val-fraction", help="Share of each product's images in val.")
    ] = 0.2,
) -> None:
    """Import labels as a VISION root with train and val splits (seeded, whole or nothing)."""
    if source not in IMPORT_SOURCES:
        raise UsageError(f"unknown --from {source!r}; choose {', '.join(IMPORT_SOURCES)}")
    if file is None or images is None:
        raise UsageError("--from coco needs the COCO FILE and --images DIR")
    if not 0 <= val_fraction < 1:
        raise UsageError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    from visionops.labeling.coco_exchange import import_coco  # PIL: loaded by this command only

    summary = import_coco(file, images, out, seed=seed, val_fraction=val_fraction, base=base)
    _echo(summary.to_dict())
    if summary.unplaced:
        err_console.print(
            f"[yellow]left out[/] {summary.unplaced} images without boxes whose product is unknown",
            highlight=False,
        )
    verb = "already held" if summary.reused else "wrote"
    err_console.print(
        f"{verb} {summary.total} images, {summary.boxes} boxes in {summary.root}", highlight=False
    )
