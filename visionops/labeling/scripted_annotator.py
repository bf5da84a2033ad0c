"""The scripted annotator: a stand-in for the people who label, in the demo and the tests only.

People correct the model's boxes in Label Studio. The demo has no people, so this does what they
would do, through the same REST API, with labels it already knows: the ground truth of a VISION
root (the drift simulator writes its drifted copies with their labels). It never invents a label
and must not be pointed at production images: its labels are only as good as that root's.

For each task of a project with no annotation yet it finds the image's ground truth by the SHA-256
of the bytes Label Studio serves, among every image of the root's labelled splits, and corrects
the model's pre-annotation (the task's prediction) as a person would: a predicted box that
overlaps a true one (IoU >= 0.5, best pairs first) is kept, moved onto the true box and given its
class; a predicted box on nothing is deleted; a true box that nothing predicted is drawn. The
result is submitted as the task's annotation, which `label import` then reads like any other.

A task whose image the ground truth does not hold is left alone and counted (a person would have
to label it). Everything is read and checked before the first annotation is submitted. A true
class the project does not label yet (the batch offered only the classes the model reported in
the window) is added to the project's labelling config first, as the project's manager does when
people meet a defect the model never reported; the summary names it. Tasks that already have an
annotation are left as they are, so a second run submits nothing.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visionops.data.files import sha256_file
from visionops.data.vision import LABELED_SPLITS, open_vision
from visionops.errors import DataError, LabelStudioError
from visionops.labeling.label_studio import (
    IMAGE_NAME,
    config_labels,
    label_config,
    rectangle,
    result_box,
)
from visionops.labeling.label_studio_client import LabelStudioClient
from visionops.labeling.vision_root import LabeledBox

log = logging.getLogger(__name__)

STAND_IN = "scripted annotator (a stand-in for people: labels from the simulator's ground truth)"
MATCH_IOU = 0.5  # a predicted box this close to a true one is that box, to be corrected
SAME_PX = 0.5  # a kept box within this many pixels of the truth (every edge) counts as accepted


@dataclass(frozen=True)
class Truth:
    """The ground truth of one image: its product, size and boxes; `source` names its file."""

    product: str
    width: int
    height: int
    boxes: tuple[LabeledBox, ...]
    source: str


def ground_truth(root: Path) -> dict[str, Truth]:
    """SHA-256 of each image of the labelled splits of VISION root `root` -> its ground truth.

    The same bytes listed twice must carry the same boxes (else DataError naming both files)."""
    truths: dict[str, Truth] = {}
    for split in open_vision(root).splits(LABELED_SPLITS):
        if not split.exists:
            continue
        coco = split.coco
        names = {c["id"]: f"{split.product}/{c['name']}" for c in coco.get("categories") or []}
        boxes: dict[Any, list[LabeledBox]] = {}
        for annotation in coco.get("annotations") or []:
            name = names.get(annotation.get("category_id"))
            if name is None:
                raise DataError(
                    f"{split.annotations_path}: annotation {annotation.get('id')} names category "
                    f"{annotation.get('category_id')}, which the file does not list"
                )
            x, y, w, h = (float(v) for v in annotation["bbox"])
            boxes.setdefault(annotation.get("image_id"), []).append(LabeledBox(name, (x, y, w, h)))
        for image in coco.get("images") or []:
            path = split.image_path(str(image["file_name"]))
            if not path.is_file():
                raise DataError(f"{split.annotations_path}: image {path.name} is missing")
            truth = Truth(
                split.product, int(image["width"]), int(image["height"]),
                tuple(boxes.get(image["id"], ())), str(path),
            )  # fmt: skip
            digest = sha256_file(path)
            seen = truths.setdefault(digest, truth)
            if seen.boxes != truth.boxes:
                raise DataError(
                    f"{seen.source} and {truth.source} are the same image with other boxes"
                )
    return truths


# ---------------------------------------------------------------------- correcting one task


@dataclass
class Correction:
    """One task's annotation as the stand-in submits it, and what it changed."""

    task_id: int
    result: list[dict[str, Any]]
    accepted: int = 0  # predicted boxes kept as they were (class and every edge within 0.5 px)
    moved: int = 0  # predicted boxes kept, moved onto the true box
    relabelled: int = 0  # predicted boxes kept with another class (moved too, or not)
    deleted: int = 0  # predicted boxes on no true box
    added: int = 0  # true boxes nothing predicted


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = min(ax + aw, bx + bw) - max(ax, bx)
    h = min(ay + ah, by + bh) - max(ay, by)
    inter = max(w, 0.0) * max(h, 0.0)
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


