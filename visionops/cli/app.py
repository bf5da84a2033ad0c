"""The `visionops` application: assembles the per-topic command groups.

Exit codes: 0 success, 1 invalid data or a failed check, 2 usage error. Errors the library raises on
purpose (`visionops.errors`) print one line; set VISIONOPS_DEBUG=1 for the traceback.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from visionops import __version__
from visionops.bootstrap import bootstrap
from visionops.cli._common import console, err_console
from visionops.cli.data import data_app
from visionops.cli.demo import demo
from visionops.cli.doctor import doctor_app
from visionops.cli.drift import drift_app
from visionops.cli.label import label_app
from visionops.cli.model import model_app
from visionops.cli.pipeline import pipeline_app
from visionops.cli.serve import serve
from visionops.cli.train import evaluate_command, train_command
from visionops.config import get_settings
from visionops.errors import ConfigError, VisionOpsError


def _debug_requested() -> bool:
    try:
        return get_settings().debug
    except ConfigError:
        return False


class _ReportingGroup(TyperGroup):
    """Turns `VisionOpsError` into a one-line message and its exit code."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except VisionOpsError as error:
            if _debug_requested():
                raise
            err_console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
            raise typer.Exit(error.exit_code) from error


app = typer.Typer(
    name="visionops",
    cls=_ReportingGroup,
    help="MLOps for industrial visual defect detection: data, training, serving, monitoring.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        console.print(f"visionops {__version__}")
        raise typer.Exit


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at DEBUG level.")] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    """Every command runs offline by construction (see `visionops config`)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    bootstrap()


@app.command("config")
def show_config() -> None:
    """Show the settings in effect (environment variables VISIONOPS_*), secrets masked."""
    rows = get_settings().environment_view()
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        console.print(f"{name:<{width}}  {value}", highlight=False, soft_wrap=True)


app.command("demo")(demo)
app.add_typer(data_app, name="data")
app.add_typer(doctor_app, name="doctor")
app.add_typer(drift_app, name="drift")
app.add_typer(label_app, name="label")
app.command("train")(train_command)
app.command("evaluate")(evaluate_command)
app.add_typer(model_app, name="model")
app.add_typer(pipeline_app, name="pipeline")
app.command("serve", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(
    serve
)


def main() -> None:
    """Console-script entry point."""
    app()
