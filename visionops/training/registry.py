"""The model registry in MLflow: versions, their tags, and the aliases `champion` and `challenger`.

Aliases only (stages are deprecated): serving follows `models:/<name>@champion`, so a promotion or
a rollback is one alias move. The registered model keeps the list of past champions (tag
`visionops.champion_history`) for rollback, and every version its evaluations as tags
`visionops.eval.<data hash prefix>` (JSON metrics), so a comparison on data a version was already
scored on never runs the model again. Which version gets which alias is decided by the gate
(`visionops.training.gate`) in `visionops.training.promotion`, which calls this module.

MLflow has no transactions, and its client repeats a POST whose answer was lost: a registration that
is interrupted must never leave a version that looks registered. So a version is created with an
idempotency key (tag `visionops.registration_key`, from the run and the candidate) and marked
`pending` until its aliases moved; a retried create finds the version it made (duplicates the
client's own retries made are deleted), a retried registration resumes it, and `gc`
(`visionops.training.registry_gc`) removes pending versions nobody finishes. A registration that is
running says so: it renews the tag `visionops.registration_heartbeat` while its version is pending,
so a pending version whose heartbeat is older than `VISIONOPS_REGISTRY_ORPHAN_AFTER_S` belongs to a
registration that died. The next registration removes those, and waits (bounded) for younger ones to
finish or go stale. The champion alias moves first and the history after; if the history cannot be
written the alias moves back, and `gc` repairs what two failures in a row leave. The history never
names a version that does not exist, and rollback goes only to versions that do.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from visionops.config import Settings, get_settings
from visionops.errors import ModelNotFound, RegistryError, UsageError, VisionOpsError
from visionops.tracking import TAG_PREFIX, Tracking, connect, mlflow_errors

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
TAG_REPLACED = f"{TAG_PREFIX}replaced"
REPLACED = "replaced"
TAG_REGISTRATION_KEY = f"{TAG_PREFIX}registration_key"
TAG_REGISTRATION = f"{TAG_PREFIX}registration"
TAG_ORPHAN = f"{TAG_PREFIX}orphan"
TAG_HEARTBEAT = f"{TAG_PREFIX}registration_heartbeat"
PENDING = "pending"
COMPLETE = "complete"


def registration_key(run_id: str, source: str, data_hash: str) -> str:
    """The idempotency key of registering `source` of run `run_id` evaluated on `data_hash`."""
    return hashlib.sha256(f"{run_id}\n{source}\n{data_hash}".encode()).hexdigest()[:32]


def pending_note(version: str, run_id: str) -> str:
    """What exists after a registration failed past the create, when MLflow cannot be asked."""
    return (
        f"version {version} was created and is marked pending (never served); MLflow cannot be "
        f"asked now: registering run {run_id} again finishes it, `visionops model gc` removes it"
    )


def is_pending(mv: ModelVersion) -> bool:
    """True for a version whose registration has not finished (no alias moved for it yet)."""
    return (mv.tags or {}).get(TAG_REGISTRATION) == PENDING


def last_alive(mv: ModelVersion) -> float:
    """When the registration of a pending version last showed it was running (epoch seconds):
    its heartbeat, or its creation for versions made before heartbeats existed."""
    created = mv.creation_timestamp / 1000
    try:
        return max(created, float((mv.tags or {}).get(TAG_HEARTBEAT, created)))
    except ValueError:
        return created


def eval_tag(data_hash: str) -> str:
    """The version tag that holds its metrics on the evaluation data with `data_hash`."""
    return f"{TAG_PREFIX}eval.{data_hash[:16]}"


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

    def errors(self, action: str) -> Any:
        return mlflow_errors(action, self.settings)

    # ------------------------------------------------------------------ reading

    def version(self, version: str | int) -> ModelVersion:
        if not str(version).isdigit():
            raise UsageError(f"a model version is a number, got {version!r}")
        with self.errors(f"find version {version} of model {self.name!r}"):
            return self.client.get_model_version(self.name, str(version))

    def alias(self, alias: str) -> ModelVersion | None:
        """The version holding `alias`, or None (also when the model does not exist yet)."""
        try:
            with self.errors(f"read alias {alias!r} of model {self.name!r}"):
                return self.client.get_model_version_by_alias(self.name, alias)
        except ModelNotFound:
            return None

    def stored_history(self) -> list[str]:
        """The champion history as stored (it may name versions deleted since)."""
        try:
            with self.errors(f"read model {self.name!r}"):
                model = self.client.get_registered_model(self.name)
        except ModelNotFound:
            return []
        try:
            value = json.loads(model.tags.get(TAG_HISTORY, "[]"))
        except json.JSONDecodeError:
            return []
        return [str(v) for v in value] if isinstance(value, list) else []

    def history(self) -> list[str]:
        """Past and present champions, oldest first: only versions that exist."""
        raw = self.stored_history()
        if not raw:
            return []
        existing = {str(mv.version) for mv in self.search_versions()}
        return [v for v in raw if v in existing]

    def search_versions(self, extra: str = "") -> list[ModelVersion]:
        where = f"name = '{self.name}'" + (f" and {extra}" if extra else "")
        with self.errors(f"list versions of model {self.name!r}"):
            return list(self.client.search_model_versions(where))

    def registrations(self, key: str) -> list[ModelVersion]:
        """The versions made with idempotency key `key`, oldest first."""
        found = self.search_versions(f"tags.`{TAG_REGISTRATION_KEY}` = '{key}'")
        return sorted(found, key=lambda mv: int(mv.version))

    def run(self, run_id: str) -> Run:
        with self.errors(f"read run {run_id}"):
            return self.client.get_run(run_id)

    def run_json(self, run_id: str, path: str) -> Any:
        """The JSON artifact `path` of run `run_id`, or None if the run has no such file."""
        directory, _, name = path.rpartition("/")
        with self.errors(f"list the artifacts of run {run_id}"):
            listed = {f.path for f in self.client.list_artifacts(run_id, directory or None)}
        if path not in listed:
            return None
        with tempfile.TemporaryDirectory() as tmp, self.errors(f"read {path} of run {run_id}"):
            local = self.client.download_artifacts(run_id, path, tmp)
            try:
                return json.loads(Path(local).read_text())
            except (OSError, json.JSONDecodeError):
                log.warning(
                    "run %s: %s is not readable JSON; left off the model card", run_id, name
                )
                return None

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
        with self.errors(f"tag version {version} with its evaluation"):
            self.client.set_model_version_tag(
                self.name, version, eval_tag(data_hash), json.dumps(metrics)
            )

    def ensure_model(self) -> None:
        """Create the registered model if it does not exist yet."""
        try:
            with self.errors(f"read model {self.name!r}"):
                self.client.get_registered_model(self.name)
        except ModelNotFound:
            with self.errors(f"create model {self.name!r}"):
                self.client.create_registered_model(
                    self.name, description="VisionOps YOLOv8n defect detector"
                )

    def create_version(
        self,
        run_id: str,
        source: str,
        tags: dict[str, str],
        key: str,
        description: str | None = None,
    ) -> str:
        """A new version from `source` (a run's model directory), marked pending, made once;
        `description` is the Markdown its MLflow page shows (the model card).

        MLflow's client repeats a create whose answer was lost, and a create may fail after the
        server acted: the versions carrying `key` are looked up afterwards, the oldest is kept and
        the client's duplicates are deleted. If the server cannot be asked, the error says that a
        pending version may exist and how to finish or remove it.
        """
        marked = {
            **tags,
            TAG_REGISTRATION_KEY: key,
            TAG_REGISTRATION: PENDING,
            TAG_HEARTBEAT: f"{time.time():.3f}",
        }
        try:
            with self.errors(f"create a version of model {self.name!r} from run {run_id}"):
                mv = self.client.create_model_version(
                    self.name, source, run_id=run_id, tags=marked, description=description
                )
        except VisionOpsError as error:
            try:
                made = self.registrations(key)
            except VisionOpsError:
                raise type(error)(
                    f"{error}. Whether a version was created cannot be checked now; if one was, it "
                    f"is marked pending and never served: registering run {run_id} again finishes "
                    "it, `visionops model gc` removes it"
                ) from error
            if not made:
                raise type(error)(f"{error}. No version was created") from error
            log.warning("the create of %s failed, but made v%s", self.name, made[0].version)
        else:
            try:
                made = self.registrations(key)
            except VisionOpsError as error:
                raise type(error)(
                    f"{error}. Now: {pending_note(str(mv.version), run_id)}"
                ) from error
        if not made:
            raise RegistryError(f"MLflow acknowledged a version of {self.name!r} but lists none")
        keep, *duplicates = made
        for extra in duplicates:  # made by the client's retries of our one create
            if is_pending(extra):
                log.warning("%s: deleting v%s, a duplicate of v%s from a repeated create",
                            self.name, extra.version, keep.version)  # fmt: skip
                with self.errors(f"delete duplicate version {extra.version}"):
                    self.client.delete_model_version(self.name, str(extra.version))
        return str(keep.version)

    def beat(self, version: str) -> None:
        """Say that the registration of pending version `version` is alive now."""
        with self.errors(f"renew the registration heartbeat of version {version}"):
            self.client.set_model_version_tag(
                self.name, version, TAG_HEARTBEAT, f"{time.time():.3f}"
            )

    @contextmanager
    def heartbeat(self, version: str, every_s: float) -> Iterator[None]:
        """Renew version `version`'s heartbeat every `every_s` seconds while the block runs, so
        that no other registration takes its pending version for an orphan. A beat in flight
        when the block ends is not waited for (MLflow may be down): a late beat is harmless."""
        stop = threading.Event()

        def beating() -> None:
            while not stop.wait(every_s):
                try:
                    self.beat(version)
                except VisionOpsError as error:  # a missed beat only ages the version
                    log.debug("%s: %s", self.name, error)

        threading.Thread(target=beating, name=f"heartbeat-v{version}", daemon=True).start()
        try:
            yield
        finally:
            stop.set()

    def complete(self, version: str) -> None:
        """Mark a version's registration finished (its aliases have moved)."""
        with self.errors(f"mark version {version} registered"):
            self.client.set_model_version_tag(self.name, version, TAG_REGISTRATION, COMPLETE)

    def set_description(self, version: str, description: str) -> None:
        """Replace a version's description (the model card of a resumed registration)."""
        with self.errors(f"write the model card of version {version}"):
            self.client.update_model_version(self.name, version, description=description)

    def set_decision(self, version: str, tags: dict[str, str]) -> None:
        """Rewrite a resumed registration's gate tags with today's decision."""
        with self.errors(f"tag version {version} with the gate's decision"):
            for key, value in tags.items():
                self.client.set_model_version_tag(self.name, version, key, value)

    def set_champion(self, version: str, previous: str | None, by: str = "") -> None:
        """Move `champion` to `version` and append it to the history, both or neither: the alias
        moves first; if the history cannot be written it moves back (and if even that fails, the
        error says so and `gc` adds the champion to the history). Then the gate's tags follow the
        alias: `version` says champion, `previous` says when and by what (`by`) it was replaced."""
        history = self.history()
        if previous and (not history or history[-1] != previous):
            history.append(previous)
        if not history or history[-1] != version:
            history.append(version)
        self._move_alias_with_history(version, previous, history, f"make v{version} the champion")
        self._follow_alias(version, previous, by)

    def _follow_alias(self, version: str, previous: str | None, by: str) -> None:
        """Rewrite the gate's decision tags after `champion` moved from `previous` to `version`.
        They describe the alias, which already moved: a failure is logged, not raised."""
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        who = f"{by}, " if by else ""
        tags = [(version, TAG_DECISION, CHAMPION)]
        if previous and previous != version:
            tags += [
                (previous, TAG_DECISION, REPLACED),
                (previous, TAG_REPLACED, f"by v{version} at {stamp} ({who}user {_user()})"),
            ]
        for target, key, value in tags:
            try:
                with self.errors(f"tag v{target} with {key}"):
                    self.client.set_model_version_tag(self.name, target, key, value)
            except VisionOpsError as error:
                log.warning("%s: champion moved, but %s of v%s not written: %s",
                            self.name, key, target, error)  # fmt: skip

    def _move_alias_with_history(
        self, version: str, previous: str | None, history: list[str], action: str
    ) -> None:
        with self.errors(action):
            self.client.set_registered_model_alias(self.name, CHAMPION, version)
        try:
            with self.errors(f"record v{version} in the champion history"):
                self.client.set_registered_model_tag(self.name, TAG_HISTORY, json.dumps(history))
        except VisionOpsError as error:
            try:
                with self.errors(f"move champion back to v{previous}"):
                    if previous:
                        self.client.set_registered_model_alias(self.name, CHAMPION, previous)
                    else:
                        self.client.delete_registered_model_alias(self.name, CHAMPION)
            except VisionOpsError as undo:
                raise RegistryError(
                    f"champion moved to v{version}, but the history could not record it ({error})"
                    f" and moving champion back to v{previous or '(none)'} failed too ({undo}); "
                    "`visionops model gc` adds it to the history"
                ) from error
            raise type(error)(f"{error}; champion stays v{previous or '(none)'}") from error

    def set_challenger(self, version: str) -> None:
        with self.errors(f"make version {version} the challenger"):
            self.client.set_registered_model_alias(self.name, CHALLENGER, version)

    def mark_promoted(self, version: str, reason: str) -> None:
        """Say on the version why it was promoted by hand (tag `visionops.promoted`)."""
        with self.errors(f"tag version {version}"):
            self.client.set_model_version_tag(self.name, version, TAG_PROMOTED, reason)

    def discard(self, version: str, run_id: str) -> str:
        """Undo the pending version of a registration that failed; what exists now, in words."""
        try:
            mv = self.version(version)
        except ModelNotFound:
            return f"version {version} does not exist"
        except VisionOpsError:
            return pending_note(version, run_id)
        if mv.aliases:
            return f"version {version} exists and holds {', '.join(mv.aliases)}"
        try:
            with self.errors(f"delete version {version}"):
                self.client.delete_model_version(self.name, version)
        except VisionOpsError:
            with_tag = self._tag_orphan(version)
            return (
                f"version {version} was created but could not be deleted; it is marked pending"
                f"{with_tag} and never served: `visionops model gc` removes it"
            )
        return f"version {version} was deleted again: nothing of this registration is left"

    def _tag_orphan(self, version: str) -> str:
        try:
            with self.errors(f"tag version {version} as an orphan"):
                self.client.set_model_version_tag(
                    self.name, version, TAG_ORPHAN, "registration interrupted"
                )
        except VisionOpsError:
            return ""
        return f" and tagged {TAG_ORPHAN}"

    def rollback(self) -> AliasMove:
        """Move `champion` back to the previous champion that still exists; the history keeps
        what happened (alias and history move together, as in `set_champion`)."""
        champion = self.alias(CHAMPION)
        if champion is None:
            raise ModelNotFound(f"model {self.name!r} has no champion to roll back")
        current = str(champion.version)
        usable = {str(mv.version) for mv in self.search_versions() if not is_pending(mv)}
        history = [v for v in self.stored_history() if v in usable]
        while history and history[-1] == current:
            history.pop()
        if not history:
            raise RegistryError(
                f"model {self.name!r} has no previous champion before v{current} to roll back to"
            )
        previous = history[-1]
        self._move_alias_with_history(
            previous, current, history, f"roll back champion v{current} to v{previous}"
        )
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        with self.errors(f"tag v{current} as rolled back"):
            self.client.set_model_version_tag(
                self.name, current, TAG_ROLLED_BACK, f"replaced by v{previous} at {stamp}"
            )
        self._follow_alias(previous, current, "rollback")
        log.info("%s: rolled back champion v%s -> v%s", self.name, current, previous)
        return AliasMove(self.name, previous, current, f"rollback from v{current}")


def _user() -> str:
    """Who moved the alias: the account running this process (a pod's is its service user)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def rollback(name: str | None = None, settings: Settings | None = None) -> AliasMove:
    """Move `champion` back to the previous champion."""
    return Registry(name, settings).rollback()
