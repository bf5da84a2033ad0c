"""`visionops demo`'s own pieces: the summary it ends with, and stopping what it started.

The demo's stages are the pipelines, predictor and traffic of test_pipeline_e2e.py (which uses
the demo's functions); a full `make demo` takes minutes and is not part of the suite.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from visionops.cli._common import console
from visionops.cli.demo import print_summary
from visionops.demo import DemoResult, DriftCheck, Scores
from visionops.local_predictor import stop_process
from visionops.orchestration.local import alive


def _check(decision: str, share: float, columns: list[tuple[str, float, bool]]) -> DriftCheck:
    return DriftCheck(
        run_name=f"monitoring-{decision}", decision=decision, reason="...", drifted_share=share,
        columns=[{"column": c, "method": "ks", "score": s, "drifted": d} for c, s, d in columns],
        report=Path(f"/demo/reports/drift-{decision}.html"),
    )  # fmt: skip


def test_the_summary_shows_scores_drift_gate_and_what_serves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    result = DemoResult(
        model_name="visionops-yolov8n-demo",
        first=Scores("1", {"map50": 0.61, "map50_95": 0.31}, {"map50": 0.20, "map50_95": 0.08}),
        retrained=Scores("2", {"map50": 0.66, "map50_95": 0.35}, {"map50": 0.58, "map50_95": 0.29}),
        promoted=True,
        gate_reason="beats the champion: map50_95 0.3200 vs champion v1 0.1950",
        clean_check=_check("no_drift", 0.0, [("contrast", 0.4, False)]),
        drift_check=_check(
            "drift", 0.4, [("contrast", 0.3, False), ("brightness_mean", 1e-20, True)]
        ),
        training_run="training-after-123",
        serving_version="2",
        reports=[("drift check, drifted window (drift)", Path("/demo/reports/drift.html"))],
        timings={"train": 300.0, "retrain (re-submitted run)": 240.0},
    )
    monkeypatch.setattr(console, "width", 200)  # one line per row, as on a wide terminal
    gate = {"1": {"map50_95": 0.195, "map50": 0.4}, "2": {"map50_95": 0.32, "map50": 0.62}}
    with console.capture() as captured:
        print_summary(result, gate)
    text = captured.get()
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.strip()}

    # Each column holds both versions on the same data, the gate's data included.
    assert rows["v1"] == ["v1", "first", "0.310", "(0.610)", "0.080", "(0.200)", "0.195", "(0.400)"]
    assert rows["v2"] == [
        "v2", "retrained", "0.350", "(0.660)", "0.290", "(0.580)", "0.320", "(0.620)"
    ]  # fmt: skip
    assert "gate's data" in text
    assert "no_drift" in text and "drift" in text and "40%" in text
    # Drifted columns with their method and score; the others are not listed.
    assert "brightness_mean (ks 1e-20)" in text and "contrast (ks" not in text
    assert "promoted: beats the champion" in text
    assert "now serving: visionops-yolov8n-demo v2" in text
    assert "/demo/reports/drift.html" in text and "took 9.0 min" in text
    # The next steps name the demo's model, so they work as printed.
    assert "model list --name visionops-yolov8n-demo" in text
    assert "model show 2 --name visionops-yolov8n-demo" in text
    assert "drift check --name visionops-yolov8n-demo --reference champion" in text
    assert "#/experiments/" in text and "/runs?viewStateShareKey=visionops" in text
    assert "mlflow ui --backend-store-uri sqlite:///" in text


def test_stop_process_ends_the_whole_process_group() -> None:
    script = "import subprocess, time; subprocess.Popen(['sleep', '60']); time.sleep(60)"
    parent = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)

    def group() -> list[str]:
        found = subprocess.run(["pgrep", "-g", str(parent.pid)], capture_output=True, text=True)
        return found.stdout.split()

    deadline = time.monotonic() + 60  # the parent and its child, once the child has started
    while len(group()) < 2:
        assert parent.poll() is None and time.monotonic() < deadline, group()
        time.sleep(0.05)
    started = group()
    assert len(started) == 2 and str(parent.pid) in started

    stop_process(parent)

    assert parent.poll() is not None
    deadline = time.monotonic() + 10  # the child got SIGTERM too; it exits on its own schedule
    while any(alive(int(pid)) for pid in started):
        assert time.monotonic() < deadline, "a process of the group is still running"
        time.sleep(0.1)
    stop_process(parent.pid)  # already gone: quiet
