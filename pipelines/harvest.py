"""The harvest pipeline: the labels people made for a monitoring run's drifted window -> a VISION
root in the object store -> training re-submitted on it, once per monitoring run.

python -m pipelines.harvest                      # compile to pipelines/harvest.yaml
visionops pipeline run harvest --local -p monitoring_run_id=<the monitoring run's id>
"""

from pathlib import Path

from kfp import dsl

from components.harvest import harvest_labels
from pipelines import compile_pipeline, retrain_step, step

PIPELINE_NAME = "visionops-harvest"


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="Import the labels finished for a monitoring run's labelling request (Label "
    "Studio or a returned COCO file) and re-submit training with them, once per monitoring run.",
)
def harvest_pipeline(
    monitoring_run_id: str,
    labels: str = "",
    require_complete: bool = False,
    seed: int = 0,
    dataset: str = "",
    products: str = "",
    epochs: int = 0,
    imgsz: int = 0,
    weights: str = "",
    training_params: str = "",
) -> None:
    """`monitoring_run_id`: the monitoring run whose drift asked for labels (`visionops label
    requests` lists them). The labels come from its Label Studio project, or from the COCO file
    at `labels` (path or s3:// URI; empty: `labelling/<run id>/labels.json` in the object store);
    unfinished tasks are left out and counted, `require_complete` refuses instead; `seed` splits
    train and val. Training runs with the monitoring run's parameters, those given here (non-empty,
    non-zero) replacing them. Running it again, or retrying a step, submits no second training."""
    harvest = harvest_labels(
        monitoring_run_id=monitoring_run_id, labels=labels, require_complete=require_complete,
        seed=seed, dataset=dataset, products=products, epochs=epochs, imgsz=imgsz,
        weights=weights, training_params=training_params,
    )  # fmt: skip
    step(harvest, "Harvest labels", cpu="1", memory="2Gi", retries=2, label_studio=True)
    out = harvest.outputs
    retrain_step(
        monitoring_run_id, out["drift"], out["lineage"], new_data=out["new_data"],
        dataset=out["dataset"], products=out["products"], epochs=out["epochs"],
        imgsz=out["imgsz"], weights=out["weights"], training_params=out["training_params"],
    )  # fmt: skip


if __name__ == "__main__":
    print(compile_pipeline(harvest_pipeline, Path(__file__).with_suffix(".yaml")))
