"""Promotion: evaluate, let the gate decide, then move the aliases. Only a better model is served.

`register` creates a version from a finished run's model directory, tagged with the dataset hash,
the git commit and its evaluation, and makes it `champion` only if the gate
(`visionops.training.gate`) says so: the configured minimums are met and its mAP50-95 beats the
champion's on the same evaluation data (same split hash) by more than the margin. When the
champion was scored on other data it is evaluated on the candidate's data first (and the result is
kept on its version). Otherwise the version becomes `challenger` with a tag that says why.
`promote` applies the same decision to an existing version. This module calls evaluation and the
registry; neither calls back. A registration is idempotent and never leaves a version that looks
registered when it fails (see `visionops.training.registry`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from visionops.config import Settings
from visionops.errors import (
    DataError,
    GateRejected,
    ModelNotFound,
    RegistryError,
    UsageError,
    VisionOpsError,
)
from visionops.models.artifact import METADATA_JSON, MODEL_ARTIFACT_DIR
from visionops.models.sources import run_model_source
from visionops.training.dataset import load_data_yaml
from visionops.training.evaluate import (
    TAG_EVAL_DATA,
    TAG_EVAL_HASH,
    TAG_EVAL_SPLIT,
    Evaluation,
    evaluate,
    logged_evaluation,
)
from visionops.training.gate import GateDecision, gate, meets_minimums
from visionops.training.lineage import LINEAGE_PREFIX
from visionops.training.model_card import CardInputs, model_card
from visionops.training.registry import (
    CHALLENGER,
    CHAMPION,
    TAG_DATASET_HASH,
    TAG_DECISION,
    TAG_GATE,
    TAG_GIT_COMMIT,
    TAG_METRIC,
    AliasMove,
    Registry,
    eval_tag,
    is_pending,
    registration_key,
)
from visionops.training.registry_gc import clear_orphans
from visionops.training.train import LABEL_STATISTICS_JSON, TRAINING_ARTIFACT_DIR

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

log = logging.getLogger(__name__)


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
    card: str = ""
    """The model card: the version's MLflow description (Markdown)."""


def register(
    run_id: str,
    *,
    data_yaml: Path | None = None,
    split: str = "val",
    name: str | None = None,
    settings: Settings | None = None,
) -> RegisterResult:
    """Create a version from run `run_id` and apply the gate (see the module docstring).

    With `data_yaml` the gate compares on that data's `split`, evaluating the run first if it was
    not evaluated there. Registering the same run and candidate again is idempotent: it finishes
    an interrupted registration, or returns the version a finished one made. If the aliases
    cannot be moved, the new version is deleted again (or left pending, never served, for the
    next registration or `visionops model gc`), and the error says what exists now.
    """
    registry = Registry(name, settings)
    run = registry.run(run_id)
    source = run_model_source(registry.tracking, run, registry.settings)
    evaluation = logged_evaluation(run)
    if data_yaml is not None:
        evaluation = _evaluation_on(registry, run_id, evaluation, Path(data_yaml), split)
    if evaluation is None:
        raise RegistryError(
            f"run {run_id} has no evaluation; run `visionops evaluate --model "
            f"runs:/{run_id}/{MODEL_ARTIFACT_DIR} --data DATA_YAML` first, or pass --data"
        )
    key = registration_key(run_id, source, evaluation.data_hash)
    registry.ensure_model()
    stale_after = registry.settings.registry_orphan_after_s
    clear_orphans(registry, stale_after, keep_key=key)
    earlier = registry.registrations(key)
    if earlier and not is_pending(earlier[0]):
        return _already_registered(registry, earlier[0], evaluation)
    champion = registry.alias(CHAMPION)
    decision = decide(registry, evaluation, champion)
    gate_tags = {
        TAG_GATE: decision.reason,
        TAG_DECISION: CHAMPION if decision.promote else CHALLENGER,
    }
    card = model_card(_card_inputs(registry, run_id, evaluation, decision))
    if earlier:
        version = str(earlier[0].version)
        log.info("%s: finishing the interrupted registration of v%s", registry.name, version)
        registry.beat(version)
        registry.set_decision(version, gate_tags)
        registry.set_description(version, card)
    else:
        tags = {
            TAG_DATASET_HASH: run.data.tags.get(TAG_DATASET_HASH, ""),
            TAG_GIT_COMMIT: run.data.tags.get(TAG_GIT_COMMIT, "unknown"),
            TAG_EVAL_HASH: evaluation.data_hash,
            eval_tag(evaluation.data_hash): json.dumps(evaluation.metrics),
            **gate_tags,
            **{f"{TAG_METRIC}{k}": f"{v:.6f}" for k, v in evaluation.metrics.items()},
            **{k: v for k, v in run.data.tags.items() if k.startswith(LINEAGE_PREFIX)},
        }
        version = registry.create_version(run_id, source, tags, key, description=card)
    previous = str(champion.version) if champion else None
    with registry.heartbeat(version, every_s=max(stale_after / 3, 0.2)):
        alias = _move_aliases(registry, version, run_id, previous, promote=decision.promote)
    log.info("registered %s v%s as %s: %s", registry.name, version, alias, decision.reason)
    return RegisterResult(
        registry.name, version, decision.promote, alias, decision.reason, evaluation.metrics,
        previous, card,
    )  # fmt: skip


