"""The model registry (MLflow) with a promotion gate: only a better model is ever served.

A version is created from a finished run's model directory and tagged with the dataset hash, the
git commit and its evaluation. The gate gives it the alias `champion` only if it meets the
configured minimums and its mAP50-95 beats the champion's on the same evaluation data (same split
hash) by more than the margin; when the champion was evaluated on other data it is re-evaluated
first. Otherwise the version becomes `challenger` with a tag that says why. Serving follows
`models:/<name>@champion`, so a promotion or a rollback is one alias move. The registered model
keeps the list of past champions (tag `visionops.champion_history`) for rollback.

Every version's evaluations are kept as tags `visionops.eval.<data hash prefix>` (JSON metrics), so
a comparison on data a version was already scored on never runs the model again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from visionops.config import Settings, get_settings
from visionops.errors import (
    DataError,
    GateRejected,
    ModelNotFound,
    RegistryError,
    UsageError,
    VisionOpsError,
)
from visionops.model_artifact import METADATA_JSON, MODEL_ONNX, check_model_dir
from visionops.training.evaluate import (
    EVAL_METRIC_PREFIX,
    TAG_EVAL_DATA,
    TAG_EVAL_HASH,
    TAG_EVAL_SPLIT,
)
from visionops.training.tracking import (
    MODEL_ARTIFACT_DIR,
    TAG_PREFIX,
    Tracking,
    connect,
    download,
    mlflow_errors,
)

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.entities.model_registry import ModelVersion

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
GATE_METRIC = "map50_95"
HEADLINE_METRICS = ("map50", "map50_95", "precision", "recall")

TAG_DATASET_HASH = f"{TAG_PREFIX}dataset_hash"
TAG_GIT_COMMIT = f"{TAG_PREFIX}git_commit"
TAG_GATE = f"{TAG_PREFIX}gate"
TAG_DECISION = f"{TAG_PREFIX}gate.decision"
TAG_HISTORY = f"{TAG_PREFIX}champion_history"
TAG_ROLLED_BACK = f"{TAG_PREFIX}rolled_back"
TAG_PROMOTED = f"{TAG_PREFIX}promoted"

_MODELS_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[\w-]+)|/(?P<version>\d+))")
_RUNS_URI = re.compile(r"runs:/(?P<run>[0-9a-fA-F]+)/(?P<path>.+)")


def _eval_tag(data_hash: str) -> str:
    return f"{TAG_PREFIX}eval.{data_hash[:16]}"


@dataclass(frozen=True)
class Evaluation:
    """Headline metrics of one model on one evaluation split (identified by its hash)."""

    data_hash: str
    metrics: dict[str, float]
    data_yaml: str | None = None
    split: str = "val"


@dataclass(frozen=True)
class GateDecision:
    """What the gate decided and why (one sentence a human can act on)."""

    promote: bool
    reason: str
    champion_version: str | None = None
    champion_metrics: dict[str, float] | None = None


@dataclass(frozen=True)
class RegisterResult:
    """The created version and the alias it got."""

    name: str
    version: str
    promoted: bool
    alias: str
    reason: str
    metrics: dict[str, float]
    previous_champion: str | None = None


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


def meets_minimums(metrics: dict[str, float], settings: Settings) -> str | None:
    """None if the metrics meet the configured minimums, else why not."""
    checks = (("map50", settings.gate_min_map50), ("map50_95", settings.gate_min_map50_95))
    failing = [
        f"{key} {metrics.get(key, 0.0):.4f} < minimum {minimum:.4f}"
        for key, minimum in checks
        if metrics.get(key, 0.0) < minimum
    ]
    return "; ".join(failing) or None


def gate(
    candidate: dict[str, float],
    champion: dict[str, float] | None,
    settings: Settings,
    *,
    champion_version: str | None = None,
) -> GateDecision:
    """The promotion rule on metrics measured on the same evaluation data.

    Promote iff the minimums are met and (there is no champion, or the candidate's mAP50-95
    exceeds the champion's by more than `gate_margin`). Equal is not better.
    """
    below = meets_minimums(candidate, settings)
    if below:
        return GateDecision(False, f"below the minimums: {below}", champion_version, champion)
    score = candidate.get(GATE_METRIC, 0.0)
    if champion is None:
        return GateDecision(True, f"first champion: {GATE_METRIC} {score:.4f} meets the minimums")
    best = champion.get(GATE_METRIC, 0.0)
    margin = settings.gate_margin
    comparison = (
        f"{GATE_METRIC} {score:.4f} vs champion v{champion_version} {best:.4f} "
        f"on the same evaluation data (margin {margin:.4f})"
    )
    if score - best > margin:
        return GateDecision(True, f"beats the champion: {comparison}", champion_version, champion)
    return GateDecision(
        False, f"does not beat the champion: {comparison}", champion_version, champion
    )


class Registry:
    """VisionOps' view of one registered model in MLflow."""

    def __init__(self, name: str | None = None, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.name = name or self.settings.model_name
        self.tracking: Tracking = connect(self.settings)
        self.client = self.tracking.client

    # ------------------------------------------------------------------ reading

    def _errors(self, action: str) -> Any:
        return mlflow_errors(action, self.settings)

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
                key: float(tags[f"{TAG_PREFIX}metric.{key}"])
                for key in HEADLINE_METRICS
                if f"{TAG_PREFIX}metric.{key}" in tags
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

    def _run(self, run_id: str) -> Run:
        with self._errors(f"read run {run_id}"):
            return self.client.get_run(run_id)

    @staticmethod
    def run_evaluation(run: Run) -> Evaluation | None:
        """The evaluation `visionops evaluate` logged to a run, if any."""
        tags = run.data.tags
        data_hash = tags.get(TAG_EVAL_HASH)
        metrics = {
            key: run.data.metrics[f"{EVAL_METRIC_PREFIX}{key}"]
            for key in HEADLINE_METRICS
            if f"{EVAL_METRIC_PREFIX}{key}" in run.data.metrics
        }
        if not data_hash or GATE_METRIC not in metrics:
            return None
        return Evaluation(
            data_hash, metrics, tags.get(TAG_EVAL_DATA), tags.get(TAG_EVAL_SPLIT, "val")
        )

    def version_evaluation(self, mv: ModelVersion, data_hash: str) -> dict[str, float] | None:
        """The metrics of version `mv` on the data with `data_hash`, if it was scored there."""
        raw = (mv.tags or {}).get(_eval_tag(data_hash))
        if raw is None:
            return None
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            return None
        return {k: float(v) for k, v in value.items()} if isinstance(value, dict) else None

    # ------------------------------------------------------------------ gate

    def _evaluate_version_on(self, mv: ModelVersion, evaluation: Evaluation) -> dict[str, float]:
        """Score version `mv` on the candidate's evaluation data and remember it as a tag."""
        from visionops.training.evaluate import evaluate

        if not evaluation.data_yaml or not Path(evaluation.data_yaml).is_file():
            raise DataError(
                f"the evaluation data {evaluation.data_yaml or '(unknown)'} is not available here "
                f"to re-evaluate champion v{mv.version}"
            )
        log.info("re-evaluating v%s on %s (%s)", mv.version, evaluation.data_yaml, evaluation.split)
        result = evaluate(
            f"models:/{self.name}/{mv.version}",
            Path(evaluation.data_yaml),
            split=evaluation.split,
            log_run=False,
            settings=self.settings,
        )
        if result.data_hash != evaluation.data_hash:
            raise DataError(
                f"{evaluation.data_yaml} changed since the candidate was evaluated on it "
                f"(hash {result.data_hash[:12]} != {evaluation.data_hash[:12]})"
            )
        metrics = result.metrics.summary()
        with self._errors(f"tag version {mv.version} with its evaluation"):
            self.client.set_model_version_tag(
                self.name, str(mv.version), _eval_tag(evaluation.data_hash), json.dumps(metrics)
            )
        return metrics

    def decide(self, evaluation: Evaluation, champion: ModelVersion | None) -> GateDecision:
        """Run the gate for a candidate evaluated as `evaluation` against `champion`."""
        if champion is None:
            return gate(evaluation.metrics, None, self.settings)
        below = meets_minimums(evaluation.metrics, self.settings)
        if below:
            return gate(evaluation.metrics, None, self.settings)
        champion_metrics = self.version_evaluation(champion, evaluation.data_hash)
        if champion_metrics is None:
            try:
                champion_metrics = self._evaluate_version_on(champion, evaluation)
            except (DataError, ModelNotFound, UsageError) as error:
                return GateDecision(
                    False,
                    f"cannot compare with champion v{champion.version} on the same evaluation "
                    f"data: {error}",
                    str(champion.version),
                )
        return gate(
            evaluation.metrics,
            champion_metrics,
            self.settings,
            champion_version=str(champion.version),
        )

    # ------------------------------------------------------------------ writing

    def _ensure_model(self) -> None:
        try:
            with self._errors(f"read model {self.name!r}"):
                self.client.get_registered_model(self.name)
        except ModelNotFound:
            with self._errors(f"create model {self.name!r}"):
                self.client.create_registered_model(
                    self.name, description="VisionOps YOLOv8n defect detector"
                )

    def _check_run(self, run: Run) -> str:
        """The model directory URI of a finished run that holds a complete model directory."""
        run_id = run.info.run_id
        if run.info.status != "FINISHED":
            raise RegistryError(
                f"run {run_id} is {run.info.status}; only a FINISHED training run can be registered"
            )
        with self._errors(f"list the model directory of run {run_id}"):
            files = {
                Path(f.path).name for f in self.client.list_artifacts(run_id, MODEL_ARTIFACT_DIR)
            }
        missing = {MODEL_ONNX, METADATA_JSON} - files
        if missing:
            raise ModelNotFound(
                f"run {run_id} has no complete model directory ({', '.join(sorted(missing))} "
                f"missing under {MODEL_ARTIFACT_DIR}/)"
            )
        return f"{run.info.artifact_uri.rstrip('/')}/{MODEL_ARTIFACT_DIR}"

    def _set_champion(self, version: str, previous: str | None) -> None:
        """Move `champion` to `version` and append it to the history (one alias move)."""
        history = self.history()
        if previous and (not history or history[-1] != previous):
            history.append(previous)
        if not history or history[-1] != version:
            history.append(version)
        with self._errors(f"make version {version} the champion"):
            self.client.set_registered_model_tag(self.name, TAG_HISTORY, json.dumps(history))
            self.client.set_registered_model_alias(self.name, CHAMPION, version)

    def register(
        self, run_id: str, *, data_yaml: Path | None = None, split: str = "val"
    ) -> RegisterResult:
        """Create a version from run `run_id` and apply the gate (see the module docstring)."""
        run = self._run(run_id)
        source = self._check_run(run)
        evaluation = self.run_evaluation(run)
        if data_yaml is not None:
            evaluation = self._evaluation_for(run_id, evaluation, Path(data_yaml), split)
        if evaluation is None:
            raise RegistryError(
                f"run {run_id} has no evaluation; run `visionops evaluate --model "
                f"runs:/{run_id}/{MODEL_ARTIFACT_DIR} --data DATA_YAML` first, or pass --data"
            )
        self._ensure_model()
        champion = self.alias(CHAMPION)
        decision = self.decide(evaluation, champion)
        tags = {
            TAG_DATASET_HASH: run.data.tags.get(TAG_DATASET_HASH, ""),
            TAG_GIT_COMMIT: run.data.tags.get(TAG_GIT_COMMIT, "unknown"),
            TAG_EVAL_HASH: evaluation.data_hash,
            _eval_tag(evaluation.data_hash): json.dumps(evaluation.metrics),
            TAG_GATE: decision.reason,
            TAG_DECISION: CHAMPION if decision.promote else CHALLENGER,
            **{f"{TAG_PREFIX}metric.{k}": f"{v:.6f}" for k, v in evaluation.metrics.items()},
        }
        with self._errors(f"create a version of model {self.name!r} from run {run_id}"):
            mv = self.client.create_model_version(self.name, source, run_id=run_id, tags=tags)
        version = str(mv.version)
        try:
            if decision.promote:
                self._set_champion(version, str(champion.version) if champion else None)
            else:
                with self._errors(f"make version {version} the challenger"):
                    self.client.set_registered_model_alias(self.name, CHALLENGER, version)
        except VisionOpsError:
            self._delete_version(version)
            raise
        alias = CHAMPION if decision.promote else CHALLENGER
        log.info("registered %s v%s as %s: %s", self.name, version, alias, decision.reason)
        return RegisterResult(
            self.name, version, decision.promote, alias, decision.reason, evaluation.metrics,
            str(champion.version) if champion else None,
        )  # fmt: skip

    def _evaluation_for(
        self, run_id: str, logged: Evaluation | None, data_yaml: Path, split: str
    ) -> Evaluation:
        """The run's evaluation on `data_yaml`/`split`, evaluating it now if it was not."""
        from visionops.training.dataset import load_data_yaml
        from visionops.training.evaluate import evaluate

        data_hash = load_data_yaml(data_yaml).split_hash(split)
        if logged is not None and logged.data_hash == data_hash:
            return logged
        result = evaluate(
            f"runs:/{run_id}/{MODEL_ARTIFACT_DIR}", data_yaml, split=split, run_id=run_id,
            settings=self.settings,
        )  # fmt: skip
        return Evaluation(result.data_hash, result.metrics.summary(), str(data_yaml), split)

    def _delete_version(self, version: str) -> None:
        """Undo a version whose alias could not be set, so none is left half-registered."""
        try:
            with self._errors(f"delete version {version}"):
                self.client.delete_model_version(self.name, version)
        except VisionOpsError:
            log.error("could not delete half-registered version %s of %s", version, self.name)

    def promote(self, version: str | int, *, force: bool = False) -> AliasMove:
        """Make `version` the champion: through the gate, or unconditionally with `force`."""
        mv = self.version(version)
        version = str(mv.version)
        champion = self.alias(CHAMPION)
        if champion is not None and str(champion.version) == version:
            return AliasMove(self.name, version, version, "already the champion")
        if force:
            reason = "promoted by hand with --force (gate skipped)"
        else:
            evaluation = self._version_evaluation_record(mv)
            decision = self.decide(evaluation, champion)
            if not decision.promote:
                raise GateRejected(
                    f"version {version} not promoted: {decision.reason} "
                    "(use --force to promote anyway)"
                )
            reason = f"promoted by hand: {decision.reason}"
        previous = str(champion.version) if champion else None
        with self._errors(f"tag version {version}"):
            self.client.set_model_version_tag(self.name, version, TAG_PROMOTED, reason)
        self._set_champion(version, previous)
        log.info("%s: champion v%s -> v%s (%s)", self.name, previous, version, reason)
        return AliasMove(self.name, version, previous, reason)

    def _version_evaluation_record(self, mv: ModelVersion) -> Evaluation:
        data_hash = (mv.tags or {}).get(TAG_EVAL_HASH, "")
        metrics = self.version_evaluation(mv, data_hash) if data_hash else None
        if metrics is None:
            raise RegistryError(f"version {mv.version} carries no evaluation to gate on")
        run_tags = self._run(mv.run_id).data.tags if mv.run_id else {}
        return Evaluation(
            data_hash, metrics, run_tags.get(TAG_EVAL_DATA), run_tags.get(TAG_EVAL_SPLIT, "val")
        )

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


def register(
    run_id: str,
    *,
    data_yaml: Path | None = None,
    split: str = "val",
    name: str | None = None,
    settings: Settings | None = None,
) -> RegisterResult:
    """Register run `run_id`'s model directory and apply the promotion gate."""
    return Registry(name, settings).register(run_id, data_yaml=data_yaml, split=split)


def list_versions(name: str | None = None, settings: Settings | None = None) -> list[VersionInfo]:
    """Every version of the model, newest first."""
    return Registry(name, settings).versions()


def promote(
    version: str | int,
    *,
    force: bool = False,
    name: str | None = None,
    settings: Settings | None = None,
) -> AliasMove:
    """Make `version` the champion if it passes the gate (or unconditionally with `force`)."""
    return Registry(name, settings).promote(version, force=force)


def rollback(name: str | None = None, settings: Settings | None = None) -> AliasMove:
    """Move `champion` back to the previous champion."""
    return Registry(name, settings).rollback()


def resolve_model_uri(uri: str, settings: Settings | None = None) -> Path:
    """The local model directory for `models:/name@alias`, `models:/name/N` or `runs:/ID/path`.

    The alias is resolved on every call (a promotion is picked up); the download is cached by
    version (runs by run id) under the data dir and written atomically, so a version is fetched
    once. Raises ModelNotFound, RegistryError (MLflow unreachable) or StorageError.
    """
    settings = settings or get_settings()
    models, runs = _MODELS_URI.fullmatch(uri), _RUNS_URI.fullmatch(uri)
    if models is None and runs is None:
        raise UsageError(
            f"not a registry URI: {uri!r} (expected models:/NAME@ALIAS, models:/NAME/VERSION "
            "or runs:/RUN_ID/PATH)"
        )
    tracking = connect(settings)
    root = settings.data_dir / "cache" / "registry"
    root /= hashlib.sha256(tracking.tracking_uri.encode()).hexdigest()[:12]
    if models is not None:
        name = models["name"]
        with mlflow_errors(f"resolve {uri}", settings):
            if models["alias"]:
                mv = tracking.client.get_model_version_by_alias(name, models["alias"])
            else:
                mv = tracking.client.get_model_version(name, models["version"])
        source, target = mv.source, root / "models" / name / str(mv.version)
    else:
        assert runs is not None
        path = runs["path"].strip("/")
        with mlflow_errors(f"resolve {uri}", settings):
            run = tracking.client.get_run(runs["run"])
        source = f"{run.info.artifact_uri.rstrip('/')}/{path}"
        target = root / "runs" / runs["run"] / path
    if target.is_dir():
        try:
            check_model_dir(target)
            return target
        except VisionOpsError:
            shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        local = download(tracking, source, staging)
        check_model_dir(local)
        try:
            local.rename(target)
        except OSError:  # another process finished the same download first: use that one
            check_model_dir(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("%s -> %s", uri, target)
    return target
