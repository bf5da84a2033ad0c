"""Running the KFP pipelines of `pipelines/`: compile, run locally, submit to a KFP server.

`kfp` is imported inside the functions that need it, so `visionops` stays light to import.
"""

from __future__ import annotations

import re
from pathlib import Path

from visionops.errors import UsageError

SERVICE_ACCOUNT_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


def in_cluster() -> bool:
    """True inside a Kubernetes pod (its service account token is mounted)."""
    return SERVICE_ACCOUNT_TOKEN.is_file()


def resolve_mode(mode: str, allowed: tuple[str, ...], what: str) -> str:
    """`auto` becomes `cluster` in a pod and `local` elsewhere; UsageError for other values."""
    if mode not in allowed:
        raise UsageError(f"unknown {what} {mode!r}; use {', '.join(allowed)}")
    if mode == "auto":
        return "cluster" if in_cluster() else "local"
    return mode


def safe_key(key: str) -> str:
    """`key` (a monitoring run's id) usable as a file and run name: letters, digits, `-`, `_`,
    `.` only."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", key).strip("-.")
    if not cleaned:
        raise UsageError(f"a submission needs a key (the monitoring run id), got {key!r}")
    return cleaned[:100]
