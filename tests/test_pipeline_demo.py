"""`visionops demo`'s own pieces: the summary it ends with, stopping what it started (its Label
Studio too), and the drifted window it sends.

The demo's stages are the pipelines, predictor and traffic of test_pipeline_e2e.py (which uses
the demo's functions); a full `make demo` takes minutes and is not part of the suite.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest

from visionops.cli._common import console
from visionops.cli.demo import print_summary
from visionops.demo import DemoResult, DriftCheck, Scores
from visionops.demo_labels import DataLoop
from visionops.labeling.scripted_annotator import ScriptedAnnotation
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
        loop=DataLoop(
            sent=96,
            kept=71,
            selected=68,
            project="http://127.0.0.1:1/projects/1/data",
            annotation=ScriptedAnnotation("p", 1, Path("/truth"), tasks=68, annotated=68),
            labelled=66,
        ),
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
    # The data loop, each count as it happened, the stand-in named as one.
    assert (
        "data loop: the predictor kept 71 of the 96 drifted images, 68 selected for labelling "
        "(http://127.0.0.1:1/projects/1/data), 68 labelled by the scripted annotator (a stand-in "
        "for people), 66 harvested for the retraining"
    ) in text
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


def test_the_demo_starts_a_label_studio_of_its_own_and_stops_it_also_on_failure(
    settings_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A new data dir each demo, its URL and token for the pipelines' steps while it runs (the
    caller's own settings back afterwards), stopped when the demo fails."""
    from tests.servers import LABEL_STUDIO_VENV
    from visionops.config import get_settings
    from visionops.demo_labels import TOKEN_ENV, URL_ENV, demo_studio
    from visionops.labeling.label_studio_client import LabelStudioClient

    if not (LABEL_STUDIO_VENV / "bin" / "label-studio").is_file():
        pytest.skip(f"Label Studio is not installed in {LABEL_STUDIO_VENV}: run make label-studio")
    settings_env.setenv("VISIONOPS_LABEL_STUDIO_VENV", str(LABEL_STUDIO_VENV))
    settings_env.setenv(URL_ENV, "http://127.0.0.1:9/theirs")
    settings_env.delenv(TOKEN_ENV, raising=False)
    (tmp_path / "label-studio" / "the-last-demo's").mkdir(parents=True)

    with pytest.raises(RuntimeError, match="a step failed"), demo_studio(tmp_path) as studio:
        assert not (tmp_path / "label-studio" / "the-last-demo's").exists()
        settings = get_settings()
        assert settings.label_studio_url == studio.url.rstrip("/")
        assert settings.label_studio_token is not None
        with LabelStudioClient(studio.url, settings.label_studio_token.get_secret_value()) as api:
            assert api.find_project("anything") is None  # the token works
        raise RuntimeError("a step failed")

    assert studio.process.poll() is not None
    assert not alive(studio.process.pid)
    assert os.environ[URL_ENV] == "http://127.0.0.1:9/theirs" and TOKEN_ENV not in os.environ
    assert get_settings().label_studio_url == "http://127.0.0.1:9/theirs"
    with closing(socket.socket()) as probe:  # nothing listens on its port any more
        assert probe.connect_ex(("127.0.0.1", int(studio.url.rsplit(":", 1)[1]))) != 0


def test_the_line_window_is_new_drifted_parts_with_their_labels(tmp_path: Path) -> None:
    """Other parts than the training data's, darker, their labels carried over: the ground truth
    the scripted annotator reads, by image digest."""
    from visionops.data.features import read_image
    from visionops.demo_labels import line_window, window_images
    from visionops.labeling.scripted_annotator import ground_truth

    drifted = line_window(
        tmp_path, products=1, parts=6, imgsz=64, kind="brightness", severity=0.8, seed=0
    )
    images = window_images(drifted)
    assert len(images) == 6
    truth = ground_truth(drifted)
    assert len(truth) == 6 and sum(len(t.boxes) for t in truth.values()) > 0
    originals = sorted((tmp_path / "line").glob("*/train/*.*g"))
    assert [p.name for p in originals] == [p.name for p in images]
    for original, image in zip(originals, images, strict=True):
        assert read_image(image).mean() < 0.8 * read_image(original).mean()
    assert {p.parent.name for p in images} == {"train"}
