"""The training pipeline: fetch -> validate -> convert -> train -> evaluate -> register -> deploy.

python -m pipelines.training                     # compile to pipelines/training.yaml
visionops pipeline run training --local -p epochs=5
"""

from pathlib import Path

from kfp import dsl

from components.convert import convert_dataset
from components.deploy import deploy_model
from components.evaluate import evaluate_model
from components.fetch import fetch_dataset
from components.register import register_model
from components.train import train_model
from components.validate import validate_dataset
from pipelines import compile_pipeline, step
from visionops.config import Settings

PIPELINE_NAME = "visionops-training"
_DEFAULT = {name: field.default for name, field in Settings.model_fields.items()}


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="Train YOLOv8n on VISION data (plus any extra labeled data), evaluate it, "
    "register it through the promotion gate and serve it if it became the champion.",
)
def training_pipeline(
    dataset: str = "synthetic",
    extra_data: str = "",
    products: str = "",
    epochs: int = _DEFAULT["epochs"],
    imgsz: int = _DEFAULT["imgsz"],
    batch: int = _DEFAULT["batch"],
    weights: str = "",
    device: str = "auto",
    seed: int = 0,
    train_args: str = "",
    min_map50: float = _DEFAULT["gate_min_map50"],
    min_map50_95: float = _DEFAULT["gate_min_map50_95"],
    gate_margin: float = _DEFAULT["gate_margin"],
    model_name: str = "",
    deploy_target: str = "auto",
    predictor_url: str = "",
    canary_traffic_percent: int = 0,
    lineage: str = "",
) -> None:
    """`dataset`: a VISION root (folder, s3://bucket/prefix or `synthetic[?products=2&...]`);
    `extra_data`: more labeled VISION roots merged in (comma-separated), e.g. drifted production
    images; `weights`: start from them (models:/NAME@champion fine-tunes the champion);
    `train_args`: more Ultralytics train arguments as JSON (e.g. {"nbs": 8, "warmup_epochs": 0});
    `products`: comma-separated, empty for all; the gate promotes only a model above the minimums
    that beats the champion by `gate_margin` mAP50-95; `deploy_target`: auto, cluster, local,
    none; `canary_traffic_percent` > 0 deploys as a canary (KServe Serverless mode); `lineage`:
    what started this run (JSON, a retraining's from its drift check), tagged on run and version."""
    data = step(
        fetch_dataset(sources=dataset, products=products), "Fetch data", retries=2, memory="2Gi"
    )
    extra = step(fetch_dataset(sources=extra_data), "Fetch extra data", retries=2, memory="2Gi")
    check = step(
        validate_dataset(dataset=data.outputs["dataset"], products=products),
        "Validate data",
        cache=True,
    )
    yolo = step(
        convert_dataset(
            dataset=data.outputs["dataset"], extra=extra.outputs["dataset"], products=products
        ).after(check),
        "COCO to YOLO",
        memory="2Gi",
        cache=True,
    )
    trained = step(
        train_model(
            dataset=yolo.outputs["yolo"],
            epochs=epochs,
            imgsz=imgsz,
            batch=batch,
            weights=weights,
            device=device,
            seed=seed,
            train_args=train_args,
            lineage=lineage,
            pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        ),
        "Train YOLOv8n",
        cpu="2",
        memory="6Gi",
    )
    scored = step(
        evaluate_model(model=trained.outputs["model"], dataset=yolo.outputs["yolo"]),
        "Evaluate",
        cpu="1",
        memory="2Gi",
        retries=2,
    )
    gate = step(
        register_model(
            run_id=trained.outputs["run_id"],
            dataset=yolo.outputs["yolo"],
            model_name=model_name,
            min_map50=min_map50,
            min_map50_95=min_map50_95,
            margin=gate_margin,
        ).after(scored),
        "Register (promotion gate)",
        cpu="1",
        memory="2Gi",
        retries=2,
    )
    with dsl.If(gate.outputs["promoted"] == True, "promoted"):  # noqa: E712
        step(
            deploy_model(
                version=gate.outputs["version"],
                model_name=model_name,
                target=deploy_target,
                predictor_url=predictor_url,
                canary_traffic_percent=canary_traffic_percent,
            ),
            "Deploy the champion",
            cpu="250m",
            memory="1Gi",
            retries=2,
        )


if __name__ == "__main__":
    print(compile_pipeline(training_pipeline, Path(__file__).with_suffix(".yaml")))
