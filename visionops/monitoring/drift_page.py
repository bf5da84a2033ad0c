"""The drift page a person reads first: VisionOps' summary on top of Evidently's report.

Evidently's page lists every column in feature order with rounded scores ("Drift score: 0.0" for a
p-value of 8.9e-31). Above it, this module puts what a person needs to act: the decision in words,
the window, row counts, the reference model version, the drifted columns sorted by strength with
their statistic in scientific notation and what it means, a small histogram per drifted column
(reference against current, inline SVG) and a strip of reference and of current thumbnails
(inline JPEG; which images, `visionops.monitoring.drift_images`). Everything is inside the one
HTML file: it opens offline.
"""

from __future__ import annotations

import base64
import html
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from visionops.data.files import atomic_write_text
from visionops.data.thumbnails import THUMBNAILS, thumbnail_jpeg
from visionops.monitoring.drift_images import PageImage, Strip
from visionops.monitoring.drift_stats import P_VALUE_FLOORS

if TYPE_CHECKING:
    import numpy as np

    from visionops.monitoring.drift import ColumnDrift, DriftResult

log = logging.getLogger(__name__)

MARKER = "<!-- visionops-drift-summary -->"
_P_VALUE_METHODS = {
    "ks", "anderson", "chisquare", "z", "fisher_exact", "t_test", "mannw", "cramer_von_mises"
}  # fmt: skip

_DECISIONS = {
    "drift": "Drift: production images no longer look like the data the reference model was "
    "evaluated on. Retraining on labeled images of this window is warranted.",
    "no_drift": "No drift: production images look like the data the reference model was "
    "evaluated on. Nothing to do.",
    "not_enough_data": "Not enough data: the window holds too few images to decide; nothing was "
    "concluded.",
}


@dataclass(frozen=True)
class PageContext:
    """What the page says around the numbers: the window, the reference version, the samples
    for histograms and the strips of thumbnails (all optional)."""

    window: str = ""
    reference: str = ""  # e.g. `visionops-yolov8n v2`, or a table's path
    model_name: str = ""
    reference_values: dict[str, np.ndarray] | None = None  # drifted column -> sample
    current_values: dict[str, np.ndarray] | None = None
    reference_strip: Strip = field(default_factory=Strip)
    current_strip: Strip = field(default_factory=Strip)


def strength(column: ColumnDrift) -> float:
    """How strongly a column drifted, for sorting: the effect size (larger is stronger)."""
    return column.effect if math.isfinite(column.effect) else 0.0


def meaning(column: ColumnDrift) -> str:
    """The test's statistic in words, with the direction that means more drift."""
    if column.method in _P_VALUE_METHODS:
        floor = P_VALUE_FLOORS.get(column.method)  # below it the test says the floor: "at most"
        value = f"at most {floor:.2e}" if floor and column.score <= floor else f"{column.score:.2e}"
        return (
            f"{column.method} p-value {value}: the chance of a difference at least "
            f"this large if nothing changed (lower means more drift; drift below "
            f"{column.threshold:.0e})"
        )
    return (
        f"{column.method} distance {column.score:.2e} (higher means more drift; drift at or above "
        f"{column.threshold:.2g})"
    )


def summary_html(result: DriftResult, context: PageContext) -> str:
    """The summary block (a `<div>`) that goes on top of Evidently's report."""
    decision = _DECISIONS.get(result.decision, result.decision)
    drifted = sorted((c for c in result.columns if c.drifted), key=strength, reverse=True)
    facts = [
        ("Decision", f"<b>{html.escape(decision)}</b>"),
        ("Why", html.escape(result.reason)),
        ("Window", html.escape(context.window or "not recorded (a table given by hand)")),
        (
            "Rows",
            f"{result.current_rows:,} current, {result.reference_rows:,} reference "
            f"(compared: {result.current_sample:,} and {result.reference_sample:,}, seed "
            f"{result.sample_seed})",
        ),
        ("Reference", html.escape(context.reference or "not recorded")),
        ("Model", html.escape(context.model_name or "-")),
    ]
    rows = "".join(
        f"<tr><th style='text-align:left;padding-right:12px'>{k}</th><td>{v}</td></tr>"
        for k, v in facts
    )
    columns = "".join(_column_row(c, context) for c in drifted) or (
        "<tr><td colspan='4'>No column drifted.</td></tr>"
    )
    thumbs = _thumbnail_strips(context)
    return (
        f"{MARKER}<div id='visionops-drift-summary' style='font-family:sans-serif;"
        "padding:16px;border-bottom:2px solid #444;background:#fff;color:#111'>"
        f"<h1 style='margin-top:0'>VisionOps drift check: {html.escape(result.decision)}</h1>"
        f"<table>{rows}</table>"
        f"<h2>Drifted columns, strongest first ({len(drifted)} of {len(result.columns)})</h2>"
        "<p>A column drifted when its test says the change is real and its effect size says it "
        "matters. Evidently's report below shows every column, with the effect size alone.</p>"
        "<table style='border-collapse:collapse'><tr><th>column</th><th>statistic</th>"
        "<th>effect size</th><th>reference (grey) vs current (red)</th></tr>"
        f"{columns}</table>{thumbs}</div>"
    )


