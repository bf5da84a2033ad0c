"""The promotion rule on its own: metrics in, a decision and its reason out (no MLflow).

Every expected decision below is read off the README's rule ("champion only if mAP50 >=
VISIONOPS_GATE_MIN_MAP50 and mAP50-95 >= VISIONOPS_GATE_MIN_MAP50_95 and, when there is a
champion, its mAP50-95 exceeds the champion's by more than VISIONOPS_GATE_MARGIN; equal is not
better"), with the thresholds set here.
"""

from __future__ import annotations

import pytest

from visionops.config import Settings, get_settings
from visionops.training.gate import gate

MIN_MAP50, MIN_MAP50_95, MARGIN = 0.1, 0.05, 0.01


def _gate_settings() -> Settings:
    return Settings(gate_min_map50=MIN_MAP50, gate_min_map50_95=MIN_MAP50_95, gate_margin=MARGIN)


@pytest.mark.parametrize(
    ("map50", "map50_95", "promote", "reason"),
    [
        (0.3, 0.1, True, "first champion: map50_95 0.1000 meets the minimums"),
        (0.1, 0.05, True, "first champion: map50_95 0.0500 meets the minimums"),  # equal: met
        (0.05, 0.1, False, "below the minimums: map50 0.0500 < minimum 0.1000"),
        (0.3, 0.04, False, "below the minimums: map50_95 0.0400 < minimum 0.0500"),
        (0.0999, 0.0499, False,
         "below the minimums: map50 0.0999 < minimum 0.1000; map50_95 0.0499 < minimum 0.0500"),
    ],
)  # fmt: skip
def test_gate_first_model_needs_only_the_minimums(
    map50: float, map50_95: float, promote: bool, reason: str
):
    decision = gate({"map50": map50, "map50_95": map50_95}, None, _gate_settings())
    assert (decision.promote, decision.reason) == (promote, reason)


def test_missing_metrics_count_as_zero():
    """A candidate without an mAP50-95 cannot pass a positive minimum."""
    decision = gate({"map50": 0.9}, None, _gate_settings())
    assert (decision.promote, decision.reason) == (
        False,
        "below the minimums: map50_95 0.0000 < minimum 0.0500",
    )
    assert not gate({"map50_95": 0.9}, None, _gate_settings()).promote


@pytest.mark.parametrize(
    ("candidate", "promote", "words"),
    [
        (0.32, True, "beats the champion"),
        (0.30, False, "does not beat the champion"),  # equal
        (0.305, False, "does not beat the champion"),  # better, but not by more than the margin
        (0.3101, True, "beats the champion"),  # just more than the margin
        (0.20, False, "does not beat the champion"),  # worse
    ],
)
def test_gate_compares_with_the_champion(candidate: float, promote: bool, words: str):
    champion = {"map50": 0.6, "map50_95": 0.30}
    decision = gate(
        {"map50": 0.6, "map50_95": candidate}, champion, _gate_settings(), champion_version="4"
    )
    assert decision.promote is promote
    assert decision.reason == (
        f"{words}: map50_95 {candidate:.4f} vs champion v4 0.3000 on the same evaluation data "
        "(margin 0.0100)"
    )
    assert (decision.champion_version, decision.champion_metrics) == ("4", champion)


def test_a_champion_beaten_by_a_candidate_below_the_minimums_stays():
    """The minimums hold even against a weak champion: better is not enough."""
    decision = gate(
        {"map50": 0.5, "map50_95": 0.045},
        {"map50": 0.5, "map50_95": 0.01},
        _gate_settings(),
        champion_version="2",
    )
    assert not decision.promote
    assert decision.reason == "below the minimums: map50_95 0.0450 < minimum 0.0500"
    assert decision.champion_version == "2"
    assert decision.champion_metrics == {"map50": 0.5, "map50_95": 0.01}


def test_a_difference_of_exactly_the_margin_is_not_enough():
    """Values exact in binary, so "more than the margin" is tested without rounding noise."""
    settings = Settings(gate_min_map50=0, gate_min_map50_95=0, gate_margin=0.0625)
    champion = {"map50": 0.5, "map50_95": 0.25}
    assert not gate({"map50": 0.5, "map50_95": 0.3125}, champion, settings).promote
    assert gate({"map50": 0.5, "map50_95": 0.3125 + 2**-20}, champion, settings).promote


def test_a_missing_map50_95_counts_as_zero_on_either_side():
    settings = Settings(gate_min_map50=0, gate_min_map50_95=0, gate_margin=0.0625)
    first = gate({"map50": 0.5}, None, settings)
    assert (first.promote, first.reason) == (
        True,
        "first champion: map50_95 0.0000 meets the minimums",
    )
    against_unscored = gate({"map50": 0.5, "map50_95": 0.25}, {"map50": 0.5}, settings)
    assert against_unscored.promote
    assert "map50_95 0.2500 vs champion vNone 0.0000" in against_unscored.reason
    unscored = gate({"map50": 0.5}, {"map50": 0.5, "map50_95": 0.0}, settings)
    assert not unscored.promote
    assert "map50_95 0.0000 vs champion vNone 0.0000" in unscored.reason


def test_the_thresholds_come_from_the_gate_variables(settings_env: pytest.MonkeyPatch):
    settings_env.setenv("VISIONOPS_GATE_MIN_MAP50", "0.2")
    settings_env.setenv("VISIONOPS_GATE_MIN_MAP50_95", "0.15")
    settings_env.setenv("VISIONOPS_GATE_MARGIN", "0.05")
    settings = get_settings()
    assert not gate({"map50": 0.3, "map50_95": 0.1}, None, settings).promote
    assert gate({"map50": 0.3, "map50_95": 0.15}, None, settings).promote
    champion = {"map50": 0.3, "map50_95": 0.2}
    assert not gate({"map50": 0.3, "map50_95": 0.25}, champion, settings).promote
    assert gate({"map50": 0.3, "map50_95": 0.2501}, champion, settings).promote


def test_the_defaults_are_the_documented_ones(settings_env: pytest.MonkeyPatch):
    """README: VISIONOPS_GATE_MIN_MAP50, _MIN_MAP50_95, _MARGIN default to 0.05, 0, 0.005."""
    settings = get_settings()
    assert not gate({"map50": 0.0499, "map50_95": 0.5}, None, settings).promote
    assert gate({"map50": 0.05, "map50_95": 0.0}, None, settings).promote
    champion = {"map50": 0.5, "map50_95": 0.3}
    assert not gate({"map50": 0.5, "map50_95": 0.3049}, champion, settings).promote
    assert gate({"map50": 0.5, "map50_95": 0.3051}, champion, settings).promote
