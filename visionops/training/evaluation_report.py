"""The evaluation as a page a person looks at: `report.html`, one self-contained offline file.

Everything it shows comes from what `visionops.training.evaluate` already measured: the
precision-recall curves are COCO's interpolated curves whose mean is each class's AP50
(`DetectionMetrics.pr_curves`), the heatmap is the confusion matrix of `metrics.json`, and the
per-product rows and the gallery use the same scoring (`detection_metrics`) and the same box
pairing (`pair_boxes`) as the confusion matrix. Pictures are PNG/JPEG embedded as data: URIs; the
page has no script and no external URL, so it opens from an MLflow artifact, a Kubeflow HTML
artifact or a file on a machine without network.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from visionops.training.evaluation_scores import (
    CONFUSION_IOU,
    ProductScore,
    ScoredImage,
    image_errors,
    worst_images,
)
from visionops.training.metrics import DetectionMetrics, pair_boxes

GALLERY_PER_KIND = 8  # images shown per kind of error: the page stays small at any scale
THUMBNAIL_PX = 360
ERROR_KINDS = {
    "missed": "Missed defects (ground truth without a detection)",
    "false_alarms": "False alarms (detections without ground truth)",
    "wrong_class": "Wrong class (found, but called another class)",
}
_COLOURS = {
    "truth": (46, 160, 67),
    "missed": (255, 140, 0),
    "correct": (31, 111, 235),
    "wrong_class": (191, 57, 200),
    "false_alarm": (218, 54, 51),
}


@dataclass(frozen=True)
class ReportSubject:
    """One model's evaluation as the page shows it."""

    model: str  # what was evaluated: models:/NAME/VERSION, runs:/..., a directory
    facts: list[tuple[str, str]]  # shown under the title: run, data, split, hash, images, conf
    metrics: DetectionMetrics
    conf: float
    products: list[ProductScore] = field(default_factory=list)


# ---- pictures ------------------------------------------------------------------------------


