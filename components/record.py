"""KFP component `record_decision`: the monitoring run's outcome when it does not retrain."""

# No `from __future__ import annotations` here: KFP reads the real annotation objects.

from kfp.dsl import Artifact, Input, Markdown, Output

from components import visionops_component


@visionops_component
def record_decision(
    monitoring_run_id: str, drift: Input[Artifact], summary: Output[Markdown]
) -> str:
    """Keep the drift decision of `monitoring_run_id` (no drift, or not enough data) in the
    monitoring history (`monitoring/decisions/` in the object store or data dir) and show it."""
    import json
    from pathlib import Path

    from visionops.bootstrap import bootstrap

    bootstrap()
    from visionops.orchestration.decisions import record_decision as record

    result = json.loads(Path(drift.path).read_text(encoding="utf-8"))
    uri = record(monitoring_run_id, result)
    decision = result.get("decision", "unknown")
    Path(summary.path).write_text(
        f"## {decision.replace('_', ' ')}: no retraining\n\n{result.get('reason', '')}\n\n"
        f"Recorded at `{uri}`.\n",
        encoding="utf-8",
    )
    print(f"{decision}: {result.get('reason', '')} (recorded at {uri})")
    return decision
