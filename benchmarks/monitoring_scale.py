"""Monitoring at production scale: collect, compact and check a day of the prediction log.

    python benchmarks/monitoring_scale.py --workdir /big/disk/dir [--rows 100000 1000000 10000000]

For each size, a 24-hour log is written once (kept in `--workdir/log-<rows>` and reused) by the
predictor's own `PredictionLogWriter` (its queue, thread, JSON encoding, hourly partitions and file
names; 500 records per file): every row's image features are a real feature row of a synthetic
VISION image with 5% jitter, its detections random (0-4 boxes) and their columns computed by the
real `prediction_features`, so no two rows are equal; larger logs (above `--writer-max`) are the
largest written one expanded by DuckDB (`expand_log`). Then, each step in its own child process
(wall time, CPU time of all its threads, and peak RSS, from the kernel's rusage of that child):

- collect: `visionops drift collect` of the day (ours), beside the code VisionOps had before
  (`read_window`: a dict per row, then pandas) and the floor, DuckDB `read_json` -> Parquet with
  the same projection and window filter on the same files;
- compact: `visionops drift compact` of the day (on a hard-linked copy, so the raw log stays);
- collect of the compacted day, beside DuckDB reading the parts' collected columns into one
  Parquet file;
- check: `visionops drift check` of the collected day against a reference of 1,008 rows (the
  decision alone, which does not import Evidently), and check + report (`--report-dir`:
  Evidently's report too), beside the check VisionOps had before (every row into pandas and
  Evidently; `git show` of `BASELINE_COMMIT`).

`--only STEP...` times some steps again, reusing the outputs of the others (the window, the
compacted copy of the log), and keeps the other figures of `monitoring_scale.json`.

The code paths of before are skipped above `--baseline-max` rows (they hold the day in memory:
about 2 GB per million rows to collect and 4.6 GB to check). Ratios are from this one run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from visionops.detections import Detections

BASELINE_COMMIT = "3e72c51"  # the reading and checking code before issue 14
DAY = datetime(2026, 3, 2, tzinfo=UTC)
RECORDS_PER_FILE = 500
NAMES = ("Cable/break", "Cable/thunderbolt", "PCB_1/missing", "Screw/defect")
log = logging.getLogger("monitoring_scale")


# ---------------------------------------------------------------- the log


def _feature_pool(workdir: Path) -> tuple[np.ndarray, list[str], Path]:
    """Image feature rows of synthetic production images, and a reference table of others."""
    import pandas as pd

    from visionops.data.features import IMAGE_COLUMNS
    from visionops.data.synth import synthesize
    from visionops.data.tables import write_feature_table
    from visionops.monitoring.reference import folder_feature_table

    reference = workdir / "reference.parquet"
    pool_file = workdir / "pool.parquet"
    if not (reference.is_file() and pool_file.is_file()):
        root = workdir / "vision"
        synthesize(root, products=14, n_train=1, n_val=72, n_inference=40, imgsz=320, seed=0)
        frames = {"val": [], "inference": []}
        for split, parts in frames.items():
            for product in sorted(p for p in root.iterdir() if (p / split).is_dir()):
                parts.append(folder_feature_table(product / split)[0])
        write_feature_table(pd.concat(frames["val"], ignore_index=True), reference)
        write_feature_table(pd.concat(frames["inference"], ignore_index=True), pool_file)
        shutil.rmtree(root)
    pool = pd.read_parquet(pool_file)[list(IMAGE_COLUMNS)]
    return pool.to_numpy(np.float64), list(IMAGE_COLUMNS), reference


class _Rows:
    """Varied log rows, made a block at a time with numpy: image features of a pool row with 5%
    jitter, 0-4 random detections, and the prediction columns `prediction_features` computes."""

    def __init__(self, pool: np.ndarray, columns: list[str], seed: int) -> None:
        self.pool, self.columns = pool, columns
        self.spread = pool.std(axis=0) * 0.05
        self.rng = np.random.default_rng(seed)

    def block(self, n: int) -> dict[str, np.ndarray]:
        from visionops.data.features import PREDICTION_COLUMNS

        rng = self.rng
        picks = self.pool[rng.integers(0, len(self.pool), n)]
        picks = picks + rng.normal(0.0, 1.0, picks.shape) * self.spread
        counts = rng.integers(0, 5, n)
        total = int(counts.sum())
        xy = rng.uniform(0, 240, (total, 2))
        boxes = np.round(np.hstack([xy, xy + rng.uniform(8, 80, (total, 2))]), 2)
        scores = np.round(rng.uniform(0.25, 0.99, total), 5)
        classes = rng.integers(0, len(NAMES), total)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / (320 * 320)
        aspect = (boxes[:, 2] - boxes[:, 0]) / (boxes[:, 3] - boxes[:, 1])
        has = counts > 0
        at = np.minimum(starts, max(total - 1, 0))

        def reduce(func, values, empty=0.0):  # type: ignore[no-untyped-def]
            out = np.full(n, empty)
            if total:
                out[has] = func.reduceat(values, at)[has]
            return out

        pred = {
            "det_count": counts.astype(float),
            "conf_mean": reduce(np.add, scores) / np.maximum(counts, 1),
            "conf_min": reduce(np.minimum, scores),
            "conf_max": reduce(np.maximum, scores),
            "box_area_mean": reduce(np.add, area) / np.maximum(counts, 1),
            "box_area_min": reduce(np.minimum, area),
            "box_area_max": reduce(np.maximum, area),
            "box_aspect_mean": reduce(np.add, aspect) / np.maximum(counts, 1),
            "class_entropy": np.where(counts > 1, rng.uniform(0, 1, n), 0.0),
            "top_class": np.where(has, classes[at], -1).astype(float),
        }
        assert set(pred) == set(PREDICTION_COLUMNS)
        return {
            **dict(zip(self.columns, picks.T, strict=True)),
            **pred,
            "_counts": counts,
            "_boxes": boxes,
            "_scores": scores,
            "_classes": classes,
        }


def block_records(block: dict[str, np.ndarray]) -> Iterator[tuple[Detections, dict[str, float]]]:
    """Each row of a `_Rows.block` as the writer gets it: its detections and its feature row."""
    from visionops.data.features import FEATURE_COLUMNS
    from visionops.detections import Detections

    ends = np.cumsum(block["_counts"])
    features = np.column_stack([block[c] for c in FEATURE_COLUMNS])
    for i, end in enumerate(ends):
        begin = end - block["_counts"][i]
        detections = Detections(
            block["_boxes"][begin:end].astype(np.float32),
            block["_scores"][begin:end].astype(np.float32),
            block["_classes"][begin:end],
        )
        yield detections, dict(zip(FEATURE_COLUMNS, features[i].tolist(), strict=True))


@contextmanager
def log_writer(target: Path, **options: Any) -> Iterator[tuple[Any, dict[int, dict[str, float]]]]:
    """The predictor's `PredictionLogWriter` into the folder `target`, and the feature rows it
    will log, keyed by `id(detections)`: computing them from pixels is the writer's only expensive
    step, so it takes each submitted detections' row from that dict instead."""
    from visionops.monitoring import prediction_log
    from visionops.storage import LocalStore

    rows_for: dict[int, dict[str, float]] = {}

    def pooled_row(image: np.ndarray, detections: Detections | None, num_classes: int):  # type: ignore[no-untyped-def]
        return rows_for.pop(id(detections))

    real_row = prediction_log.feature_row
    prediction_log.feature_row = pooled_row
    try:
        yield prediction_log.PredictionLogWriter(
            LocalStore(target), names=NAMES, model_name="visionops-yolov8n", model_version="3",
            max_queue=50_000, max_queue_bytes=1 << 30, batch_size=RECORDS_PER_FILE,
            flush_every_s=3600.0, **options,
        ), rows_for  # fmt: skip
    finally:
        prediction_log.feature_row = real_row


