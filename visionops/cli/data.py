"""`visionops data ...`: generate VISION-like data, validate a dataset, convert it to YOLO.

Exit codes: 0 ok, 1 invalid data (validation errors, unreadable input), 2 usage error (an unknown
product, a bad flag).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from visionops.cli._common import ProductsOption, SeedOption, console, progress, split_products

if TYPE_CHECKING:
    from visionops.data.convert import ConversionResult
    from visionops.data.synth import SynthResult
    from visionops.data.validation_report import ValidationReport

data_app = typer.Typer(
    help="VISION data: generate a synthetic dataset, validate one, convert it to YOLO.",
    no_args_is_help=True,
)

DatasetArgument = Annotated[
    Path,
    typer.Argument(
        help="A VISION root: <Product>/ folders or <Product>.tar.gz archives.", show_default=False
    ),
]


def parse_product_count(value: str) -> int | list[str]:
    """`--products 3` (the first three products) or `--products Cable,Screw` (names)."""
    value = value.strip()
    if value.isdigit():
        return int(value)
    return split_products([value]) or []


@data_app.command("synth")
def synth(
    out: Annotated[Path, typer.Option("--out", help="Folder to write the dataset into.")],
    products: Annotated[
        str,
        typer.Option(
            "--products", "-p", help="How many products (the first N of 14), or names: Cable,Screw."
        ),
    ] = "2",
    train: Annotated[int, typer.Option("--train", help="Training images per product.")] = 48,
    val: Annotated[int, typer.Option("--val", help="Validation images per product.")] = 16,
    inference: Annotated[
        int, typer.Option("--inference", help="Unlabeled inference images per product.")
    ] = 16,
    imgsz: Annotated[int, typer.Option("--imgsz", help="Image width in pixels.")] = 320,
    seed: SeedOption = 0,
) -> None:
    """Write a synthetic dataset in the VISION layout (deterministic per seed)."""
    from visionops.data.synth import synthesize  # cv2, numpy: loaded by this command only

    with progress("synthesizing images") as callback:
        result = synthesize(
            out,
            products=parse_product_count(products),
            n_train=train,
            n_val=val,
            n_inference=inference,
            imgsz=imgsz,
            seed=seed,
            progress=callback,
        )
    print_synth(result)


@data_app.command("validate")
def validate_command(
    dataset: DatasetArgument,
    products: ProductsOption = None,
    report: Annotated[
        Path | None, typer.Option("--report", help="Write the full report as JSON here.")
    ] = None,
    markdown: Annotated[
        Path | None, typer.Option("--markdown", help="Write the Markdown summary here.")
    ] = None,
) -> None:
    """Check a dataset (schema, ids, boxes, polygons, image files, leakage); exit 1 on errors."""
    from visionops.data.validate import validate  # cv2, numpy: loaded by this command only

    with progress("reading images") as callback:
        result = validate(dataset, products=split_products(products), progress=callback)
    result.write(json_path=report, markdown_path=markdown)
    print_validation(result)
    if not result.ok:
        raise typer.Exit(1)


@data_app.command("convert")
def convert_command(
    dataset: DatasetArgument,
    out: Annotated[Path, typer.Option("--out", help="Folder for the YOLO dataset.")],
    products: ProductsOption = None,
    segments: Annotated[
        bool,
        typer.Option("--segments", help="Write polygons (YOLO segmentation) instead of boxes."),
    ] = False,
    include: Annotated[
        list[Path] | None,
        typer.Option(
            "--include",
            help="Extra VISION-layout data merged in (repeatable), e.g. drifted images.",
        ),
    ] = None,
) -> None:
    """Convert COCO annotations to a YOLO dataset (images linked, data.yaml, class map, hash)."""
    from visionops.data.convert import convert  # numpy: loaded by this command only

    with progress("converting") as callback:
        result = convert(
            [dataset, *(include or [])],
            out,
            products=split_products(products),
            segments=segments,
            progress=callback,
        )
    print_conversion(result)


def print_synth(result: SynthResult) -> None:
    verb = "kept (same parameters)" if result.reused else "wrote"
    boxes = sum(sum(s.values()) for s in result.annotations.values())
    console.print(
        f"{verb} {result.total_images} images, {boxes} boxes, "
        f"{len(result.products)} products ({', '.join(result.products)}) in {result.root}",
        highlight=False,
        soft_wrap=True,
    )


def print_validation(report: ValidationReport) -> None:
    if report.findings:
        table = Table(box=None)
        for column in ("severity", "check", "file", "count", "ids", "problem"):
            table.add_column(column, overflow="fold")
        for f in report.findings:
            ids = ", ".join(str(i) for i in f.ids) + (", ..." if f.count > len(f.ids) else "")
            color = "red" if f.severity == "error" else "yellow"
            table.add_row(
                f"[{color}]{f.severity}[/]", f.check, f.file, str(f.count), ids, f.message
            )
        console.print(table)
    style = "green" if report.ok else "bold red"
    console.print(f"[{style}]{report.summary()}[/]", highlight=False)


def print_conversion(result: ConversionResult) -> None:
    verb = "unchanged" if result.reused else "wrote"
    console.print(
        f"{verb} YOLO dataset {result.dataset_hash[:12]} at {result.root}: "
        f"train {result.images['train']} images / {result.boxes['train']} boxes, "
        f"val {result.images['val']} images / {result.boxes['val']} boxes, "
        f"{len(result.names)} classes ({result.link_mode})",
        highlight=False,
        soft_wrap=True,
    )
    console.print(f"data.yaml: {result.data_yaml}", highlight=False, soft_wrap=True)
