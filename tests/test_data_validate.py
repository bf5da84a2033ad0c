"""Validation: a corrupt-dataset corpus built from generated data, one corruption per check.

Each case copies a small clean dataset, breaks one thing, and asserts that exactly the intended
check reports it, naming the file and the offending id. A clean dataset has no errors.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.data_builders import copy_dataset, small_dataset
from visionops.data.coco import write_coco
from visionops.data.validate import validate
from visionops.data.validation_report import CHECKS

ANN = "_annotations.coco.json"


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_dataset(tmp_path_factory.mktemp("validate") / "v", products=["Cable", "Screw"])


def _edit(root: Path, split: str, change: Callable[[dict[str, Any]], Any]) -> Any:
    """Apply `change` to Cable/<split>'s COCO dict and save it; returns what `change` returns."""
    path = root / "Cable" / split / ANN
    coco = json.loads(path.read_text())
    result = change(coco)
    write_coco(path, coco)
    return result


def _image(root: Path, split: str, index: int) -> dict[str, Any]:
    return json.loads((root / "Cable" / split / ANN).read_text())["images"][index]


# Each corruption breaks a copy of the clean dataset and returns (file, an id it must report).
def _missing_split(root: Path) -> tuple[str, Any]:
    shutil.rmtree(root / "Cable" / "val")
    return "Cable/val/", None


def _json_syntax(root: Path) -> tuple[str, Any]:
    (root / "Cable" / "train" / ANN).write_text('{"images": [')
    return f"Cable/train/{ANN}", None


def _coco_schema(root: Path) -> tuple[str, Any]:
    def change(coco: dict[str, Any]) -> int:
        coco["images"][2]["width"] = "wide"
        return coco["images"][2]["id"]

    return f"Cable/train/{ANN}", _edit(root, "train", change)


def _empty_split(root: Path) -> tuple[str, Any]:
    _edit(root, "val", lambda coco: coco.update(images=[], annotations=[]))
    return f"Cable/val/{ANN}", None


def _duplicate_image_id(root: Path) -> tuple[str, Any]:
    def change(coco: dict[str, Any]) -> int:
        coco["images"][1]["id"] = coco["images"][0]["id"]
        return coco["images"][0]["id"]

    return f"Cable/train/{ANN}", _edit(root, "train", change)


def _duplicate_annotation_id(root: Path) -> tuple[str, Any]:
    def change(coco: dict[str, Any]) -> int:
        coco["annotations"][3]["id"] = coco["annotations"][2]["id"]
        return coco["annotations"][2]["id"]

    return f"Cable/train/{ANN}", _edit(root, "train", change)


def _duplicate_category_id(root: Path) -> tuple[str, Any]:
    def change(coco: dict[str, Any]) -> int:
        coco["categories"].append({"id": 2, "name": "twin", "supercategory": "cable"})
        return 2

    return f"Cable/train/{ANN}", _edit(root, "train", change)


def _annotation_missing_image(root: Path) -> tuple[str, Any]:
    def change(coco: dict[str, Any]) -> int:
        coco["annotations"][0]["image_id"] = 9999
        return coco["annotations"][0]["id"]

    return f"Cable/train/{ANN}", _edit(root, "train", change)


def _annotation_missing_category(root: Path) -> tuple[str, Any]:
    def change(coco: dict[str, Any]) -> int:
        coco["annotations"][1]["category_id"] = 77
        return coco["annotations"][1]["id"]

    return f"Cable/val/{ANN}", _edit(root, "val", change)


def _bbox_nonpositive(root: Path) -> tuple[str, Any]:
    def change(coco: dict[str, Any]) -> int:
        coco["annotations"][0]["bbox"][2] = 0
        return coco["annotations"][0]["id"]

    return f"Cable/train/{ANN}", _edit(root, "train", change)


def _bbox_outside_image(root: Path) -> tuple[str, Any]:
    def change(coco: dict[str, Any]) -> int:
        ann = coco["annotations"][0]
        width = next(i["width"] for i in coco["images"] if i["id"] == ann["image_id"])
        ann["bbox"][0] = width - ann["bbox"][2] / 2
        return ann["id"]

    return f"Cable/train/{ANN}", _edit(root, "train", change)


def _invalid_polygon(root: Path) -> tuple[str, Any]:
    def change(coco: dict[str, Any]) -> int:
        coco["annotations"][2]["segmentation"] = [[10, 10, 20, 20, 30]]
        return coco["annotations"][2]["id"]

    return f"Cable/train/{ANN}", _edit(root, "train", change)


def _file_name_escapes(root: Path) -> tuple[str, Any]:
    def change(coco: dict[str, Any]) -> str:
        coco["images"][0]["file_name"] = "../../train/cable_train_00000.jpg"
        return coco["images"][0]["file_name"]

    return f"Cable/val/{ANN}", _edit(root, "val", change)


def _image_file_missing(root: Path) -> tuple[str, Any]:
    image = _image(root, "train", 4)
    (root / "Cable" / "train" / image["file_name"]).unlink()
    return f"Cable/train/{image['file_name']}", image["id"]