def write_log(target: Path, rows: int, workdir: Path, seed: int = 0) -> Path:
    """A day of `rows` predictions through the real PredictionLogWriter (once; then reused)."""
    done = target / ".complete"
    if done.is_file():
        return target
    if target.exists():
        shutil.rmtree(target)
    pool, columns, _ = _feature_pool(workdir)
    source = _Rows(pool, columns, seed)
    pending: list[tuple[Detections, dict[str, float]]] = []
    image = np.zeros((8, 8, 3), np.uint8)
    step = timedelta(seconds=86_400 / rows)
    started = time.perf_counter()
    with log_writer(target) as (writer, rows_for):
        for i in range(rows):
            if not pending:
                pending = list(block_records(source.block(20_000)))[::-1]
            detections, row = pending.pop()
            rows_for[id(detections)] = row
            while writer.queued > 20_000:
                time.sleep(0.005)
            writer.submit(image, detections, request_id=f"{seed}-{i}", timestamp=DAY + i * step)
            if i and i % 250_000 == 0:
                log.info(
                    "%s: %d rows queued in %.0fs", target.name, i, time.perf_counter() - started
                )
        writer.close(timeout=600)
    if writer.written != rows:
        raise RuntimeError(
            f"the writer wrote {writer.written} of {rows} rows ({writer.dropped} dropped)"
        )
    done.write_text(f"{rows}\n")
    size = sum(p.stat().st_size for p in target.rglob("*.jsonl"))
    log.info(
        "%s: %d rows, %.2f GB in %.0fs",
        target.name,
        rows,
        size / 1e9,
        time.perf_counter() - started,
    )
    return target