def _png(figure: Any) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # heavy: only when drawing

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _groups(names: Sequence[str]) -> dict[str, list[str]]:
    """Classes grouped by product (the part before `/`); one group when names have none."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(name.split("/", 1)[0] if "/" in name else "classes", []).append(name)
    return groups


def pr_curves_png(metrics: DetectionMetrics, names: Sequence[str]) -> str | None:
    """Precision-recall curves (IoU 0.5) per class, one panel per product; None if no class has
    ground truth."""
    from matplotlib.figure import Figure  # heavy: only when drawing

    from visionops.training.metrics import RECALL_POINTS

    groups = {
        product: [n for n in members if n in metrics.pr_curves]
        for product, members in _groups(names).items()
    }
    groups = {product: members for product, members in groups.items() if members}
    if not groups:
        return None
    columns = min(3, len(groups))
    rows = -(-len(groups) // columns)
    figure = Figure(figsize=(4.2 * columns, 3.4 * rows))
    axes = figure.subplots(rows, columns, squeeze=False)
    for ax, (product, members) in zip(axes.flat, groups.items(), strict=False):
        for name in members:
            label = f"{name.split('/', 1)[-1]} (AP50 {metrics.ap50[name] or 0.0:.3f})"
            ax.plot(RECALL_POINTS, metrics.pr_curves[name], linewidth=1.5, label=label)
        ax.set(title=product, xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    for ax in list(axes.flat)[len(groups) :]:
        ax.set_axis_off()
    figure.tight_layout()
    return _png(figure)


def confusion_png(metrics: DetectionMetrics) -> str:
    """The confusion matrix as a heatmap: colour is the share of each true class's row, the
    number is the count."""
    from matplotlib.figure import Figure  # heavy: only when drawing

    matrix = np.array(metrics.confusion, np.float64)
    labels = metrics.confusion_labels
    totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)
    side = max(4.0, 0.42 * len(labels) + 2.5)
    figure = Figure(figsize=(side + 1.2, side))
    ax = figure.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ticks = range(len(labels))
    small = 8 if len(labels) <= 20 else 6
    ax.set_xticks(ticks, labels, rotation=60, ha="right", fontsize=small)
    ax.set_yticks(ticks, labels, fontsize=small)
    ax.set(xlabel="predicted", ylabel="true")
    if len(labels) <= 40:
        for (row, column), count in np.ndenumerate(matrix):
            if count:
                colour = "white" if shares[row, column] > 0.5 else "black"
                ax.text(column, row, f"{int(count)}", ha="center", va="center",
                        fontsize=small, color=colour)  # fmt: skip
    figure.tight_layout()
    return _png(figure)


def annotated_jpeg(image: ScoredImage, names: Sequence[str], conf: float) -> str:
    """The image with ground truth and served predictions drawn, as a JPEG data: URI."""
    from PIL import Image, ImageDraw, ImageFont

    with Image.open(image.path) as opened:
        picture = opened.convert("RGB")
    scale = min(1.0, THUMBNAIL_PX / max(picture.size))
    if scale < 1.0:
        size = (round(picture.width * scale), round(picture.height * scale))
        picture = picture.resize(size, Image.Resampling.LANCZOS)
    else:  # small images: enlarge so boxes and labels stay readable
        scale = THUMBNAIL_PX / max(picture.size)
        size = (round(picture.width * scale), round(picture.height * scale))
        picture = picture.resize(size, Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default(size=11)
    pairing = pair_boxes(image.truth, image.detections, conf=conf, iou=CONFUSION_IOU)
    served = pairing.served
    predicted = image.detections.class_ids[served]
    paired = {d: g for g, d in pairing.pairs}

    def box(coords: np.ndarray, colour: tuple[int, int, int], text: str, below: bool) -> None:
        x1, y1, x2, y2 = (float(v) * scale for v in coords)
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=2)
        left, top, right, bottom = draw.textbbox((x1, y1), text, font=font)
        height = bottom - top
        y = y2 if below else max(0.0, y1 - height - 2)
        y = min(y, picture.height - height - 2)  # a box at the bottom edge: label inside it
        draw.rectangle((x1, y, x1 + right - left + 4, y + height + 2), fill=colour)
        draw.text((x1 + 2, y), text, fill=(255, 255, 255), font=font)

    missed = set(pairing.missed)
    for g, (coords, cls) in enumerate(zip(image.truth.boxes, image.truth.class_ids, strict=True)):
        kind = "missed" if g in missed else "truth"
        label = f"{'MISSED' if kind == 'missed' else 'GT'} {_short(names[int(cls)])}"
        box(coords, _COLOURS[kind], label, below=True)
    for d, index in enumerate(served):
        cls = int(predicted[d])
        if d not in paired:
            kind = "false_alarm"
        elif int(image.truth.class_ids[paired[d]]) != cls:
            kind = "wrong_class"
        else:
            kind = "correct"
        score = float(image.detections.scores[index])
        box(image.detections.boxes[index], _COLOURS[kind], f"{_short(names[cls])} {score:.2f}",
            below=False)  # fmt: skip
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _short(name: str) -> str:
    return name.split("/", 1)[-1]


# ---- HTML ----------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#1f2328;
max-width:1400px}
h1{font-size:1.5em;margin-bottom:4px}h2{margin-top:32px;border-bottom:1px solid #d0d7de;
padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #d0d7de;padding:4px 8px;
text-align:right}th{background:#f6f8fa}td:first-child,th:first-child{text-align:left}
.facts td{text-align:left;border:none;padding:1px 12px 1px 0}.muted{color:#656d76}
.gallery{display:flex;flex-wrap:wrap;gap:12px}.gallery figure{margin:0;max-width:380px}
.gallery figcaption{font-size:.8em;word-break:break-all}img{max-width:100%}
.decision{padding:12px 16px;border-radius:6px;font-size:1.1em;margin:12px 0}
.promote{background:#dafbe1;border:1px solid #2da44e}.keep{background:#fff8c5;
border:1px solid #bf8700}.side{display:flex;gap:24px;flex-wrap:wrap}.side>div{flex:1;
min-width:420px}.better{color:#1a7f37}.worse{color:#cf222e}
.legend span{display:inline-block;padding:1px 6px;margin-right:6px;color:#fff;border-radius:3px}
"""


def _page(title: str, body: list[str]) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _facts(facts: list[tuple[str, str]]) -> str:
    rows = "".join(
        f'<tr><td class="muted">{html.escape(k)}</td><td>{html.escape(v)}</td></tr>'
        for k, v in facts
    )
    return f'<table class="facts">{rows}</table>'


