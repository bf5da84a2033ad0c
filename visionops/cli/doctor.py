"""`visionops doctor`: checks that this machine runs VisionOps as the README promises.

`visionops doctor offline` runs the quick demo on both engines (or any command given after `--`)
with no network route and lists every DNS query and connection attempt it saw, naming the process
and the host (`visionops/offline/`). Needs root. What it runs by default is the hidden
`visionops doctor offline-scenario`: `visionops demo --quick` as a user starts it (data, the
training pipeline with training, the INT8 accuracy guard on both engines, evaluation and
registration, the predictor on ONNX Runtime under traffic, the monitoring pipeline with its drift
checks, Label Studio with the labelling request, the scripted annotator and the harvest, the
re-submitted training run), then the predictor on OpenVINO under the same traffic.
`--small` runs `visionops.small_loop.run_small_loop` instead (what `make test` checks).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from visionops.cli._common import console, err_console
from visionops.cli.pipeline import StepPrinter

doctor_app = typer.Typer(
    help="Check that this machine runs VisionOps as designed.", no_args_is_help=True
)


@doctor_app.command(
    "offline", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
)
def offline(
    ctx: typer.Context,
    work_dir: Annotated[
        Path | None,
        typer.Option(
            "--work-dir", help="Where the trace, queries and data go (default: <data dir>/offline)."
        ),
    ] = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", min=1, help="Stop the command after N seconds.")
    ] = None,
    small: Annotated[
        bool,
        typer.Option(
            "--small",
            help="Instead of the quick demo: one tiny training pipeline run, both engines under "
            "traffic, a drift check (what make test checks).",
        ),
    ] = False,
) -> None:
    """Run the quick demo on both engines (or `-- CMD`) with no network route; needs root."""
    from visionops.config import get_settings
    from visionops.offline.namespace import check_offline, scenario

    work = (work_dir or get_settings().data_dir / "offline").resolve()
    shown = " ".join(ctx.args or scenario(small=small))
    err_console.print(f"offline check: {shown} (trace in {work})", highlight=False)
    report = check_offline(work, ctx.args, small=small, timeout=timeout)
    if report.clean:
        console.print(
            f"offline check: clean: no DNS query and no connection outside loopback from "
            f"{report.processes} processes",
            highlight=False,
        )
    else:
        for line in report.problems():
            err_console.print(f"[bold red]network:[/] {line}", highlight=False, soft_wrap=True)
    if report.exit_code != 0:
        err_console.print(
            f"offline check: the command failed (exit {report.exit_code}; 124: timed out)"
        )
    if not report.clean or report.exit_code != 0:
        raise typer.Exit(1)


@doctor_app.command("offline-scenario", hidden=True)
def offline_scenario(small: Annotated[bool, typer.Option("--small")] = False) -> None:
    """What `visionops doctor offline` runs by default (inside its namespaces)."""
    from visionops.config import get_settings
    from visionops.local_predictor import inference_images, predictor, send_images

    if small:
        _small_loop()
        return

    demo = subprocess.run([sys.executable, "-m", "visionops", "demo", "--quick"], check=False)
    if demo.returncode != 0:
        err_console.print(
            f"offline scenario: visionops demo --quick failed (exit {demo.returncode})"
        )
        raise typer.Exit(demo.returncode)
    settings = get_settings()
    name, root = f"{settings.model_name}-demo", settings.data_dir.resolve() / "demo"
    images = inference_images(root / "vision") + inference_images(root / "drifted")
    with predictor(name, root / "prediction-log-openvino", root, engine="openvino") as url:
        answered = send_images(url, name, images)
    console.print(f"the predictor on OpenVINO answered {answered} of {len(images)} images")
    if answered != len(images):
        raise typer.Exit(1)


def _small_loop() -> None:
    from pipelines import PIPELINES, load_pipeline  # kfp: loaded by this command only
    from visionops.demo import DemoEvents
    from visionops.small_loop import run_small_loop

    with StepPrinter(indent="    ") as printer:
        events = DemoEvents(
            stage=lambda title: console.rule(title),
            step=printer,
            info=lambda text: err_console.print(f"  {text}", highlight=False),
        )
        result = run_small_loop({name: load_pipeline(name) for name in PIPELINES}, events)
    for engine, answered in result.answered.items():
        console.print(f"the predictor on {engine} answered {answered} of {result.sent} images")
    console.print(
        f"trained v{result.version}; drift check: {result.drift_decision} "
        f"(MLflow run {result.drift_mlflow_run})"
    )
    if any(answered != result.sent for answered in result.answered.values()):
        raise typer.Exit(1)
