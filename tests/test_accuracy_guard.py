"""The accuracy guard's rule on its own: a variant's scores in, shipped or not and why out.

README: "A variant is served on an engine only if its mAP50-95 there is at most
VISIONOPS_QUANTIZE_MAX_MAP_DROP (0.01, absolute) below the reference". `tests/test_quantize.py`
holds the whole guard on a trained model (slow); this file holds the rule itself, so that
`make mutation` can run it against every mutant in a second.
"""

from __future__ import annotations

import pytest

from visionops.training.metrics import DetectionMetrics
from visionops.training.quantize import _judged


def _scores(map50_95: float, map50: float = 0.9) -> DetectionMetrics:
    return DetectionMetrics(
        map50=map50, map50_95=map50_95, precision=0.8, recall=0.7, ap50={}, ap50_95={},
        instances={}, confusion_labels=[], confusion=[],
    )  # fmt: skip


@pytest.mark.parametrize(
    ("score", "max_drop", "shipped"),
    [
        (0.50, 0.01, True),  # no loss
        (0.495, 0.01, True),  # within the allowed drop
        (0.49, 0.01, True),  # exactly the allowed drop: "at most"
        (0.4899, 0.01, False),  # just over it
        (0.55, 0.01, True),  # better than the reference
        (0.50, 0.0, True),  # lossless passes a zero allowance
        (0.4999, 0.0, False),
        (0.55, -0.04, True),  # a negative allowance demands a gain
        (0.54, -0.04, True),
        (0.5399, -0.04, False),
    ],
)
def test_a_variant_ships_when_it_loses_at_most_the_allowed_drop(
    score: float, max_drop: float, shipped: bool
) -> None:
    entry = _judged(_scores(score), 0.50, max_drop, "int8 on onnxruntime", "val")
    assert entry["shipped"] is shipped
    assert entry["map50_95_drop"] == round(0.50 - score, 6)
    assert ("reason" in entry) is not shipped


def test_float_noise_at_the_limit_does_not_reject() -> None:
    """A drop that equals the allowance up to float noise (here 1e-9 above it) still ships."""
    allowance = 0.249999999
    assert allowance < 0.5 - 0.25  # the noise
    assert _judged(_scores(0.25), 0.5, allowance, "int8", "val")["shipped"] is True
    assert _judged(_scores(0.2499), 0.5, allowance, "int8", "val")["shipped"] is False


def test_the_drop_is_recorded_to_six_decimals() -> None:
    entry = _judged(_scores(0.41234561), 0.46234567, 0.1, "int8", "val")
    assert entry["map50_95_drop"] == 0.05 and entry["map50_95"] == 0.412346


def test_the_entry_records_every_score_rounded_and_the_reason_names_the_setting() -> None:
    entry = _judged(
        _scores(0.4123456789, 0.81234567), 0.4623456789, 0.01, "int8 on openvino", "val"
    )
    assert entry == {
        "map50": 0.812346,
        "map50_95": 0.412346,
        "precision": 0.8,
        "recall": 0.7,
        "map50_95_drop": 0.05,
        "shipped": False,
        "reason": "int8 on openvino: mAP50-95 0.4123 is 0.0500 below fp32 on onnxruntime's "
        "0.4623 on val, more than the allowed 0.01 (VISIONOPS_QUANTIZE_MAX_MAP_DROP)",
    }
