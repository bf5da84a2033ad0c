"""Picking a batch to label from a window of the prediction log: wall time and peak memory.

    python benchmarks/label_select.py --workdir DIR [--rows 100000] [--budget 500]

A window of `--rows` predictions over one day is written once (kept in `--workdir/log-<rows>` and
reused) by the predictor's own `PredictionLogWriter` (500 records per file), each record naming
its kept image: a distinct 16x16 PNG that the writer's image retention (`all`) stores at its key.
Feature rows and detections are `monitoring_scale`'s (0-4 random boxes, their columns computed as
the writer does; image columns drawn around a random pool, the feature computation replaced as
there).
Then, each in its own child process (wall time; peak RSS from `/usr/bin/time -f %M`):

- anchor: `visionops drift collect` of the window, the log reader alone (select reads through it);
- ours: `visionops label select --budget N` of the same window, which also scores every record,
  keeps its bounded pool, picks and fetches the batch.

Ratios (select / collect) are from this one run.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from monitoring_scale import _Rows, block_records, log_writer, run_child

DAY = datetime(2026, 3, 2, tzinfo=UTC)
log = logging.getLogger("label_select")


def write_log(target: Path, rows: int, seed: int = 0) -> Path:
    """A day of `rows` predictions with kept images, through the real writer (once; then reused)."""
    import cv2

    from visionops.data.features import IMAGE_COLUMNS
    from visionops.monitoring.image_retention import ImagePolicy

    done = target / ".complete"
    if done.is_file():
        return target
    if target.exists():
        shutil.rmtree(target)
    rng = np.random.default_rng(seed)
    pool = rng.uniform(1.0, 200.0, (1000, len(IMAGE_COLUMNS)))
    source = _Rows(pool, list(IMAGE_COLUMNS), seed)
    image = np.zeros((8, 8, 3), np.uint8)
    step = timedelta(seconds=86_400 / rows)
    started = time.perf_counter()
    with log_writer(target, images=ImagePolicy.parse("all")) as (writer, rows_for):
        done_rows = 0
        while done_rows < rows:
            for detections, row in block_records(source.block(min(20_000, rows - done_rows))):
                rows_for[id(detections)] = row
                pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
                data = cv2.imencode(".png", pixels)[1].tobytes()
                while writer.queued > 20_000:
                    time.sleep(0.005)
                writer.submit(image, detections, request_id=f"{seed}-{done_rows}",
                              timestamp=DAY + done_rows * step, encoded=data)  # fmt: skip
                done_rows += 1
        writer.close(timeout=600)
    lost = sum(writer.images_lost.values())
    if writer.written != rows or lost:
        raise RuntimeError(f"the writer wrote {writer.written} of {rows} rows, lost {lost} images")
    done.write_text(f"{rows}\n")
    log.info("%s: %d rows in %.0fs", target.name, rows, time.perf_counter() - started)
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--budget", type=int, default=500)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.workdir.mkdir(parents=True, exist_ok=True)
    log_dir = write_log(args.workdir / f"log-{args.rows}", args.rows)
    window = ["--log", str(log_dir), "--start", DAY.isoformat(),
              "--end", (DAY + timedelta(days=1)).isoformat()]  # fmt: skip
    out = args.workdir / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    visionops = [sys.executable, "-m", "visionops"]
    anchor = run_child([*visionops, "drift", "collect", *window, "--out", str(out / "w.parquet")])
    ours = run_child([*visionops, "label", "select", *window, "--budget", str(args.budget),
                      "--out", str(out / "batch")])  # fmt: skip
    summary = json.loads(ours[2])
    record = {
        "rows": args.rows,
        "budget": args.budget,
        "selected": summary["selected"],
        "candidates": summary["candidates"],
        "collect_s": round(anchor[0], 1),
        "collect_peak_mib": round(anchor[1]),
        "select_s": round(ours[0], 1),
        "select_peak_mib": round(ours[1]),
        "time_ratio": round(ours[0] / anchor[0], 2),
        "memory_ratio": round(ours[1] / anchor[1], 2),
    }
    print(json.dumps(record, indent=2))
    print(
        f"| {args.rows:,} | {args.budget} | {anchor[0]:.1f} s, {anchor[1]:.0f} MiB | "
        f"{ours[0]:.1f} s, {ours[1]:.0f} MiB | {ours[0] / anchor[0]:.2f}x, "
        f"{ours[1] / anchor[1]:.2f}x |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