def _move_aliases(
    registry: Registry, version: str, run_id: str, previous: str | None, *, promote: bool
) -> str:
    """Give the new version its alias and mark its registration complete; if the alias cannot
    move, the version is deleted again and the error says what exists now."""
    try:
        if promote:
            registry.set_champion(version, previous, by=f"registration of run {run_id}")
        else:
            registry.set_challenger(version)
    except VisionOpsError as error:
        now = registry.discard(version, run_id)
        raise type(error)(f"registering run {run_id} failed: {error}. Now: {now}") from error
    alias = CHAMPION if promote else CHALLENGER
    try:
        registry.complete(version)
    except VisionOpsError as error:
        raise type(error)(
            f"v{version} is now {alias}, but could not be marked registered: {error}. It serves "
            "as it is; registering the same run again or `visionops model gc` marks it"
        ) from error
    return alias


def _already_registered(
    registry: Registry, mv: ModelVersion, evaluation: Evaluation
) -> RegisterResult:
    """The result of a registration that finished earlier (same run, same candidate)."""
    version = str(mv.version)
    aliases = [a for a in (CHAMPION, CHALLENGER) if _holds(registry, a, version)]
    reason = (mv.tags or {}).get(TAG_GATE, "")
    log.info("%s: run already registered as v%s (%s)", registry.name, version, aliases or "-")
    return RegisterResult(
        registry.name, version, CHAMPION in aliases, ",".join(aliases) or "none",
        f"already registered as v{version}: {reason}", evaluation.metrics,
        card=mv.description or "",
    )  # fmt: skip


def _holds(registry: Registry, alias: str, version: str) -> bool:
    holder = registry.alias(alias)
    return holder is not None and str(holder.version) == version


def _card_inputs(
    registry: Registry, run_id: str, evaluation: Evaluation, decision: GateDecision
) -> CardInputs:
    """What the model card shows: the run (read again when it was just evaluated), its model
    directory's metadata and its training label statistics."""
    run = registry.run(run_id)
    metadata = registry.run_json(run_id, f"{MODEL_ARTIFACT_DIR}/{METADATA_JSON}") or {}
    stats = registry.run_json(run_id, f"{TRAINING_ARTIFACT_DIR}/{LABEL_STATISTICS_JSON}") or {}
    train = (stats.get("splits") or {}).get("train") or {}
    return CardInputs(
        model_name=registry.name,
        run_id=run_id,
        evaluation=evaluation,
        decision=decision,
        run_tags=run.data.tags,
        run_params=run.data.params,
        run_metrics=run.data.metrics,
        class_names=list(metadata.get("names") or stats.get("names") or []),
        train_counts={str(k): int(v) for k, v in (train.get("boxes_per_class") or {}).items()},
        variants=metadata.get("variants") or {},
    )


