"""Progress reporting without a UI dependency in the library.

Long-running library functions take an optional `ProgressCallback` and call it as work advances;
the CLI passes one that drives a rich progress bar, components and tests pass none.
"""

from __future__ import annotations

from collections.abc import Callable

ProgressCallback = Callable[[int, int], None]
"""Called as `callback(done, total)`; `total` may grow while work is discovered."""


def no_progress(done: int, total: int) -> None:
    """The default callback: report nothing."""
