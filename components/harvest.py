"""KFP component `harvest_labels`: the finished labels of a labelling request as a VISION root."""

# No `from __future__ import annotations` here: KFP reads the real annotation objects.

from typing import NamedTuple

from kfp.dsl import Artifact, Output

from components import visionops_component


@visionops_component
def harvest_labels(
    monitoring_run_id: str,
    drift: Output[Artifact],
    labels: str = "",
    require_complete: bool = False,
    seed: int = 0,
    dataset: str = "",
    products: str = "",
    epochs: int = 0,
    imgsz: int = 0,
    weights: str = "",
    training_params: str = "",
) -> NamedTuple(  # type: ignore[valid-type]
    "HarvestOutputs",
    [("new_data", str), ("dataset", str), ("products", str), ("epochs", int), ("imgsz", int),
     ("weights", str), ("training_params", str), ("lineage", str), ("images", int)],
):  # fmt: skip
    """Import the labels people finished for `monitoring_run_id`'s request (its Label Studio
    project, or the COCO file at `labels`; empty: `labelling/<run id>/labels.json` in the store)
    into `labelling/<run id>/root` in the store, whole or not at all. Unfinished tasks are left
    out and counted (`require_complete` refuses); no labelled image at all fails the step. Once
    training was submitted for the run, nothing is imported again. The outputs feed `retrain`:
    the root, the drift result, and the request's retraining parameters with the non-empty ones
    given here."""
    from collections import namedtuple
    from pathlib import Path

    from visionops.bootstrap import bootstrap

    bootstrap()
    from visionops.orchestration.label_loop import harvest_root, retraining, stored_drift

    request, harvest = harvest_root(
        monitoring_run_id, labels=labels, require_complete=require_complete, seed=seed
    )
    Path(drift.path).write_bytes(stored_drift(monitoring_run_id))
    given = {"dataset": dataset, "products": products, "epochs": epochs, "imgsz": imgsz,
             "weights": weights, "training_params": training_params}  # fmt: skip
    params = retraining(request, given)
    done = "submitted before" if harvest.already else f"{harvest.unfinished} unfinished left out"
    print(f"{harvest.images} labelled images ({harvest.boxes} boxes; {done}): {harvest.root}")
    names = ["new_data", "dataset", "products", "epochs", "imgsz", "weights", "training_params",
             "lineage", "images"]  # fmt: skip
    return namedtuple("HarvestOutputs", names)(
        harvest.root, params["dataset"], params["products"], int(params["epochs"]),
        int(params["imgsz"]), params["weights"], params["training_params"] or "{}",
        request.lineage, harvest.images,
    )  # fmt: skip
