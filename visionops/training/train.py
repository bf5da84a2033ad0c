"""Train YOLOv8n with Ultralytics, offline, inside one MLflow run that VisionOps owns.

The run holds every hyperparameter, the dataset hash and products, the git commit and library
versions; per-epoch losses and metrics are logged from Ultralytics' `on_fit_epoch_end` callback as
each epoch ends. When training succeeds the run gets the model directory (ONNX exported from the
best weights, metadata, weights), `results.csv`, the training curves drawn from it, Ultralytics'
own plots (results, labels, train batches, validation curves) and label statistics, and ends
FINISHED. Any
failure (NaN losses included) ends it FAILED with the reason in a tag, so nothing half-trained is
ever registered.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visionops.bootstrap import configure_ultralytics
from visionops.config import Settings, get_settings
from visionops.errors import (
    ModelNotFound,
    StorageError,
    TrainingError,
    UsageError,
    VisionOpsError,
)
from visionops.models.artifact import MODEL_ARTIFACT_DIR, MODEL_PT
from visionops.models.sources import find_version, is_registry_uri, parse_model_uri, resolve_model
from visionops.progress import ProgressCallback, no_progress
from visionops.storage import is_s3_uri, open_store, split_s3_uri
from visionops.tracking import (
    TAG_PREFIX,
    Tracking,
    connect,
    git_commit,
    library_versions,
    log_metrics,
    mlflow_errors,
)
from visionops.training.curves import TRAINING_CURVES_PNG, write_training_curves
from visionops.training.dataset import YoloDataset, load_data_yaml
from visionops.training.export import export_model_dir
from visionops.training.lineage import lineage_tags
from visionops.training.quantize import add_int8_variant

log = logging.getLogger(__name__)

ARCHITECTURE = "yolov8n.yaml"
TRAINING_ARTIFACT_DIR = "training"
LABEL_STATISTICS_JSON = "label_statistics.json"
PLOTS_DIR = "plots"  # Ultralytics' pictures, under the run's training/ artifacts
_PICTURES = (".png", ".jpg")
_PARAMS_PER_CALL = 100  # MLflow accepts at most 100 params per log_batch


@dataclass(frozen=True)
class TrainResult:
    """A finished training run and the model directory it produced."""

    run_id: str
    model_dir: Path  # local copy of the model directory logged to the run
    model_uri: str  # `runs:/<run_id>/model`
    metrics: dict[str, float]  # Ultralytics' validation of the best weights
    epochs: int  # epochs completed
    device: str
    dataset_hash: str
    epoch_seconds: list[float] = field(default_factory=list)


def resolve_device(device: str) -> str:
    """`auto` becomes the first CUDA GPU when torch sees one, else `cpu`."""
    device = device.strip().lower()
    if device == "auto":
        import torch  # heavy, training only (not in the predictor image)

        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if device == "cpu" or device.isdigit() or device.startswith(("cuda", "mps")):
        return device
    raise UsageError(f"unknown device {device!r}: use auto, cpu, cuda:0 or a GPU index")


def resolve_weights(weights: str | Path | None, workdir: Path, settings: Settings) -> str:
    """A local file Ultralytics can load, for a path, `s3://` URI or `models:/` URI.

    None means the YOLOv8n architecture, trained from scratch. Raises ModelNotFound when the
    weights do not exist; nothing is ever downloaded from the internet.
    """
    if weights is None or str(weights) in ("", ARCHITECTURE):
        return ARCHITECTURE
    text = str(weights)
    if is_registry_uri(text):
        path = resolve_model(text, settings).path / MODEL_PT
        if not path.is_file():
            raise ModelNotFound(f"{text} has no {MODEL_PT} to fine-tune from")
        return str(path)
    if is_s3_uri(text):
        bucket, key = split_s3_uri(text)
        if not key.endswith(".pt"):
            key = f"{key.rstrip('/')}/{MODEL_PT}"
        store = open_store(f"s3://{bucket}", settings)
        target = workdir / "weights" / Path(key).name
        try:
            store.download_file(key, target)
        except StorageError as error:
            if "NoSuchKey" in str(error):
                raise ModelNotFound(f"weights s3://{bucket}/{key} do not exist") from error
            raise
        return str(target)
    path = Path(text).expanduser()
    if path.is_dir():
        path = path / MODEL_PT
    if not path.is_file():
        raise ModelNotFound(f"weights file {path} does not exist")
    if path.suffix != ".pt":
        raise UsageError(f"weights must be an Ultralytics .pt checkpoint, got {path.name}")
    return str(path.resolve())


def summary_metrics(results: Mapping[str, Any]) -> dict[str, float]:
    """The four headline numbers from Ultralytics' validation results."""
    pick = {
        "precision": "metrics/precision(B)",
        "recall": "metrics/recall(B)",
        "map50": "metrics/mAP50(B)",
        "map50_95": "metrics/mAP50-95(B)",
    }
    return {ours: float(results[theirs]) for ours, theirs in pick.items() if theirs in results}


