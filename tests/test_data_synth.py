"""The synthetic VISION generator: layout, labels that match the pixels, determinism, safety."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.data_builders import small_dataset
from visionops.data.synth import MARKER_FILE, class_names, synthesize
from visionops.data.vision import PRODUCTS, SPLITS
from visionops.errors import UsageError


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_dataset(tmp_path_factory.mktemp("synth") / "vision", products=3)


def test_writes_the_vision_layout(generated: Path):
    products = sorted(p.name for p in generated.iterdir() if p.is_dir())
    assert products == ["Cable", "Capacitor", "Casting"]
    for product in products:
        for split in SPLITS:
            coco = json.loads((generated / product / split / "_annotations.coco.json").read_text())
            assert set(coco) >= {"images", "annotations", "categories"}
            assert [c["name"] for c in coco["categories"]] == class_names(product)
            files = {p.name for p in (generated / product / split).glob("*.*g")}
            assert {i["file_name"] for i in coco["images"]} == files
            if split == "inference":
                assert coco["annotations"] == []  # unlabeled, like the real dataset
    suffixes = {p.suffix for p in generated.rglob("*.*g")}
    assert suffixes == {".jpg", ".png"}


def test_class_names_follow_the_real_dataset():
    assert class_names("Capacitor") == ["0"]
    assert class_names("Screw") == ["defect"]
    assert class_names("Electronics") == ["damage"]
    assert len(class_names("Lens")) == 5


def test_every_class_in_train_some_images_defect_free_boxes_tight(generated: Path):
    for product in ("Cable", "Capacitor", "Casting"):
        coco = json.loads((generated / product / "train" / "_annotations.coco.json").read_text())
        used = {a["category_id"] for a in coco["annotations"]}
        assert used == {c["id"] for c in coco["categories"]}
        annotated = {a["image_id"] for a in coco["annotations"]}
        assert 0 < len(annotated) < len(coco["images"])  # one image in eight is defect-free
        for ann in coco["annotations"]:
            x, y, w, h = ann["bbox"]
            assert w > 3 and h > 3 and ann["area"] > 0
            points = np.concatenate([np.reshape(p, (-1, 2)) for p in ann["segmentation"]])
            # the polygon traces the drawn pixels: its extremes are the box's edge pixels
            assert points[:, 0].min() == x and points[:, 0].max() == x + w - 1
            assert points[:, 1].min() == y and points[:, 1].max() == y + h - 1


def test_defects_are_visible_in_the_pixels(generated: Path):
    """Inside a box the image differs from the surface around it (texture, tone or colour)."""
    folder = generated / "Casting" / "train"
    coco = json.loads((folder / "_annotations.coco.json").read_text())
    images = {i["id"]: i for i in coco["images"]}
    for ann in coco["annotations"][:12]:
        image = Image.open(folder / images[ann["image_id"]]["file_name"]).convert("RGB")
        pixels = np.asarray(image, np.float32)
        x, y, w, h = ann["bbox"]
        inside = pixels[y : y + h, x : x + w].reshape(-1, 3)
        ring = pixels[max(0, y - 6) : y + h + 6, max(0, x - 6) : x + w + 6].reshape(-1, 3)
        shift = np.abs(inside.mean(0) - ring.mean(0)).max()
        assert inside.std(0).max() > 25 or shift > 12


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path):
    a = small_dataset(tmp_path / "a", products=["Lens", "PCB_1"], seed=7)
    b = small_dataset(tmp_path / "b", products=["Lens", "PCB_1"], seed=7)
    c = small_dataset(tmp_path / "c", products=["Lens", "PCB_1"], seed=8)
    assert _tree_digest(a) == _tree_digest(b)
    differing = {k for k, v in _tree_digest(a).items() if _tree_digest(c).get(k) != v}
    assert len(differing) > 20


def test_adding_products_keeps_existing_images(tmp_path: Path):
    one = small_dataset(tmp_path / "one", products=["Wood"])
    two = small_dataset(tmp_path / "two", products=["Screw", "Wood"])
    assert _tree_digest(one / "Wood") == _tree_digest(two / "Wood")


def test_rerun_is_a_no_op_and_new_parameters_replace(tmp_path: Path):
    out = tmp_path / "v"
    first = synthesize(out, products=1, n_train=4, n_val=2, n_inference=1, imgsz=64)
    image = next((out / "Cable" / "train").glob("*.jpg"))
    stamp = image.stat().st_mtime_ns
    again = synthesize(out, products=1, n_train=4, n_val=2, n_inference=1, imgsz=64)
    assert again.reused and not first.reused
    assert image.stat().st_mtime_ns == stamp
    bigger = synthesize(out, products=1, n_train=6, n_val=2, n_inference=1, imgsz=64)
    assert not bigger.reused and bigger.images["Cable"]["train"] == 6
    assert len(list((out / "Cable" / "train").glob("*.*g"))) == 6
    assert json.loads((out / MARKER_FILE).read_text())["params"]["n_train"] == 6
    assert [p.name for p in tmp_path.iterdir()] == ["v"]  # no staging folder left behind


def test_refuses_to_overwrite_a_foreign_folder(tmp_path: Path):
    (tmp_path / "mine.txt").write_text("precious")
    with pytest.raises(UsageError, match="not written by"):
        synthesize(tmp_path, products=1, n_train=2, n_val=1, n_inference=1, imgsz=64)
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"products": 0}, "--products"),
        ({"products": 15}, "--products"),
        ({"products": ["Cable", "Bolt"]}, "unknown product 'Bolt'"),
        ({"n_train": 0}, "--train"),
        ({"imgsz": 8}, "--imgsz"),
    ],
)
def test_bad_parameters_are_usage_errors(tmp_path: Path, kwargs: dict, needle: str):
    params = {"products": 1, "n_train": 2, "n_val": 1, "n_inference": 1, "imgsz": 64, **kwargs}
    with pytest.raises(UsageError, match=needle):
        synthesize(tmp_path / "out", **params)
    assert not (tmp_path / "out").exists()


def test_every_product_renders_with_its_defects(tmp_path: Path):
    result = synthesize(
        tmp_path / "all", products=None, n_train=3, n_val=1, n_inference=1, imgsz=96
    )
    assert result.products == list(PRODUCTS)
    for product in PRODUCTS:
        assert result.annotations[product]["train"] >= 3  # every train image here has defects
        image = next((tmp_path / "all" / product / "train").glob("*.jpg"))
        assert Image.open(image).size[0] == 96
