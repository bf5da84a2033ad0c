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
    settings: Settings | None = None,
) -> str:
    """Write the decision of monitoring run `run_id` (a drift check's JSON result); returns where.

    Re-recording the same run (a retried step) replaces its record.
    """
    store = default_store(DECISIONS_PREFIX, settings)
    record = {k: result.get(k) for k in _KEPT if k in result}
    record.update(
        run_id=run_id,
        recorded_at=datetime.now(UTC).isoformat(timespec="seconds"),
        training_run=training_run,
    )
    key = f"{safe_key(run_id)}.json"
    store.write_bytes(key, (json.dumps(record, indent=2) + "\n").encode())
    return store.uri(key)


def list_decisions(settings: Settings | None = None) -> list[dict[str, Any]]:
    """Every recorded decision, oldest first."""
    store = default_store(DECISIONS_PREFIX, settings)
    records = [json.loads(store.read_bytes(k)) for k in store.list_keys() if k.endswith(".json")]
    return sorted(records, key=lambda r: r.get("recorded_at", ""))