class _RunLogger:
    """Ultralytics callbacks that log to the VisionOps run as training goes."""

    def __init__(self, tracking: Tracking, run_id: str, progress: ProgressCallback) -> None:
        self.tracking = tracking
        self.run_id = run_id
        self.progress = progress
        self.last_epoch = -1
        self.trained_epoch = -1
        self.epoch_seconds: list[float] = []
        self._epoch_start = time.monotonic()

    def attach(self, model: Any) -> None:
        model.add_callback("on_pretrain_routine_end", self.on_pretrain_routine_end)
        model.add_callback("on_train_epoch_start", self.on_train_epoch_start)
        model.add_callback("on_train_epoch_end", self.on_train_epoch_end)
        model.add_callback("on_fit_epoch_end", self.on_fit_epoch_end)

    def on_pretrain_routine_end(self, trainer: Any) -> None:
        """Every resolved hyperparameter, as Ultralytics will use it."""
        from mlflow.entities import Param  # heavy (seconds): imported once MLflow is used

        params = [Param(k, str(v)[:6000]) for k, v in sorted(vars(trainer.args).items())]
        with mlflow_errors(f"log parameters of run {self.run_id}"):
            for start in range(0, len(params), _PARAMS_PER_CALL):
                self.tracking.client.log_batch(
                    self.run_id, params=params[start : start + _PARAMS_PER_CALL]
                )

    def on_train_epoch_start(self, trainer: Any) -> None:
        self._epoch_start = time.monotonic()

    def on_train_epoch_end(self, trainer: Any) -> None:
        """Stop at the first epoch whose mean training loss is not finite."""
        self.trained_epoch = trainer.epoch
        losses = trainer.label_loss_items(trainer.tloss or {}, prefix="train")
        bad = [k for k, v in losses.items() if not math.isfinite(v)]
        if bad:
            raise TrainingError(
                f"training diverged: {', '.join(bad)} became NaN/inf in epoch {trainer.epoch + 1}; "
                "lower the learning rate or check the labels"
            )

    def on_fit_epoch_end(self, trainer: Any) -> None:
        """Log one epoch (losses, validation metrics, learning rates) the moment it ends."""
        if trainer.epoch != self.trained_epoch:
            return  # Ultralytics' final validation of best.pt, logged once training returns
        self.last_epoch = trainer.epoch
        seconds = time.monotonic() - self._epoch_start
        self.epoch_seconds.append(seconds)
        step = trainer.epoch + 1
        values = {
            **trainer.label_loss_items(trainer.tloss or {}, prefix="train"),
            **(trainer.metrics or {}),
            **(trainer.lr or {}),
            "epoch_seconds": seconds,
        }
        log_metrics(self.tracking, self.run_id, values, step=step)
        summary = summary_metrics(trainer.metrics or {})
        log.info(
            "epoch %d/%d: %s | %s (%.1fs)",
            step,
            trainer.epochs,
            " ".join(f"{k.split('/')[-1]}={v:.4f}" for k, v in values.items() if "train/" in k),
            " ".join(f"{k}={v:.4f}" for k, v in summary.items()),
            seconds,
        )
        self.progress(step, trainer.epochs)


@contextmanager
def _quiet_ultralytics(verbose: bool) -> Iterator[None]:
    """Ultralytics logs at INFO with progress bars; the CLI shows its own progress instead."""
    from ultralytics.utils import LOGGER  # heavy, import-time side effects: training only

    level = LOGGER.level
    if not verbose:
        LOGGER.setLevel(logging.WARNING)
    try:
        yield
    finally:
        LOGGER.setLevel(level)


