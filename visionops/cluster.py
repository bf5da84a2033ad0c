"""Where this process runs: inside a Kubernetes pod (a pipeline step, the predictor) or not.

Commands with a `--mode`/`--target auto` (re-submission, deploy) ask here, so `auto` means the
cluster inside a pod and this machine everywhere else.
"""

from __future__ import annotations

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
