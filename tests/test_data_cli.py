"""`visionops data ...` through typer's runner: outputs and exit codes.

Bad input must give one line naming the problem and the path, exit 1 (data) or 2 (usage), no
traceback and no partial output.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.data_builders import archive_products, copy_dataset, small_dataset
from visionops.cli.app import app

runner = CliRunner()


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_dataset(tmp_path_factory.mktemp("cli") / "v", products=["Cable", "Wood"])


def _run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    return result.exit_code, result.output


def test_synth_writes_the_requested_dataset(tmp_path: Path):
    code, output = _run(
        "data", "synth", "--out", tmp_path / "s", "--products", "Screw,pcb_1",
        "--train", "3", "--val", "2", "--inference", "1", "--imgsz", "64", "--seed", "4",
    )  # fmt: skip
    assert code == 0, output
    assert "wrote 12 images" in output and "PCB_1, Screw" in output
    assert sorted(p.name for p in (tmp_path / "s").iterdir() if p.is_dir()) == ["PCB_1", "Screw"]
    code, output = _run(
        "data", "synth", "--out", tmp_path / "n", "--products", "3",
        "--train", "2", "--val", "1", "--inference", "1", "--imgsz", "64",
    )  # fmt: skip
    assert code == 0 and "Cable, Capacitor, Casting" in output


def test_validate_exit_codes_and_reports(root: Path, tmp_path: Path):
    report, summary = tmp_path / "r" / "report.json", tmp_path / "r" / "summary.md"
    code, output = _run("data", "validate", root, "--report", report, "--markdown", summary)
    assert code == 0, output
    assert "valid: 2 products" in output
    assert json.loads(report.read_text())["ok"] is True
    assert summary.read_text().startswith("# Dataset validation: passed")

    broken = copy_dataset(root, tmp_path / "b")
    next((broken / "Wood" / "val").glob("*.jpg")).write_bytes(b"not an image")
    code, output = _run("data", "validate", broken, "--report", report)
    assert code == 1
    assert "image_unreadable" in output and "INVALID" in output
    assert json.loads(report.read_text())["findings"][0]["check"] == "image_unreadable"
    code, output = _run("data", "validate", broken, "-p", "cable")
    assert code == 0


def test_convert_writes_and_reports(root: Path, tmp_path: Path):
    code, output = _run("data", "convert", root, "--out", tmp_path / "y", "-p", "Wood")
    assert code == 0, output
    assert "wrote YOLO dataset" in output and str(tmp_path / "y" / "data.yaml") in output
    assert json.loads((tmp_path / "y" / "class_map.json").read_text())["classes"][0]["product"] == (
        "Wood"
    )
    code, output = _run("data", "convert", root, "--out", tmp_path / "y", "-p", "Wood")
    assert code == 0 and "unchanged YOLO dataset" in output
    extra = small_dataset(tmp_path / "extra", products=["Wood"], seed=9, n_train=2, n_val=1)
    code, output = _run(
        "data", "convert", root, "--out", tmp_path / "z", "--include", extra, "--segments"
    )
    assert code == 0, output
    assert "train 18 images" in " ".join(output.split())


@pytest.mark.parametrize(
    ("make_args", "code", "needle"),
    [
        (lambda r, t: ["data", "validate", t / "missing"], 1, "dataset folder not found: {t}"),
        (lambda r, t: ["data", "convert", t / "missing", "--out", t / "o"], 1, "not found"),
        (lambda r, t: ["data", "validate", _empty(t)], 1, "no VISION products in {t}"),
        (lambda r, t: ["data", "convert", _broken_archive(r, t), "--out", t / "o"], 1,
         "broken archive {t}"),
        (lambda r, t: ["data", "convert", _bad_json(r, t), "--out", t / "o"], 1,
         "invalid JSON in {t}"),
        (lambda r, t: ["data", "validate", r, "-p", "Bolt"], 2, "unknown product 'Bolt'"),
        (lambda r, t: ["data", "convert", r, "--out", t / "o", "-p", "Gear"], 2,
         "unknown product 'Gear'"),
        (lambda r, t: ["data", "synth", "--out", t / "o", "--products", "Bolt"], 2,
         "unknown product 'Bolt'"),
        (lambda r, t: ["data", "synth", "--out", t / "o", "--imgsz", "ten"], 2, "--imgsz"),
        (lambda r, t: ["data", "synth", "--out", t / "o", "--products", "99"], 2, "--products"),
        (lambda r, t: ["data", "convert", r], 2, "--out"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_leaves_nothing(
    root: Path, tmp_path: Path, make_args, code: int, needle: str
):
    exit_code, output = _run(*make_args(root, tmp_path))
    assert exit_code == code, output
    assert needle.format(t=tmp_path) in " ".join(output.split())
    if code == 1:
        errors = [line for line in output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1
    assert not (tmp_path / "o").exists()


def _empty(tmp: Path) -> Path:
    (tmp / "empty").mkdir()
    return tmp / "empty"


def _broken_archive(root: Path, tmp: Path) -> Path:
    archives = archive_products(root, tmp / "archives")
    (archives / "Wood.tar.gz").write_bytes(b"\x1f\x8b\x08 truncated")
    return archives


def _bad_json(root: Path, tmp: Path) -> Path:
    copy = copy_dataset(root, tmp / "c")
    (copy / "Cable" / "val" / "_annotations.coco.json").write_text("{oops")
    return copy
