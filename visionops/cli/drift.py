"""`visionops drift ...`: simulate drift, build feature tables, collect and compact the prediction
log, delete its expired images, check a window for drift.

`check` prints its result as JSON on stdout (the decision is machine-readable there, and in
`drift.json` with --report-dir) and exits 0 whatever the decision; 1 means the inputs could not be
compared, 2 a wrong flag.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from visionops.cli._common import (
    NameOption,
    SeedOption,
    console,
    err_console,
    model_name,
    progress,
)
from visionops.config import get_settings
from visionops.data.tables import FeatureTableReader, write_feature_table
from visionops.errors import UsageError

drift_app = typer.Typer(
    help="Drift monitoring: simulate drift, build feature tables, check a window.",
    no_args_is_help=True,
)

_KINDS_HELP = (
    "brightness, contrast, noise, blur, jpeg, occlusion, rotation, color-shift or mixed "
    "(strengths: README 'Monitoring')"
)


@drift_app.command("simulate")
def simulate(
    src: Annotated[Path, typer.Option("--src", help="A split folder (images + COCO file).")],
    out: Annotated[Path, typer.Option("--out", help="Where the drifted split is written.")],
    kind: Annotated[str, typer.Option("--kind", help=_KINDS_HELP)],
    severity: Annotated[
        float, typer.Option("--severity", min=0.0, max=1.0, help="0 (none) .. 1 (strongest).")
    ],
    fraction: Annotated[
        float, typer.Option("--fraction", min=0.0, max=1.0, help="Share of images drifted.")
    ] = 1.0,
    seed: SeedOption = 0,
) -> None:
    """Write a drifted copy of a split, its COCO annotations carried over (and transformed)."""
    # cv2, numpy: loaded by this command only
    from visionops.monitoring.simulate import simulate_split

    with progress(f"drift {kind} {severity:g}") as callback:
        result = simulate_split(
            src, out, kind=kind, severity=severity, fraction=fraction, seed=seed,
            progress=callback,
        )  # fmt: skip
    console.print(
        f"wrote {result.images} images ({result.drifted} drifted: "
        f"{', '.join(f'{k} {n}' for k, n in sorted(result.kinds.items())) or 'none'}), "
        f"{result.annotations} annotations ({result.annotations_dropped} dropped) "
        f"to {result.out_dir}",
        highlight=False,
    )
    for file_name, reason in result.skipped:
        err_console.print(f"[yellow]skipped[/] {file_name}: {reason}", highlight=False)


@drift_app.command("features")
def features(
    src: Annotated[Path, typer.Option("--src", help="A folder of images (searched recursively).")],
    out: Annotated[Path, typer.Option("--out", help="Feature table: .parquet, .csv or .jsonl.")],
) -> None:
    """Compute the image feature table of a folder (a reference or a current window)."""
    # cv2, numpy: loaded by this command only
    from visionops.monitoring.reference import folder_feature_table

    with progress("image features") as callback:
        table, failures = folder_feature_table(src, progress=callback)
    write_feature_table(table, out)
    console.print(f"wrote {len(table)} rows to {out}", highlight=False)
    for path, reason in failures:
        err_console.print(f"[yellow]skipped[/] {path}: {reason}", highlight=False)


LogOption = Annotated[
    str,
    typer.Option(
        "--log",
        help="The prediction log: a folder or s3://bucket/prefix "
        "(default: the configured log, VISIONOPS_LOG_PREFIX).",
    ),
]
StartOption = Annotated[
    str | None, typer.Option("--start", help="Window start, ISO 8601 (UTC if no offset).")
]
EndOption = Annotated[str | None, typer.Option("--end", help="Window end (default: now).")]
HoursOption = Annotated[
    float, typer.Option("--hours", min=0.0, help="Window length when --start is not given.")
]


@drift_app.command("collect")
def collect(
    out: Annotated[Path, typer.Option("--out", help="The window's table (.parquet).")],
    log: LogOption = "",
    start: StartOption = None,
    end: EndOption = None,
    hours: HoursOption = 24.0,
) -> None:
    """Stream a time window [start, end) of the prediction log into a Parquet feature table."""
    # DuckDB and pyarrow: loaded by this command only
    from visionops.monitoring.collect import collect_window

    if out.suffix.lower() not in (".parquet", ".pq"):
        raise UsageError(f"--out must be a .parquet file, got {out.name}")
    with progress("collect") as callback:
        summary = collect_window(log, out, start=start, end=end, hours=hours, progress=callback)
    typer.echo(json.dumps(summary.to_dict(), indent=2))
    for line in summary.problems():
        err_console.print(f"[yellow]warning[/]: {line}", highlight=False)
    for line in summary.notes():
        err_console.print(line, highlight=False)
    err_console.print(f"collected {summary.rows} rows to {out}", highlight=False)


@drift_app.command("compact")
def compact(
    log: LogOption = "",
    start: StartOption = None,
    end: EndOption = None,
    hours: HoursOption = 24.0,
) -> None:
    """Compact the closed hours of a window of the prediction log into Parquet parts."""
    # DuckDB and pyarrow: loaded by this command only
    from visionops.monitoring.compact import compact_window

    with progress("compact") as callback:
        summary = compact_window(log, start=start, end=end, hours=hours, progress=callback)
    typer.echo(json.dumps(summary.to_dict(), indent=2))
    for line in summary.problems():
        err_console.print(f"[yellow]warning[/]: {line}", highlight=False)
    parts = sum(1 for h in summary.hours if h.part)
    err_console.print(f"compacted {summary.rows} rows into {parts} parts", highlight=False)


@drift_app.command("prune-images")
def prune_images(
    log: LogOption = "",
    days: Annotated[
        int | None,
        typer.Option(
            "--days",
            min=0,
            help="Keep this many days of kept request images (default "
            "VISIONOPS_LOG_IMAGES_RETENTION_DAYS; 0: forever).",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only say which days would be deleted.")
    ] = False,
) -> None:
    """Delete the prediction log's kept images of the days past the retention period."""
    from visionops.monitoring.image_retention import prune_images as prune
    from visionops.monitoring.log_layout import open_log

    retention = get_settings().log_images_retention_days if days is None else days
    summary = prune(open_log(log), retention, dry_run=dry_run)
    typer.echo(json.dumps(summary.to_dict(), indent=2))
    verb = "would delete" if dry_run else "deleted"
    err_console.print(
        f"{verb} {summary.objects_deleted} images of {len(summary.days_deleted)} days before "
        f"{summary.cutoff}; kept {len(summary.days_kept)} days",
        highlight=False,
    )


