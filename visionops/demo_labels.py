"""The demo's data loop: the drifted window's parts, a Label Studio of its own, and the scripted
annotator that stands in for people.

The drifted window is new parts from the line once the lamp dims (`line_window`): synthesized
with another seed than the training data, so the model never saw them, darkened by the drift
simulator, which also carries their labels over. The demo sends them to the predictor; what the
predictor keeps (its image retention) is what the monitoring pipeline selects and exports to
Label Studio; the simulator's labels are read by nobody but the scripted annotator, which corrects
the model's pre-annotations to them through Label Studio's API, as people would
(`visionops.labeling.scripted_annotator`). Retraining then takes the labels harvested from Label
Studio, not those files.

Label Studio (`demo_studio`) runs from `make label-studio`'s virtualenv on 127.0.0.1 with a data
dir of its own, made anew for each demo (from the install's migrated template, so it answers in
about 30 s); the pipelines' steps, which KFP's local runner starts with this process's
environment, reach it through VISIONOPS_LABEL_STUDIO_URL and VISIONOPS_LABEL_STUDIO_TOKEN, set
while it runs. It is stopped at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from visionops.config import Settings, get_settings
from visionops.data.synth import synthesize
from visionops.labeling.label_studio_client import LabelStudioClient
from visionops.labeling.scripted_annotator import ScriptedAnnotation, annotate_project
from visionops.labeling.studio import Studio, start_studio
from visionops.local_predictor import free_port
from visionops.monitoring.collect import read_window
from visionops.monitoring.log_layout import IMAGE_KEY
from visionops.monitoring.simulate import simulate_split
from visionops.orchestration.label_loop import LabelRequest, list_requests
from visionops.storage import LocalStore

log = logging.getLogger(__name__)

LINE_SEED = 1_000  # added to the demo's seed: the line's parts are not the training parts
URL_ENV, TOKEN_ENV = "VISIONOPS_LABEL_STUDIO_URL", "VISIONOPS_LABEL_STUDIO_TOKEN"


def line_window(
    root: Path, *, products: int, parts: int, imgsz: int, kind: str, severity: float, seed: int
) -> Path:
    """`parts` new parts per product, drifted (`kind` at `severity`), with their labels: a VISION
    root (`<root>/line-drifted`, train split only) whose images are the drifted window's traffic
    and whose labels only the scripted annotator reads."""
    line = synthesize(
        root / "line", products=products, n_train=parts, n_val=1, n_inference=1, imgsz=imgsz,
        seed=seed + LINE_SEED,
    )  # fmt: skip
    drifted = root / "line-drifted"
    for product in line.products:
        target = drifted / product / "train"
        if target.exists():  # an earlier demo's: made again, as the data stage makes the rest
            shutil.rmtree(target)
        simulate_split(
            line.root / product / "train", target, kind=kind, severity=severity, seed=seed
        )
    return drifted


def window_images(root: Path) -> list[Path]:
    """The drifted window's images, product by product, in name order (what the demo sends)."""
    from visionops.monitoring.reference import image_files

    return [p for product in sorted(root.iterdir()) if (product / "train").is_dir()
            for p in image_files(product / "train")]  # fmt: skip


def window_folders(root: Path) -> str:
    """The monitoring pipeline's `current_images` for the drifted window: the line's folders,
    for the drift page's thumbnails when the prediction log kept too few images."""
    return ",".join(str(p / "train") for p in sorted(root.iterdir()) if (p / "train").is_dir())


@contextmanager
def demo_studio(root: Path, settings: Settings | None = None) -> Iterator[Studio]:
    """Label Studio for one demo (see the module docstring): a new data dir `<root>/label-studio`,
    a free port on 127.0.0.1, its URL and token in this process's environment while it runs."""
    settings = settings or get_settings()
    data_dir = root / "label-studio"
    if data_dir.exists():  # the last demo's projects: each demo tells the whole story
        shutil.rmtree(data_dir)
    studio = start_studio(settings.label_studio_venv, data_dir, free_port())
    saved = {key: os.environ.get(key) for key in (URL_ENV, TOKEN_ENV)}
    try:
        os.environ.update({URL_ENV: studio.url, TOKEN_ENV: studio.admin.token})
        get_settings.cache_clear()
        yield studio
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        get_settings.cache_clear()
        studio.stop()


@dataclass
class DataLoop:
    """The drifted window's way to the retraining: images sent, kept by the predictor, selected
    and exported, labelled by the stand-in, harvested."""

    sent: int
    kept: int
    selected: int = 0
    project: str = ""  # where people (here: the stand-in) label them
    annotation: ScriptedAnnotation | None = None
    labelled: int = 0  # images in the harvested VISION root

    def annotation_line(self) -> str:
        """What the stand-in did, in a line that says it stands in for people."""
        done = self.annotation
        if done is None:
            return "no annotation"
        return (
            f"the scripted annotator (a stand-in for people, labels from the simulator) "
            f"corrected {done.annotated} tasks: boxes accepted {done.accepted}, moved "
            f"{done.moved}, relabelled {done.relabelled}, deleted {done.deleted}, added "
            f"{done.added}" + (f"; labels added {', '.join(done.labels_added)}"
                               if done.labels_added else "")
        )  # fmt: skip


class NewRequest:
    """The labelling request a monitoring run made (None until then, or if it made none)."""

    request: LabelRequest | None = None


@contextmanager
def new_request(settings: Settings | None = None) -> Iterator[NewRequest]:
    """The labelling request recorded while the block runs (a drifted window's monitoring run)."""
    before = {r.monitoring_run_id for r, _ in list_requests(settings)}
    found = NewRequest()
    yield found
    made = [r for r, _ in list_requests(settings) if r.monitoring_run_id not in before]
    found.request = made[-1] if made else None


@dataclass(frozen=True)
class Kept:
    """What the predictor's image retention kept of a window."""

    records: int
    kept: int


def kept_images(log_dir: Path, start: datetime, end: datetime) -> Kept:
    """How many records of [start, end) the prediction log holds and how many name a kept image."""
    window = read_window(LocalStore(log_dir), start, end)
    kept = int(window[IMAGE_KEY].notna().sum()) if IMAGE_KEY in window else 0
    return Kept(len(window), kept)


def annotate(studio: Studio, project: str, truth: Path) -> ScriptedAnnotation:
    """The scripted annotator (a stand-in for people) on `project` of the demo's Label Studio,
    its labels from `truth` (the simulator's)."""
    with LabelStudioClient(studio.url, studio.admin.token) as client:
        return annotate_project(client, project, truth)
