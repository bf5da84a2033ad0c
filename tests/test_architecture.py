"""The floors the README shows are the ones import-linter enforces (`make lint`), and no module in
`visionops/` is over 500 lines (`tests/module_size.py`, also in `make lint`)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from tests import module_size

ROOT = Path(__file__).resolve().parent.parent


def _declared_floors() -> list[set[str]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (floors,) = [c for c in config["contracts"] if c["id"] == "floors"]
    return [{name.strip() for name in layer.split("|")} for layer in floors["layers"]]


def _readme_floors() -> list[set[str]]:
    text = (ROOT / "README.md").read_text()
    listing = text[text.index("visionops/ floors, top to bottom") : text.index("    components/")]
    floors: list[set[str]] = []
    for line in listing.splitlines()[1:]:
        names = line[:36]  # the module column
        if re.match(r"\s*\d+ ", names):
            floors.append(set())
            names = re.sub(r"^\s*\d+ ", "", names)
        floors[-1].update(re.findall(r"(\w+)(?:/|\.py)", names))
    return floors


def test_the_readme_shows_the_declared_floors_in_order() -> None:
    assert _readme_floors() == _declared_floors()


def test_module_size_names_each_module_over_the_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "at_limit.py").write_text("x = 1\n" * 500)
    (tmp_path / "pkg" / "long.py").write_text("x = 1\n" * 501)
    (tmp_path / "long_too.py").write_text("x = 1\n" * 900)
    (tmp_path / "notes.txt").write_text("x\n" * 900)  # not a module
    assert module_size.main([str(tmp_path), "500"]) == 1
    err = capsys.readouterr().err
    named = sorted(line.split()[1] for line in err.splitlines() if " has " in line)
    assert named == [str(tmp_path / "long_too.py"), str(tmp_path / "pkg" / "long.py")]
    assert "501 lines, over 500" in err and "2 module(s)" in err
    assert module_size.main([str(tmp_path / "absent")]) == 2


def test_no_module_in_visionops_is_over_500_lines() -> None:
    assert module_size.modules_over(ROOT / "visionops", 500) == []
