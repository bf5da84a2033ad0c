"""`visionops demo`: the whole platform on this machine, on generated VISION-like data.

    1. data       synthesize a VISION-like dataset; drift a labeled copy of it (darker, as a
                  failing lamp would) for the drifted val scores; new parts from the line, drifted
                  the same way, for the drifted window (`visionops.demo_labels`)
    2. train      the training pipeline, locally: fetch, validate, convert, train, evaluate,
                  register (the first model becomes the champion)
    3. studio     Label Studio on 127.0.0.1, a new one for this demo
    4. traffic    the KServe predictor on models:/<model>@champion: clean images, then the line's
                  drifted parts (its prediction log keeps the images it was unsure about)
    5. monitor    the monitoring pipeline on the clean window (no drift: recorded) and on the
                  drifted window (drift: the kept images most worth labelling go to a Label
                  Studio project with the model's boxes)
    6. label      the scripted annotator, the stand-in for people, corrects those boxes through
                  Label Studio's API from the simulator's labels
    7. harvest    the harvest pipeline imports the finished labels and re-submits training once
    8. retrain    that run (its own process) fine-tunes the champion on clean data + the labels;
                  the gate promotes it only if it beats the champion on the same evaluation data,
                  and its deploy step asks the predictor to reload
    9. summary    images kept, selected, labelled; mAP on clean and drifted val before and after,
                  drift scores, what serves now

Everything lands in `<data dir>/demo/`; the registered model is `<model name>-demo`, reset at the
start so each demo tells the whole story. Every process the demo starts is stopped at the end,
also on failure or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from visionops.config import Settings, get_settings
from visionops.containers import readable_by_containers
from visionops.data.convert import convert
from visionops.data.synth import synthesize
from visionops.demo_labels import (
    DataLoop,
    annotate,
    demo_studio,
    kept_images,
    line_window,
    new_request,
    window_folders,
    window_images,
)
from visionops.errors import ModelNotFound, PipelineError
from visionops.labeling.studio import executable
from visionops.local_predictor import (
    inference_folders,
    inference_images,
    predictor,
    send_images,
    served_version,
    stop_process,
    wait_for_log,
)
from visionops.monitoring.simulate import simulate_split
from visionops.orchestration.docker import run_in_containers
from visionops.orchestration.local import LocalRun, StepCallback, alive, follow_run, run_local
from visionops.orchestration.resubmit import list_submissions
from visionops.tracking import mlflow_errors
from visionops.training.evaluate import evaluate
from visionops.training.registry import Registry

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "inference")


@dataclass(frozen=True)
class DemoConfig:
    """Sizes and knobs of a demo; the defaults fit in about 15 minutes on 2 CPU cores."""

    products: int = 2
    train: int = 50  # images per product and split
    val: int = 32
    inference: int = 32
    window: int = 48  # the line's drifted parts per product: the drifted window
    imgsz: int = 320
    epochs: int = 16
    retrain_epochs: int = 8
    batch: int = 8
    drift_kind: str = "brightness"
    drift_severity: float = 0.8
    seed: int = 0
    label_budget: int = 0  # images of the drifted window to label at most; 0: all it kept
    min_map50: float | None = None  # the first model's gate minimum; None: the pipeline default
    out_dir: Path | None = None
    model_name: str | None = None
    docker: bool = False  # every step in the pipeline image, the predictor in its image


@dataclass(frozen=True)
class Scores:
    """One model version's mAP on the clean and on the drifted validation images."""

    version: str
    clean: dict[str, float]
    drifted: dict[str, float]


@dataclass(frozen=True)
class DriftCheck:
    """What one monitoring run decided about one traffic window."""

    run_name: str
    decision: str
    reason: str
    drifted_share: float | None
    columns: list[dict[str, Any]]  # column, method, score, threshold, drifted
    report: Path | None

    def strongest(self, count: int = 3) -> list[dict[str, Any]]:
        """Up to `count` of the columns that drifted, as the check listed them."""
        return [c for c in self.columns if c.get("drifted")][:count]