def _headline(metrics: DetectionMetrics, conf: float) -> str:
    return (
        "<table><tr><th>mAP50</th><th>mAP50-95</th><th>precision</th><th>recall</th></tr>"
        f"<tr>{''.join(f'<td>{v:.4f}</td>' for v in metrics.summary().values())}</tr></table>"
        f'<p class="muted">Precision, recall, the confusion matrix and the gallery are taken at '
        f"confidence {conf:g} (what the predictor serves); mAP integrates over all confidences.</p>"
    )


def _per_class_table(metrics: DetectionMetrics) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{n}</td><td>{_number(metrics.ap50[name])}</td>"
        f"<td>{_number(metrics.ap50_95[name])}</td></tr>"
        for name, n in metrics.instances.items()
    )
    return (
        "<table><tr><th>class</th><th>instances</th><th>AP50</th><th>AP50-95</th></tr>"
        f"{rows}</table>"
    )


def _per_product_table(products: list[ProductScore]) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(p.product)}</td><td>{p.images}</td><td>{p.instances}</td>"
        f"<td>{p.metrics.map50:.4f}</td><td>{p.metrics.map50_95:.4f}</td>"
        f"<td>{p.metrics.precision:.4f}</td><td>{p.metrics.recall:.4f}</td><td>{p.missed}</td>"
        f"<td>{p.false_alarms}</td><td>{p.wrong_class}</td></tr>"
        for p in products
    )
    return (
        "<table><tr><th>product</th><th>images</th><th>instances</th><th>mAP50</th>"
        "<th>mAP50-95</th><th>precision</th><th>recall</th><th>missed</th><th>false alarms</th>"
        f"<th>wrong class</th></tr>{rows}</table>"
    )


def _picture(uri: str | None, alt: str) -> str:
    if uri is None:
        return f'<p class="muted">No {html.escape(alt)}: no class has ground truth here.</p>'
    return f'<img src="{uri}" alt="{html.escape(alt)}">'


def _legend() -> str:
    entries = (
        ("truth", "ground truth"), ("missed", "missed ground truth"), ("correct", "correct"),
        ("wrong_class", "wrong class"), ("false_alarm", "false alarm"),
    )  # fmt: skip
    spans = "".join(
        f'<span style="background:rgb{_COLOURS[key]}">{label}</span>' for key, label in entries
    )
    return f'<p class="legend">{spans} (predictions show their score)</p>'


def _gallery(images: Sequence[ScoredImage], names: Sequence[str], conf: float) -> list[str]:
    errors = image_errors(images, conf)
    parts = [_legend()]
    for kind, title in ERROR_KINDS.items():
        chosen = worst_images(errors, kind, GALLERY_PER_KIND)
        parts.append(f'<h3 id="gallery-{kind.replace("_", "-")}">{html.escape(title)}</h3>')
        if not chosen:
            parts.append('<p class="muted">None on this data.</p>')
            continue
        figures = []
        for index in chosen:
            image = images[index]
            count = getattr(errors[index], kind)
            caption = f"{image.relative} ({count} {kind.replace('_', ' ')})"
            figures.append(
                f'<figure><img src="{annotated_jpeg(image, names, conf)}" '
                f'alt="{html.escape(image.relative)}"><figcaption>{html.escape(caption)}'
                "</figcaption></figure>"
            )
        parts.append(f'<div class="gallery">{"".join(figures)}</div>')
    return parts


def report_html(subject: ReportSubject, images: Sequence[ScoredImage], names: Sequence[str]) -> str:
    """The whole evaluation page of one model."""
    m = subject.metrics
    title = f"Evaluation of {subject.model}"
    body = [
        f"<h1>{html.escape(title)}</h1>",
        _facts(subject.facts),
        '<h2 id="summary">Summary</h2>',
        _headline(m, subject.conf),
        '<h2 id="per-class">Per class</h2>',
        _per_class_table(m),
        '<h2 id="pr-curves">Precision-recall curves (IoU 0.5)</h2>',
        _picture(pr_curves_png(m, names), "precision-recall curves"),
        '<h2 id="confusion">Confusion matrix</h2>',
        f'<p class="muted">Boxes paired one to one at IoU {CONFUSION_IOU} regardless of class; '
        "unpaired ground truth is counted as predicted background (missed), unpaired "
        "predictions as true background (false alarms).</p>",
        f'<img src="{confusion_png(m)}" alt="confusion matrix">',
        '<h2 id="per-product">Per product</h2>',
        _per_product_table(subject.products),
        '<h2 id="gallery">Worst images</h2>',
        *_gallery(images, names, subject.conf),
    ]
    return _page(title, body)