def train(
    data_yaml: Path,
    *,
    epochs: int | None = None,
    imgsz: int | None = None,
    batch: int | None = None,
    weights: str | Path | None = None,
    device: str | None = None,
    seed: int | None = None,
    workers: int | None = None,
    overrides: Mapping[str, Any] | None = None,
    progress: ProgressCallback = no_progress,
    settings: Settings | None = None,
    lineage: Mapping[str, str] | None = None,
) -> TrainResult:
    """Train on `data_yaml` and log everything to a new MLflow run; returns the finished run.

    `weights`: None (architecture, from scratch), a local `.pt` or model directory, an `s3://`
    URI, or `models:/name@alias` (fine-tune the champion). `workers` (data loader processes)
    defaults to 0 on CPU, where loading in the training process is fastest on few cores, and to
    up to 8 on a GPU. `overrides` are extra Ultralytics train arguments (`lr0`, `mosaic`, ...).
    `lineage` (`visionops.training.lineage.FIELDS`) is tagged on the run; fine-tuning from a
    registered version adds that version as the parent.
    Raises DataError, ModelNotFound, UsageError before anything is logged; RegistryError or
    StorageError when MLflow or S3 fail; TrainingError when training fails (the run is then
    marked FAILED).
    """
    settings = settings or get_settings()
    epochs = settings.epochs if epochs is None else epochs
    imgsz = settings.imgsz if imgsz is None else imgsz
    batch = settings.batch if batch is None else batch
    seed = settings.seed if seed is None else seed
    if epochs < 1 or batch < 1 or not 32 <= imgsz <= 2048 or imgsz % 32:
        raise UsageError(
            f"need epochs >= 1, batch >= 1 and imgsz a multiple of 32 in 32..2048 "
            f"(got epochs={epochs}, batch={batch}, imgsz={imgsz})"
        )
    dataset = load_data_yaml(data_yaml)
    device = resolve_device(device or settings.device)
    if workers is None:
        workers = 0 if device == "cpu" else min(8, os.cpu_count() or 1)
    workdir = Path(tempfile.mkdtemp(prefix="train-", dir=_runs_dir(settings)))
    try:
        source = resolve_weights(weights, workdir, settings)
        links = {**parent_lineage(weights, settings), **dict(lineage or {})}
        links.setdefault("trigger", "manual")
        tracking = connect(settings)
        run_id = _start_run(
            tracking, dataset, str(weights or ARCHITECTURE), source, settings, lineage_tags(links)
        )
        return _train_in_run(
            tracking, run_id, dataset, source, workdir,
            epochs=epochs, imgsz=imgsz, batch=batch, device=device, seed=seed, workers=workers,
            overrides=dict(overrides or {}), progress=progress, settings=settings,
        )  # fmt: skip
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _runs_dir(settings: Settings) -> Path:
    path = settings.data_dir / "runs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def parent_lineage(weights: str | Path | None, settings: Settings) -> dict[str, str]:
    """The registered version `weights` names (`models:/NAME@ALIAS` resolved now), as lineage."""
    if weights is None or not is_registry_uri(str(weights)):
        return {}
    text = str(weights)
    tracking = connect(settings)
    version = find_version(tracking, parse_model_uri(text), settings)
    return {
        "parent_model": str(version.name),
        "parent_version": str(version.version),
        "parent_run": str(version.run_id or ""),
    }


def _start_run(
    tracking: Tracking,
    dataset: YoloDataset,
    weights: str,
    source: str,
    settings: Settings,
    extra_tags: Mapping[str, str] | None = None,
) -> str:
    """Create the run with its identity tags, then prove the artifact store accepts it."""
    tags = {
        **dict(extra_tags or {}),
        "mlflow.runName": f"train-{dataset.dataset_hash[:12]}",
        "mlflow.source.name": "visionops train",
        f"{TAG_PREFIX}dataset_hash": dataset.dataset_hash,
        f"{TAG_PREFIX}products": ",".join(dataset.products) or "unknown",
        f"{TAG_PREFIX}classes": str(len(dataset.names)),
        f"{TAG_PREFIX}data_yaml": str(dataset.data_yaml),
        f"{TAG_PREFIX}weights": weights,
        f"{TAG_PREFIX}weights_file": source,
        **{f"{TAG_PREFIX}version.{k}": v for k, v in library_versions().items()},
    }
    commit = git_commit(settings)
    if commit:
        tags[f"{TAG_PREFIX}git_commit"] = commit
        tags["mlflow.source.git.commit"] = commit
    with mlflow_errors("create a training run", settings):
        run = tracking.client.create_run(tracking.experiment_id, tags=tags)
    run_id = run.info.run_id
    try:
        with mlflow_errors(f"reach the artifact store of run {run_id}", settings):
            tracking.client.list_artifacts(run_id)
    except VisionOpsError as error:
        _fail(tracking, run_id, error)
        raise
    log.info("MLflow run %s at %s", run_id, tracking.tracking_uri)
    return run_id


def _fail(tracking: Tracking, run_id: str, error: BaseException) -> None:
    """Mark the run FAILED with the reason; never hides the original error."""
    try:
        tracking.client.set_tag(run_id, f"{TAG_PREFIX}error", str(error)[:4000])
        tracking.client.set_terminated(run_id, "FAILED")
    except Exception:  # the original error matters more than a failed bookkeeping call
        log.warning("could not mark run %s as FAILED", run_id, exc_info=True)


