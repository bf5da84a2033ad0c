"""`visionops demo`: the whole platform on one machine, on generated data.

Today: generate a VISION-like dataset, validate it, convert it to YOLO, and say where everything
went. Each step is idempotent, so running the demo again changes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from visionops.cli._common import SeedOption, console, progress


def demo(
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Where the demo writes (default: <data dir>/demo)."),
    ] = None,
    products: Annotated[
        int, typer.Option("--products", "-p", min=1, max=14, help="How many products.")
    ] = 2,
    train: Annotated[int, typer.Option("--train", min=1, help="Training images per product.")] = 48,
    imgsz: Annotated[int, typer.Option("--imgsz", help="Image width in pixels.")] = 320,
    seed: SeedOption = 0,
) -> None:
    """Run the platform end to end on generated data: synth -> validate -> convert."""
    from visionops.cli.data import print_conversion, print_synth, print_validation
    from visionops.config import get_settings
    from visionops.data.convert import convert
    from visionops.data.synth import synthesize
    from visionops.data.validate import validate
    from visionops.errors import ValidationFailed

    root = (out or get_settings().data_dir / "demo").expanduser().resolve()
    vision_dir, yolo_dir, reports = root / "vision", root / "yolo", root / "reports"

    console.rule("1/3 synthetic VISION data")
    with progress("synthesizing images") as callback:
        synth = synthesize(
            vision_dir,
            products=products,
            n_train=train,
            n_val=max(4, train // 3),
            n_inference=max(4, train // 3),
            imgsz=imgsz,
            seed=seed,
            progress=callback,
        )
    print_synth(synth)

    console.rule("2/3 validation")
    with progress("reading images") as callback:
        report = validate(vision_dir, progress=callback)
    report.write(json_path=reports / "validation.json", markdown_path=reports / "validation.md")
    print_validation(report)
    if not report.ok:
        raise ValidationFailed(f"generated data failed validation: {report.summary()}", report)

    console.rule("3/3 COCO -> YOLO")
    with progress("converting") as callback:
        conversion = convert(vision_dir, yolo_dir, progress=callback)
    print_conversion(conversion)

    console.rule("where everything went")
    outputs = {
        "VISION-layout dataset": vision_dir,
        "validation report": f"{reports / 'validation.json'} (and validation.md)",
        "YOLO dataset": yolo_dir,
        "Ultralytics data.yaml": conversion.data_yaml,
        "class map": yolo_dir / "class_map.json",
        "dataset hash": conversion.dataset_hash,
    }
    for what, where in outputs.items():
        console.print(f"{what:<23} {where}", highlight=False, soft_wrap=True)
