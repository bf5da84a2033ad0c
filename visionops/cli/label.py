"""`visionops label ...`: the data loop. Pick the images of a window worth labelling, export them
with the model's boxes to an annotation tool, import the corrected labels as a VISION root; list
the requests the monitoring pipeline made on drift and harvest one (import + retrain, once).

Each command prints its summary as JSON on stdout. Exit codes: 0 ok, 1 bad input (an unreadable
log, a batch or COCO file that does not hold together, a box outside its image, an unknown class,
a missing image; nothing is written then), 2 a wrong flag.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from visionops.cli._common import SeedOption, err_console, progress
from visionops.cli.drift import EndOption, HoursOption, LogOption, StartOption
from visionops.errors import UsageError

if TYPE_CHECKING:
    from visionops.labeling.label_studio_client import LabelStudioClient

label_app = typer.Typer(
    help="The data loop: pick images worth labelling, export them, import the labels.",
    no_args_is_help=True,
)

EXPORT_TARGETS = ("coco", "label-studio")
IMPORT_SOURCES = ("coco", "label-studio")

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url", help="Label Studio, e.g. http://127.0.0.1:8080 (VISIONOPS_LABEL_STUDIO_URL)."
    ),
]
ProjectOption = Annotated[
    str | None, typer.Option("--project", help="Label Studio project title (created if missing).")
]


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
    url: UrlOption = None,
    project: ProjectOption = None,
) -> None:
    """Export a selection batch with the model's boxes as annotations to correct."""
    if to not in EXPORT_TARGETS:
        raise UsageError(f"unknown --to {to!r}; choose {', '.join(EXPORT_TARGETS)}")
    if to == "label-studio":
        _export_label_studio(batch, url, project)
        return
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
    url: UrlOption = None,
    project: ProjectOption = None,
    require_complete: Annotated[
        bool,
        typer.Option(
            "--require-complete",
            help="--from label-studio: refuse (write nothing) while a task is unlabelled.",
        ),
    ] = False,
) -> None:
    """Import labels as a VISION root with train and val splits (seeded, whole or nothing)."""
    if source not in IMPORT_SOURCES:
        raise UsageError(f"unknown --from {source!r}; choose {', '.join(IMPORT_SOURCES)}")
    if not 0 <= val_fraction < 1:
        raise UsageError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if source == "label-studio":
        _import_label_studio(url, project, out, require_complete, seed, val_fraction)
        return
    if file is None or images is None:
        raise UsageError("--from coco needs the COCO FILE and --images DIR")
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


def _label_studio_client(url: str | None, project: str | None) -> tuple[LabelStudioClient, str]:
    """The Label Studio client of --url (or VISIONOPS_LABEL_STUDIO_URL) with the token of
    VISIONOPS_LABEL_STUDIO_TOKEN, and the --project title."""
    from visionops.config import get_settings
    from visionops.labeling.label_studio_client import LabelStudioClient

    settings = get_settings()
    url = url or settings.label_studio_url
    if not url:
        raise UsageError("Label Studio: --url is needed (or VISIONOPS_LABEL_STUDIO_URL)")
    if not project:
        raise UsageError("Label Studio: --project NAME is needed")
    token = settings.label_studio_token.get_secret_value() if settings.label_studio_token else ""
    return LabelStudioClient(url, token, timeout=settings.label_studio_timeout), project


def _export_label_studio(batch: Path, url: str | None, project: str | None) -> None:
    from visionops.labeling.label_studio import export_to_label_studio

    client, title = _label_studio_client(url, project)
    with client:
        summary = export_to_label_studio(batch, client, title)
    _echo(summary.to_dict())
    err_console.print(
        f"project {title!r}: {summary.tasks_created} tasks created, {summary.already_there} "
        f"already there; label them at {summary.to_dict()['project_url']}",
        highlight=False,
    )


def _import_label_studio(
    url: str | None, project: str | None, out: Path, require_complete: bool, seed: int,
    val_fraction: float,
) -> None:  # fmt: skip
    from visionops.labeling.label_studio import import_from_label_studio

    client, title = _label_studio_client(url, project)
    with client:
        result = import_from_label_studio(
            client, title, out, require_complete=require_complete, seed=seed,
            val_fraction=val_fraction,
        )  # fmt: skip
    _echo(result.to_dict())
    if result.unfinished:
        err_console.print(
            f"[yellow]left out[/] {result.unfinished} unfinished tasks "
            f"({result.skipped} skipped); --require-complete refuses instead",
            highlight=False,
        )
    verb = "already held" if result.root.reused else "wrote"
    err_console.print(
        f"{verb} {result.root.total} images, {result.root.boxes} boxes in {result.root.root}",
        highlight=False,
    )


