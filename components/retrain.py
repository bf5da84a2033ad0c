"""KFP component `retrain`: re-submit the training pipeline, once per monitoring run."""

# No `from __future__ import annotations` here: KFP reads the real annotation objects.

from typing import NamedTuple

from kfp.dsl import Artifact, Input, Markdown, Output

from components import visionops_component


@visionops_component
def retrain(
    monitoring_run_id: str,
    drift: Input[Artifact],
    summary: Output[Markdown],
    dataset: str = "synthetic",
    new_data: str = "",
    products: str = "",
    epochs: int = 0,
    imgsz: int = 0,
    weights: str = "",
    training_params: str = "{}",
    mode: str = "auto",
    lineage: str = "",
) -> NamedTuple("RetrainOutputs", [("run_name", str), ("run_id", str), ("already", bool)]):  # type: ignore[valid-type]
    """Start the training pipeline on `dataset` plus `new_data` (labeled data of the drifted
    window, comma-separated VISION roots), at most once for `monitoring_run_id` even when this
    step is retried. `epochs`/`imgsz` of 0 and empty `weights` keep the training pipeline's
    defaults; `training_params` (a JSON object) sets any other of its parameters. `mode`: auto
    (cluster inside a pod, else a local run in its own process), cluster or local. `lineage`
    (the drift check's JSON output) goes to the training run, and on to the version it registers.
    """
    import json
    from collections import namedtuple
    from pathlib import Path

    from visionops.bootstrap import bootstrap

    bootstrap()
    from visionops.orchestration.resubmit import retrain_after_drift

    drift_result = json.loads(Path(drift.path).read_text(encoding="utf-8"))
    submission = retrain_after_drift(
        monitoring_run_id, drift_result, training_params=training_params, mode=mode,
        dataset=dataset, new_data=new_data, products=products, epochs=epochs, imgsz=imgsz,
        weights=weights, lineage=lineage,
    )  # fmt: skip
    where = submission.url or submission.run_dir
    Path(summary.path).write_text(
        f"## Drift: retraining\n\n{drift_result.get('reason', '')}\n\n"
        f"Training run `{submission.run_name}` ({submission.mode}"
        f"{', submitted by an earlier attempt' if submission.already else ''}): {where}\n\n"
        f"New data: `{submission.params['extra_data'] or '(none)'}`\n",
        encoding="utf-8",
    )
    print(f"training run {submission.run_name} ({submission.mode}): {where}")
    return namedtuple("RetrainOutputs", ["run_name", "run_id", "already"])(
        submission.run_name, submission.run_id, submission.already
    )
