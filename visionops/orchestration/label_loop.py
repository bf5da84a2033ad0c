"""The data loop in the pipelines: on drift, ask people to label the window; later, harvest their
labels and re-submit training with them, once per monitoring run.

`request_labels` (the monitoring pipeline's drift branch) picks the drifted window's most useful
kept images (`visionops.labeling.select`, weighted towards the drifted columns), stores the batch
in the object store (the data dir locally) beside the decisions and submissions:

    labelling/<monitoring run id>/request.json   the request: where the labels are made, how many
    labelling/<monitoring run id>/drift.json     the drift check's result (the retraining's input)
    labelling/<monitoring run id>/batch/...      the selection batch (manifest, images)
    labelling/<monitoring run id>/coco/...       without Label Studio: a COCO export for CVAT
    labelling/<monitoring run id>/labels.json    where a person puts the COCO file CVAT exports
    labelling/<monitoring run id>/root/...       the harvested VISION root

and exports it: to a Label Studio project named after the model and the monitoring run when
VISIONOPS_LABEL_STUDIO_URL is set (the model's boxes as pre-annotations), else as COCO. The request
is recorded with the monitoring run's decision. A retried step finds `request.json` and does
nothing again; the export itself is idempotent too.

`harvest_root` imports the finished labels (unfinished tasks are left out and counted, or refused
with `require_complete`; no labelled image at all is a DataError) and writes the VISION root into
the store, whole or not at all (the root's `vision_root.json` is written last on S3).
`harvest_labels` then re-submits training with the root as `new_data` through
`retrain_after_drift`, keyed by the SAME monitoring run id: harvesting twice, or retrying the step,
submits one training run, and once training was submitted for the monitoring run a harvest only
reports it (the root a running training reads is never rewritten).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from visionops.config import Settings, get_settings
from visionops.data.files import dir_is_empty, replace_dir
from visionops.errors import DataError, LabelStudioError, StorageError, UsageError
from visionops.errors import VisionOpsError as Failure
from visionops.orchestration import safe_key
from visionops.orchestration.decisions import record_decision
from visionops.orchestration.resubmit import Submission, read_submission, retrain_after_drift
from visionops.storage import LocalStore, ObjectStore, default_store, is_s3_uri, open_store

log = logging.getLogger(__name__)

LABELLING_PREFIX = "labelling"
REQUEST_FILE, DRIFT_FILE, LABELS_FILE = "request.json", "drift.json", "labels.json"
BATCH, COCO, ROOT = "batch", "coco", "root"
TARGETS = ("auto", "label-studio", "coco")
LABEL_STUDIO, COCO_TARGET = "label-studio", "coco"
REQUESTED, EMPTY, HARVESTED, SUBMITTED = "requested", "empty", "harvested", "training submitted"
TITLE_LENGTH = 50  # Label Studio's limit on a project title
DEFAULT_BUDGET = 50


@dataclass
class LabelRequest:
    """One monitoring run's request for labels, as recorded in `request.json`."""

    monitoring_run_id: str
    target: str  # label-studio or coco
    requested_at: str
    model_name: str
    window: dict[str, str]  # start, end, log
    images: int  # selected and exported; 0: the window kept no image (nothing to label)
    batch: str  # the batch's URI
    budget: int
    seed: int
    label_studio_url: str = ""
    project: str = ""  # Label Studio project title
    project_id: int = 0
    coco: str = ""  # the COCO export's URI
    labels: str = ""  # where a person puts the returned COCO file
    boxes: int = 0  # the model's boxes sent as pre-annotations
    training: dict[str, Any] = field(default_factory=dict)  # the retraining's parameters
    lineage: str = ""  # the drift check's (JSON)
    harvest: dict[str, Any] = field(default_factory=dict)  # what the last harvest wrote
    already: bool = field(default=False, compare=False)  # an earlier attempt made it

    @property
    def where(self) -> str:
        if self.target == LABEL_STUDIO:
            return f"{self.label_studio_url}/projects/{self.project_id}/data"
        return self.coco

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("already")
        return data

    def decision_entry(self) -> dict[str, Any]:
        """What the monitoring run's decision record keeps of it."""
        keys = ("target", "requested_at", "images", "batch", "project", "project_id", "coco")
        return {**{k: getattr(self, k) for k in keys}, "where": self.where}


