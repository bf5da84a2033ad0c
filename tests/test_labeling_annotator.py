"""The scripted annotator (the demo's stand-in for people) against a real Label Studio.

A ground-truth VISION root and a selection batch of the same images whose predictions are the
truth disturbed (a box as it is, one moved, one of the wrong class, one on nothing, one missed):
exported to Label Studio, corrected by `visionops label scripted-annotator`, imported by `label
import`, the boxes must be the truth's within 0.5 px, class ids through the class map.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.servers import LabelStudio
from tests.studio_cli import ls_cli, ls_export, ls_import, root_boxes, summary_json
from visionops.data.classmap import build_class_map
from visionops.data.coco import ANNOTATIONS_FILE, write_coco
from visionops.data.vision import open_vision
from visionops.labeling.batch import (
    BatchItem,
    Prediction,
    SelectionBatch,
    Window,
    image_path,
    write_manifest,
)
from visionops.labeling.label_studio import config_labels
from visionops.labeling.label_studio_client import LabelStudioClient
from visionops.labeling.scripted_annotator import STAND_IN, Truth, correct
from visionops.labeling.vision_root import LabeledBox

NAMES = ["Cable/break", "Cable/thunderbolt", "Screw/scratch"]
CATEGORIES = {"Cable": ["break", "thunderbolt"], "Screw": ["scratch"]}
# name: product, (width, height), true boxes, the model's boxes (class, score, x, y, w, h)
IMAGES = {
    "exact": ("Cable", (64, 48), [("Cable/break", 3.25, 4.5, 20.75, 11.125)],
              [("Cable/break", 0.41, 3.25, 4.5, 20.75, 11.125)]),
    "moved+false": ("Cable", (64, 48), [("Cable/thunderbolt", 10.0, 7.3, 30.1, 22.9)],
                    [("Cable/thunderbolt", 0.52, 12.0, 8.0, 29.0, 21.5),
                     ("Cable/break", 0.33, 50.0, 30.0, 10.0, 10.0)]),
    "relabelled+missed": ("Cable", (64, 48),
                          [("Cable/break", 5.0, 5.0, 20.0, 15.0),
                           ("Cable/thunderbolt", 40.0, 20.0, 16.5, 20.25)],
                          [("Cable/thunderbolt", 0.3, 5.0, 5.0, 20.0, 15.0)]),
    "missed": ("Screw", (80, 60), [("Screw/scratch", 41.7, 33.3, 38.3, 26.7)], []),
    "background": ("Screw", (80, 60), [], [("Screw/scratch", 0.26, 5.0, 5.0, 10.0, 10.0)]),
}  # fmt: skip
UNKNOWN = (80, 60)  # an image that is not in the ground truth: left for people


def _png(path: Path, size: tuple[int, int], seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path.read_bytes()


def _truth_root(root: Path, extra_class: str | None = None) -> dict[str, bytes]:
    """The ground truth: a VISION root holding every image of IMAGES (train split) with its
    true boxes; returns name -> image bytes."""
    data: dict[str, bytes] = {}
    by_product: dict[str, list[str]] = {}
    for name, (product, *_rest) in IMAGES.items():
        by_product.setdefault(product, []).append(name)
    for product, names in by_product.items():
        categories = CATEGORIES[product] + ([extra_class] if product == "Cable" and extra_class
                                            else [])  # fmt: skip
        listed = [{"id": i + 1, "name": c} for i, c in enumerate(categories)]
        coco = {"images": [], "annotations": [], "categories": listed}
        for index, name in enumerate(names):
            _, size, boxes, _ = IMAGES[name]
            file_name = f"{name}.png"
            data[name] = _png(root / product / "train" / file_name, size, list(IMAGES).index(name))
            coco["images"].append({"id": index, "file_name": file_name, "width": size[0],
                                   "height": size[1]})  # fmt: skip
            for class_name, *bbox in boxes:
                category = categories.index(class_name.split("/", 1)[1]) + 1
                coco["annotations"].append({
                    "id": len(coco["annotations"]), "image_id": index, "category_id": category,
                    "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 0,
                })  # fmt: skip
        if extra_class and product == "Cable":  # the extra class on the first image
            extra = {"id": 99, "image_id": 0, "category_id": len(categories),
                     "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0}  # fmt: skip
            coco["annotations"].append(extra)
        write_coco(root / product / "train" / ANNOTATIONS_FILE, coco)
    return data


def _batch(folder: Path, data: dict[str, bytes]) -> SelectionBatch:
    """The selection batch of the same images (plus one the truth does not hold), the model's
    boxes as predictions."""
    (folder / "images").mkdir(parents=True)
    items = []
    entries = [(name, data[name], IMAGES[name][1], IMAGES[name][3]) for name in IMAGES]
    entries.append(("unknown", _png(folder / "scratch.png", UNKNOWN, 99), UNKNOWN,
                    [("Screw/scratch", 0.3, 1.0, 1.0, 5.0, 5.0)]))  # fmt: skip
    for index, (_, content, (width, height), boxes) in enumerate(entries):
        relative = image_path(hashlib.sha256(content).hexdigest(), "png")
        (folder / relative).write_bytes(content)
        predictions = tuple(Prediction(c, s, (x, y, w, h)) for c, s, x, y, w, h in boxes)
        item = BatchItem(
            relative, f"images/dt=2026-01-01/{relative[7:]}", f"req-{index}",
            "2026-01-01T10:00:00Z", width, height, ("uncertain",), 1.0 - index / 10, predictions,
        )  # fmt: skip
        items.append(item)
    (folder / "scratch.png").unlink()
    batch = SelectionBatch("defects", "4", list(NAMES), Window("a", "b", "log"), 0, 10, items)
    write_manifest(folder, batch)
    return batch


def _annotator(studio: LabelStudio, truth: Path, project: str) -> tuple[int, str]:
    return ls_cli(studio, "label", "scripted-annotator", "--truth", truth, "--url", studio.url,
                  "--project", project)  # fmt: skip


def test_the_stand_in_corrects_pre_annotations_to_the_ground_truth(
    label_studio: LabelStudio, tmp_path: Path
) -> None:
    data = _truth_root(tmp_path / "truth")
    batch = _batch(tmp_path / "batch", data)
    assert ls_export(label_studio, tmp_path / "batch", "stand-in")[0] == 0

    code, output = _annotator(label_studio, tmp_path / "truth", "stand-in")
    assert code == 0, output
    summary = summary_json(output)
    assert "stand-in for people" in summary["annotator"] and STAND_IN in output
    assert (summary["tasks"], summary["annotated"], summary["no_ground_truth"]) == (6, 5, 1)
    assert summary["boxes"] == {
        "accepted": 1, "moved": 1, "relabelled": 1, "deleted": 2, "added": 2
    }  # fmt: skip
    assert summary["background"] == 1

    # What Label Studio holds: one annotation per known image, the kept boxes keep their region.
    with LabelStudioClient(label_studio.url, label_studio.token) as client:
        tasks = sorted(client.tasks(summary["project_id"], full=True), key=lambda t: t["id"])
    annotated = [t for t in tasks if t["annotations"]]
    assert len(annotated) == 5 and not tasks[-1]["annotations"]  # the unknown image: for people
    regions = [r["id"] for r in tasks[0]["annotations"][0]["result"]]
    assert regions == [tasks[0]["predictions"][0]["result"][0]["id"]]

    code, output = ls_import(label_studio, "stand-in", tmp_path / "root")
    assert code == 0, output
    imported = summary_json(output)
    assert (imported["labelled"], imported["unfinished"]) == (5, 1)
    # The background image: the model named Screw on it, so it is a background image of Screw.
    assert (imported["total_images"], imported["background"], imported["boxes"]) == (5, 1, 5)

    got = root_boxes(tmp_path / "root")
    class_map = build_class_map(open_vision(tmp_path / "root"))
    assert class_map.names == sorted(NAMES)
    digests = {name: hashlib.sha256(content).hexdigest() for name, content in data.items()}
    assert set(got) == set(digests.values())
    for name, digest in digests.items():
        want = sorted((class_map.names.index(c), bbox) for c, *bbox in IMAGES[name][2])
        back = sorted(got[digest])
        assert [c for c, _ in back] == [c for c, _ in want], name
        for (_, box), (_, true) in zip(back, want, strict=True):
            assert np.abs(np.array(box) - np.array(true)).max() <= 0.5, (name, box, true)
    assert batch.items[-1].sha256 not in got

    # Again: every task is annotated already, nothing is submitted.
    code, output = _annotator(label_studio, tmp_path / "truth", "stand-in")
    assert code == 0, output
    again = summary_json(output)
    assert (again["annotated"], again["already_annotated"], again["no_ground_truth"]) == (0, 5, 1)


def test_a_true_class_the_project_lacks_is_added_to_its_labels(
    label_studio: LabelStudio, tmp_path: Path
) -> None:
    """The batch offered the classes the model reported; a defect of another class is labelled
    all the same, once the stand-in (as a project manager would) added its label."""
    data = _truth_root(tmp_path / "truth", extra_class="torn-apart")
    _batch(tmp_path / "batch", data)
    assert ls_export(label_studio, tmp_path / "batch", "lacks-a-class")[0] == 0

    code, output = _annotator(label_studio, tmp_path / "truth", "lacks-a-class")
    assert code == 0, output
    summary = summary_json(output)
    assert summary["labels_added"] == ["Cable/torn-apart"] and summary["annotated"] == 5
    with LabelStudioClient(label_studio.url, label_studio.token) as client:
        found = client.find_project("lacks-a-class")
    assert found is not None
    assert config_labels(found["label_config"]) == [*NAMES, "Cable/torn-apart"]

    assert ls_import(label_studio, "lacks-a-class", tmp_path / "root")[0] == 0
    class_map = build_class_map(open_vision(tmp_path / "root"))
    exact = root_boxes(tmp_path / "root")[hashlib.sha256(data["exact"]).hexdigest()]
    assert sorted(exact) == [
        (class_map.names.index("Cable/break"), [3.25, 4.5, 20.75, 11.125]),
        (class_map.names.index("Cable/torn-apart"), [1.0, 1.0, 5.0, 5.0]),
    ]


def test_bad_ground_truth_or_project_is_one_line_and_submits_nothing(
    label_studio: LabelStudio, tmp_path: Path
) -> None:
    data = _truth_root(tmp_path / "truth")
    _batch(tmp_path / "batch", data)
    assert ls_export(label_studio, tmp_path / "batch", "bad-truth")[0] == 0
    # The "exact" image again in another split, with other boxes: which is the truth?
    copy = tmp_path / "truth" / "Cable" / "val"
    (copy / "again.png").parent.mkdir(parents=True)
    (copy / "again.png").write_bytes(data["exact"])
    write_coco(copy / ANNOTATIONS_FILE, {
        "categories": [{"id": 1, "name": "break"}],
        "images": [{"id": 0, "file_name": "again.png", "width": 64, "height": 48}],
        "annotations": [],
    })  # fmt: skip

    code, output = _annotator(label_studio, tmp_path / "truth", "bad-truth")
    assert code == 1
    (line,) = output.strip().splitlines()
    assert line.startswith("error: ") and line.endswith("are the same image with other boxes")
    code, output = _annotator(label_studio, tmp_path / "nowhere", "bad-truth")
    assert code == 1 and output.startswith("error: dataset folder not found"), output
    (copy / ANNOTATIONS_FILE).unlink()
    (copy / "again.png").unlink()
    code, output = _annotator(label_studio, tmp_path / "truth", "no-such-project")
    assert code == 1 and "no project titled 'no-such-project'" in output

    with LabelStudioClient(label_studio.url, label_studio.token) as client:
        found = client.find_project("bad-truth")
        assert found is not None
        tasks = list(client.tasks(int(found["id"]), full=True))
    assert len(tasks) == 6 and all(not t["annotations"] for t in tasks)


def test_correct_matches_best_overlaps_first() -> None:
    """Two predictions on one true box: the better one is kept (moved), the other deleted."""
    truth = Truth("Cable", 100, 100, (LabeledBox("Cable/break", (10, 10, 20, 20)),), "t.png")
    predicted = [
        ("a", LabeledBox("Cable/break", (14, 14, 20, 20))),  # IoU 0.47: not a match
        ("b", LabeledBox("Cable/thunderbolt", (11, 10, 20, 20))),  # IoU 0.90
        ("c", LabeledBox("Cable/break", (12, 10, 20, 20))),  # IoU 0.82
    ]
    done = correct(7, predicted, truth)
    assert [r["id"] for r in done.result] == ["b"]
    assert done.result[0]["value"]["rectanglelabels"] == ["Cable/break"]
    assert done.result[0]["value"]["x"] == pytest.approx(10.0)
    assert (done.accepted, done.moved, done.relabelled, done.deleted, done.added) == (0, 1, 1, 2, 0)