@drift_app.command("check")
def check(
    reference: Annotated[
        str,
        typer.Option(
            "--reference",
            help="Reference feature table (.parquet/.csv/.jsonl), or `champion` / "
            "models:/NAME@ALIAS for a registered version's evaluation features.",
        ),
    ],
    current: Annotated[Path, typer.Option("--current", help="Current window's feature table.")],
    report_dir: Annotated[
        Path | None,
        typer.Option("--report-dir", help="Write drift_report.html and drift.json here."),
    ] = None,
    drift_share: Annotated[
        float | None,
        typer.Option("--drift-share", min=0.0, max=1.0, help="Override VISIONOPS_DRIFT_SHARE."),
    ] = None,
    min_rows: Annotated[
        int | None,
        typer.Option("--min-rows", min=2, help="Override VISIONOPS_DRIFT_MIN_ROWS."),
    ] = None,
    mlflow: Annotated[
        bool, typer.Option("--mlflow", help="Also record the check (report, scores) in MLflow.")
    ] = False,
    pushgateway: Annotated[
        str | None,
        typer.Option(
            "--pushgateway",
            help="Push the drift gauges to this Prometheus Pushgateway "
            "(default: VISIONOPS_PUSHGATEWAY_URL, unset: no push).",
        ),
    ] = None,
    name: NameOption = None,
    reference_images: Annotated[
        Path | None,
        typer.Option(
            "--reference-images",
            exists=True,
            file_okay=False,
            help="Images of the reference: thumbnails on the drift page (default: those its "
            "evaluation kept, for a registered reference).",
        ),
    ] = None,
    current_images: Annotated[
        Path | None,
        typer.Option(
            "--current-images",
            exists=True,
            file_okay=False,
            help="Images of the window: thumbnails on the drift page (default: those the "
            "predictor kept, read from --log).",
        ),
    ] = None,
    log: LogOption = "",
) -> None:
    """Decide drift / no drift / not enough data; the result is JSON on stdout (exit 0)."""
    # cv2, numpy, and MLflow or Evidently when used: loaded by this command only
    from visionops.monitoring.drift import DriftConfig
    from visionops.monitoring.log_layout import open_log
    from visionops.monitoring.publish import CheckContext, check_and_publish
    from visionops.monitoring.reference import is_registry_reference, resolve_reference_source

    config = DriftConfig.from_settings(drift_share=drift_share, min_rows=min_rows)
    model, origin = model_name(name)
    if is_registry_reference(reference):
        err_console.print(
            f"reference: {reference} of model {model} ({origin})"
            if not reference.startswith("models:/")
            else f"reference: {reference}",
            highlight=False,
            soft_wrap=True,
        )
    source = resolve_reference_source(reference, name=model)
    if source.version:
        err_console.print(f"reference version: {source.describe()}", highlight=False)
    check = check_and_publish(
        FeatureTableReader(source.path), FeatureTableReader(current), config=config,
        report_dir=report_dir, log_to_mlflow=mlflow,
        pushgateway=pushgateway or get_settings().pushgateway_url,
        model_name=source.model_name or model, context=CheckContext(
            reference=source,
            reference_images=(reference_images,) if reference_images else (),
            current_images=(current_images,) if current_images else (),
            log=None if current_images else open_log(log),
        ),
    )  # fmt: skip
    result = check.result
    payload = result.to_dict()
    if check.mlflow_run_id:
        payload["mlflow_run_id"] = check.mlflow_run_id
    typer.echo(json.dumps(payload, indent=2))
    colour = {"drift": "red", "no_drift": "green"}.get(result.decision, "yellow")
    err_console.print(f"[bold {colour}]{result.decision}[/]: {result.reason}", highlight=False)
    if result.report_html:
        err_console.print(f"report: {result.report_html}", highlight=False)
    if check.push_error is not None:
        raise check.push_error
    if check.pushed_to:
        err_console.print(f"pushed to {check.pushed_to}", highlight=False)