def correct(task_id: int, predicted: list[tuple[str, LabeledBox]], truth: Truth) -> Correction:
    """The annotation a careful person would submit: `predicted` ((region id, box) of the model's
    pre-annotation) matched to the true boxes, best overlap first, then fixed, deleted, added."""
    pairs = sorted(
        ((_iou(p.bbox, t.bbox), i, j) for i, (_, p) in enumerate(predicted)
         for j, t in enumerate(truth.boxes)),
        key=lambda pair: (-pair[0], pair[1], pair[2]),
    )  # fmt: skip
    matched: dict[int, int] = {}  # true box -> predicted box
    for iou, i, j in pairs:
        if iou < MATCH_IOU:
            break
        if j not in matched and i not in matched.values():
            matched[j] = i
    done = Correction(task_id, [])
    for j, true_box in enumerate(truth.boxes):
        if j in matched:
            region, guess = predicted[matched[j]]
            relabelled = guess.class_name != true_box.class_name
            moved = max(abs(a - b) for a, b in _edges(guess.bbox, true_box.bbox)) > SAME_PX
            done.relabelled += relabelled
            done.moved += moved
            done.accepted += not (moved or relabelled)
        else:
            region = f"gt{j}"
            done.added += 1
        done.result.append(
            rectangle(region, true_box.class_name, true_box.bbox, truth.width, truth.height)
        )
    done.deleted = len(predicted) - len(matched)
    return done


def _edges(a: tuple[float, ...], b: tuple[float, ...]) -> list[tuple[float, float]]:
    """Left, top, right and bottom of two boxes, paired."""
    return [(a[0], b[0]), (a[1], b[1]), (a[0] + a[2], b[0] + b[2]), (a[1] + a[3], b[1] + b[3])]


# ---------------------------------------------------------------------- a whole project


@dataclass
class ScriptedAnnotation:
    """What the stand-in did to a project."""

    project: str
    project_id: int
    truth_root: Path
    tasks: int = 0
    annotated: int = 0
    already_annotated: int = 0
    no_ground_truth: int = 0  # images the root does not hold: left for people
    accepted: int = 0
    moved: int = 0
    relabelled: int = 0
    deleted: int = 0
    added: int = 0
    background: int = 0  # annotated with no box: the image shows no defect
    labels_added: list[str] = field(default_factory=list)  # true classes the project lacked
    annotation_ids: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "annotator": STAND_IN,
            "truth": str(self.truth_root),
            "project": self.project,
            "project_id": self.project_id,
            "tasks": self.tasks,
            "annotated": self.annotated,
            "already_annotated": self.already_annotated,
            "no_ground_truth": self.no_ground_truth,
            "boxes": {
                "accepted": self.accepted,
                "moved": self.moved,
                "relabelled": self.relabelled,
                "deleted": self.deleted,
                "added": self.added,
            },
            "background": self.background,
            "labels_added": self.labels_added,
        }


def annotate_project(
    client: LabelStudioClient, project: str, truth_root: Path
) -> ScriptedAnnotation:
    """Stand in for people on project `project`: correct each unannotated task's pre-annotation
    from the ground truth in `truth_root` and submit it (see the module docstring)."""
    truths = ground_truth(truth_root)
    found = client.find_project(project)
    if found is None:
        raise LabelStudioError(f"no project titled {project!r} at {client.url}")
    project_id = int(found["id"])
    labels = config_labels(str(found.get("label_config", "")))
    summary = ScriptedAnnotation(project, project_id, Path(truth_root))
    planned: list[Correction] = []
    for task in client.tasks(project_id, full=True):
        summary.tasks += 1
        if task.get("annotations"):
            summary.already_annotated += 1
            continue
        where = f"Label Studio project {project!r} task {task['id']}"
        url = (task.get("data") or {}).get(IMAGE_NAME)
        if not isinstance(url, str) or not url:
            raise DataError(f"{where}: no image in its data (key {IMAGE_NAME!r})")
        truth = truths.get(hashlib.sha256(client.content(url)).hexdigest())
        if truth is None:
            summary.no_ground_truth += 1
            continue
        missing = {b.class_name for b in truth.boxes} - set(labels) - set(summary.labels_added)
        summary.labels_added = sorted({*summary.labels_added, *missing})
        planned.append(correct(int(task["id"]), _predicted(task, truth, set(labels), where), truth))
    if summary.labels_added:  # every task checked: first the labels people need, then submit
        client.set_label_config(project_id, label_config([*labels, *summary.labels_added]))
        log.info("project %r labels %s too now", project, ", ".join(summary.labels_added))
    for correction in planned:
        summary.annotation_ids.append(client.annotate(correction.task_id, correction.result))
        summary.annotated += 1
        summary.background += not correction.result
        for name in ("accepted", "moved", "relabelled", "deleted", "added"):
            setattr(summary, name, getattr(summary, name) + getattr(correction, name))
    log.info(
        "%s: %d of %d tasks of project %r annotated, %d without ground truth left for people",
        STAND_IN, summary.annotated, summary.tasks, project, summary.no_ground_truth,
    )  # fmt: skip
    return summary


def _predicted(
    task: dict[str, Any], truth: Truth, labels: set[str], where: str
) -> list[tuple[str, LabeledBox]]:
    """The boxes of the task's newest prediction (the model's pre-annotation), in pixels."""
    predictions = sorted(task.get("predictions") or [], key=lambda p: int(p.get("id", 0)))
    if not predictions:
        return []
    return [
        (str(result.get("id")), result_box(result, truth.width, truth.height, labels, where))
        for result in predictions[-1].get("result") or []
        if result.get("type") == "rectanglelabels"
    ]
