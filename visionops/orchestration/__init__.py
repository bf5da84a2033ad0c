"""Running the KFP pipelines of `pipelines/`: compile, run locally, submit to a KFP server, and
re-submit training from a monitoring run.

The functions here receive the pipeline objects they run (the CLI and the demo look them up with
`pipelines.load_pipeline`): the `pipelines` package imports the components, which import this
package. `kfp` is imported only by the modules that compile, run or submit, never by this one.
"""

from __future__ import annotations

import re

from visionops.errors import UsageError


def safe_key(key: str) -> str:
    """`key` (a monitoring run's id) usable as a file and run name: letters, digits, `-`, `_`,
    `.` only."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", key).strip("-.")
    if not cleaned:
        raise UsageError(f"a submission needs a key (the monitoring run id), got {key!r}")
    return cleaned[:100]