def labelling_store(settings: Settings | None = None) -> ObjectStore:
    return default_store(LABELLING_PREFIX, settings)


def stored_drift(monitoring_run_id: str, settings: Settings | None = None) -> bytes:
    """The drift check's result kept with the run's request: the retraining's input."""
    return labelling_store(settings).read_bytes(f"{safe_key(monitoring_run_id)}/{DRIFT_FILE}")


def project_title(model_name: str, monitoring_run_id: str) -> str:
    """`<model> <run id>`, cut to Label Studio's 50 characters (the run id is kept whole up to
    36, a KFP run's UUID)."""
    key = safe_key(monitoring_run_id)[:36]
    return f"{model_name[: TITLE_LENGTH - 1 - len(key)]} {key}".strip()


def read_request(monitoring_run_id: str, settings: Settings | None = None) -> LabelRequest | None:
    store = labelling_store(settings)
    key = f"{safe_key(monitoring_run_id)}/{REQUEST_FILE}"
    if not store.exists(key):
        return None
    return LabelRequest(**json.loads(store.read_bytes(key)))


def request_status(request: LabelRequest, settings: Settings | None = None) -> str:
    """empty, requested (waiting for labels), harvested or training submitted."""
    submission = read_submission(request.monitoring_run_id, settings)
    if submission is not None and submission.status != "failed":
        return SUBMITTED
    if not request.images:
        return EMPTY
    return HARVESTED if request.harvest else REQUESTED


def list_requests(settings: Settings | None = None) -> list[tuple[LabelRequest, str]]:
    """Every recorded request with its status, oldest first."""
    store = labelling_store(settings)
    found = [
        LabelRequest(**json.loads(store.read_bytes(f"{folder}/{REQUEST_FILE}")))
        for folder in store.list_folders()
        if store.exists(f"{folder}/{REQUEST_FILE}")
    ]
    found.sort(key=lambda r: r.requested_at)
    return [(r, request_status(r, settings)) for r in found]


def drift_window(lineage: str) -> tuple[str, str]:
    """(start, end) of the window a drift check judged, from its lineage JSON; ("", "") if it
    does not say."""
    try:
        window = str(json.loads(lineage or "{}").get("drift_window", ""))
    except (ValueError, AttributeError):
        return "", ""
    start, _, end = window.partition(" .. ")
    return (start if start != "?" else ""), (end if end != "?" else "")


def model_classes(lineage: str, settings: Settings | None = None) -> list[str]:
    """The classes of the registered version the drift check compared with (its lineage's
    `drift_reference`, `NAME vN`), so people can also label a class the model did not report in
    the window; [] when the reference is no registered version or MLflow cannot say (the batch
    then offers the classes the window's detections name)."""
    try:
        reference = str(json.loads(lineage or "{}").get("drift_reference", ""))
    except (ValueError, AttributeError):
        return []
    name, _, version = reference.rpartition(" v")
    if not name or not version.isdigit():
        return []
    from visionops.models.artifact import METADATA_JSON, MODEL_ARTIFACT_DIR
    from visionops.training.registry import Registry  # MLflow: only for a registered reference

    try:
        registry = Registry(name, settings)
        run_id = registry.version(version).run_id
        metadata = registry.run_json(run_id, f"{MODEL_ARTIFACT_DIR}/{METADATA_JSON}") or {}
    except Failure as error:
        log.warning(
            "the classes of %s are unknown (%s): the window's are offered", reference, error
        )
        return []
    names = metadata.get("names") if isinstance(metadata, dict) else None
    return [str(n) for n in names] if isinstance(names, list) else []