def _delta(a: float | None, b: float | None) -> str:
    if a is None or b is None:
        return "<td>-</td>"
    diff = b - a
    css = "better" if diff > 0 else "worse" if diff < 0 else "muted"
    return f'<td class="{css}">{diff:+.4f}</td>'


def comparison_html(
    a: ReportSubject,
    b: ReportSubject,
    names: Sequence[str],
    *,
    facts: list[tuple[str, str]],
    promote: bool,
    reason: str,
) -> str:
    """Two models on the same data side by side, with the promotion gate's decision if `b` were
    the candidate and `a` the champion."""
    title = f"{a.model} vs {b.model}"
    verdict = (
        f"{b.model} would replace {a.model}"
        if promote
        else f"{a.model} stays; {b.model} would not be promoted"
    )
    headline = "".join(
        f"<tr><td>{key}</td><td>{a.metrics.summary()[key]:.4f}</td>"
        f"<td>{b.metrics.summary()[key]:.4f}</td>"
        f"{_delta(a.metrics.summary()[key], b.metrics.summary()[key])}</tr>"
        for key in a.metrics.summary()
    )
    per_class = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{n}</td><td>{_number(a.metrics.ap50_95[name])}</td>"
        f"<td>{_number(b.metrics.ap50_95.get(name))}</td>"
        f"{_delta(a.metrics.ap50_95[name], b.metrics.ap50_95.get(name))}</tr>"
        for name, n in a.metrics.instances.items()
    )
    b_products = {p.product: p for p in b.products}
    per_product = "".join(
        f"<tr><td>{html.escape(p.product)}</td><td>{p.images}</td>"
        f"<td>{p.metrics.map50_95:.4f}</td><td>{b_products[p.product].metrics.map50_95:.4f}</td>"
        f"{_delta(p.metrics.map50_95, b_products[p.product].metrics.map50_95)}"
        f"<td>{p.missed} / {b_products[p.product].missed}</td>"
        f"<td>{p.false_alarms} / {b_products[p.product].false_alarms}</td></tr>"
        for p in a.products
        if p.product in b_products
    )
    head = f"<th>{html.escape(a.model)}</th><th>{html.escape(b.model)}</th><th>change</th>"
    body = [
        f"<h1>{html.escape(title)}</h1>",
        _facts(facts),
        '<h2 id="gate">The promotion gate</h2>',
        f'<div class="decision {"promote" if promote else "keep"}"><strong>'
        f"{html.escape(verdict)}</strong><br>{html.escape(reason)}</div>",
        f'<p class="muted">As the gate decides when {html.escape(b.model)} is the candidate and '
        f"{html.escape(a.model)} the champion, on this data.</p>",
        '<h2 id="summary">Summary</h2>',
        f"<table><tr><th>metric</th>{head}</tr>{headline}</table>",
        '<h2 id="per-class">Per class (AP50-95)</h2>',
        f"<table><tr><th>class</th><th>instances</th>{head}</tr>{per_class}</table>",
        '<h2 id="per-product">Per product (mAP50-95; missed and false alarms: first / second)</h2>',
        f"<table><tr><th>product</th><th>images</th>{head}<th>missed</th><th>false alarms</th>"
        f"</tr>{per_product}</table>",
        '<h2 id="pr-curves">Precision-recall curves (IoU 0.5)</h2>',
        '<div class="side">',
        *(
            f"<div><h3>{html.escape(s.model)}</h3>"
            f"{_picture(pr_curves_png(s.metrics, names), 'precision-recall curves')}</div>"
            for s in (a, b)
        ),
        "</div>",
        '<h2 id="confusion">Confusion matrices</h2>',
        '<div class="side">',
        *(
            f'<div><h3>{html.escape(s.model)}</h3><img src="{confusion_png(s.metrics)}" '
            'alt="confusion matrix"></div>'
            for s in (a, b)
        ),
        "</div>",
    ]
    return _page(title, body)
