"""Clearing up after interrupted registrations: orphan versions and the champion history.

A registration marks its version pending and renews a heartbeat on it until the aliases moved
(`visionops.training.registry`). A pending version whose heartbeat is older than a limit belongs
to a registration that died: `gc` deletes it (unless an alias or the history names it, when only
its mark was missing), and makes the champion history name only versions that exist. The next
registration runs `clear_orphans` first, so a dead registration leaves nothing visible behind.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field

from visionops.config import Settings
from visionops.errors import VisionOpsError
from visionops.training.registry import (
    CHALLENGER,
    CHAMPION,
    TAG_HISTORY,
    TAG_REGISTRATION_KEY,
    Registry,
    is_pending,
    last_alive,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GcReport:
    """What `gc` found and did."""

    name: str
    removed: list[str]  # pending versions of interrupted registrations, deleted
    completed: list[str]  # pending versions that hold an alias: only their mark was missing
    kept: list[str]  # pending versions whose registration is alive (a recent heartbeat)
    history_before: list[str]
    history_after: list[str]
    failed: list[str] = field(default_factory=list)  # orphans that could not be deleted


def collect_orphans(
    registry: Registry, min_age_s: float = 0.0, *, keep_key: str | None = None
) -> GcReport:
    """Remove the versions of interrupted registrations (pending, with no heartbeat for at
    least `min_age_s`), finish the mark of pending versions that hold an alias, and make the
    champion history name only existing versions, ending with the champion."""
    name = registry.name
    versions = registry.search_versions()
    existing = {str(mv.version) for mv in versions}
    holders = {alias: registry.alias(alias) for alias in (CHAMPION, CHALLENGER)}
    aliased = {str(mv.version) for mv in holders.values() if mv is not None}
    raw = registry.stored_history()
    now = time.time()
    removed, completed, kept, failed = [], [], [], []
    for mv in sorted(versions, key=lambda v: int(v.version)):
        version = str(mv.version)
        if not is_pending(mv):
            continue
        if version in aliased or version in raw:
            registry.complete(version)
            completed.append(version)
        elif keep_key and (mv.tags or {}).get(TAG_REGISTRATION_KEY) == keep_key:
            continue  # the caller's own interrupted registration: it resumes it
        elif now - last_alive(mv) < min_age_s:
            kept.append(version)
        else:
            try:
                with registry.errors(f"delete orphan version {version}"):
                    registry.client.delete_model_version(name, version)
                removed.append(version)
                existing.discard(version)
            except VisionOpsError as error:
                log.error("%s: orphan v%s not deleted: %s", name, version, error)
                failed.append(version)
    history = [v for v in raw if v in existing]
    champion = holders[CHAMPION]
    if champion is not None and (not history or history[-1] != str(champion.version)):
        history.append(str(champion.version))
    if history != raw:
        with registry.errors("repair the champion history"):
            registry.client.set_registered_model_tag(name, TAG_HISTORY, json.dumps(history))
    if removed or completed or history != raw:
        log.info("%s: gc removed %s, completed %s, history %s -> %s",
                 name, removed, completed, raw, history)  # fmt: skip
    return GcReport(name, removed, completed, kept, raw, history, failed)


def clear_orphans(registry: Registry, stale_after_s: float, *, keep_key: str) -> GcReport:
    """`gc` before a registration: remove the orphans of dead registrations, then wait for
    live ones (fresh heartbeat) to finish or go stale, so that none is left behind; a
    registration still beating after two waits is left to itself, with a warning."""
    report = collect_orphans(registry, stale_after_s, keep_key=keep_key)
    for _ in range(2):
        if not report.kept:
            return report
        log.info("%s: waiting up to %.0f s for the registration of %s to finish or go stale",
                 registry.name, stale_after_s, ", ".join(f"v{v}" for v in report.kept))  # fmt: skip
        time.sleep(stale_after_s)
        report = collect_orphans(registry, stale_after_s, keep_key=keep_key)
    if report.kept:
        log.warning("%s: %s still being registered by another process; left pending",
                    registry.name, ", ".join(f"v{v}" for v in report.kept))  # fmt: skip
    return report


def gc(
    name: str | None = None, settings: Settings | None = None, *, min_age_s: float = 0.0
) -> GcReport:
    """Remove orphans of interrupted registrations and repair the champion history."""
    return collect_orphans(Registry(name, settings), min_age_s)
