"""`make lint`: fails naming each Python module under a folder (default `visionops/`) over a
number of lines (default 500). A module that long holds more than one thing: split it along its
seams (issue 16).

    .venv/bin/python -m tests.module_size [FOLDER] [MAX_LINES]
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def modules_over(folder: Path, limit: int) -> list[tuple[Path, int]]:
    """(module, its lines) for every `*.py` under `folder` with more than `limit` lines."""
    found = []
    for module in sorted(folder.rglob("*.py")):
        with module.open("rb") as f:
            lines = sum(1 for _ in f)
        if lines > limit:
            found.append((module, lines))
    return found


def main(argv: list[str]) -> int:
    folder = Path(argv[0]) if argv else ROOT / "visionops"
    limit = int(argv[1]) if len(argv) > 1 else 500
    if not folder.is_dir():
        print(f"module-size: no folder {folder}", file=sys.stderr)
        return 2
    over = modules_over(folder, limit)
    for module, lines in over:
        print(f"module-size: {module} has {lines} lines, over {limit}: split it along its seams",
              file=sys.stderr)  # fmt: skip
    if over:
        print(f"module-size: {len(over)} module(s) in {folder} over {limit} lines", file=sys.stderr)
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
