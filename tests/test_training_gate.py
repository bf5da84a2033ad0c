"""The promotion rule on its own: metrics in, a decision and its reason out (no MLflow)."""

from __future__ import annotations

import pytest

from visionops.config import Settings
from visionops.training.gate import gate


def _gate_settings(**values: float) -> Settings:
    return Settings(gate_min_map50=0.1, gate_min_map50_95=0.05, gate_margin=0.01, **values)


def test_gate_first_model_needs_only_the_minimums():
    settings = _gate_settings()
    assert gate({"map50": 0.3, "map50_95": 0.1}, None, settings).promote
    below = gate({"map50": 0.05, "map50_95": 0.1}, None, settings)
    assert not below.promote and "map50 0.0500 < minimum 0.1000" in below.reason


@pytest.mark.parametrize(
    ("candidate", "promote", "words"),
    [
        (0.32, True, "beats the champion"),
        (0.30, False, "does not beat"),  # equal
        (0.305, False, "does not beat"),  # better, but not by more than the margin
        (0.20, False, "does not beat"),  # worse
    ],
)
def test_gate_compares_with_the_champion(candidate: float, promote: bool, words: str):
    decision = gate(
        {"map50": 0.6, "map50_95": candidate},
        {"map50": 0.6, "map50_95": 0.30},
        _gate_settings(),
        champion_version="4",
    )
    assert decision.promote is promote
    assert words in decision.reason and "champion v4 0.3000" in decision.reason
