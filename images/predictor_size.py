"""Estimate the predictor image's installed size from this virtualenv, without building it.

The predictor image installs `visionops[serve]` (images/Dockerfile.predictor). This resolves that
extra's dependency closure from the installed distributions' metadata and sums the files each
one installed (their RECORD), so it needs no network and no Docker:

    .venv/bin/python images/predictor_size.py

tests/test_k8s_scripts.py uses `serve_closure` to check that the closure holds no torch.
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

PROJECT = "visionops"
EXTRA = "serve"


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def serve_closure(project: str = PROJECT, extra: str = EXTRA) -> dict[str, metadata.Distribution]:
    """Every distribution `pip install '<project>[<extra>]'` installs, by normalized name."""
    environment = default_environment()
    found: dict[str, metadata.Distribution] = {}
    expanded: set[tuple[str, str]] = set()
    pending: list[tuple[str, tuple[str, ...]]] = [(project, (extra,))]
    while pending:
        name, extras = pending.pop()
        dist = metadata.distribution(name)
        key = _key(dist.metadata["Name"])
        found[key] = dist
        for wanted in ("", *extras):
            if (key, wanted) in expanded:
                continue
            expanded.add((key, wanted))
            for line in dist.requires or []:
                requirement = Requirement(line)
                marker = requirement.marker
                if marker is None or marker.evaluate({**environment, "extra": wanted}):
                    pending.append((requirement.name, tuple(requirement.extras)))
    return found


def installed_bytes(dist: metadata.Distribution) -> int:
    """Bytes of the files a distribution installed (its RECORD), bytecode caches included."""
    total = 0
    for file in dist.files or []:
        path = Path(str(dist.locate_file(file)))
        if path.is_file():
            total += path.stat().st_size
    return total


def main() -> None:
    closure = serve_closure()
    sizes = sorted(((installed_bytes(d), k) for k, d in closure.items()), reverse=True)
    total = sum(size for size, _ in sizes)
    print(f"{PROJECT}[{EXTRA}]: {len(closure)} distributions, {total / 1e6:.0f} MB installed")
    for size, key in sizes[:12]:
        print(f"  {size / 1e6:7.1f} MB  {key}")


if __name__ == "__main__":
    main()