@dataclass
class DemoResult:
    """Everything the summary shows."""

    model_name: str
    first: Scores
    retrained: Scores | None
    promoted: bool
    gate_reason: str
    clean_check: DriftCheck
    drift_check: DriftCheck
    training_run: str
    serving_version: str
    loop: DataLoop | None = None
    reports: list[tuple[str, Path]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    out_dir: Path = Path()


@dataclass
class DemoEvents:
    """How the demo reports progress: stage titles, pipeline steps, and one-line notes."""

    stage: Callable[[str], None] = lambda title: None
    step: StepCallback = lambda task, display, event: None
    info: Callable[[str], None] = lambda text: None


# ---------------------------------------------------------------- data


@dataclass(frozen=True)
class DemoData:
    vision: Path
    drifted: Path
    clean_yaml: Path
    drifted_yaml: Path


def prepare_data(config: DemoConfig, root: Path, events: DemoEvents) -> DemoData:
    """Synthesize the clean data, drift a labeled copy of every split, convert both val sets."""
    synth = synthesize(
        root / "vision", products=config.products, n_train=config.train, n_val=config.val,
        n_inference=config.inference, imgsz=config.imgsz, seed=config.seed,
    )  # fmt: skip
    events.info(f"{synth.total_images} images of {', '.join(synth.products)} in {synth.root}")
    drifted = root / "drifted"
    for product in synth.products:
        for split in SPLITS:
            simulate_split(
                synth.root / product / split, drifted / product / split,
                kind=config.drift_kind, severity=config.drift_severity, seed=config.seed,
            )  # fmt: skip
    events.info(f"{config.drift_kind} drift at severity {config.drift_severity:g} in {drifted}")
    clean_yaml = convert(synth.root, root / "yolo-clean").data_yaml
    drifted_yaml = convert(drifted, root / "yolo-drifted").data_yaml
    return DemoData(synth.root, drifted, clean_yaml, drifted_yaml)


def reset_model(name: str, settings: Settings) -> None:
    """Delete the demo's registered model, so its first training becomes the champion, and the
    local copies of its versions (the registry caches them by version number, which restart)."""
    for cached in (settings.data_dir / "cache" / "registry").glob(f"*/models/{name}"):
        shutil.rmtree(cached)
    registry = Registry(name, settings)
    try:
        with mlflow_errors(f"delete the demo model {name!r}", settings):
            registry.client.delete_registered_model(name)
    except ModelNotFound:
        return  # a first demo: nothing to reset
    log.info("reset the demo model %s", name)


def scores(name: str, version: str, data: DemoData, settings: Settings) -> Scores:
    """mAP of `name` version `version` on the clean and on the drifted val split."""
    result = {}
    for label, data_yaml in (("clean", data.clean_yaml), ("drifted", data.drifted_yaml)):
        evaluation = evaluate(
            f"models:/{name}/{version}", data_yaml, split="val", log_run=False, settings=settings
        )
        result[label] = evaluation.metrics.summary()
    return Scores(version, result["clean"], result["drifted"])


# ---------------------------------------------------------------- monitoring outcome


def thumbnail_folders(*roots: Path) -> str:
    """The monitoring pipeline's `current_images`: the inference folders of `roots`, for the
    drift page's thumbnails when the prediction log kept no image of the window."""
    return ",".join(str(folder) for root in roots for folder in inference_folders(root))


def drift_check(run: LocalRun) -> DriftCheck:
    """The decision, per-column scores and report of a monitoring run's drift check."""
    result_artifact = run.artifact("drift-check", "result")
    report = run.artifact("drift-check", "report")
    result = json.loads(Path(result_artifact["path"]).read_text()) if result_artifact else {}
    return DriftCheck(
        run.run_name,
        str(run.output("drift-check", "decision", "unknown")),
        str(result.get("reason", "")),
        result.get("drifted_share"),
        list(result.get("columns", [])),
        Path(report["path"]) if report else None,
    )


# ---------------------------------------------------------------- the demo


class DemoSession:
    """The demo's state as it goes: where it writes, what it timed, the reports it kept."""

    def __init__(
        self,
        config: DemoConfig,
        pipelines: Mapping[str, Any],
        events: DemoEvents,
        settings: Settings,
    ) -> None:
        self.config, self.events, self.settings = config, events, settings
        self.pipelines = pipelines
        self.run_pipeline = run_in_containers if config.docker else run_local
        self.name = config.model_name or f"{settings.model_name}-demo"
        self.root = (config.out_dir or settings.data_dir / "demo").expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.timings: dict[str, float] = {}
        self.reports: list[tuple[str, Path]] = []
        self.started = datetime.now(UTC).isoformat(timespec="seconds")

    @property
    def train_args(self) -> str:
        """An optimizer step per batch and no warmup: how ~100 images learn in minutes
        (README "Figures"; Ultralytics' nominal batch of 64 waits 8 batches per step)."""
        return json.dumps({"nbs": self.config.batch, "warmup_epochs": 0})

    @contextmanager
    def stage(self, title: str) -> Iterator[None]:
        self.events.stage(title)
        started = time.monotonic()
        yield
        self.timings[title] = time.monotonic() - started

    def keep_report(self, label: str, artifact: dict[str, Any] | None, file_name: str) -> None:
        """Copy a report artifact to `<demo>/reports/<file_name>` (a name a browser opens)."""
        if artifact is None or not Path(artifact["path"]).is_file():
            return
        target = self.root / "reports" / file_name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(artifact["path"], target)
        self.reports.append((label, target))

    def keep_evaluation(self, run: LocalRun, version: object) -> None:
        """Keep the evaluate step's Markdown table and its HTML report (the pictures)."""
        for output, what, suffix in (("report", "", "md"), ("report_html", ", pictures", "html")):
            self.keep_report(
                f"evaluation v{version}{what}", run.artifact("evaluate-model", output),
                f"evaluation-v{version}.{suffix}",
            )  # fmt: skip

    def stop_spawned(self) -> None:
        """Stop training runs that monitoring started during this demo and that still run (after
        a failure or Ctrl-C; a finished run is gone already)."""
        for submission in list_submissions(self.settings):
            if submission.submitted_at >= self.started and submission.pid and alive(submission.pid):
                stop_process(submission.pid)

    def train_first(self, data: DemoData) -> str:
        """The training pipeline on the clean data; returns the champion version it made."""
        config = self.config
        params: dict[str, Any] = {
            "dataset": str(data.vision), "epochs": config.epochs, "imgsz": config.imgsz,
            "batch": config.batch, "seed": config.seed, "model_name": self.name,
            "deploy_target": "none", "train_args": self.train_args,
        }  # fmt: skip
        if config.min_map50 is not None:
            params["min_map50"] = config.min_map50
        run = self.run_pipeline(
            "training", self.pipelines["training"], params, on_step=self.events.step
        )
        version = str(run.output("register-model", "version"))
        self.keep_report("validation", run.artifact("validate-dataset", "summary"), "validation.md")
        self.keep_evaluation(run, version)
        if not run.output("register-model", "promoted"):
            raise PipelineError(
                "the first model did not become the champion: "
                f"{run.output('register-model', 'reason')} (train longer: --epochs)"
            )
        return version

    def monitor(
        self, window: str, params: dict[str, Any], start: datetime, end: datetime
    ) -> tuple[LocalRun, DriftCheck]:
        """The monitoring pipeline on [start, end) of the prediction log."""
        with self.stage(f"monitor: {window} window"):
            run = self.run_pipeline(
                "monitoring", self.pipelines["monitoring"],
                {**params, "start": start.isoformat(), "end": end.isoformat()},
                on_step=self.events.step,
            )  # fmt: skip
        check = drift_check(run)
        self.keep_report(
            f"drift check, {window} window ({check.decision})",
            run.artifact("drift-check", "report"), f"drift-{window}-window.html",
        )  # fmt: skip
        return run, check

    def retrain(self, training_run: str) -> LocalRun:
        """Follow the training run the monitoring pipeline re-submitted, until it ends."""
        submission = next(s for s in list_submissions(self.settings) if s.run_name == training_run)
        self.events.info(f"following {training_run} (process {submission.pid})")
        run = follow_run(
            self.pipelines["training"], Path(submission.run_dir), submission.pid, self.events.step
        )
        version = run.output("register-model", "version")
        self.keep_evaluation(run, version)
        return run


def run_demo(
    config: DemoConfig,
    pipelines: Mapping[str, Any],
    events: DemoEvents | None = None,
    settings: Settings | None = None,
) -> DemoResult:
    """Run the whole demo (see the module docstring) with `pipelines` (`training`, `monitoring`
    and `harvest`: KFP pipeline objects); returns what the summary shows."""
    demo = DemoSession(config, pipelines, events or DemoEvents(), settings or get_settings())
    name, root, log_dir = demo.name, demo.root, demo.root / "prediction-log"
    executable(demo.settings.label_studio_venv)  # before any work: `make label-studio` did it
    with demo.stage("data"):
        data = prepare_data(config, root, demo.events)
        line = line_window(
            root, products=config.products, parts=config.window, imgsz=config.imgsz,
            kind=config.drift_kind, severity=config.drift_severity, seed=config.seed,
        )  # fmt: skip
        demo.events.info(f"{len(window_images(line))} new parts from the line, drifted, in {line}")
        if config.docker:  # the steps read it as uid 1000 (synthesis writes 0700 folders)
            readable_by_containers(data.vision), readable_by_containers(data.drifted)
        reset_model(name, demo.settings)
    with demo.stage("train"):
        first_version = demo.train_first(data)
    with contextlib.ExitStack() as running:
        running.callback(demo.stop_spawned)
        with demo.stage("label studio"):
            studio = running.enter_context(demo_studio(root, demo.settings))
            demo.events.info(f"Label Studio {studio.url} (admin and token in {studio.data_dir})")
        with demo.stage("serve + traffic"):
            url = running.enter_context(predictor(name, log_dir, root, docker=config.docker))
            demo.events.info(f"predictor {url} serves {name} v{first_version}")
            clean_start = datetime.now(UTC)
            sent = send_images(url, name, inference_images(data.vision))
            drift_start = datetime.now(UTC)
            drifted = send_images(url, name, window_images(line))
            drift_end = datetime.now(UTC)
            wait_for_log(log_dir, clean_start, drift_end, sent + drifted)
            loop = DataLoop(sent=drifted, kept=kept_images(log_dir, drift_start, drift_end).kept)
            demo.events.info(
                f"sent {sent} clean, then {drifted} drifted images; the predictor kept "
                f"{loop.kept} of the drifted ones"
            )
        monitoring = {
            "log_location": str(log_dir), "reference": f"models:/{name}@champion",
            "model_name": name, "dataset": str(data.vision), "label_target": "label-studio",
            "label_budget": config.label_budget or drifted, "epochs": config.retrain_epochs,
            "imgsz": config.imgsz, "weights": f"models:/{name}@champion",
            "training_params": json.dumps({
                "model_name": name, "batch": config.batch, "seed": config.seed,
                "deploy_target": "local", "predictor_url": url, "train_args": demo.train_args,
            }),
        }  # fmt: skip
        _, clean_check = demo.monitor(
            "clean", {**monitoring, "current_images": thumbnail_folders(data.vision)},
            clean_start, drift_start,
        )  # fmt: skip
        with new_request(demo.settings) as asked:
            _, drift_check_ = demo.monitor(
                "drifted", {**monitoring, "current_images": window_folders(line)},
                drift_start, drift_end,
            )  # fmt: skip
        if asked.request is None:
            raise PipelineError(
                f"the drifted window was not judged as drift ({drift_check_.decision}: "
                f"{drift_check_.reason}); try a stronger --drift-severity"
            )
        loop.selected, loop.project = asked.request.images, asked.request.where
        with demo.stage("label (scripted annotator)"):
            loop.annotation = annotate(studio, asked.request.project, line)
            demo.events.info(loop.annotation_line())
        with demo.stage("harvest"):
            harvest = demo.run_pipeline(
                "harvest", demo.pipelines["harvest"],
                {"monitoring_run_id": asked.request.monitoring_run_id}, on_step=demo.events.step,
            )  # fmt: skip
            loop.labelled = int(harvest.output("harvest-labels", "images", 0))
            training_run = str(harvest.output("retrain", "run_name", ""))
        with demo.stage("retrain (re-submitted run)"):
            retrained_run = demo.retrain(training_run)
        serving = served_version(url, name)
    with demo.stage("evaluate before/after"):
        first = scores(name, first_version, data, demo.settings)
        version = retrained_run.output("register-model", "version")
        retrained = scores(name, str(version), data, demo.settings) if version else None
    return DemoResult(
        model_name=name, first=first, retrained=retrained,
        promoted=bool(retrained_run.output("register-model", "promoted")),
        gate_reason=str(retrained_run.output("register-model", "reason", "")),
        clean_check=clean_check, drift_check=drift_check_, training_run=training_run,
        serving_version=serving, loop=loop, reports=demo.reports, timings=demo.timings,
        out_dir=root,
    )  # fmt: skip
