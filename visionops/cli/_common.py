"""What every CLI module shares: consoles, a rich progress callback, option aliases."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from visionops.config import get_settings
from visionops.progress import ProgressCallback

console = Console()
err_console = Console(stderr=True)

SeedOption = Annotated[int, typer.Option("--seed", help="Random seed; same seed, same result.")]
ProductsOption = Annotated[
    list[str] | None,
    typer.Option(
        "--products",
        "-p",
        help="Products to use (repeat or comma-separate); default: all found.",
    ),
]

NameOption = Annotated[
    str | None,
    typer.Option("--name", help="Registered model (default: VISIONOPS_MODEL_NAME)."),
]


def model_name(name: str | None) -> tuple[str, str]:
    """The registered model a command uses, and where that name came from (said beside it, so a
    user who expected another model sees how to pass it)."""
    if name:
        return name, "--name"
    settings = get_settings()
    if "model_name" in settings.model_fields_set:
        return settings.model_name, "VISIONOPS_MODEL_NAME"
    return settings.model_name, "the default; another with --name NAME"


def split_products(values: list[str] | None) -> list[str] | None:
    """Accept `-p Cable -p Screw` as well as `-p Cable,Screw`."""
    if not values:
        return None
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


@contextmanager
def progress(description: str) -> Iterator[ProgressCallback]:
    """A rich progress bar on stderr, driven by the library's `callback(done, total)`."""
    columns = (
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console, transient=False) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total or None)

        yield update
