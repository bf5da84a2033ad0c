"""Training curves: losses and validation metrics per epoch, drawn from Ultralytics' results.csv.

Ultralytics draws its own `results.png` too (with `plots` on); this picture is ours so that every
run has the same two panels whatever Ultralytics' plotting does, and it needs nothing but the CSV
logged beside it.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from visionops.data.files import atomic_write_bytes
from visionops.errors import DataError

TRAINING_CURVES_PNG = "training_curves.png"
_LOSSES = ("box_loss", "cls_loss", "dfl_loss")
_METRICS = {
    "metrics/mAP50(B)": "mAP50",
    "metrics/mAP50-95(B)": "mAP50-95",
    "metrics/precision(B)": "precision",
    "metrics/recall(B)": "recall",
}


def read_results(results_csv: Path) -> dict[str, list[float]]:
    """Ultralytics' results.csv as columns of floats (names stripped; non-numbers are NaN)."""
    try:
        with Path(results_csv).open(newline="") as handle:
            rows = [{k.strip(): v for k, v in row.items() if k} for row in csv.DictReader(handle)]
    except OSError as error:
        raise DataError(f"cannot read {results_csv}: {error}") from error
    if not rows or "epoch" not in rows[0]:
        raise DataError(f"{results_csv} holds no epochs")
    return {key: [_number(row.get(key)) for row in rows] for key in rows[0]}


def _number(value: str | None) -> float:
    try:
        return float(value) if value is not None else math.nan
    except ValueError:
        return math.nan


def write_training_curves(results_csv: Path, out_png: Path) -> Path:
    """Two panels, losses (train solid, validation dashed) and metrics, against the epoch."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # heavy: only when drawing
    from matplotlib.figure import Figure

    columns = read_results(results_csv)
    epochs = columns["epoch"]
    figure = Figure(figsize=(11, 4))
    FigureCanvasAgg(figure)
    losses, metrics = figure.subplots(1, 2)
    for index, loss in enumerate(_LOSSES):
        colour = f"C{index}"
        for prefix, style in (("train", "-"), ("val", "--")):
            key = f"{prefix}/{loss}"
            if key in columns:
                losses.plot(epochs, columns[key], style, color=colour, marker=".",
                            label=f"{prefix} {loss}")  # fmt: skip
    losses.set(title="losses", xlabel="epoch", ylabel="loss")
    for key, label in _METRICS.items():
        if key in columns:
            metrics.plot(epochs, columns[key], marker=".", label=label)
    metrics.set(title="validation metrics", xlabel="epoch", ylim=(0, 1))
    for ax in (losses, metrics):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    return atomic_write_bytes(out_png, buffer.getvalue())
