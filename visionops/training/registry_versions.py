"""The registered versions as a person reads them: `visionops model list`, `model show`, the
hints that name the registry's models when the one asked for has no version.

Built from the tags the registry writes (`visionops.training.registry`): the headline metrics,
the gate's reason, the evaluations per data hash, the aliases, and whether the registration
finished.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

from visionops.config import Settings, get_settings
from visionops.tracking import TAG_PREFIX, connect, mlflow_errors
from visionops.training.evaluate import HEADLINE_METRICS, TAG_EVAL_HASH
from visionops.training.registry import (
    CHALLENGER,
    CHAMPION,
    TAG_DATASET_HASH,
    TAG_GATE,
    TAG_METRIC,
    Registry,
    is_pending,
)


@dataclass(frozen=True)
class VersionInfo:
    """One registered version as `visionops model list` shows it."""

    version: str
    aliases: list[str]
    run_id: str | None
    created: str
    metrics: dict[str, float]
    dataset_hash: str
    eval_data_hash: str
    gate: str
    tags: dict[str, str] = field(default_factory=dict)
    pending: bool = False  # an unfinished registration: never served, removed by `gc`

    @property
    def evaluations(self) -> dict[str, dict[str, float]]:
        """Its headline metrics per evaluation data it was scored on (data hash prefix -> metrics),
        from the tags `visionops.eval.<hash prefix>`."""
        found = {}
        for key, raw in self.tags.items():
            match = _EVAL_TAG.fullmatch(key)
            if match is None:
                continue
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                found[match[1]] = {k: float(v) for k, v in value.items()}
        return found


_EVAL_TAG = re.compile(re.escape(f"{TAG_PREFIX}eval.") + r"([0-9a-f]{16})")


def shared_evaluations(versions: list[VersionInfo]) -> list[str]:
    """The evaluation data (hash prefixes) the versions were scored on, the data most of them share
    first (then the newest version's): the columns in which versions compare fairly."""
    order: dict[str, tuple[int, int]] = {}
    for info in versions:
        for data in info.evaluations:
            count, newest = order.get(data, (0, 0))
            order[data] = (count + 1, max(newest, int(info.version)))
    return sorted(order, key=lambda data: order[data], reverse=True)


@dataclass(frozen=True)
class ModelSummary:
    """A registered model: its name, how many versions it has, which one is the champion."""

    name: str
    versions: int
    champion: str | None


def registered_models(settings: Settings | None = None) -> list[ModelSummary]:
    """Every registered model of the tracking store, by name."""
    settings = settings or get_settings()
    client = connect(settings).client
    with mlflow_errors("list the registered models", settings):
        models = list(client.search_registered_models())
        found = []
        for model in sorted(models, key=lambda m: m.name):
            versions = client.search_model_versions(f"name = '{model.name}'")
            champion = (model.aliases or {}).get(CHAMPION)
            found.append(ModelSummary(model.name, len(versions), str(champion or "") or None))
    return found


def other_models_hint(name: str, settings: Settings | None = None) -> str:
    """For "no versions of model NAME": the registered models there are and how to pick one."""
    others = [m for m in registered_models(settings) if m.name != name and m.versions]
    if not others:
        return "no model in this registry has a version yet"
    listed = ", ".join(
        f"{m.name} ({m.versions} versions{f', champion v{m.champion}' if m.champion else ''})"
        for m in others
    )
    return (
        f"this registry holds {listed}: pass --name {others[0].name} "
        f"(or set VISIONOPS_MODEL_NAME={others[0].name})"
    )


def version_infos(registry: Registry) -> list[VersionInfo]:
    """Every version, newest first, with its aliases, metrics and gate reason."""
    found = registry.search_versions()
    aliases: dict[str, list[str]] = {}
    for alias in (CHAMPION, CHALLENGER):
        holder = registry.alias(alias)
        if holder is not None:
            aliases.setdefault(str(holder.version), []).append(alias)
    infos = []
    for mv in sorted(found, key=lambda v: int(v.version), reverse=True):
        tags = dict(mv.tags or {})
        metrics = {
            key: float(tags[f"{TAG_METRIC}{key}"])
            for key in HEADLINE_METRICS
            if f"{TAG_METRIC}{key}" in tags
        }
        infos.append(
            VersionInfo(
                version=str(mv.version),
                aliases=aliases.get(str(mv.version), []),
                run_id=mv.run_id,
                created=datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC).isoformat(
                    timespec="seconds"
                ),
                metrics=metrics,
                dataset_hash=tags.get(TAG_DATASET_HASH, ""),
                eval_data_hash=tags.get(TAG_EVAL_HASH, ""),
                gate=tags.get(TAG_GATE, ""),
                tags=tags,
                pending=is_pending(mv),
            )
        )
    return infos


def list_versions(name: str | None = None, settings: Settings | None = None) -> list[VersionInfo]:
    """Every version of the model, newest first."""
    return version_infos(Registry(name, settings))