def _train_in_run(
    tracking: Tracking,
    run_id: str,
    dataset: YoloDataset,
    source: str,
    workdir: Path,
    *,
    epochs: int,
    imgsz: int,
    batch: int,
    device: str,
    seed: int,
    workers: int,
    overrides: dict[str, Any],
    progress: ProgressCallback,
    settings: Settings,
) -> TrainResult:
    logger = _RunLogger(tracking, run_id, progress)
    try:
        configure_ultralytics(settings)
        from ultralytics import YOLO  # heavy, import-time side effects: training only

        model = YOLO(source)
        logger.attach(model)
        args = {
            "data": str(dataset.data_yaml),
            "epochs": epochs,
            "imgsz": imgsz,
            "batch": batch,
            "device": device,
            "seed": seed,
            "deterministic": True,
            "workers": workers,
            "plots": True,  # offline: the fonts are in place (bootstrap)
            "amp": not device.startswith("cpu"),
            "project": str(workdir),
            "name": "ultralytics",
            "exist_ok": True,
            "verbose": False,
            **overrides,
        }
        progress(0, epochs)
        with _quiet_ultralytics(log.isEnabledFor(logging.DEBUG)):
            model.train(**args)
        trainer = model.trainer
        metrics = summary_metrics(trainer.metrics or {})
        bad = [k for k, v in metrics.items() if not math.isfinite(v)]
        if bad:
            raise TrainingError(f"validation of the best weights gave NaN for {', '.join(bad)}")
        best = trainer.best if Path(trainer.best).is_file() else trainer.last
        model_dir = workdir / MODEL_ARTIFACT_DIR
        with _quiet_ultralytics(log.isEnabledFor(logging.DEBUG)):
            export_model_dir(
                Path(best), model_dir, imgsz=imgsz, dataset_hash=dataset.dataset_hash,
                metrics=metrics, run_id=run_id, git_commit=git_commit(settings),
            )  # fmt: skip
        add_int8_variant(model_dir, dataset, settings=settings)
        from visionops.inference.mlflow_model import write_mlflow_model  # mlflow.pyfunc: heavy

        write_mlflow_model(model_dir)
        _log_outputs(tracking, run_id, dataset, Path(trainer.save_dir), model_dir, metrics)
        with mlflow_errors(f"finish run {run_id}", settings):
            tracking.client.set_terminated(run_id, "FINISHED")
    except VisionOpsError as error:
        _fail(tracking, run_id, error)
        raise
    except Exception as error:  # Ultralytics raises plain exceptions (RuntimeError, KeyError...)
        wrapped = TrainingError(f"training failed: {type(error).__name__}: {error}")
        _fail(tracking, run_id, wrapped)
        raise wrapped from error
    except BaseException as error:  # Ctrl-C: the run must not stay RUNNING forever
        _fail(tracking, run_id, TrainingError(f"interrupted: {type(error).__name__}"))
        raise
    kept = _runs_dir(settings) / run_id / MODEL_ARTIFACT_DIR
    if kept.exists():
        shutil.rmtree(kept)
    kept.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(model_dir, kept)
    log.info("run %s finished: %s", run_id, metrics)
    return TrainResult(
        run_id=run_id,
        model_dir=kept,
        model_uri=f"runs:/{run_id}/{MODEL_ARTIFACT_DIR}",
        metrics=metrics,
        epochs=logger.last_epoch + 1,
        device=device,
        dataset_hash=dataset.dataset_hash,
        epoch_seconds=logger.epoch_seconds,
    )


def _log_outputs(
    tracking: Tracking,
    run_id: str,
    dataset: YoloDataset,
    save_dir: Path,
    model_dir: Path,
    metrics: dict[str, float],
) -> None:
    """The model directory, results.csv and its curves, Ultralytics' plots, args.yaml, label
    statistics and the final metrics."""
    extras = save_dir.parent / "visionops-extras"
    (extras / PLOTS_DIR).mkdir(parents=True, exist_ok=True)
    for name in ("results.csv", "args.yaml"):
        if (save_dir / name).is_file():
            shutil.copyfile(save_dir / name, extras / name)
    if (save_dir / "results.csv").is_file():
        write_training_curves(save_dir / "results.csv", extras / TRAINING_CURVES_PNG)
    for picture in sorted(save_dir.iterdir()):
        if picture.suffix in _PICTURES and picture.is_file():
            shutil.copyfile(picture, extras / PLOTS_DIR / picture.name)
    stats = dataset.label_statistics()
    (extras / LABEL_STATISTICS_JSON).write_text(json.dumps(stats, indent=2) + "\n")
    log_metrics(tracking, run_id, {f"best.{k}": v for k, v in metrics.items()})
    with mlflow_errors(f"log the outputs of run {run_id}"):
        tracking.client.log_artifacts(run_id, str(extras), TRAINING_ARTIFACT_DIR)
        tracking.client.log_artifacts(run_id, str(model_dir), MODEL_ARTIFACT_DIR)
