"""KFP component `convert_dataset`: a VISION dataset (plus extra data) as a YOLO Dataset."""

# No `from __future__ import annotations` here: KFP reads the real annotation objects.

from typing import NamedTuple, Optional

from kfp.dsl import Dataset, Input, Output

from components import visionops_component


@visionops_component
def convert_dataset(
    yolo: Output[Dataset],
    dataset_dir: str = "",
    dataset: Optional[Input[Dataset]] = None,  # noqa: UP045 (KFP needs Optional[...])
    extra: Optional[Input[Dataset]] = None,  # noqa: UP045
    extra_dirs: str = "",
    products: str = "",
    segments: bool = False,
) -> NamedTuple("ConversionOutputs", [("dataset_hash", str), ("num_classes", int)]):  # type: ignore[valid-type]
    """Convert COCO to YOLO; `yolo.path` is the dataset root holding `data.yaml`.

    The main dataset is the `dataset` artifact if given, else the `dataset_dir` path. Extra data in
    the same layout (for example drifted production images) is merged under the same class map:
    the `extra` artifact and/or `extra_dirs` (comma-separated paths). `products`: comma-separated
    names, empty for all. The artifact's metadata holds the dataset hash, class names and counts.
    """
    from collections import namedtuple
    from pathlib import Path

    from visionops.bootstrap import bootstrap

    bootstrap()
    from visionops.data.convert import convert
    from visionops.errors import UsageError

    root = dataset.path if dataset is not None else dataset_dir
    if not root:
        raise UsageError("give the dataset as the `dataset` artifact or the `dataset_dir` path")
    roots = [root]
    if extra is not None:  # `fetch_dataset` lists its sub-folders (none: no extra data)
        roots += [str(Path(extra.path) / r) for r in extra.metadata.get("roots", ["."])]
    roots += [p.strip() for p in extra_dirs.split(",") if p.strip()]
    selected = [p.strip() for p in products.split(",") if p.strip()] or None
    result = convert(roots, yolo.path, products=selected, segments=segments)
    yolo.metadata.update(
        {
            "dataset_hash": result.dataset_hash,
            "names": result.names,
            "num_classes": len(result.names),
            "images": result.images,
            "boxes": result.boxes,
            "data_yaml": "data.yaml",
            "segments": segments,
        }
    )
    print(f"YOLO dataset {result.dataset_hash[:12]}: {result.images} images, {result.boxes} boxes")
    return namedtuple("ConversionOutputs", ["dataset_hash", "num_classes"])(
        result.dataset_hash, len(result.names)
    )
