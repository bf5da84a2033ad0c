"""COCO -> YOLO: the same boxes as Ultralytics' convert_coco, atomic, idempotent, linked images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.data_builders import copy_dataset, small_dataset
from visionops.data import convert as convert_module
from visionops.data.classmap import ClassMap
from visionops.data.coco import write_coco
from visionops.data.convert import MANIFEST_FILE, convert, read_manifest
from visionops.errors import DataError, UsageError

PRODUCTS = ["Cable", "Lens"]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_dataset(tmp_path_factory.mktemp("convert") / "v", products=PRODUCTS)


@pytest.fixture(scope="module")
def converted(root: Path, tmp_path_factory: pytest.TempPathFactory):
    return convert(root, tmp_path_factory.mktemp("out") / "yolo")


def _rows(path: Path) -> list[list[float]]:
    if not path.exists():
        return []
    return sorted([float(v) for v in line.split()] for line in path.read_text().splitlines())


def _ultralytics_labels(root: Path, tmp: Path, segments: bool) -> dict[tuple[str, str, str], list]:
    """convert_coco's rows per (product, split, image stem), classes mapped to COCO ids."""
    from ultralytics.data.converter import convert_coco

    rows = {}
    for product in PRODUCTS:
        for split in ("train", "val"):
            source = tmp / f"json-{product}-{split}"
            source.mkdir()
            shutil.copyfile(root / product / split / "_annotations.coco.json", source / "a.json")
            out = tmp / f"u-{product}-{split}-{segments}"
            convert_coco(str(source), str(out), use_segments=segments, cls91to80=False)
            for label in (out / "labels" / "a").glob("*.txt"):
                rows[(product, split, label.stem)] = [
                    [r[0] + 1, *r[1:]] for r in _rows(label)
                ]  # back to category_id
    return rows


@pytest.mark.parametrize("segments", [False, True])
def test_same_rows_as_ultralytics_convert_coco(root: Path, tmp_path: Path, segments: bool):
    from visionops.bootstrap import bootstrap

    bootstrap()
    result = convert(root, tmp_path / "yolo", segments=segments)
    theirs = _ultralytics_labels(root, tmp_path, segments)
    class_map = ClassMap.load(tmp_path / "yolo" / "class_map.json")
    to_coco = {e.id: (e.product, e.category_id) for e in class_map.entries}
    compared = 0
    for label in (tmp_path / "yolo" / "labels").rglob("*.txt"):
        split, product = label.parent.parent.name, label.parent.name
        ours = []
        for row in _rows(label):
            mapped_product, category_id = to_coco[int(row[0])]
            assert mapped_product == product
            ours.append([category_id, *row[1:]])
        expected = theirs.get((product, split, label.stem), [])
        assert len(ours) == len(expected), label
        for mine, other in zip(sorted(ours), sorted(expected), strict=True):
            assert len(mine) == len(other)
            assert np.abs(np.array(mine) - np.array(other)).max() <= 1e-6
        compared += len(ours)
    assert compared == sum(result.boxes.values()) > 20
    if segments:
        assert max(len(r) for r in ours) > 9  # polygons, not boxes


def test_labels_back_to_pixels_equal_the_coco_boxes(root: Path, converted):
    class_map = converted.class_map
    for product in PRODUCTS:
        coco = json.loads((root / product / "val" / "_annotations.coco.json").read_text())
        for image in coco["images"]:
            expected = sorted(
                [
                    class_map.class_id(product, coco["categories"][a["category_id"] - 1]["name"]),
                    *a["bbox"],
                ]
                for a in coco["annotations"]
                if a["image_id"] == image["id"]
            )
            stem = Path(image["file_name"]).stem
            pixel_rows = []
            for cls, cx, cy, w, h in _rows(
                converted.root / "labels" / "val" / product / f"{stem}.txt"
            ):
                iw, ih = image["width"], image["height"]
                pixel_rows.append([cls, (cx - w / 2) * iw, (cy - h / 2) * ih, w * iw, h * ih])
            assert len(pixel_rows) == len(expected)
            for got, want in zip(sorted(pixel_rows), expected, strict=True):
                assert got[0] == want[0]
                assert np.allclose(got[1:], want[1:], atol=1e-4)


