"""Lineage: where a model version came from, as tags on its training run and on the version.

Every training run, and the version registered from it, carries `visionops.lineage.*` tags: the
version it was fine-tuned from (`parent_model`, `parent_version`, `parent_run`), what started it
(`trigger`: `drift` or `manual`), for a retraining the drift check that decided it (`drift_run`,
its MLflow run), the window it judged (`drift_window`) and the version it compared against
(`drift_reference`), and the pipeline runs involved (`monitoring_pipeline_run`,
`training_pipeline_run`). The MLflow UI shows them on the run and the version page;
`visionops model show VERSION` follows `parent_version` back to the first model (`chain`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from visionops.errors import UsageError
from visionops.tracking import TAG_PREFIX

LINEAGE_PREFIX = f"{TAG_PREFIX}lineage."
FIELDS = (
    "trigger",
    "parent_model",
    "parent_version",
    "parent_run",
    "drift_run",
    "drift_window",
    "drift_reference",
    "drift_decision",
    "monitoring_pipeline_run",
    "training_pipeline_run",
)
"""The lineage fields, each the tag `visionops.lineage.<field>`."""


def parse_lineage(text: str | Mapping[str, object] | None) -> dict[str, str]:
    """The lineage a pipeline passes along (a JSON object of `FIELDS`); UsageError for anything
    else, so a typo never silently drops a link of the chain."""
    if not text:
        return {}
    if isinstance(text, str):
        try:
            value = json.loads(text)
        except ValueError as error:
            raise UsageError(f"lineage must be a JSON object: {error}") from error
    else:
        value = dict(text)
    if not isinstance(value, dict):
        raise UsageError(f"lineage must be a JSON object, got {type(value).__name__}")
    unknown = sorted(set(value) - set(FIELDS))
    if unknown:
        raise UsageError(f"unknown lineage fields {unknown}; known: {', '.join(FIELDS)}")
    return {k: str(v) for k, v in value.items() if v not in (None, "")}


def lineage_tags(lineage: Mapping[str, str]) -> dict[str, str]:
    """`lineage` as MLflow tags (`visionops.lineage.<field>`)."""
    return {f"{LINEAGE_PREFIX}{k}": str(v) for k, v in lineage.items() if v}


def lineage_of(tags: Mapping[str, str]) -> dict[str, str]:
    """The lineage fields in a run's or version's tags."""
    return {
        key.removeprefix(LINEAGE_PREFIX): value
        for key, value in tags.items()
        if key.startswith(LINEAGE_PREFIX)
    }


@dataclass(frozen=True)
class Link:
    """One version of a chain and how it came to be."""

    version: str
    run_id: str | None
    lineage: dict[str, str]

    def describe(self) -> str:
        """One line: `v2: fine-tuned from v1 after drift check RUN on window A .. B (...)`."""
        lin = self.lineage
        parent = lin.get("parent_version")
        origin = f"fine-tuned from v{parent}" if parent else "trained from scratch"
        if lin.get("parent_model") and parent:
            origin += f" of {lin['parent_model']}"
        if lin.get("trigger") == "drift":
            origin += f" after drift check {lin.get('drift_run') or '(not recorded)'}"
            if lin.get("drift_window"):
                origin += f" on window {lin['drift_window']}"
            if lin.get("drift_reference"):
                origin += f" against {lin['drift_reference']}"
        runs = [f"training run {self.run_id}"] if self.run_id else []
        if lin.get("training_pipeline_run"):
            runs.append(f"training pipeline {lin['training_pipeline_run']}")
        if lin.get("monitoring_pipeline_run"):
            runs.append(f"monitoring pipeline {lin['monitoring_pipeline_run']}")
        return f"v{self.version}: {origin}" + (f" ({', '.join(runs)})" if runs else "")


def chain(
    version: str, read: Callable[[str], tuple[str | None, Mapping[str, str]] | None]
) -> list[Link]:
    """`version` and its ancestors, newest first. `read(version)` gives a version's run id and
    tags (None when it does not exist); the walk stops at a version without a parent, a parent
    that no longer exists, or a loop."""
    links: list[Link] = []
    seen: set[str] = set()
    current: str | None = version
    while current and current not in seen:
        seen.add(current)
        found = read(current)
        if found is None:
            break
        run_id, tags = found
        link = Link(current, run_id, lineage_of(tags))
        links.append(link)
        current = link.lineage.get("parent_version")
    return links
