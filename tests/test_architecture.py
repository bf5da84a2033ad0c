"""The floors the README shows are the ones import-linter enforces (`make lint`)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

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
