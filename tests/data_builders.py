"""Small generated VISION datasets for the data-layer tests, built by the real generator."""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

from visionops.data.synth import synthesize

SMALL = {"n_train": 8, "n_val": 4, "n_inference": 2, "imgsz": 96, "seed": 3}


def small_dataset(where: Path, products: list[str] | int = 2, **overrides: int) -> Path:
    """A tiny synthetic VISION root (2 products, 14 images each by default)."""
    params = {**SMALL, **overrides}
    synthesize(where, products=products, **params)
    return where


def copy_dataset(source: Path, where: Path) -> Path:
    """A private copy to corrupt (the generator's marker file is dropped)."""
    shutil.copytree(source, where)
    (where / ".visionops-synth.json").unlink(missing_ok=True)
    return where


def archive_products(root: Path, where: Path, *, top_folder: bool = True) -> Path:
    """`<Product>.tar.gz` for each product of `root`, as the dataset is published."""
    where.mkdir(parents=True, exist_ok=True)
    for product in sorted(p for p in root.iterdir() if p.is_dir()):
        with tarfile.open(where / f"{product.name}.tar.gz", "w:gz") as tar:
            if top_folder:
                tar.add(product, arcname=product.name)
            else:
                for split in sorted(product.iterdir()):
                    tar.add(split, arcname=split.name)
    return where
