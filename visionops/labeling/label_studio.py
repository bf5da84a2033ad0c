"""A selection batch to Label Studio as tasks with the model's boxes, and finished labels back.

Through its REST API (`label_studio_client.py`). Export: one project per `--project` title, whose
labelling config is an `Image` with `RectangleLabels`, one label per class of the batch
(`Cable/break`); a project whose labels are other classes is refused before anything is uploaded.
Each image is uploaded once, then becomes a task whose data names its SHA-256 (`visionops_sha256`):
a re-export skips the images the project already holds, so it never duplicates a task. The model's
boxes go in as a prediction, in Label Studio's percent coordinates, so people correct boxes rather
than draw them.

Import: every task with a submitted (not skipped) annotation is labelled; the others are left out
and counted, or refused with `require_complete`. Boxes go back to pixels, the images come from
Label Studio (checked against their SHA-256) and everything is handed to `write_vision_root`:
whole or nothing, the same labels and seed give the same root.
"""

from __future__ import annotations

import hashlib
import logging
import math
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from xml.sax.saxutils import quoteattr

from visionops.errors import DataError, LabelStudioError
from visionops.labeling.batch import BatchItem, SelectionBatch, read_batch
from visionops.labeling.label_studio_client import LabelStudioClient
from visionops.labeling.vision_root import (
    LabeledBox,
    LabeledImage,
    VisionRootSummary,
    class_product,
    write_vision_root,
)

log = logging.getLogger(__name__)

IMAGE_NAME = "image"  # the Image tag's name and the task data key of its URL
CONTROL_NAME = "label"  # the RectangleLabels tag's name
SHA_KEY = "visionops_sha256"  # task data: the image's digest (what makes re-export idempotent)
PRODUCT_KEY = "visionops_product"  # task data: places an image that ends with no boxes
TASKS_PER_REQUEST = 100


def label_config(class_names: Sequence[str]) -> str:
    """The labelling config of a batch: its image, one rectangle label per class, in order."""
    labels = "".join(f"\n    <Label value={quoteattr(name)}/>" for name in class_names)
    return (
        f'<View>\n  <Image name="{IMAGE_NAME}" value="${IMAGE_NAME}" zoom="true"/>\n'
        f'  <RectangleLabels name="{CONTROL_NAME}" toName="{IMAGE_NAME}">{labels}\n'
        "  </RectangleLabels>\n</View>\n"
    )


def config_labels(config: str) -> list[str]:
    """The labels of every RectangleLabels tag of a labelling config, in order (none: [])."""
    try:
        root = ET.fromstring(config or "<View/>")
    except ET.ParseError as error:
        raise LabelStudioError(f"the project's labelling config is not XML: {error}") from error
    return list(
        dict.fromkeys(
            str(label.get("value"))
            for control in root.iter("RectangleLabels")
            for label in control.iter("Label")
            if label.get("value") is not None
        )
    )


def _fits(config: str, class_names: Sequence[str]) -> bool:
    """Whether a project's config is the one `label_config` writes for these classes (Label
    Studio stores it reformatted, so the text is not compared)."""
    root = ET.fromstring(config or "<View/>")
    images = [(tag.get("name"), tag.get("value")) for tag in root.iter("Image")]
    controls = [(tag.get("name"), tag.get("toName")) for tag in root.iter("RectangleLabels")]
    return (
        images == [(IMAGE_NAME, f"${IMAGE_NAME}")]
        and controls == [(CONTROL_NAME, IMAGE_NAME)]
        and config_labels(config) == list(class_names)
    )


# ---------------------------------------------------------------------- export


@dataclass
class LabelStudioExport:
    """What an export did: the project, and the batch's images created or already there."""

    url: str
    project: str
    project_id: int
    project_created: bool
    config_updated: bool
    tasks_created: int = 0
    already_there: int = 0
    predictions: int = 0  # boxes sent as pre-annotations
    task_ids: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "project": self.project,
            "project_id": self.project_id,
            "project_url": f"{self.url}/projects/{self.project_id}/data",
            "project_created": self.project_created,
            "config_updated": self.config_updated,
            "tasks_created": self.tasks_created,
            "already_there": self.already_there,
            "boxes": self.predictions,
        }