@label_app.command("scripted-annotator")
def scripted_annotator_command(
    truth: Annotated[
        Path,
        typer.Option(
            "--truth", help="A VISION root whose labels are the truth (the drift simulator's)."
        ),
    ],
    url: UrlOption = None,
    project: ProjectOption = None,
) -> None:
    """A stand-in for people (demo, tests): correct a project's pre-annotations from known labels.

    Each task not annotated yet whose image (by SHA-256) the --truth root holds gets the model's
    boxes corrected to the truth (kept and fixed, deleted, added) and submitted through Label
    Studio's API. Never for production images: its labels are only as good as the root's."""
    from visionops.labeling.scripted_annotator import STAND_IN, annotate_project

    client, title = _label_studio_client(url, project)
    with client:
        summary = annotate_project(client, title, truth)
    _echo(summary.to_dict())
    err_console.print(
        f"{STAND_IN}: annotated {summary.annotated} of {summary.tasks} tasks of {title!r} "
        f"({summary.already_annotated} already annotated, {summary.no_ground_truth} without "
        "ground truth, left for people)",
        highlight=False,
    )


@label_app.command("requests")
def requests_command() -> None:
    """List the labelling requests the monitoring pipeline made on drift, with their status:
    requested (waiting for labels), harvested, training submitted, or empty (no kept image)."""
    from visionops.orchestration.label_loop import list_requests

    found = list_requests()
    _echo({"requests": [{**_request_line(r), "status": status} for r, status in found]})
    for request, status in found:
        err_console.print(
            f"{request.monitoring_run_id}  {status:<18} {request.images:>4} images  "
            f"{request.where or '-'}",
            highlight=False,
        )
    if not found:
        err_console.print("no labelling requests yet", highlight=False)


def _request_line(request: Any) -> dict[str, Any]:
    keys = ("monitoring_run_id", "requested_at", "model_name", "target", "images", "project",
            "batch", "labels", "window")  # fmt: skip
    return {**{k: getattr(request, k) for k in keys}, "where": request.where}


@label_app.command("harvest")
def harvest_command(
    run_id: Annotated[str, typer.Argument(help="The monitoring run whose request to harvest.")],
    labels: Annotated[
        str,
        typer.Option(
            "--labels",
            help="A COCO file of the labels (path or s3:// URI; default for a COCO request: "
            "labelling/<run id>/labels.json in the store).",
        ),
    ] = "",
    require_complete: Annotated[
        bool,
        typer.Option("--require-complete", help="Refuse (write nothing) while a task is open."),
    ] = False,
    seed: SeedOption = 0,
    mode: Annotated[
        str, typer.Option("--mode", help="Where training runs: auto, cluster, local, docker.")
    ] = "auto",
) -> None:
    """Import the finished labels of a request into the store and re-submit training with them,
    once per monitoring run (what the `harvest` pipeline does, from here)."""
    from visionops.orchestration.label_loop import harvest_labels

    harvest = harvest_labels(
        run_id, labels=labels, require_complete=require_complete, seed=seed, mode=mode
    )
    _echo(harvest.to_dict())
    if harvest.unfinished:
        err_console.print(
            f"[yellow]left out[/] {harvest.unfinished} unfinished tasks", highlight=False
        )
    submission = harvest.submission
    run = f"{submission.run_name} ({submission.url or submission.run_dir})" if submission else ""
    verb = "was submitted before" if harvest.already else "submitted"
    err_console.print(
        f"{harvest.images} labelled images ({harvest.boxes} boxes) in {harvest.root}; "
        f"training {run} {verb}",
        highlight=False,
    )


@label_app.command("studio")
def studio_command(
    port: Annotated[int, typer.Option("--port", help="Port on 127.0.0.1.")] = 8080,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir", help="Its database and uploads (default: <data dir>/label-studio)."
        ),
    ] = None,
) -> None:
    """Run Label Studio on 127.0.0.1 (installed by `make label-studio`) until Ctrl-C or SIGTERM;
    prints its URL, the generated admin, and an API token."""
    import signal

    from visionops.config import get_settings
    from visionops.errors import LabelStudioError
    from visionops.labeling.studio import start_studio

    settings = get_settings()
    folder = data_dir or settings.data_dir / "label-studio"

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    studio = None
    try:
        err_console.print(f"starting Label Studio on 127.0.0.1:{port} (data in {folder})")
        studio = start_studio(settings.label_studio_venv, folder, port)
        typer.echo(
            f"Label Studio: {studio.url}\n"
            f"user:         {studio.admin.email}\n"
            f"password:     {studio.admin.password}\n"
            f"token:        {studio.admin.token}\n"
            f"export VISIONOPS_LABEL_STUDIO_URL={studio.url} "
            f"VISIONOPS_LABEL_STUDIO_TOKEN={studio.admin.token}",
        )
        err_console.print("Ctrl-C stops it")
        code = studio.process.wait()
        raise LabelStudioError(f"Label Studio exited with {code} (log {studio.log_path})")
    except KeyboardInterrupt:
        if studio is not None:
            studio.stop()
        err_console.print("Label Studio stopped")
    finally:
        if studio is not None:
            studio.stop()
        signal.signal(signal.SIGTERM, previous)