def _image_unreadable(root: Path) -> tuple[str, Any]:
    image = _image(root, "train", 1)
    (root / "Cable" / "train" / image["file_name"]).write_bytes(b"\x00garbage" * 50)
    return f"Cable/train/{image['file_name']}", image["id"]


def _image_truncated(root: Path) -> tuple[str, Any]:
    image = _image(root, "val", 0)  # a JPEG
    path = root / "Cable" / "val" / image["file_name"]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return f"Cable/val/{image['file_name']}", image["id"]


def _image_size_mismatch(root: Path) -> tuple[str, Any]:
    def change(coco: dict[str, Any]) -> tuple[str, int]:
        coco["images"][3]["height"] += 8
        return coco["images"][3]["file_name"], coco["images"][3]["id"]

    name, image_id = _edit(root, "train", change)
    return f"Cable/train/{name}", image_id


def _class_without_train_instances(root: Path) -> tuple[str, Any]:
    _edit(
        root,
        "train",
        lambda coco: coco.update(
            annotations=[a for a in coco["annotations"] if a["category_id"] != 3]
        ),
    )
    return f"Cable/train/{ANN}", "torn-apart"


def _split_leakage(root: Path) -> tuple[str, Any]:
    train, val = _image(root, "train", 0), _image(root, "val", 1)
    shutil.copyfile(
        root / "Cable" / "train" / train["file_name"], root / "Cable" / "val" / val["file_name"]
    )
    return "Cable/val", val["file_name"]


def _image_without_annotations(root: Path) -> tuple[str, Any]:
    def change(coco: dict[str, Any]) -> int:
        image_id = coco["images"][0]["id"]
        coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] != image_id]
        return image_id

    return f"Cable/val/{ANN}", _edit(root, "val", change)


CORRUPTIONS: dict[str, Callable[[Path], tuple[str, Any]]] = {
    name.removeprefix("_"): fn
    for name, fn in list(globals().items())
    if name.removeprefix("_") in CHECKS and callable(fn)
}


# Corruptions that necessarily break a second rule too.
ALSO_TRIGGERS = {
    "duplicate_image_id": {"annotation_missing_image"},  # one image's annotations lose it
    "duplicate_category_id": {"class_without_train_instances"},  # a name loses its id
}


def test_the_corpus_covers_every_check():
    assert set(CORRUPTIONS) == set(CHECKS)


def test_a_clean_dataset_has_no_errors(clean: Path):
    report = validate(clean)
    assert report.ok and report.errors == []
    # The generator's defect-free images are marked: counted in one line, not warnings.
    assert report.warnings == []
    assert report.stats["Cable"]["train"]["images"] == 8
    assert report.stats["Cable"]["train"]["background"] == 1
    assert "(2 marked defect-free: no boxes expected)" in report.summary()  # 8 train each
    assert report.to_dict()["ok"] is True
    assert "# Dataset validation: passed" in report.to_markdown()


@pytest.mark.parametrize("check", sorted(CHECKS))
def test_each_check_catches_its_corruption(clean: Path, tmp_path: Path, check: str):
    root = copy_dataset(clean, tmp_path / "v")
    file, ident = CORRUPTIONS[check](root)
    report = validate(root)
    caught = [f for f in report.findings if f.check == check]
    assert caught, f"{check} not reported; got {[f.check for f in report.findings]}"
    finding = next((f for f in caught if f.file == file), caught[0])
    assert finding.file == file
    if ident is not None:
        assert ident in finding.ids
    assert finding.severity == CHECKS[check][0]
    assert report.ok == (CHECKS[check][0] == "warning")
    others = {f.check for f in report.errors} - {check}
    assert others <= ALSO_TRIGGERS.get(check, set()), f"{check} also triggered {others}"


def test_ids_are_capped_with_a_count(clean: Path, tmp_path: Path):
    root = copy_dataset(clean, tmp_path / "v")

    def change(coco: dict[str, Any]) -> None:
        for ann in coco["annotations"]:
            ann["category_id"] = 50

    _edit(root, "train", change)
    finding = next(f for f in validate(root).findings if f.check == "annotation_missing_category")
    assert len(finding.ids) == 5 and finding.count > 5
    assert f"| `annotation_missing_category` | `Cable/train/{ANN}` | {finding.count} |" in (
        validate(root).to_markdown()
    )


def test_inference_problems_are_warnings(clean: Path, tmp_path: Path):
    root = copy_dataset(clean, tmp_path / "v")
    shutil.rmtree(root / "Screw" / "inference")
    report = validate(root)
    assert report.ok
    assert [(f.check, f.severity) for f in report.findings if f.file.startswith("Screw/inf")] == [
        ("missing_split", "warning")
    ]


def test_select_products(clean: Path, tmp_path: Path):
    root = copy_dataset(clean, tmp_path / "v")
    _image_unreadable(root)  # breaks Cable only
    assert not validate(root).ok
    assert validate(root, products=["Screw"]).ok


def test_readme_lists_every_check():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    for name, (severity, _) in CHECKS.items():
        assert f"| `{name}` | {severity} |" in readme, name