def promote(
    version: str | int,
    *,
    force: bool = False,
    name: str | None = None,
    settings: Settings | None = None,
) -> AliasMove:
    """Make `version` the champion: through the gate, or unconditionally with `force`."""
    registry = Registry(name, settings)
    mv = registry.version(version)
    version = str(mv.version)
    if is_pending(mv):
        raise RegistryError(
            f"version {version} is an unfinished registration and is never promoted: register "
            f"run {mv.run_id} again to finish it, or `visionops model gc` to remove it"
        )
    champion = registry.alias(CHAMPION)
    if champion is not None and str(champion.version) == version:
        return AliasMove(registry.name, version, version, "already the champion")
    if force:
        reason = "promoted by hand with --force (gate skipped)"
    else:
        decision = decide(registry, _version_evaluation(registry, mv), champion)
        if not decision.promote:
            raise GateRejected(
                f"version {version} not promoted: {decision.reason} (use --force to promote anyway)"
            )
        reason = f"promoted by hand: {decision.reason}"
    previous = str(champion.version) if champion else None
    registry.mark_promoted(version, reason)
    registry.set_champion(version, previous, by="promote --force" if force else "promote")
    log.info("%s: champion v%s -> v%s (%s)", registry.name, previous, version, reason)
    return AliasMove(registry.name, version, previous, reason)


def decide(
    registry: Registry, evaluation: Evaluation, champion: ModelVersion | None
) -> GateDecision:
    """The gate for a candidate evaluated as `evaluation` against `champion`, both scored on the
    same data: the champion's score there comes from its tags, or from evaluating it now."""
    settings = registry.settings
    if champion is None or meets_minimums(evaluation.metrics, settings):
        return gate(evaluation.metrics, None, settings)
    champion_metrics = registry.version_evaluation(champion, evaluation.data_hash)
    if champion_metrics is None:
        try:
            champion_metrics = _evaluate_version(registry, champion, evaluation)
        except (DataError, ModelNotFound, UsageError) as error:
            return GateDecision(
                False,
                f"cannot compare with champion v{champion.version} on the same evaluation "
                f"data: {error}",
                str(champion.version),
            )
    return gate(
        evaluation.metrics, champion_metrics, settings, champion_version=str(champion.version)
    )


def _evaluate_version(
    registry: Registry, mv: ModelVersion, evaluation: Evaluation
) -> dict[str, float]:
    """Score version `mv` on the candidate's evaluation data and remember it on the version."""
    if not evaluation.data_yaml or not Path(evaluation.data_yaml).is_file():
        raise DataError(
            f"the evaluation data {evaluation.data_yaml or '(unknown)'} is not available here "
            f"to re-evaluate champion v{mv.version}"
        )
    log.info("re-evaluating v%s on %s (%s)", mv.version, evaluation.data_yaml, evaluation.split)
    result = evaluate(
        f"models:/{registry.name}/{mv.version}",
        Path(evaluation.data_yaml),
        split=evaluation.split,
        log_run=False,
        settings=registry.settings,
    )
    if result.data_hash != evaluation.data_hash:
        raise DataError(
            f"{evaluation.data_yaml} changed since the candidate was evaluated on it "
            f"(hash {result.data_hash[:12]} != {evaluation.data_hash[:12]})"
        )
    metrics = result.metrics.summary()
    registry.remember_evaluation(str(mv.version), evaluation.data_hash, metrics)
    return metrics


def _evaluation_on(
    registry: Registry, run_id: str, logged: Evaluation | None, data_yaml: Path, split: str
) -> Evaluation:
    """The run's evaluation on `data_yaml`/`split`, evaluating it now if it was not."""
    data_hash = load_data_yaml(data_yaml).split_hash(split)
    if logged is not None and logged.data_hash == data_hash:
        return logged
    result = evaluate(
        f"runs:/{run_id}/{MODEL_ARTIFACT_DIR}", data_yaml, split=split, run_id=run_id,
        settings=registry.settings,
    )  # fmt: skip
    return Evaluation(result.data_hash, result.metrics.summary(), str(data_yaml), split)


def _version_evaluation(registry: Registry, mv: ModelVersion) -> Evaluation:
    """The evaluation version `mv` was registered with (from its tags and its run's)."""
    data_hash = (mv.tags or {}).get(TAG_EVAL_HASH, "")
    metrics = registry.version_evaluation(mv, data_hash) if data_hash else None
    if metrics is None:
        raise RegistryError(f"version {mv.version} carries no evaluation to gate on")
    run_tags = registry.run(mv.run_id).data.tags if mv.run_id else {}
    return Evaluation(
        data_hash, metrics, run_tags.get(TAG_EVAL_DATA), run_tags.get(TAG_EVAL_SPLIT, "val")
    )