def request_labels(
    monitoring_run_id: str,
    drift_result: dict[str, Any],
    *,
    log_location: str = "",
    lineage: str = "",
    start: str = "",
    end: str = "",
    hours: float = 24.0,
    budget: int = DEFAULT_BUDGET,
    seed: int = 0,
    target: str = "auto",
    model_name: str = "",
    class_names: Sequence[str] = (),
    training: dict[str, Any] | None = None,
    settings: Settings | None = None,
) -> LabelRequest:
    """Select the drifted window's images and export them for labelling, once per monitoring run.

    The window is the one the drift check judged (from `lineage`), else [start, end) or the last
    `hours`. The batch offers `class_names` (default `model_classes`) and those the window's
    detections name. `target`: auto (Label Studio when VISIONOPS_LABEL_STUDIO_URL is set, else
    COCO), label-studio or coco. `training`: the retraining's parameters (`retrain_after_drift`'s
    dataset, products, epochs, imgsz, weights, training_params), kept for the harvest. A window
    that kept no image is a request of 0 images (nothing to label), not an error.
    LabelStudioError when Label Studio is unreachable or refuses the token: nothing recorded.
    """
    from visionops.labeling.scoring import drift_focus  # numpy: only where a batch is picked
    from visionops.labeling.select import select_window

    settings = settings or get_settings()
    if target not in TARGETS:
        raise UsageError(f"unknown labelling target {target!r}; choose {', '.join(TARGETS)}")
    if target == "auto":
        target = LABEL_STUDIO if settings.label_studio_url else COCO_TARGET
    if target == LABEL_STUDIO and not settings.label_studio_url:
        raise UsageError("labelling in Label Studio needs VISIONOPS_LABEL_STUDIO_URL")
    key = safe_key(monitoring_run_id)
    store = labelling_store(settings)
    existing = read_request(monitoring_run_id, settings)
    if existing is not None:
        log.info("labels for %s were requested already: %s", key, existing.where)
        return LabelRequest(**{**existing.to_dict(), "already": True})
    begin, stop = drift_window(lineage)
    begin, stop = begin or start, stop or end
    focus = drift_focus(drift_result, f"the drift result of {key}")
    name = model_name or settings.model_name
    class_names = list(class_names) or model_classes(lineage, settings)
    with _workdir(store, key, settings) as work:
        selected = select_window(
            log_location, work / BATCH, budget=budget, start=begin or None, end=stop or None,
            hours=hours, seed=seed, drift=focus, class_names=class_names,
        )  # fmt: skip
        request = LabelRequest(
            monitoring_run_id, target, _now(), name,
            {"start": selected.start, "end": selected.end, "log": selected.log},
            selected.selected, store.uri(f"{key}/{BATCH}"), budget, seed,
            training=dict(training or {}), lineage=lineage,
        )  # fmt: skip
        if selected.selected:
            _export(request, work, settings)
            _publish(store, work / BATCH, f"{key}/{BATCH}")
            if target == COCO_TARGET:
                _publish(store, work / COCO, f"{key}/{COCO}")
        store.write_bytes(f"{key}/{DRIFT_FILE}", _json(drift_result))
        store.write_bytes(f"{key}/{REQUEST_FILE}", _json(request.to_dict()))
    record_decision(
        monitoring_run_id, drift_result, labelling=request.decision_entry(), settings=settings
    )
    log.info("labels for %s requested: %d images, %s", key, request.images, request.where)
    return request


def _export(request: LabelRequest, work: Path, settings: Settings) -> None:
    """Export the batch at `work/batch`: to Label Studio, or as COCO into `work/coco`."""
    key = safe_key(request.monitoring_run_id)
    if request.target == COCO_TARGET:
        from visionops.labeling.coco_exchange import export_coco  # PIL: only for an export

        counted = export_coco(work / BATCH, work / COCO)
        request.coco = labelling_store(settings).uri(f"{key}/{COCO}")
        request.labels = labelling_store(settings).uri(f"{key}/{LABELS_FILE}")
        request.boxes = int(counted["boxes"])
        return
    from visionops.labeling.label_studio import export_to_label_studio

    title = project_title(request.model_name, request.monitoring_run_id)
    with _client(settings) as client:
        exported = export_to_label_studio(work / BATCH, client, title)
    request.label_studio_url, request.project = exported.url, title
    request.project_id, request.boxes = exported.project_id, exported.predictions


def _client(settings: Settings) -> Any:
    from visionops.labeling.label_studio_client import LabelStudioClient

    if not settings.label_studio_url:
        raise LabelStudioError("no Label Studio URL: set VISIONOPS_LABEL_STUDIO_URL")
    token = settings.label_studio_token.get_secret_value() if settings.label_studio_token else ""
    return LabelStudioClient(
        settings.label_studio_url, token, timeout=settings.label_studio_timeout
    )


