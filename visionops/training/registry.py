"""The model registry in MLflow: versions, their tags, and the aliases `champion` and `challenger`.

Aliases only (stages are deprecated): serving follows `models:/<name>@champion`, so a promotion or
a rollback is one alias move. The registered model keeps the list of past champions (tag
`visionops.champion_history`) for rollback, and every version its evaluations as tags
`visionops.eval.<data hash prefix>` (JSON metrics), so a comparison on data a version was already
scored on never runs the model again. Which version gets which alias is decided by the gate
(`visionops.training.gate`) in `visionops.training.promotion`, which calls this module.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from visionops.config import Settings, get_settings
from visionops.errors import ModelNotFound, RegistryError, UsageError, VisionOpsError
from visionops.tracking import TAG_PREFIX, Tracking, connect, mlflow_errors
from visionops.training.evaluate import HEADLINE_METRICS, TAG_EVAL_HASH

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.entities.model_registry import ModelVersion

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"

TAG_DATASET_HASH = f"{TAG_PREFIX}dataset_hash"
TAG_GIT_COMMIT = f"{TAG_PREFIX}git_commit"
TAG_METRIC = f"{TAG_PREFIX}metric."
TAG_GATE = f"{TAG_PREFIX}gate"
TAG_DECISION = f"{TAG_PREFIX}gate.decision"
TAG_HISTORY = f"{TAG_PREFIX}champion_history"
TAG_ROLLED_BACK = f"{TAG_PREFIX}rolled_back"
TAG_PROMOTED = f"{TAG_PREFIX}promoted"


def eval_tag(data_hash: str) -> str:
    """The version tag that holds its metrics on the evaluation data with `data_hash`."""
    return f"{TAG_PREFIX}eval.{data_hash[:16]}"


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


@dataclass(frozen=True)
class AliasMove:
    """A promotion or rollback: the alias `champion` moved from one version to another."""

    name: str
    version: str
    previous: str | None
    reason: str


class Registry:
    """VisionOps' view of one registered model in MLflow."""

    def __init__(self, name: str | None = None, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.name = name or self.settings.model_name
        self.tracking: Tracking = connect(self.settings)
        self.client = self.tracking.client

    def _errors(self, action: str) -> Any:
        return mlflow_errors(action, self.settings)

    # ------------------------------------------------------------------ reading

    def version(self, version: str | int) -> ModelVersion:
        if not str(version).isdigit():
            raise UsageError(f"a model version is a number, got {version!r}")
        with self._errors(f"find version {version} of model {self.name!r}"):
            return self.client.get_model_version(self.name, str(version))

    def alias(self, alias: str) -> ModelVersion | None:
        """The version holding `alias`, or None (also when the model does not exist yet)."""
        try:
            with self._errors(f"read alias {alias!r} of model {self.name!r}"):
                return self.client.get_model_version_by_alias(self.name, alias)
        except ModelNotFound:
            return None

    def history(self) -> list[str]:
        try:
            with self._errors(f"read model {self.name!r}"):
                model = self.client.get_registered_model(self.name)
        except ModelNotFound:
            return []
        try:
            value = json.loads(model.tags.get(TAG_HISTORY, "[]"))
        except json.JSONDecodeError:
            return []
        return [str(v) for v in value] if isinstance(value, list) else []

    def versions(self) -> list[VersionInfo]:
        """Every version, newest first, with its aliases, metrics and gate reason."""
        with self._errors(f"list versions of model {self.name!r}"):
            found = self.client.search_model_versions(f"name = '{self.name}'")
        aliases: dict[str, list[str]] = {}
        for alias in (CHAMPION, CHALLENGER):
            holder = self.alias(alias)
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
                )
            )
        return infos

    def run(self, run_id: str) -> Run:
        with self._errors(f"read run {run_id}"):
            return self.client.get_run(run_id)

    def version_evaluation(self, mv: ModelVersion, data_hash: str) -> dict[str, float] | None:
        """The metrics of version `mv` on the data with `data_hash`, if it was scored there."""
        raw = (mv.tags or {}).get(eval_tag(data_hash))
        if raw is None:
            return None
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            return None
        return {k: float(v) for k, v in value.items()} if isinstance(value, dict) else None

    # ------------------------------------------------------------------ writing

    def remember_evaluation(self, version: str, data_hash: str, metrics: dict[str, float]) -> None:
        """Keep version `version`'s metrics on the data with `data_hash` as a tag."""
        with self._errors(f"tag version {version} with its evaluation"):
            self.client.set_model_version_tag(
                self.name, version, eval_tag(data_hash), json.dumps(metrics)
            )

    def ensure_model(self) -> None:
        """Create the registered model if it does not exist yet."""
        try:
            with self._errors(f"read model {self.name!r}"):
                self.client.get_registered_model(self.name)
        except ModelNotFound:
            with self._errors(f"create model {self.name!r}"):
                self.client.create_registered_model(
                    self.name, description="VisionOps YOLOv8n defect detector"
                )

    def create_version(self, run_id: str, source: str, tags: dict[str, str]) -> str:
        """A new version of the model from `source` (a run's model directory); its number."""
        with self._errors(f"create a version of model {self.name!r} from run {run_id}"):
            mv = self.client.create_model_version(self.name, source, run_id=run_id, tags=tags)
        return str(mv.version)

    def set_champion(self, version: str, previous: str | None) -> None:
        """Move `champion` to `version` and append it to the history (one alias move)."""
        history = self.history()
        if previous and (not history or history[-1] != previous):
            history.append(previous)
        if not history or history[-1] != version:
            history.append(version)
        with self._errors(f"make version {version} the champion"):
            self.client.set_registered_model_tag(self.name, TAG_HISTORY, json.dumps(history))
            self.client.set_registered_model_alias(self.name, CHAMPION, version)

    def set_challenger(self, version: str) -> None:
        with self._errors(f"make version {version} the challenger"):
            self.client.set_registered_model_alias(self.name, CHALLENGER, version)

    def mark_promoted(self, version: str, reason: str) -> None:
        """Say on the version why it was promoted by hand (tag `visionops.promoted`)."""
        with self._errors(f"tag version {version}"):
            self.client.set_model_version_tag(self.name, version, TAG_PROMOTED, reason)

    def delete_version(self, version: str) -> None:
        """Undo a version whose alias could not be set, so none is left half-registered."""
        try:
            with self._errors(f"delete version {version}"):
                self.client.delete_model_version(self.name, version)
        except VisionOpsError:
            log.error("could not delete half-registered version %s of %s", version, self.name)

    def rollback(self) -> AliasMove:
        """Move `champion` back to the previous champion; the history keeps what happened."""
        champion = self.alias(CHAMPION)
        if champion is None:
            raise ModelNotFound(f"model {self.name!r} has no champion to roll back")
        current = str(champion.version)
        history = self.history()
        while history and history[-1] == current:
            history.pop()
        while history:
            candidate = history[-1]
            try:
                self.version(candidate)
                break
            except ModelNotFound:
                history.pop()
        if not history:
            raise RegistryError(
                f"model {self.name!r} has no previous champion before v{current} to roll back to"
            )
        previous = history[-1]
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        with self._errors(f"roll back champion v{current} to v{previous}"):
            self.client.set_registered_model_tag(self.name, TAG_HISTORY, json.dumps(history))
            self.client.set_registered_model_alias(self.name, CHAMPION, previous)
            self.client.set_model_version_tag(
                self.name, current, TAG_ROLLED_BACK, f"replaced by v{previous} at {stamp}"
            )
        log.info("%s: rolled back champion v%s -> v%s", self.name, current, previous)
        return AliasMove(self.name, previous, current, f"rollback from v{current}")


def list_versions(name: str | None = None, settings: Settings | None = None) -> list[VersionInfo]:
    """Every version of the model, newest first."""
    return Registry(name, settings).versions()


def rollback(name: str | None = None, settings: Settings | None = None) -> AliasMove:
    """Move `champion` back to the previous champion."""
    return Registry(name, settings).rollback()