def test_layout_data_yaml_and_manifest(root: Path, converted):
    out = converted.root
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data["path"] == str(out)
    assert (data["train"], data["val"]) == ("images/train", "images/val")
    assert list(data["names"].values()) == converted.names == converted.class_map.names
    assert converted.names[0] == "Cable/break"
    for split in ("train", "val"):
        images = sorted(p for p in (out / "images" / split).rglob("*") if p.is_file())
        labels = sorted(p for p in (out / "labels" / split).rglob("*.txt"))
        assert len(images) == len(labels) == converted.images[split]
    source = root / "Cable" / "train" / "cable_train_00000.jpg"
    linked = out / "images" / "train" / "Cable" / "cable_train_00000.jpg"
    assert linked.stat().st_ino == source.stat().st_ino  # hard link, not a copy
    assert converted.link_mode == "hardlink"
    background = out / "labels" / "train" / "Cable" / "cable_train_00007.txt"
    assert background.read_text() == ""  # defect-free image: an empty label file
    manifest = read_manifest(out)
    assert manifest["dataset_hash"] == converted.dataset_hash
    assert manifest["images"] == converted.images and manifest["boxes"] == converted.boxes


def test_ultralytics_reads_the_dataset(converted):
    from visionops.bootstrap import bootstrap

    bootstrap()
    from ultralytics.data.utils import check_det_dataset, img2label_paths

    data = check_det_dataset(str(converted.data_yaml))
    assert data["nc"] == len(converted.names)
    images = sorted(p for p in Path(data["train"]).rglob("*.*g"))
    assert len(images) == converted.images["train"]
    assert all(Path(p).exists() for p in img2label_paths([str(i) for i in images]))


def test_rerun_changes_nothing(root: Path, tmp_path: Path):
    first = convert(root, tmp_path / "yolo")
    manifest = tmp_path / "yolo" / MANIFEST_FILE
    before = (manifest.stat().st_ino, manifest.stat().st_mtime_ns)
    again = convert(root, tmp_path / "yolo")
    assert again.reused and again.dataset_hash == first.dataset_hash
    assert (manifest.stat().st_ino, manifest.stat().st_mtime_ns) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["yolo"]


def test_any_change_gives_a_new_hash(root: Path, tmp_path: Path):
    base = convert(root, tmp_path / "base").dataset_hash
    assert convert(root, tmp_path / "base2").dataset_hash == base  # same input, same hash

    box_moved = copy_dataset(root, tmp_path / "box")
    path = box_moved / "Lens" / "val" / "_annotations.coco.json"
    coco = json.loads(path.read_text())
    coco["annotations"][0]["bbox"][0] += 1
    write_coco(path, coco)
    assert convert(box_moved, tmp_path / "o1").dataset_hash != base

    pixel_changed = copy_dataset(root, tmp_path / "px")
    image = pixel_changed / "Cable" / "train" / "cable_train_00003.jpg"
    data = bytearray(image.read_bytes())
    data[-10] ^= 0xFF
    image.write_bytes(bytes(data))
    assert convert(pixel_changed, tmp_path / "o2").dataset_hash != base

    assert convert(root, tmp_path / "seg", segments=True).dataset_hash != base
    assert convert(root, tmp_path / "sub", products=["Lens"]).dataset_hash != base


def test_an_updated_dataset_replaces_the_old_one_in_place(root: Path, tmp_path: Path):
    copy = copy_dataset(root, tmp_path / "c")
    first = convert(copy, tmp_path / "yolo")
    path = copy / "Cable" / "train" / "_annotations.coco.json"
    coco = json.loads(path.read_text())
    coco["annotations"] = coco["annotations"][1:]
    write_coco(path, coco)
    second = convert(copy, tmp_path / "yolo")
    assert not second.reused and second.dataset_hash != first.dataset_hash
    assert second.boxes["train"] == first.boxes["train"] - 1
    assert read_manifest(tmp_path / "yolo")["dataset_hash"] == second.dataset_hash
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "yolo"]