# ---------------------------------------------------------------------- harvest


@dataclass
class Harvest:
    """What a harvest found and wrote, and the training run it submitted (or found)."""

    monitoring_run_id: str
    root: str  # the VISION root's URI: the retraining's new_data
    labelled: int = 0
    unfinished: int = 0
    images: int = 0
    boxes: int = 0
    reused: bool = False  # the store held these labels already
    submission: Submission | None = None
    already: bool = False  # training was submitted for this monitoring run before

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k != "submission"}
        if self.submission is not None:
            data["training_run"] = self.submission.run_name
            data["training"] = self.submission.url or self.submission.run_dir
        return data


def harvest_root(
    monitoring_run_id: str,
    *,
    labels: str = "",
    require_complete: bool = False,
    seed: int = 0,
    val_fraction: float = 0.2,
    settings: Settings | None = None,
) -> tuple[LabelRequest, Harvest]:
    """Import the finished labels of `monitoring_run_id`'s request into the store's VISION root.

    From its Label Studio project, or from the COCO file at `labels` (a path or s3:// URI;
    empty: `labelling/<run id>/labels.json` in the store) whose images are the exported ones.
    When training was submitted for the run already, nothing is imported: the harvest it used is
    returned (`already`). UsageError: no request for the run; DataError: nothing labelled yet,
    or labels that do not hold together; LabelStudioError: unreachable, token refused, or
    unfinished tasks under `require_complete`. Nothing is written on any of them.
    """
    settings = settings or get_settings()
    request = read_request(monitoring_run_id, settings)
    if request is None:
        raise UsageError(
            f"no labelling request for monitoring run {monitoring_run_id!r} "
            "(`visionops label requests` lists them)"
        )
    key = safe_key(monitoring_run_id)
    store = labelling_store(settings)
    submitted = read_submission(monitoring_run_id, settings)
    if submitted is not None and submitted.status != "failed":
        root = request.harvest.get("root") or submitted.params.get("extra_data", "")
        log.info("training for %s was submitted already: %s", key, submitted.run_name)
        found = {
            k: request.harvest.get(k, 0) for k in ("labelled", "unfinished", "images", "boxes")
        }
        return request, Harvest(monitoring_run_id, root, **found, reused=True,
                                submission=submitted, already=True)  # fmt: skip
    if not request.images:
        raise DataError(
            f"monitoring run {monitoring_run_id!r} asked for no labels: its window kept no image"
        )
    with _workdir(store, key, settings) as work:
        harvest = _import(request, work, labels, require_complete, seed, val_fraction, settings)
        if harvest.images == 0:
            raise DataError(
                f"no labelled image in {request.where} yet ({harvest.unfinished} tasks "
                "unfinished): label some, then harvest again; nothing written"
            )
        _publish(store, work / ROOT, f"{key}/{ROOT}", last="vision_root.json")
    harvest.root = store.uri(f"{key}/{ROOT}")
    request.harvest = {**harvest.to_dict(), "harvested_at": _now()}
    store.write_bytes(f"{key}/{REQUEST_FILE}", _json(request.to_dict()))
    log.info("harvested %d labelled images of %s into %s", harvest.images, key, harvest.root)
    return request, harvest


def harvest_labels(
    monitoring_run_id: str,
    *,
    labels: str = "",
    require_complete: bool = False,
    seed: int = 0,
    mode: str = "auto",
    training: dict[str, Any] | None = None,
    settings: Settings | None = None,
) -> Harvest:
    """`harvest_root`, then re-submit training with the root as `new_data`, once per monitoring
    run (`retrain_after_drift`). `training` overrides the request's retraining parameters."""
    settings = settings or get_settings()
    request, harvest = harvest_root(
        monitoring_run_id, labels=labels, require_complete=require_complete, seed=seed,
        settings=settings,
    )  # fmt: skip
    if harvest.already:
        return harvest
    params = retraining(request, training)
    drift = json.loads(stored_drift(monitoring_run_id, settings))
    harvest.submission = retrain_after_drift(
        monitoring_run_id, drift, new_data=harvest.root, mode=mode, settings=settings,
        lineage=request.lineage, **params,
    )  # fmt: skip
    harvest.already = harvest.submission.already
    return harvest


