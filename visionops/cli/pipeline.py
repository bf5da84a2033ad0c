"""`visionops pipeline ...`: run the training and monitoring pipelines locally or on Kubeflow.

visionops pipeline run training --local -p epochs=5 -p products=Cable,Screw
visionops pipeline run monitoring --host http://127.0.0.1:18888 --wait
visionops pipeline compile --out build/pipelines
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from visionops.cli._common import console, err_console
from visionops.config import get_settings
from visionops.errors import UsageError

if TYPE_CHECKING:
    from visionops.orchestration.local import LocalRun

pipeline_app = typer.Typer(
    help="Kubeflow Pipelines: run training or monitoring locally or on a KFP server, compile.",
    no_args_is_help=True,
)

NameArgument = Annotated[str, typer.Argument(help="training or monitoring.", show_default=False)]


class StepPrinter:
    """Prints each step as it starts and ends, and the running step's latest log line."""

    def __init__(self, indent: str = "  ") -> None:
        self.indent = indent
        self.started: dict[str, float] = {}
        self._status = err_console.status("", spinner="dots")
        self._running = ""

    def __enter__(self) -> StepPrinter:
        self._status.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._status.stop()

    def __call__(self, task: str, display: str, event: str) -> None:
        if event == "started":
            self.started[task] = time.monotonic()
            self._running = display
            self._status.update(f"{display}")
        elif event in ("succeeded", "failed"):
            seconds = time.monotonic() - self.started.get(task, time.monotonic())
            mark = "[green]done[/]" if event == "succeeded" else "[bold red]FAILED[/]"
            err_console.print(f"{self.indent}{mark} {display} [dim]({seconds:.0f}s)[/]")
            self._status.update("")
        else:
            line = event.split("]: ", 1)[-1][:110]
            self._status.update(f"{self._running} [dim]{line}[/]")


def run_table(run: LocalRun) -> Table:
    """One row per step: its state and its output parameters."""
    table = Table("step", "state", "outputs", box=None, title=f"{run.pipeline} run {run.run_name}")
    for step in run.steps.values():
        outputs = ", ".join(f"{k}={_short(v)}" for k, v in step.parameters.items())
        colour = {"succeeded": "green", "failed": "red"}.get(step.state, "dim")
        table.add_row(step.display_name, f"[{colour}]{step.state}[/]", outputs)
    return table


def _short(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def print_local_run(run: LocalRun) -> None:
    """The readable summary: steps, reports, where the run lives, the MLflow UI command."""

    console.print(run_table(run))
    for step, path in run.reports():
        console.print(f"  report ({step}): {path}", highlight=False)
    console.print(f"  run folder: {run.run_dir} (log: {run.log_path})", highlight=False)
    console.print(f"  took {run.seconds:.0f}s", highlight=False)
    console.print(f"  MLflow UI: {mlflow_ui_command()}", highlight=False, soft_wrap=True)


LOCAL_UI = "http://127.0.0.1:5000"


def mlflow_ui_command() -> str:
    """How to look at the runs: the runs table (with VisionOps' columns) on the server, or
    `mlflow ui` on the local store and the same page there."""
    # MLflow: loaded once there are runs to look at
    from visionops.tracking import connect, runs_table_url

    settings = get_settings()
    tracking = connect(settings)
    uri = settings.tracking_uri
    if uri.startswith(("http://", "https://")):
        return f"open {runs_table_url(uri, tracking.experiment_id)}"
    mlflow = str(Path(sys.executable).parent / "mlflow")
    with contextlib.suppress(ValueError):
        mlflow = str(Path(mlflow).relative_to(Path.cwd()))
    return (
        f"{mlflow} ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000, then open "
        f"{runs_table_url(LOCAL_UI, tracking.experiment_id)}"
    )


@pipeline_app.command("run")
def run_command(
    name: NameArgument,
    local: Annotated[
        bool, typer.Option("--local", help="Run here with KFP's local runner.")
    ] = False,
    docker: Annotated[
        bool,
        typer.Option(
            "--docker", help="Run here, each step in the pipeline image (KFP's DockerRunner)."
        ),
    ] = False,
    host: Annotated[
        str | None,
        typer.Option("--host", help="Kubeflow Pipelines API, e.g. http://127.0.0.1:18888."),
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="Pipeline parameter KEY=VALUE (repeatable)."),
    ] = None,
    run_name: Annotated[str | None, typer.Option("--run-name", help="Name of the run.")] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="With --host: follow the run to its end.")
    ] = False,
    timeout: Annotated[
        int, typer.Option("--timeout", min=1, help="With --wait: give up after this many s.")
    ] = 7200,
) -> None:
    """Run a pipeline: --local here (a summary at the end), or --host on a KFP server."""
    if sum((local, docker, host is not None)) != 1:
        raise UsageError("choose where to run: --local, --docker or --host URL")
    if wait and host is None:
        raise UsageError("--wait follows a run on a KFP server: use it with --host")
    from pipelines import load_pipeline  # kfp, and every component: only once a run is asked

    items = list(param or [])
    pipeline = load_pipeline(name)
    if local or docker:
        # KFP's local runner (and for --docker the Docker SDK): this command only
        if docker:
            from visionops.orchestration.docker import run_in_containers as run_here
        else:
            from visionops.orchestration.local import run_local as run_here

        console.rule(f"pipeline {name} ({'steps in containers' if docker else 'local'})")
        with StepPrinter() as printer:
            run = run_here(name, pipeline, items, run_name=run_name, on_step=printer)
        print_local_run(run)
        return
    from visionops.orchestration.remote import run_remote  # the KFP client: this command only

    with err_console.status(f"submitting {name} to {host}"):
        remote = run_remote(
            name, pipeline, items, host=host, run_name=run_name,
            wait_seconds=timeout if wait else None,
        )  # fmt: skip
    console.print(f"run {remote.run_name} ({remote.run_id}): {remote.state}", highlight=False)
    console.print(f"  {remote.url}", highlight=False)


@pipeline_app.command("compile")
def compile_command(
    out: Annotated[Path, typer.Option("--out", help="Folder for <pipeline>.yaml files.")],
) -> None:
    """Compile both pipelines to YAML for a Kubeflow Pipelines server."""
    from pipelines import PIPELINES, load_pipeline  # kfp: loaded by this command only
    from visionops.orchestration.compile import compile_all

    for path in compile_all({name: load_pipeline(name) for name in PIPELINES}, out):
        console.print(f"wrote {path}", highlight=False)
