"""Feature tables for drift tests: a small synthetic VISION set, clean and severely darkened.

Built once per test module from real images through the real simulator and feature code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

PRODUCTS = ("Cable", "PCB_1", "Wood")


@dataclass(frozen=True)
class DriftTables:
    root: Path  # the synthetic VISION root
    reference: Path  # features of the val splits
    clean: Path  # features of the inference splits
    drifted: Path  # features of the inference splits after brightness drift at severity 1
    dark: Path  # those drifted splits: a VISION root like `root`


def build_drift_tables(workdir: Path, n_images: int = 60) -> DriftTables:
    from visionops.data.synth import synthesize
    from visionops.data.tables import write_feature_table
    from visionops.monitoring.reference import folder_feature_table
    from visionops.monitoring.simulate import simulate_split

    root = workdir / "vision"
    synthesize(root, products=list(PRODUCTS), n_train=1, n_val=n_images,
               n_inference=n_images, imgsz=128, seed=0)  # fmt: skip
    tables: dict[str, list[pd.DataFrame]] = {"reference": [], "clean": [], "drifted": []}
    for product in PRODUCTS:
        tables["reference"].append(folder_feature_table(root / product / "val")[0])
        tables["clean"].append(folder_feature_table(root / product / "inference")[0])
        dark = workdir / "dark" / product / "inference"
        simulate_split(root / product / "inference", dark, kind="brightness", severity=1.0)
        tables["drifted"].append(folder_feature_table(dark)[0])
    paths = {}
    for name, frames in tables.items():
        paths[name] = write_feature_table(
            pd.concat(frames, ignore_index=True), workdir / f"{name}.parquet"
        )
    return DriftTables(root, paths["reference"], paths["clean"], paths["drifted"], workdir / "dark")