def expand_log(source: Path, target: Path, factor: int) -> Path:
    """A day `factor` times as dense as `source` (a log the writer wrote), in the same format:
    each row repeated `factor` times with its image features jittered by up to 2%, its own
    request id and a time of its own in the day, 500 records per file. DuckDB writes it: the
    writer's own path would take hours of this machine for 10M rows."""
    from visionops.data.features import IMAGE_COLUMNS, PREDICTION_COLUMNS
    from visionops.monitoring.log_files import DETECTIONS_TYPE, connect_duckdb

    done = target / ".complete"
    if done.is_file():
        return target
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    started = time.perf_counter()
    columns = {
        "timestamp": "TIMESTAMPTZ",
        "request_id": "VARCHAR",
        "model_name": "VARCHAR",
        "model_version": "VARCHAR",
        **dict.fromkeys(IMAGE_COLUMNS, "DOUBLE"),
        **dict.fromkeys(PREDICTION_COLUMNS, "DOUBLE"),
        "detections": DETECTIONS_TYPE,
    }
    spec = "{" + ", ".join(f"'{k}': '{v}'" for k, v in columns.items()) + "}"
    rows = int((source / ".complete").read_text())
    step_us = 86_400_000_000 // (rows * factor)
    jitter = ", ".join(f"{c} * (0.99 + 0.02 * random()) AS {c}" for c in IMAGE_COLUMNS)
    moment = f"timestamp + to_microseconds(k * {step_us})"
    con = connect_duckdb()
    con.execute("SET memory_limit = '2GB'")
    con.execute(f"SET temp_directory = '{target}.tmp'")  # not the working directory
    for hour in sorted(source.glob("dt=*/hour=*")):  # an hour at a time: held in memory, not
        # spilled (a day at once spilled 11 GB); a row moved past its hour goes to the next
        con.execute(f"""
            COPY (
                SELECT strftime({moment}, '%Y-%m-%dT%H:%M:%S.%f+00:00') AS timestamp,
                       request_id || '-' || k AS request_id, model_name, model_version, {jitter},
                       {", ".join(PREDICTION_COLUMNS)}, detections,
                       strftime({moment}, '%Y-%m-%d') AS dt, strftime({moment}, '%H') AS hour
                FROM read_json('{hour}/*.jsonl', format = 'newline_delimited', columns = {spec}),
                     range({factor}) AS r(k)
            ) TO '{target}' (FORMAT json, PARTITION_BY (dt, hour), FILE_EXTENSION 'jsonl',
                FILE_SIZE_BYTES '560KB', FILENAME_PATTERN 'part-{{uuid}}', OVERWRITE_OR_IGNORE)
        """)
        log.info("%s: %s expanded", target.name, hour.relative_to(source))
    con.close()
    shutil.rmtree(f"{target}.tmp", ignore_errors=True)
    done.write_text(f"{rows * factor}\n")
    size = sum(p.stat().st_size for p in target.rglob("*.jsonl"))
    log.info(
        "%s: %d rows, %.2f GB in %.0fs",
        target.name,
        rows * factor,
        size / 1e9,
        time.perf_counter() - started,
    )
    return target