def retraining(request: LabelRequest, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """`retrain_after_drift`'s dataset, products, epochs, imgsz, weights and training_params:
    the request's, with the non-empty `overrides`."""
    params: dict[str, Any] = {"dataset": "synthetic", "products": "", "epochs": 0, "imgsz": 0,
                              "weights": "", "training_params": "{}"}  # fmt: skip
    params.update({k: v for k, v in request.training.items() if k in params})
    params.update({k: v for k, v in (overrides or {}).items() if k in params and v})
    return params


def _import(
    request: LabelRequest, work: Path, labels: str, require_complete: bool, seed: int,
    val_fraction: float, settings: Settings,
) -> Harvest:  # fmt: skip
    key = safe_key(request.monitoring_run_id)
    harvest = Harvest(request.monitoring_run_id, "")
    if request.target == LABEL_STUDIO and not labels:
        from visionops.labeling.label_studio import import_from_label_studio

        with _client(settings) as client:
            if client.url != request.label_studio_url:
                log.warning("the project was exported to %s, harvesting from %s",
                            request.label_studio_url, client.url)  # fmt: skip
            result = import_from_label_studio(
                client, request.project, work / ROOT, require_complete=require_complete,
                seed=seed, val_fraction=val_fraction,
            )  # fmt: skip
        harvest.labelled, harvest.unfinished, summary = (
            result.labelled,
            result.unfinished,
            result.root,
        )
    else:
        from visionops.labeling.coco_exchange import import_coco

        store = labelling_store(settings)
        source = labels or store.uri(f"{key}/{LABELS_FILE}")
        coco_file = work / LABELS_FILE
        _fetch_file(source, coco_file, settings)
        store.download_tree(f"{key}/{BATCH}/images", work / "images")
        summary = import_coco(coco_file, work / "images", work / ROOT, seed=seed,
                              val_fraction=val_fraction)  # fmt: skip
        harvest.labelled = summary.total + summary.unplaced
    harvest.images, harvest.boxes, harvest.reused = summary.total, summary.boxes, summary.reused
    return harvest


def _fetch_file(source: str, target: Path, settings: Settings) -> None:
    """The returned COCO file at `source` (a path or s3:// URI) into `target`."""
    if is_s3_uri(source):
        folder, _, name = source.rpartition("/")
        store = open_store(folder, settings)
        if not store.exists(name):
            raise DataError(f"no labels returned yet: put the COCO file at {source}")
        store.download_file(name, target)
    elif Path(source).is_file():
        shutil.copyfile(source, target)
    else:
        raise DataError(f"no labels returned yet: put the COCO file at {source}")


# ---------------------------------------------------------------------- the store


@contextmanager
def _workdir(store: ObjectStore, key: str, settings: Settings) -> Iterator[Path]:
    """A scratch folder removed afterwards; beside the store's folder when the store is local,
    so that publishing is a rename."""
    base = store.root / key if isinstance(store, LocalStore) else settings.data_dir / "tmp"
    base.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix=".work-", dir=base) as work:
            yield Path(work)
    finally:
        if isinstance(store, LocalStore) and dir_is_empty(base):
            base.rmdir()  # a request that failed leaves no folder behind


def _publish(store: ObjectStore, folder: Path, prefix: str, *, last: str = "") -> None:
    """`folder` into the store at `prefix`, whole: a rename on a local store; on S3 every file,
    `last` (the marker that says it is whole) after the others."""
    if isinstance(store, LocalStore):
        replace_dir(folder, store.root / prefix)
        return
    try:
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        files.sort(key=lambda p: p.relative_to(folder).as_posix() == last)
        for path in files:
            store.upload_file(path, f"{prefix}/{path.relative_to(folder).as_posix()}")
    except OSError as error:
        raise StorageError(f"cannot store {prefix} at {store.uri(prefix)}: {error}") from error


def _json(data: Any) -> bytes:
    return (json.dumps(data, indent=2) + "\n").encode()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
