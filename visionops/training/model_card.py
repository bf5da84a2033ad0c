"""The model card: one Markdown page per registered version, for its MLflow page and Kubeflow.

A person deciding whether to trust a version wants, on one page: the data it learnt from (hash,
products, classes with their train counts), how it scored (overall and per class), why the gate
made it champion or not and against which champion, which engines and precisions the INT8
accuracy guard let through, how it was trained, and from which commit. `register` writes this
text as the version's description and the register component shows it as a Markdown artifact.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from visionops.training.evaluate import (
    HEADLINE_METRICS,
    Evaluation,
    legacy_per_class_metric,
    per_class_metric,
)
from visionops.training.gate import GateDecision

KEY_TRAINING_PARAMS = (
    "model", "epochs", "imgsz", "batch", "optimizer", "lr0", "seed", "device", "patience",
)  # fmt: skip
"""The training arguments shown on the card (the run keeps all of Ultralytics' arguments)."""


@dataclass(frozen=True)
class CardInputs:
    """Everything the card shows, read from the run, its model directory and the gate."""

    model_name: str
    run_id: str
    evaluation: Evaluation
    decision: GateDecision
    run_tags: Mapping[str, str]
    run_params: Mapping[str, str]
    run_metrics: Mapping[str, float]
    class_names: list[str] = field(default_factory=list)
    train_counts: Mapping[str, int] = field(default_factory=dict)
    variants: Mapping[str, Any] = field(default_factory=dict)


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


def model_card(card: CardInputs) -> str:
    """The Markdown card of a version created from `card.run_id` (see the module docstring)."""
    tags, decision, evaluation = card.run_tags, card.decision, card.evaluation
    verdict = "champion" if decision.promote else "challenger"
    against = (
        f"against champion v{decision.champion_version}"
        if decision.champion_version
        else "no champion to compare with"
    )
    lines = [
        f"# {card.model_name}: model card",
        "",
        f"**Gate: {verdict}** ({against}): {decision.reason}",
        "",
        "## Data",
        "",
        f"- dataset hash: `{tags.get('visionops.dataset_hash') or 'not recorded'}`",
        f"- products: {tags.get('visionops.products') or 'not recorded'}",
        f"- evaluation: split `{evaluation.split}` of `{evaluation.data_yaml or 'not recorded'}`, "
        f"hash `{evaluation.data_hash}`",
        "",
        "## Metrics",
        "",
        *_table(
            ["metric", "value"],
            [[key, _number(evaluation.metrics.get(key))] for key in HEADLINE_METRICS],
        ),
        "",
        "## Classes",
        "",
    ]
    names = card.class_names or sorted(card.train_counts)
    metrics = card.run_metrics
    lines += _table(
        ["class", "train boxes", "AP50", "AP50-95"],
        [
            [
                name,
                str(card.train_counts[name]) if name in card.train_counts else "not recorded",
                _number(_class_metric(metrics, "ap50", name)),
                _number(_class_metric(metrics, "ap50_95", name)),
            ]
            for name in names
        ],
    )
    lines += ["", "## Engines and precisions (accuracy guard)", ""]
    lines += _variant_lines(card.variants)
    params = [[key, card.run_params[key]] for key in KEY_TRAINING_PARAMS if key in card.run_params]
    lines += ["", "## Training", ""]
    lines += _table(["parameter", "value"], params) if params else ["not recorded"]
    lines += [
        "",
        "## Provenance",
        "",
        f"- git commit: `{tags.get('visionops.git_commit') or 'unknown'}`",
        f"- training run: `{card.run_id}`",
        "",
    ]
    return "\n".join(lines)


def _variant_lines(variants: Mapping[str, Any]) -> list[str]:
    """One row per precision and engine the guard scored, whether it is served and why not."""
    rows = []
    for precision in sorted(variants):
        entry = variants[precision] or {}
        engines = entry.get("engines") or {}
        if not engines:
            served = "no" if entry.get("shipped") is False else "not checked"
            rows.append([precision, "-", "n/a", "n/a", served, entry.get("reason", "")])
        for engine in sorted(engines):
            scored = engines[engine]
            rows.append(
                [
                    precision,
                    engine,
                    _number(scored.get("map50_95")),
                    _number(scored.get("map50_95_drop")),
                    "yes" if scored.get("shipped") else "no",
                    scored.get("reason", ""),
                ]
            )
    if not rows:
        return ["fp32 on onnxruntime only (the guard did not run for this model)"]
    return _table(["precision", "engine", "mAP50-95", "drop vs fp32", "served", "why not"], rows)


def _class_metric(metrics: Mapping[str, float], kind: str, name: str) -> float | None:
    """A class's metric under its name now, or the one runs logged before had."""
    for key in (per_class_metric(kind, name), legacy_per_class_metric(kind, name)):
        if key in metrics:
            return metrics[key]
    return None
