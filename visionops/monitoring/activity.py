"""The predictor's inferences in progress, so the prediction log computes features between them.

On a small machine a feature row computed next to a running inference slows that request by about
twice its own CPU time; the log's features thread waits for a pause (`wait_idle`), bounded by its
flush deadline (`visionops.monitoring.prediction_log`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Activity:
    """Counts work in progress (the predictor's inferences) so the writer can wait for a pause."""

    def __init__(self) -> None:
        self._busy = 0
        self._changed = threading.Condition()

    @contextmanager
    def busy(self) -> Iterator[None]:
        with self._changed:
            self._busy += 1
        try:
            yield
        finally:
            with self._changed:
                self._busy -= 1
                if self._busy == 0:
                    self._changed.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """True once nothing is in progress, False if still busy after `timeout` seconds."""
        with self._changed:
            return self._changed.wait_for(lambda: self._busy == 0, timeout)