# ---------------------------------------------------------------- the steps, each in a child


def _window() -> tuple[datetime, datetime]:
    return DAY, DAY + timedelta(days=1)


def baseline_collect(log_dir: Path, out: Path) -> int:
    """What VisionOps did before: every line through json.loads into a list of dicts, then one
    pandas DataFrame of the window, written as Parquet (commit BASELINE_COMMIT's read_window and
    the collect component)."""
    import pandas as pd

    start, end = _window()
    rows = []
    for path in sorted(log_dir.glob("dt=*/hour=*/*.jsonl")):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                moment = datetime.fromisoformat(record["timestamp"])
            except (ValueError, KeyError, TypeError):
                continue
            if start <= moment < end:
                record.pop("detections", None)
                rows.append(record)
    frame = pd.DataFrame.from_records(rows)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True, format="ISO8601")
    frame = frame.sort_values("timestamp", kind="stable").reset_index(drop=True)
    frame.to_parquet(out, index=False)
    return len(frame)


def floor_collect(log_dir: Path, out: Path) -> int:
    """DuckDB alone: read_json of the same files with the same projection and window filter,
    COPY to Parquet, default settings (all cores, its own memory limit)."""
    import duckdb

    from visionops.monitoring.log_files import json_columns, read_json_sql
    from visionops.monitoring.log_layout import COLLECTED_COLUMNS

    start, end = _window()
    files = sorted(log_dir.glob("dt=*/hour=*/*.jsonl"))
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    source = read_json_sql(files, json_columns(COLLECTED_COLUMNS))
    con.execute(
        f"COPY (SELECT * FROM {source} WHERE timestamp >= '{start.isoformat()}' AND "
        f"timestamp < '{end.isoformat()}') TO '{out}' (FORMAT parquet)"
    )
    return int(con.sql(f"SELECT count(*) FROM read_parquet('{out}')").fetchall()[0][0])


def floor_compact(log_dir: Path, out: Path) -> int:
    """DuckDB alone: every column of the same files (detections typed) into one Parquet file."""
    import duckdb

    from visionops.monitoring.log_files import json_columns, read_json_sql
    from visionops.monitoring.log_layout import COLLECTED_COLUMNS

    files = sorted(log_dir.glob("dt=*/hour=*/*.jsonl"))
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    source = read_json_sql(files, json_columns([*COLLECTED_COLUMNS, "detections"]))
    con.execute(f"COPY (SELECT * FROM {source}) TO '{out}' (FORMAT parquet)")
    return int(con.sql(f"SELECT count(*) FROM read_parquet('{out}')").fetchall()[0][0])


def floor_read_parts(log_dir: Path, out: Path) -> int:
    """DuckDB alone: the collected columns of the compacted parts into one Parquet file."""
    import duckdb

    from visionops.monitoring.log_layout import COLLECTED_COLUMNS

    con = duckdb.connect()
    con.execute(
        f"COPY (SELECT {', '.join(COLLECTED_COLUMNS)} FROM "
        f"read_parquet('{log_dir}/*/*/compacted-*.parquet')) TO '{out}' (FORMAT parquet)"
    )
    return int(con.sql(f"SELECT count(*) FROM read_parquet('{out}')").fetchall()[0][0])


def baseline_check(reference: Path, current: Path, report_dir: Path) -> int:
    """The check VisionOps had before (`git show BASELINE_COMMIT:visionops/monitoring/drift.py`):
    both tables whole in pandas, Evidently on every row."""
    import importlib.util

    import pandas as pd

    source = subprocess.run(
        ["git", "show", f"{BASELINE_COMMIT}:visionops/monitoring/drift.py"],
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    ).stdout
    path = report_dir.parent / "baseline_drift.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("baseline_drift", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["baseline_drift"] = module
    spec.loader.exec_module(module)
    result = module.check_drift(
        pd.read_parquet(reference), pd.read_parquet(current), report_dir=report_dir
    )
    print(json.dumps({"decision": result.decision}))
    return int(result.current_rows)


