"""The monitoring history: what each monitoring run decided, one JSON record per run.

Records live under `monitoring/decisions/<run id>.json` in the object store (the data dir
locally), so `no drift` and `not enough data` outcomes leave a trace as retraining ones do.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from visionops.config import Settings
from visionops.orchestration import safe_key
from visionops.storage import default_store

DECISIONS_PREFIX = "monitoring/decisions"
_KEPT = ("decision", "reason", "current_rows", "reference_rows", "drifted_share", "drifted_columns")


def record_decision(
    run_id: str,
    result: dict[str, Any],
    *,
    training_run: str = "",
    labelling: dict[str, Any] | None = None,
    settings: Settings | None = None,
) -> str:
    """Write the decision of monitoring run `run_id` (a drift check's JSON result); returns where.

    Re-recording the same run (a retried step, or the retraining that harvested labels start)
    replaces its record, keeping the training run and the labelling request (`labelling`, see
    `visionops.orchestration.label_loop`) recorded before unless new ones are given.
    """
    store = default_store(DECISIONS_PREFIX, settings)
    key = f"{safe_key(run_id)}.json"
    before = json.loads(store.read_bytes(key)) if store.exists(key) else {}
    record = {k: result.get(k) for k in _KEPT if k in result}
    record.update(
        run_id=run_id,
        recorded_at=datetime.now(UTC).isoformat(timespec="seconds"),
        training_run=training_run or before.get("training_run", ""),
    )
    if labelling is not None or "labelling" in before:
        record["labelling"] = labelling if labelling is not None else before["labelling"]
    store.write_bytes(key, (json.dumps(record, indent=2) + "\n").encode())
    return store.uri(key)


def list_decisions(settings: Settings | None = None) -> list[dict[str, Any]]:
    """Every recorded decision, oldest first."""
    store = default_store(DECISIONS_PREFIX, settings)
    records = [json.loads(store.read_bytes(k)) for k in store.list_keys() if k.endswith(".json")]
    return sorted(records, key=lambda r: r.get("recorded_at", ""))


def read_decision(run_id: str, settings: Settings | None = None) -> dict[str, Any] | None:
    """The recorded decision of monitoring run `run_id`, or None."""
    store = default_store(DECISIONS_PREFIX, settings)
    key = f"{safe_key(run_id)}.json"
    return json.loads(store.read_bytes(key)) if store.exists(key) else None