def _column_row(column: ColumnDrift, context: PageContext) -> str:
    ref = (context.reference_values or {}).get(column.column)
    cur = (context.current_values or {}).get(column.column)
    chart = histogram_svg(ref, cur) if ref is not None and cur is not None else "-"
    return (
        "<tr style='border-top:1px solid #ddd'>"
        f"<td><b>{html.escape(column.column)}</b></td>"
        f"<td>{html.escape(meaning(column))}</td>"
        f"<td>{html.escape(column.effect_method)} {column.effect:.2e} "
        f"(matters at {column.effect_threshold:.2g})</td>"
        f"<td>{chart}</td></tr>"
    )


def histogram_svg(
    reference: np.ndarray, current: np.ndarray, *, bins: int = 20, width: int = 220
) -> str:
    """Two overlaid histograms (share of rows per bin) on the same bins, as inline SVG."""
    import numpy as np  # only where a page is drawn

    ref = np.asarray(reference, dtype=float)
    cur = np.asarray(current, dtype=float)
    ref, cur = ref[np.isfinite(ref)], cur[np.isfinite(cur)]
    if not len(ref) or not len(cur):
        return "-"
    low, high = float(min(ref.min(), cur.min())), float(max(ref.max(), cur.max()))
    if high <= low:
        high = low + 1.0
    edges = np.linspace(low, high, bins + 1)
    shares = [np.histogram(v, edges)[0] / len(v) for v in (ref, cur)]
    top = max(float(s.max()) for s in shares) or 1.0
    height, bar = 60, width / bins
    parts = []
    for share, colour in zip(shares, ("#888", "#d33"), strict=True):
        for i, value in enumerate(share):
            h = value / top * height
            parts.append(
                f"<rect x='{i * bar:.1f}' y='{height - h:.1f}' width='{bar:.1f}' "
                f"height='{h:.1f}' fill='{colour}' fill-opacity='0.55'/>"
            )
    label = f"<text x='0' y='{height + 12}' font-size='10'>{low:.3g}</text>" + (
        f"<text x='{width}' y='{height + 12}' font-size='10' text-anchor='end'>{high:.3g}</text>"
    )
    return (
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height + 14}' "
        f"role='img'>{''.join(parts)}{label}</svg>"
    )


def _thumbnail_strips(context: PageContext) -> str:
    strips = []
    for label, strip in (("Reference", context.reference_strip),
                         ("Current", context.current_strip)):  # fmt: skip
        tags = "".join(thumbnail_tags(strip.images))
        source = f" <small>({html.escape(strip.source)})</small>" if strip.source else ""
        strips.append(f"<h3>{label} images{source}</h3><div>{tags}</div>")
    return "".join(strips)


def thumbnail_tags(images: Iterable[Path | PageImage], count: int = THUMBNAILS) -> list[str]:
    """Up to `count` images as small inline JPEGs (`<img src='data:...'>`), read one at a time
    until `count` are shown; unreadable ones are left out."""
    tags = []
    for image in images:
        if len(tags) >= count:
            break
        if isinstance(image, Path):
            try:
                image = PageImage(image.name, image.read_bytes())
            except OSError as error:
                log.warning("drift page: %s not read: %s", image, error)
                continue
        jpeg = thumbnail_jpeg(image.data)
        if jpeg is not None:
            name = html.escape(image.name)
            tags.append(
                f"<img alt='{name}' title='{name}' "
                f"src='data:image/jpeg;base64,{base64.b64encode(jpeg).decode()}' "
                "style='margin:2px'/>"
            )
    return tags


def add_summary(page: Path, result: DriftResult, context: PageContext) -> None:
    """Put the summary at the top of the report `page` (right after `<body>`), atomically."""
    text = page.read_text(encoding="utf-8")
    atomic_write_text(page, text.replace("<body>", "<body>" + summary_html(result, context), 1))


def drifted_values(
    table: object, columns: list[str], rows: int, seed: int, side: str
) -> dict[str, np.ndarray]:
    """A seeded sample (at most `rows`) of `columns` of a feature table, for the histograms."""
    from visionops.data.tables import FeatureTableReader
    from visionops.monitoring.drift_sample import read_side

    if not columns:
        return {}
    reader = table if isinstance(table, FeatureTableReader) else FeatureTableReader(table)
    sample = read_side(reader, columns, rows, seed, side).sample
    return {c: sample[c].to_numpy() for c in columns}