def export_to_label_studio(
    batch_dir: Path, client: LabelStudioClient, project: str
) -> LabelStudioExport:
    """Create or update project `project` for the batch at `batch_dir` and add its images as
    tasks with the model's boxes as predictions; images already in the project are skipped.

    LabelStudioError when Label Studio is unreachable, refuses the token, or the project's labels
    are other classes than the batch's (checked before anything is uploaded).
    """
    batch = read_batch(batch_dir)
    config = label_config(batch.class_names)
    found = client.find_project(project)
    created = updated = False
    if found is None:
        found = client.create_project(project, config)
        created = True
    else:
        labels = config_labels(str(found.get("label_config", "")))
        if labels and set(labels) != set(batch.class_names):
            raise LabelStudioError(
                f"project {project!r} at {client.url} labels {_names(labels)}, but the batch's "
                f"classes are {_names(batch.class_names)}: export to another --project"
            )
        if not _fits(str(found.get("label_config", "")), batch.class_names):
            client.set_label_config(int(found["id"]), config)
            updated = True
    project_id = int(found["id"])
    summary = LabelStudioExport(client.url, project, project_id, created, updated)
    present = {str(task.get("data", {}).get(SHA_KEY)) for task in client.tasks(project_id)} - {
        "None"
    }
    pending: list[dict[str, Any]] = []
    for item in batch.items:
        if item.sha256 in present:
            summary.already_there += 1
            continue
        present.add(item.sha256)  # the same image twice in a batch: one task
        url = client.upload_image(project_id, Path(batch_dir) / item.image)
        pending.append(_task(item, url, batch))
        summary.predictions += len(item.predictions)
        if len(pending) == TASKS_PER_REQUEST:
            summary.task_ids += client.create_tasks(project_id, pending)
            pending = []
    if pending:
        summary.task_ids += client.create_tasks(project_id, pending)
    summary.tasks_created = len(summary.task_ids)
    log.info(
        "project %r (id %d): %d tasks created, %d already there",
        project, project_id, summary.tasks_created, summary.already_there,
    )  # fmt: skip
    return summary


def rectangle(
    region: str, class_name: str, bbox: Sequence[float], width: int, height: int
) -> dict[str, Any]:
    """A box as a Label Studio result (a prediction's or an annotation's): `bbox` is (x, y, w, h)
    in pixels of a `width` x `height` image, Label Studio's values are percent of it."""
    x, y, w, h = (float(v) for v in bbox)
    return {
        "id": region,
        "from_name": CONTROL_NAME,
        "to_name": IMAGE_NAME,
        "type": "rectanglelabels",
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": {
            "x": 100.0 * x / width,
            "y": 100.0 * y / height,
            "width": 100.0 * w / width,
            "height": 100.0 * h / height,
            "rotation": 0,
            "rectanglelabels": [class_name],
        },
    }


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(sorted(names)[:8])
    return f"[{shown}{', ...' if len(names) > 8 else ''}]"


def _task(item: BatchItem, url: str, batch: SelectionBatch) -> dict[str, Any]:
    products = {class_product(p.class_name) for p in item.predictions} - {None}
    data: dict[str, Any] = {
        IMAGE_NAME: url,
        SHA_KEY: item.sha256,
        "width": item.width,
        "height": item.height,
        "request_id": item.request_id,
        "reasons": ", ".join(item.reasons),
    }
    if len(products) == 1:
        data[PRODUCT_KEY] = products.pop()
    results = [
        {
            **rectangle(f"p{index}", p.class_name, p.bbox, item.width, item.height),
            "score": p.score,
        }
        for index, p in enumerate(item.predictions)
    ]
    task: dict[str, Any] = {"data": data}
    if results:
        task["predictions"] = [
            {
                "model_version": f"{batch.model_name}:{batch.model_version}",
                "score": min(p.score for p in item.predictions),
                "result": results,
            }
        ]
    return task


# ---------------------------------------------------------------------- import


@dataclass
class LabelStudioImport:
    """What an import found: labelled tasks written, unfinished ones left out, and the root."""

    project: str
    project_id: int
    tasks: int
    labelled: int
    unfinished: int
    skipped: int  # of the unfinished: every annotation of the task was a skip
    root: VisionRootSummary
    unfinished_ids: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "project": self.project,
            "project_id": self.project_id,
            "tasks": self.tasks,
            "labelled": self.labelled,
            "unfinished": self.unfinished,
            "skipped": self.skipped,
            **self.root.to_dict(),
        }