def test_a_failure_leaves_no_half_dataset(root: Path, tmp_path: Path, monkeypatch):
    copy = copy_dataset(root, tmp_path / "c")
    (copy / "Lens" / "val" / "lens_val_00001.jpg").unlink()
    with pytest.raises(DataError, match=r"image file missing: .*lens_val_00001\.jpg"):
        convert(copy, tmp_path / "yolo")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]

    good = convert(root, tmp_path / "yolo")

    def failing_write(path: Path, text: str) -> Path:  # after every image and label is placed
        raise OSError("disk full")

    monkeypatch.setattr(convert_module, "atomic_write_text", failing_write)
    changed = copy_dataset(root, tmp_path / "changed")
    (changed / "Cable" / "val" / "cable_val_00000.jpg").write_bytes(
        (root / "Cable" / "val" / "cable_val_00001.jpg").read_bytes()
    )
    with pytest.raises(OSError, match="disk full"):
        convert(changed, tmp_path / "yolo")
    assert read_manifest(tmp_path / "yolo")["dataset_hash"] == good.dataset_hash
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "changed", "yolo"]


def test_extra_roots_merge_under_one_class_map(root: Path, tmp_path: Path):
    extra = small_dataset(tmp_path / "extra", products=["Lens"], seed=11, n_train=3, n_val=2)
    main = convert(root, tmp_path / "main")
    merged = convert([root, extra], tmp_path / "merged")
    assert merged.names == main.names
    assert merged.images["train"] == main.images["train"] + 3
    assert merged.images["val"] == main.images["val"] + 2
    assert (tmp_path / "merged" / "images" / "train" / "Lens" / "extra1").is_dir()
    assert merged.dataset_hash != main.dataset_hash
    with pytest.raises(DataError, match="holds none of the products"):
        convert([root, small_dataset(tmp_path / "w", products=["Wood"])], tmp_path / "x")


