"""KFP component `request_labels`: on drift, the window's images sent to be labelled, once."""

# No `from __future__ import annotations` here: KFP reads the real annotation objects.

from typing import NamedTuple

from kfp.dsl import Artifact, Input, Markdown, Output

from components import visionops_component


@visionops_component
def request_labels(
    monitoring_run_id: str,
    drift: Input[Artifact],
    summary: Output[Markdown],
    log_location: str = "",
    lineage: str = "",
    start: str = "",
    end: str = "",
    hours: float = 24.0,
    budget: int = 50,
    seed: int = 0,
    target: str = "auto",
    model_name: str = "",
    dataset: str = "synthetic",
    products: str = "",
    epochs: int = 0,
    imgsz: int = 0,
    weights: str = "",
    training_params: str = "{}",
) -> NamedTuple("LabelOutputs", [("images", int), ("where", str)]):  # type: ignore[valid-type]
    """Pick at most `budget` of the images the predictor kept of the drifted window (the one the
    drift check judged, named in its `lineage`; else [start, end) or the last `hours` of the log
    at `log_location`), favouring the drifted columns, and export them with the model's boxes:
    to a Label Studio project `<model> <monitoring run id>` when VISIONOPS_LABEL_STUDIO_URL is
    set (`target` auto or label-studio), else as COCO in the object store (`target` coco). The
    request, with the retraining's parameters, is recorded with the run's decision; the
    `harvest` pipeline imports the labels and retrains. A retry does nothing twice."""
    import json
    from collections import namedtuple
    from pathlib import Path

    from visionops.bootstrap import bootstrap

    bootstrap()
    from visionops.orchestration.label_loop import request_labels as request

    drift_result = json.loads(Path(drift.path).read_text(encoding="utf-8"))
    training = {"dataset": dataset, "products": products, "epochs": epochs, "imgsz": imgsz,
                "weights": weights, "training_params": training_params}  # fmt: skip
    asked = request(
        monitoring_run_id, drift_result, log_location=log_location, lineage=lineage,
        start=start, end=end, hours=hours, budget=budget, seed=seed, target=target,
        model_name=model_name, training=training,
    )  # fmt: skip
    if asked.images:
        line = f"{asked.images} images ({asked.boxes} model boxes) to label: {asked.where}"
    else:
        line = "the window kept no image (VISIONOPS_LOG_IMAGES): nothing to label"
    Path(summary.path).write_text(
        f"## Drift: labels requested\n\n{line}\n\nWhen they are labelled: `visionops label "
        f"harvest {monitoring_run_id}` or the `harvest` pipeline retrains on them.\n",
        encoding="utf-8",
    )
    print(line)
    return namedtuple("LabelOutputs", ["images", "where"])(asked.images, asked.where)
