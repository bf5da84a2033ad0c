"""The promotion gate: the rule that decides whether a candidate model replaces the champion.

A pure function of metrics measured on the same evaluation data and the configured thresholds;
where those metrics come from (a run's evaluation, a version's tags, a re-evaluation of the
champion) is `visionops.training.promotion`'s business.
"""

from __future__ import annotations

from dataclasses import dataclass

from visionops.config import Settings

GATE_METRIC = "map50_95"


@dataclass(frozen=True)
class GateDecision:
    """What the gate decided and why (one sentence a human can act on)."""

    promote: bool
    reason: str
    champion_version: str | None = None
    champion_metrics: dict[str, float] | None = None


def meets_minimums(metrics: dict[str, float], settings: Settings) -> str | None:
    """None if the metrics meet the configured minimums, else why not."""
    checks = (("map50", settings.gate_min_map50), ("map50_95", settings.gate_min_map50_95))
    failing = [
        f"{key} {metrics.get(key, 0.0):.4f} < minimum {minimum:.4f}"
        for key, minimum in checks
        if metrics.get(key, 0.0) < minimum
    ]
    return "; ".join(failing) or None


def gate(
    candidate: dict[str, float],
    champion: dict[str, float] | None,
    settings: Settings,
    *,
    champion_version: str | None = None,
) -> GateDecision:
    """The promotion rule on metrics measured on the same evaluation data.

    Promote iff the minimums are met and (there is no champion, or the candidate's mAP50-95
    exceeds the champion's by more than `gate_margin`). Equal is not better.
    """
    below = meets_minimums(candidate, settings)
    if below:
        return GateDecision(False, f"below the minimums: {below}", champion_version, champion)
    score = candidate.get(GATE_METRIC, 0.0)
    if champion is None:
        return GateDecision(True, f"first champion: {GATE_METRIC} {score:.4f} meets the minimums")
    best = champion.get(GATE_METRIC, 0.0)
    margin = settings.gate_margin
    comparison = (
        f"{GATE_METRIC} {score:.4f} vs champion v{champion_version} {best:.4f} "
        f"on the same evaluation data (margin {margin:.4f})"
    )
    if score - best > margin:
        return GateDecision(True, f"beats the champion: {comparison}", champion_version, champion)
    return GateDecision(
        False, f"does not beat the champion: {comparison}", champion_version, champion
    )