def import_from_label_studio(
    client: LabelStudioClient,
    project: str,
    out: Path,
    *,
    require_complete: bool = False,
    seed: int = 0,
    val_fraction: float = 0.2,
) -> LabelStudioImport:
    """The finished annotations of project `project` as a VISION root at `out` (whole or nothing).

    A task is finished when it has a submitted annotation that is not a skip (the newest one
    counts, a ground-truth one first). Unfinished tasks are left out and counted; with
    `require_complete` they are a LabelStudioError and nothing is written.
    """
    found = client.find_project(project)
    if found is None:
        raise LabelStudioError(f"no project titled {project!r} at {client.url}")
    project_id = int(found["id"])
    class_names = config_labels(str(found.get("label_config", "")))
    if not class_names:
        raise LabelStudioError(
            f"project {project!r} at {client.url} has no RectangleLabels: not a VisionOps export"
        )
    finished: list[tuple[dict[str, Any], dict[str, Any]]] = []
    unfinished: list[int] = []
    skipped = total = 0
    for task in client.tasks(project_id, full=True):
        total += 1
        annotation = _final_annotation(task)
        if annotation is None:
            unfinished.append(int(task["id"]))
            skipped += bool(task.get("annotations"))
        else:
            finished.append((task, annotation))
    if unfinished and require_complete:
        shown = ", ".join(str(i) for i in unfinished[:10])
        raise LabelStudioError(
            f"{len(unfinished)} of {total} tasks of project {project!r} are not labelled yet "
            f"(task ids {shown}{', ...' if len(unfinished) > 10 else ''}); nothing written "
            "(without --require-complete they are left out)"
        )
    out = Path(out).expanduser().absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".label-studio-images-", dir=out.parent) as tmp:
        items = [
            _labeled_image(client, project, task, annotation, set(class_names), Path(tmp))
            for task, annotation in sorted(finished, key=lambda pair: int(pair[0]["id"]))
        ]
        root = write_vision_root(items, class_names, out, val_fraction=val_fraction, seed=seed)
    log.info(
        "project %r: %d labelled tasks imported, %d unfinished left out",
        project, len(finished), len(unfinished),
    )  # fmt: skip
    return LabelStudioImport(
        project, project_id, total, len(finished), len(unfinished), skipped, root, unfinished
    )


def _final_annotation(task: dict[str, Any]) -> dict[str, Any] | None:
    """The annotation that counts: submitted, not a skip; ground truth first, then the newest."""
    done = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
    if not done:
        return None
    return max(done, key=lambda a: (bool(a.get("ground_truth")), str(a.get("updated_at")),
                                    int(a.get("id", 0))))  # fmt: skip


def _labeled_image(
    client: LabelStudioClient,
    project: str,
    task: dict[str, Any],
    annotation: dict[str, Any],
    known: set[str],
    folder: Path,
) -> LabeledImage:
    data = task.get("data") or {}
    where = f"Label Studio project {project!r} task {task['id']}"
    url = data.get(IMAGE_NAME)
    if not isinstance(url, str) or not url:
        raise DataError(f"{where}: no image in its data (key {IMAGE_NAME!r})")
    suffix = Path(urlparse(url).path).suffix.lower() or ".bin"
    expected = data.get(SHA_KEY)
    target = folder / f"{task['id']}{suffix}"
    client.download(url if urlparse(url).netloc else client.url + url, target)
    if expected:
        digest = hashlib.sha256(target.read_bytes()).hexdigest()
        if digest != expected:
            raise DataError(f"{where}: the image Label Studio serves is not the one exported")
    width, height = _size(data.get("width")), _size(data.get("height"))
    boxes = tuple(
        result_box(result, width, height, known, where)
        for result in annotation.get("result") or []
        if result.get("type") == "rectanglelabels"
    )
    product = data.get(PRODUCT_KEY)
    return LabeledImage(
        target,
        boxes,
        product=str(product) if product and not boxes else None,
        width=width,
        height=height,
        source=where,
    )


def _size(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and value > 0 else None


def result_box(
    result: dict[str, Any], width: int | None, height: int | None, known: set[str], where: str
) -> LabeledBox:
    """A Label Studio rectangle result in pixels; DataError naming `where` when it is not one
    box of a class in `known` with a size to place it."""
    value = result.get("value") or {}
    labels = value.get("rectanglelabels") or []
    if len(labels) != 1:
        raise DataError(f"{where}: a box has {len(labels)} labels, not one")
    name = str(labels[0])
    if name not in known:
        raise DataError(f"{where}: a box is labelled {name!r}, not one of the project's classes")
    w_img = result.get("original_width") or width
    h_img = result.get("original_height") or height
    if not w_img or not h_img:
        raise DataError(f"{where}: no image size to turn percent coordinates into pixels")
    try:
        x, y = float(value["x"]) * w_img / 100, float(value["y"]) * h_img / 100
        w, h = float(value["width"]) * w_img / 100, float(value["height"]) * h_img / 100
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(f"{where}: a box lacks x, y, width or height") from error
    angle = math.radians(float(value.get("rotation") or 0))
    if angle:  # Label Studio turns a box about its top-left corner: keep what it covers
        corners = [(0.0, 0.0), (w, 0.0), (w, h), (0.0, h)]
        xs = [x + cx * math.cos(angle) - cy * math.sin(angle) for cx, cy in corners]
        ys = [y + cx * math.sin(angle) + cy * math.cos(angle) for cx, cy in corners]
        x, y, w, h = min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)
    return LabeledBox(name, (x, y, w, h))