def test_output_folder_safety(root: Path, tmp_path: Path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("keep me")
    with pytest.raises(UsageError, match="not a VisionOps YOLO dataset"):
        convert(root, tmp_path / "taken")
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["notes.txt"]
    with pytest.raises(UsageError, match="must differ"):
        convert(root, root)
    (tmp_path / "empty").mkdir()
    assert convert(root, tmp_path / "empty").data_yaml.is_file()  # an empty folder is fine


def test_malformed_coco_is_a_data_error_naming_the_file(root: Path, tmp_path: Path):
    copy = copy_dataset(root, tmp_path / "c")
    path = copy / "Cable" / "val" / "_annotations.coco.json"
    coco = json.loads(path.read_text())
    coco["annotations"][0]["category_id"] = 42
    first = coco["annotations"][0]["id"]
    write_coco(path, coco)
    with pytest.raises(DataError, match=f"{path}: annotation {first} has unknown category_id 42"):
        convert(copy, tmp_path / "yolo")
    coco["annotations"][0]["category_id"] = 1
    owner, coco["annotations"][0]["image_id"] = coco["annotations"][0]["image_id"], 4242
    write_coco(path, coco)
    with pytest.raises(
        DataError, match=f"{path}: annotation {first} has unknown image_id 4242 \\(1 such\\)"
    ):
        convert(copy, tmp_path / "yolo")
    coco["annotations"][0]["image_id"] = owner
    coco["annotations"][0]["bbox"] = "wide"
    write_coco(path, coco)
    with pytest.raises(DataError, match=f"{path}: malformed COCO"):
        convert(copy, tmp_path / "yolo")
    assert not (tmp_path / "yolo").exists()


def test_digest_cache_sees_in_place_edits_and_is_optional(root: Path, tmp_path: Path):
    from visionops.data.hashing import file_digests

    copy = copy_dataset(root, tmp_path / "c")
    first = convert(copy, tmp_path / "yolo")
    image = copy / "Lens" / "val" / "lens_val_00002.jpg"
    data = bytearray(image.read_bytes())
    data[-20] ^= 0x55
    image.write_bytes(bytes(data))  # same path and inode, new content
    second = convert(copy, tmp_path / "yolo")
    assert not second.reused and second.dataset_hash != first.dataset_hash

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    paths = [str(image)]
    assert file_digests(paths, cache=blocker / "digests.sqlite3") == file_digests(paths)


def test_crowd_zero_size_and_duplicate_boxes_are_treated_as_convert_coco_treats_them(
    root: Path, tmp_path: Path
):
    """README: rows are those of Ultralytics' convert_coco, crowd and zero-size boxes skipped,
    duplicates dropped. The clean comparison above never meets such boxes; here every kind is
    added to one image and the rows are held to convert_coco's on the same file."""
    from visionops.bootstrap import bootstrap

    bootstrap()
    dirty = copy_dataset(root, tmp_path / "dirty")
    coco_path = dirty / "Cable" / "train" / "_annotations.coco.json"
    coco = json.loads(coco_path.read_text())
    image = coco["images"][0]
    kept = next(a for a in coco["annotations"] if a["image_id"] == image["id"])
    category = kept["category_id"]
    next_id = max(a["id"] for a in coco["annotations"]) + 1

    def box(bbox: list[float], **extra: object) -> dict:
        nonlocal next_id
        next_id += 1
        return {"id": next_id, "image_id": image["id"], "category_id": category, "bbox": bbox,
                "area": bbox[2] * bbox[3], "iscrowd": 0, "segmentation": [], **extra}  # fmt: skip

    coco["annotations"] += [
        box([5.0, 6.0, 30.0, 20.0], iscrowd=1),  # a crowd region
        box([40.0, 40.0, 0.0, 12.0]),  # zero width
        box([10.0, 50.0, 14.0, 0.0]),  # zero height
        {**kept, "id": next_id + 10},  # the same box twice
        box([60.0, 61.0, 7.0, 9.0]),  # an ordinary box, kept
    ]
    write_coco(coco_path, coco)

    convert(dirty, tmp_path / "yolo")
    class_map = ClassMap.load(tmp_path / "yolo" / "class_map.json")
    stem = Path(image["file_name"]).stem
    ours = _rows(tmp_path / "yolo" / "labels" / "train" / "Cable" / f"{stem}.txt")
    source = tmp_path / "json"
    source.mkdir()
    shutil.copyfile(coco_path, source / "a.json")
    convert_coco_out = tmp_path / "u"
    _convert_coco(source, convert_coco_out)
    theirs = _rows(convert_coco_out / "labels" / "a" / f"{stem}.txt")
    to_coco = {e.id: e.category_id for e in class_map.entries if e.product == "Cable"}
    ours_in_coco_ids = sorted([to_coco[int(r[0])] - 1, *r[1:]] for r in ours)
    assert len(ours_in_coco_ids) == len(theirs)
    np.testing.assert_allclose(np.array(ours_in_coco_ids), np.array(theirs), atol=1e-6)
    # By hand: the image's own boxes plus the ordinary one; nothing of the four others.
    own = sum(1 for a in coco["annotations"] if a["image_id"] == image["id"]) - 5
    assert len(ours) == own + 1
    width, height = image["width"], image["height"]
    ordinary = [(60 + 3.5) / width, (61 + 4.5) / height, 7 / width, 9 / height]
    assert any(np.allclose(r[1:], ordinary, atol=1e-7) for r in ours)
    crowd = [(5 + 15) / width, (6 + 10) / height, 30 / width, 20 / height]
    assert not any(np.allclose(r[1:], crowd, atol=1e-7) for r in ours)
    assert all(r[3] > 0 and r[4] > 0 for r in ours)


def _convert_coco(source: Path, out: Path, segments: bool = False) -> None:
    from ultralytics.data.converter import convert_coco

    convert_coco(str(source), str(out), use_segments=segments, cls91to80=False)


def test_polygons_in_parts_malformed_parts_and_a_missing_iscrowd_as_convert_coco_treats_them(
    root: Path, tmp_path: Path
):
    """README: `--segments` rows are convert_coco's. The generated data has one clean polygon per
    box; here one image gets a two-part polygon (Ultralytics joins the parts), parts too short or
    of odd length (left out; the rest of the polygon is kept), annotations with no usable polygon
    (their box becomes one) and one without `iscrowd` (kept): rows held to
    convert_coco(use_segments=True) on the same file, and by hand."""
    from visionops.bootstrap import bootstrap

    bootstrap()
    dirty = copy_dataset(root, tmp_path / "dirty")
    coco_path = dirty / "Cable" / "train" / "_annotations.coco.json"
    coco = json.loads(coco_path.read_text())
    image = coco["images"][0]
    kept = next(a for a in coco["annotations"] if a["image_id"] == image["id"])
    next_id = max(a["id"] for a in coco["annotations"]) + 1

    def shape(bbox: list[float], parts: list[list[float]]) -> dict:
        nonlocal next_id
        next_id += 1
        return {"id": next_id, "image_id": image["id"], "category_id": kept["category_id"],
                "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 0,
                "segmentation": parts}  # fmt: skip

    square = [12.0, 14.0, 30.0, 14.0, 30.0, 26.0, 12.0, 26.0]
    no_polygon = shape([90.0, 20.0, 5.0, 5.0], [])
    del no_polygon["segmentation"]
    no_crowd_key = shape([40.0, 8.0, 10.0, 10.0], [[40.0, 8.0, 50.0, 8.0, 50.0, 18.0, 40.0, 18.0]])
    del no_crowd_key["iscrowd"]
    coco["annotations"] += [
        shape([10.0, 10.0, 52.0, 50.0], [[10.0, 10.0, 20.0, 10.0, 20.0, 20.0],
                                          [50.0, 50.0, 62.0, 50.0, 62.0, 60.0, 50.0, 60.0]]),
        shape([12.0, 14.0, 18.0, 12.0], [square, [1.0, 2.0, 3.0, 4.0]]),  # too short
        shape([12.0, 14.0, 18.0, 12.0], [square, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]]),  # odd
        no_crowd_key,
        shape([70.0, 30.0, 8.0, 6.0], []),  # no polygon: the box as one
        shape([80.0, 40.0, 6.0, 4.0], [[1.0, 2.0, 3.0, 4.0]]),  # no usable part: the box
        no_polygon,  # no segmentation at all: the box
    ]  # fmt: skip
    write_coco(coco_path, coco)

    convert(dirty, tmp_path / "yolo", segments=True)
    class_map = ClassMap.load(tmp_path / "yolo" / "class_map.json")
    stem = Path(image["file_name"]).stem
    ours = _rows(tmp_path / "yolo" / "labels" / "train" / "Cable" / f"{stem}.txt")
    source = tmp_path / "json"
    source.mkdir()
    shutil.copyfile(coco_path, source / "a.json")
    _convert_coco(source, tmp_path / "u", segments=True)
    theirs = _rows(tmp_path / "u" / "labels" / "a" / f"{stem}.txt")
    to_coco = {e.id: e.category_id for e in class_map.entries if e.product == "Cable"}
    ours_in_coco_ids = sorted([to_coco[int(r[0])] - 1, *r[1:]] for r in ours)
    assert len(ours_in_coco_ids) == len(theirs)
    for mine, other in zip(ours_in_coco_ids, theirs, strict=True):
        assert len(mine) == len(other)
        np.testing.assert_allclose(mine, other, atol=1e-6)
    # By hand: the square once (the two annotations that carry it are one row), the box without
    # `iscrowd` as its polygon, and the two-part polygon as more than either part's points.
    width, height = image["width"], image["height"]
    own = sum(1 for a in coco["annotations"] if a["image_id"] == image["id"]) - 7
    assert len(ours) == own + 6
    normalised = [v / (width if i % 2 == 0 else height) for i, v in enumerate(square)]
    assert sum(1 for r in ours if len(r) == 9 and np.allclose(r[1:], normalised, atol=1e-7)) == 1
    corners = [40 / width, 8 / height, 50 / width, 8 / height, 50 / width, 18 / height]
    assert any(len(r) == 9 and np.allclose(r[1:7], corners, atol=1e-7) for r in ours)
    assert any(len(r) >= 1 + 6 + 8 for r in ours)  # every point of both parts
    for x, y, w, h in ([70, 30, 8, 6], [80, 40, 6, 4], [90, 20, 5, 5]):
        corners = [x, y, x + w, y, x + w, y + h, x, y + h]
        box = [v / (width if i % 2 == 0 else height) for i, v in enumerate(corners)]
        assert any(len(r) == 9 and np.allclose(r[1:], box, atol=1e-7) for r in ours), box
