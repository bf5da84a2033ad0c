"""The VISION loader (folders and tar.gz archives), COCO I/O and the class map."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from tests.data_builders import archive_products, copy_dataset, small_dataset
from visionops.data.classmap import ClassMap, build_class_map
from visionops.data.coco import load_coco, write_coco
from visionops.data.vision import PRODUCTS, SPLITS, open_vision
from visionops.errors import DataError, UsageError


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_dataset(tmp_path_factory.mktemp("vision") / "v", products=["Cable", "Screw"])


def test_products_and_splits():
    assert len(PRODUCTS) == 14 and PRODUCTS[0] == "Cable" and PRODUCTS[-1] == "Wood"
    assert SPLITS == ("train", "val", "inference")


def test_opens_a_folder_layout(root: Path):
    dataset = open_vision(root)
    assert dataset.names == ["Cable", "Screw"]
    split = dataset["Screw"].split("val")
    assert split.dir == root / "Screw" / "val"
    assert split.annotations_path == root / "Screw" / "val" / "_annotations.coco.json"
    assert split.exists and split.labeled
    assert [c["name"] for c in split.coco["categories"]] == ["defect"]
    assert not dataset["Screw"].split("inference").labeled


def test_selects_products_case_insensitively(root: Path):
    assert open_vision(root, ["screw"]).names == ["Screw"]
    with pytest.raises(UsageError, match=r"unknown product 'Bolt'.*Cable, Capacitor"):
        open_vision(root, ["Screw", "Bolt"])
    with pytest.raises(DataError, match=r"product Wood not found in .*found: Cable, Screw"):
        open_vision(root, ["Wood"])


def test_missing_and_empty_folders_are_data_errors(tmp_path: Path, root: Path):
    with pytest.raises(DataError, match=f"dataset folder not found: {tmp_path / 'nope'}"):
        open_vision(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no VISION products in .*empty"):
        open_vision(tmp_path / "empty")
    with pytest.raises(DataError, match="one product's folder"):
        open_vision(root / "Cable")


@pytest.mark.parametrize("top_folder", [True, False])
def test_opens_archives_like_folders_and_extracts_once(
    root: Path, tmp_path: Path, top_folder: bool
):
    archives = archive_products(root, tmp_path / "archives", top_folder=top_folder)
    cache = tmp_path / "cache"
    dataset = open_vision(archives, cache_dir=cache)
    assert dataset.names == ["Cable", "Screw"]
    for split in SPLITS:
        assert dataset["Cable"].split(split).coco == open_vision(root)["Cable"].split(split).coco
    assert dataset["Cable"].source == archives / "Cable.tar.gz"
    entries = sorted(p.name for p in cache.iterdir())
    assert len(entries) == 2 and all(not e.startswith(".") for e in entries)
    stamp = (cache / entries[0]).stat().st_mtime_ns
    open_vision(archives, cache_dir=cache)  # second open: the cache is reused as is
    assert sorted(p.name for p in cache.iterdir()) == entries
    assert (cache / entries[0]).stat().st_mtime_ns == stamp


def test_a_changed_archive_is_extracted_again(root: Path, tmp_path: Path):
    archives = archive_products(root, tmp_path / "a")
    cache = tmp_path / "cache"
    open_vision(archives, ["Cable"], cache_dir=cache)
    with tarfile.open(archives / "Cable.tar.gz", "w:gz") as tar:
        tar.add(root / "Cable" / "train", arcname="Cable/train")
    dataset = open_vision(archives, ["Cable"], cache_dir=cache)
    assert len(list(cache.iterdir())) == 2
    assert not dataset["Cable"].split("val").exists


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"not a gzip file at all", "broken archive"),
        (None, "broken archive"),  # truncated
        ("escape", "broken archive"),  # a member that would land outside the cache
    ],
)
def test_broken_archives_are_data_errors(root: Path, tmp_path: Path, content, needle: str):
    archives = archive_products(root, tmp_path / "a")
    target = archives / "Screw.tar.gz"
    if content is None:
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    elif content == "escape":
        with tarfile.open(target, "w:gz") as tar:
            info = tarfile.TarInfo("../../evil.txt")
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))
    else:
        target.write_bytes(content)
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=f"{needle} {target}"):
        open_vision(archives, cache_dir=cache)
    assert not (tmp_path / "evil.txt").exists()
    assert [p for p in cache.iterdir() if p.name.startswith(".")] == []  # no half extraction


def test_load_coco_names_the_broken_file(tmp_path: Path):
    bad = tmp_path / "_annotations.coco.json"
    bad.write_text('{"images": [}')
    with pytest.raises(DataError, match=f"invalid JSON in {bad} \\(line 1, column 13\\)"):
        load_coco(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(DataError, match="must hold a JSON object"):
        load_coco(bad)
    with pytest.raises(DataError, match="annotations file not found"):
        load_coco(tmp_path / "missing.json")


def test_write_coco_is_atomic_and_deterministic(tmp_path: Path):
    data = {"images": [{"id": 1, "file_name": "a.jpg", "width": 2, "height": 2}], "x": "é"}
    write_coco(tmp_path / "a.json", data)
    first = (tmp_path / "a.json").read_bytes()
    write_coco(tmp_path / "a.json", data)
    assert (tmp_path / "a.json").read_bytes() == first
    assert load_coco(tmp_path / "a.json") == data
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_class_map_is_stable_and_never_merges_products(root: Path, tmp_path: Path):
    wide = small_dataset(tmp_path / "w", products=["Casting", "Console", "Capacitor"])
    class_map = build_class_map(open_vision(wide))
    assert class_map.names[:3] == ["Capacitor/0", "Casting/inclusion", "Casting/other"]
    # both products have a "scratch": two classes, never one
    assert "Casting/scratch" in class_map.names and "Console/scratch" in class_map.names
    assert class_map.names == sorted(class_map.names, key=lambda n: tuple(n.split("/", 1)))
    again = build_class_map(open_vision(wide, ["Console", "Casting", "Capacitor"]))
    assert again == class_map
    assert ClassMap.from_dict(json.loads(class_map.to_json())) == class_map
    entry = class_map.entries[class_map.class_id("Console", "scratch")]
    assert entry.category_id == 4


def test_roboflow_parent_category_is_left_out(root: Path, tmp_path: Path):
    copy = copy_dataset(root, tmp_path / "c")
    for split in SPLITS:
        path = copy / "Screw" / split / "_annotations.coco.json"
        coco = json.loads(path.read_text())
        coco["categories"].insert(0, {"id": 0, "name": "screws", "supercategory": "none"})
        for category in coco["categories"][1:]:
            category["supercategory"] = "screws"
        write_coco(path, coco)
    names = build_class_map(open_vision(copy)).names
    assert "Screw/screws" not in names and "Screw/defect" in names