STEPS = {
    "baseline-collect": baseline_collect,
    "floor-collect": floor_collect,
    "floor-compact": floor_compact,
    "floor-read-parts": floor_read_parts,
}


def run_child(command: list[str], timeout: float = 3600) -> tuple[float, float, float, str]:
    """(wall seconds, CPU seconds, peak RSS in MiB, output) of a child process, the CPU time
    (user + system, all threads) and the peak from `/usr/bin/time` (the kernel's rusage of the
    child). On a loaded machine the CPU time moves far less than the wall time."""
    started = time.perf_counter()
    done = subprocess.run(
        ["/usr/bin/time", "-f", "PEAK_RSS_KB %M CPU_S %U %S", *command],
        text=True,
        capture_output=True,
        timeout=timeout,
    )
    seconds = time.perf_counter() - started
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{output[-3000:]}")
    usage = [line for line in done.stderr.splitlines() if line.startswith("PEAK_RSS_KB ")][-1]
    _, peak, _, user, system = usage.split()
    return seconds, float(user) + float(system), int(peak) / 1024, done.stdout


# ---------------------------------------------------------------- main


def _visionops(*args: str) -> list[str]:
    return [sys.executable, "-m", "visionops", *args]


def _self(step: str, *args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--step", step, *args]


def bench_size(rows: int, args: argparse.Namespace, reference: Path) -> list[dict]:
    """Every step at one size; returns one record per step."""
    work = args.workdir
    if rows <= args.writer_max:
        log_dir = write_log(work / f"log-{rows}", rows, work)
    else:
        base = max([r for r in args.rows if r <= args.writer_max] or [args.writer_max])
        source = write_log(work / f"log-{base}", base, work)
        log_dir = expand_log(source, work / f"log-{rows}", rows // base)
    out = work / f"out-{rows}"
    if not args.only:  # else the outputs of the steps not timed are read
        shutil.rmtree(out, ignore_errors=True)
    out.mkdir(exist_ok=True)
    start, end = (t.isoformat() for t in _window())
    window = ["--start", start, "--end", end]
    records: list[dict] = []

    def measure(step: str, what: str, command: list[str]) -> None:
        if args.only and step not in args.only:
            return
        load = os.getloadavg()[0]
        seconds, cpu, peak, output = run_child(command)
        try:  # our commands also say how long the work took without starting Python
            inner = float(json.loads(output)["seconds"])
        except (ValueError, KeyError, TypeError):
            inner = None
        records.append(
            {
                "rows": rows,
                "step": step,
                "what": what,
                "seconds": round(seconds, 2),
                "cpu_seconds": round(cpu, 2),
                "inner_seconds": inner,
                "peak_mib": round(peak),
                "load": round(load, 1),
            }
        )
        log.info(
            "%d rows, %s, %s: %.1f s (%s in the command, %.1f s CPU), %.0f MiB (load %.1f)",
            rows,
            step,
            what,
            seconds,
            inner,
            cpu,
            peak,
            load,
        )

    window_file = out / "window.parquet"
    measure(
        "collect",
        "ours",
        _visionops("drift", "collect", "--log", str(log_dir), *window, "--out", str(window_file)),
    )
    floors = rows <= args.floor_max
    if floors:
        measure(
            "collect",
            "DuckDB floor",
            _self("floor-collect", "--log", str(log_dir), "--out", str(out / "floor.parquet")),
        )
    if rows <= args.baseline_max:
        measure(
            "collect",
            "before",
            _self("baseline-collect", "--log", str(log_dir), "--out", str(out / "before.parquet")),
        )
    check = ["drift", "check", "--reference", str(reference), "--current", str(window_file)]
    measure("check", "ours", _visionops(*check))
    measure("check + report", "ours", _visionops(*check, "--report-dir", str(out / "report")))
    if rows <= args.baseline_max:
        measure(
            "check + report",
            "before",
            _self(
                "baseline-check",
                "--reference",
                str(reference),
                "--current",
                str(window_file),
                "--out",
                str(out / "report-before"),
            ),
        )
    copy = out / "compacted-log"  # kept: `--only "collect compacted"` reads it again
    if not args.only or "compact" in args.only:
        shutil.rmtree(copy, ignore_errors=True)
        subprocess.run(["cp", "-al", str(log_dir), str(copy)], check=True)  # hard links
    measure("compact", "ours", _visionops("drift", "compact", "--log", str(copy), *window))
    if floors:
        measure(
            "compact",
            "DuckDB floor",
            _self(
                "floor-compact", "--log", str(log_dir), "--out", str(out / "floor-compact.parquet")
            ),
        )
        (out / "floor-compact.parquet").unlink(missing_ok=True)
    measure(
        "collect compacted",
        "ours",
        _visionops(
            "drift", "collect", "--log", str(copy), *window, "--out", str(out / "c.parquet")
        ),
    )
    if floors:
        measure(
            "collect compacted",
            "DuckDB floor",
            _self("floor-read-parts", "--log", str(copy), "--out", str(out / "fc.parquet")),
        )
    return records


def markdown(records: list[dict]) -> str:
    lines = [
        "| rows | step | ours | DuckDB floor | ours / floor | before | before / ours |",
        "| ---: | --- | --- | --- | ---: | --- | ---: |",
    ]
    keyed = {(r["rows"], r["step"], r["what"]): r for r in records}
    for rows, step in dict.fromkeys((r["rows"], r["step"]) for r in records):
        ours = keyed[(rows, step, "ours")]
        floor = keyed.get((rows, step, "DuckDB floor"))
        before = keyed.get((rows, step, "before"))

        def cell(r: dict | None) -> str:
            if r is None:
                return "-"
            inner = f", {r['inner_seconds']:.1f} s of work" if r.get("inner_seconds") else ""
            cpu = f" ({r['cpu_seconds']:.1f} s CPU{inner})" if r.get("cpu_seconds") else ""
            return f"{r['seconds']:.1f} s{cpu}, {r['peak_mib']} MiB (load {r['load']})"

        def times(a: dict | None, b: dict, digits: int) -> str:
            if a is None:
                return "-"
            cpu = ""
            if a.get("cpu_seconds") and b.get("cpu_seconds"):
                cpu = f" (CPU {a['cpu_seconds'] / b['cpu_seconds']:.{digits}f}x)"
            return f"{a['seconds'] / b['seconds']:.{digits}f}x{cpu}"

        ratio = times(ours, floor, 2) if floor else "-"
        gain = times(before, ours, 1)
        lines.append(
            f"| {rows:,} | {step} | {cell(ours)} | {cell(floor)} | {ratio} "
            f"| {cell(before)} | {gain} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="a folder on a big disk (required)")
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    parser.add_argument(
        "--writer-max",
        type=int,
        default=1_000_000,
        help="larger logs are the largest writer-made one, expanded by DuckDB",
    )
    parser.add_argument("--baseline-max", type=int, default=1_000_000)
    parser.add_argument("--floor-max", type=int, default=10_000_000)
    parser.add_argument(
        "--only",
        nargs="+",
        choices=["collect", "check", "check + report", "compact", "collect compacted"],
        help="time these steps only (each needs the outputs of the steps before it: collect "
        "writes the window the checks read, compact the parts collect compacted reads)",
    )
    parser.add_argument("--step", choices=[*STEPS, "baseline-check"], help=argparse.SUPPRESS)
    parser.add_argument("--log", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--reference", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--current", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.step == "baseline-check":
        args.out.mkdir(parents=True, exist_ok=True)
        baseline_check(args.reference, args.current, args.out)
        return 0
    if args.step:
        print(json.dumps({"rows": STEPS[args.step](args.log, args.out)}))
        return 0
    if args.workdir is None:
        parser.error("--workdir is required: a folder with room for the logs (10M rows: 11 GB)")
    args.workdir = args.workdir.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    from visionops.bootstrap import bootstrap

    bootstrap()
    _, _, reference = _feature_pool(args.workdir)
    results = args.workdir / "monitoring_scale.json"
    kept = json.loads(results.read_text()) if results.is_file() else []
    records = [  # what this run does not time again, from earlier runs
        r for r in kept if r["rows"] not in args.rows or (args.only and r["step"] not in args.only)
    ]
    for rows in args.rows:
        records += bench_size(rows, args, reference)
        results.write_text(json.dumps(records, indent=2))
    print(markdown(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
