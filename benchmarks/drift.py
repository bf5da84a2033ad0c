"""Drift monitoring speed: feature extraction and the drift check, beside their anchors.

    python benchmarks/drift.py [--images 240] [--rows 1000 10000 100000] [--repeat 3]

1. Image features on 640-pixel synthetic VISION images, in images/s, with 1 and 2 threads, beside
   JPEG decoding of the same images (the floor every consumer pays before features).
2. The drift check (`check_drift`: Evidently ValueDrift per column + DriftedColumnsCount, KS) on
   N reference and N current rows of the 14 image columns, beside Evidently's default
   `DataDriftPreset` and scipy's `ks_2samp` per column (the floor) on the same columns.
Figures are medians of `--repeat` runs; the machine's other load makes them noisy.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd


def _median_seconds(func: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        func()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def bench_features(n_images: int, repeat: int) -> pd.DataFrame:
    import cv2

    from visionops.data.features import image_features
    from visionops.data.synth import synthesize

    with tempfile.TemporaryDirectory() as tmp:
        per_product = max(1, n_images // 4)
        synthesize(Path(tmp) / "v", products=4, n_train=1, n_val=1, n_inference=per_product,
                   imgsz=640, seed=0)  # fmt: skip
        paths = sorted(Path(tmp, "v").glob("*/inference/*.*g"))
        blobs = [p.read_bytes() for p in paths]
    images = [cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR) for b in blobs]
    shapes = {im.shape[:2] for im in images}
    print(f"\n## Features: {len(images)} images, sizes {sorted(shapes)}")

    def decode(threads: int) -> None:
        def one(blob: bytes) -> object:
            return cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_COLOR)

        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(one, blobs))

    def features(threads: int) -> None:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(image_features, images))

    rows = []
    for threads in (1, 2):
        t_feat = _median_seconds(lambda t=threads: features(t), repeat)
        t_dec = _median_seconds(lambda t=threads: decode(t), repeat)
        rows.append(
            {
                "threads": threads,
                "features img/s": round(len(images) / t_feat),
                "JPEG/PNG decode img/s (anchor)": round(len(images) / t_dec),
                "features / decode time": round(t_feat / t_dec, 2),
            }
        )
    table = pd.DataFrame(rows)
    print(table.to_markdown(index=False))
    rows_out = [image_features(im) for im in images]
    return pd.DataFrame.from_records(rows_out)


def bench_check(features: pd.DataFrame, sizes: list[int], repeat: int) -> None:
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset
    from scipy.stats import ks_2samp

    from visionops.data.features import IMAGE_COLUMNS
    from visionops.monitoring.drift import DriftConfig, check_drift

    columns = list(IMAGE_COLUMNS)
    config = DriftConfig.from_settings(min_rows=2)
    rng = np.random.default_rng(0)
    base = features[columns].to_numpy(np.float64)
    spread = base.std(axis=0) * 0.05
    print(f"\n## Drift check: {len(columns)} columns, reference rows = current rows")
    definition = DataDefinition(numerical_columns=columns)
    rows = []
    for n in sizes:

        def sample(n: int = n) -> pd.DataFrame:
            picked = base[rng.integers(0, len(base), n)]
            return pd.DataFrame(picked + rng.normal(0, 1, picked.shape) * spread, columns=columns)

        reference, current = sample(), sample()

        def ours(reference: pd.DataFrame = reference, current: pd.DataFrame = current) -> None:
            check_drift(reference, current, config=config)

        def preset(reference: pd.DataFrame = reference, current: pd.DataFrame = current) -> None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                Report([DataDriftPreset(columns=columns)]).run(
                    Dataset.from_pandas(current, data_definition=definition),
                    Dataset.from_pandas(reference, data_definition=definition),
                )

        def scipy_ks(reference: pd.DataFrame = reference, current: pd.DataFrame = current) -> None:
            for column in columns:
                ks_2samp(reference[column].to_numpy(), current[column].to_numpy())

        ours()  # warm-up: imports and Evidently's registries
        t_ours = _median_seconds(ours, repeat)
        t_preset = _median_seconds(preset, repeat)
        t_ks = _median_seconds(scipy_ks, repeat)
        rows.append(
            {
                "rows": n,
                "check_drift s": round(t_ours, 3),
                "DataDriftPreset s": round(t_preset, 3),
                "scipy KS s (floor)": round(t_ks, 3),
                "preset / ours": round(t_preset / t_ours, 1),
                "ours / KS": round(t_ours / t_ks, 1),
            }
        )
        print(f"  {n} rows done", file=sys.stderr)
    print(pd.DataFrame(rows).to_markdown(index=False))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=240)
    parser.add_argument("--rows", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from visionops.bootstrap import bootstrap

    bootstrap()
    features = bench_features(args.images, args.repeat)
    bench_check(features, args.rows, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
