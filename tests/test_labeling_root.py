"""The selection batch folder (manifest.json) and labelled images written as a VISION root.

Real files throughout: images encoded by OpenCV, roots read back by `open_vision` and merged by
the real `visionops data convert --include` through typer's runner.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from tests.data_builders import small_dataset
from visionops.cli.app import app
from visionops.data.classmap import ClassMap
from visionops.data.coco import BACKGROUND_KEY, load_coco
from visionops.data.validate import validate
from visionops.data.vision import open_vision
from visionops.errors import DataError, UsageError
from visionops.labeling.batch import (
    BatchItem,
    Prediction,
    SelectionBatch,
    Window,
    image_path,
    read_batch,
    write_manifest,
)
from visionops.labeling.vision_root import (
    ROOT_FILE,
    LabeledBox,
    LabeledImage,
    class_product,
    write_vision_root,
)

CLASSES = ["Cable/break", "Cable/thunderbolt", "Capacitor/0"]


def _image(path: Path, seed: int, size: tuple[int, int] = (80, 60)) -> Path:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), pixels)
    return path


def _items(folder: Path) -> list[LabeledImage]:
    """Six Cable images, three Capacitor ones, a background of each and one of no product."""
    items = []
    for i in range(6):
        boxes = (LabeledBox("Cable/break", (1.5, 2.25, 10.0, 12.5)),)
        if i % 2:
            boxes += (LabeledBox("Cable/thunderbolt", (40.0, 30.0, 39.0, 29.5)),)
        items.append(LabeledImage(_image(folder / f"cable{i}.jpg", i), boxes))
    for i in range(3):
        path = _image(folder / f"cap{i}.png", 100 + i)
        items.append(LabeledImage(path, (LabeledBox("Capacitor/0", (0.0, 0.0, 80.0, 60.0)),)))
    items.append(LabeledImage(_image(folder / "bg-cable.jpg", 200), product="Cable"))
    items.append(LabeledImage(_image(folder / "bg-none.jpg", 201)))
    return items


def test_root_is_read_by_open_vision_with_seeded_splits(tmp_path: Path) -> None:
    items = _items(tmp_path / "in")
    summary = write_vision_root(items, CLASSES, tmp_path / "root", val_fraction=0.25, seed=4)
    assert summary.images == {
        "Cable": {"train": 5, "val": 2},
        "Capacitor": {"train": 2, "val": 1},
    }
    assert (summary.boxes, summary.background, summary.unplaced) == (12, 1, 1)

    dataset = open_vision(tmp_path / "root")
    assert dataset.names == ["Cable", "Capacitor"]
    cable = dataset["Cable"]
    train, val = cable.split("train").coco, cable.split("val").coco
    assert [c["name"] for c in train["categories"]] == ["break", "thunderbolt"]
    names = {i["file_name"] for i in train["images"]} | {i["file_name"] for i in val["images"]}
    assert len(names) == 7 and not names & {
        i["file_name"] for i in [*dataset["Capacitor"].split("val").coco["images"]]
    }
    backgrounds = [i for i in train["images"] + val["images"] if i.get(BACKGROUND_KEY)]
    assert len(backgrounds) == 1
    boxes = sorted(a["bbox"] for a in train["annotations"] + val["annotations"])
    assert boxes[0] == [1.5, 2.25, 10.0, 12.5] and [40.0, 30.0, 39.0, 29.5] in boxes
    for split in cable.splits.values():
        if split.exists:
            for image in split.coco["images"]:
                assert (split.dir / image["file_name"]).is_file()

    # Another seed moves images between the splits; the same seed gives the same split.
    other = write_vision_root(items, CLASSES, tmp_path / "other", val_fraction=0.25, seed=5)
    again = write_vision_root(items, CLASSES, tmp_path / "again", val_fraction=0.25, seed=4)
    files = lambda root: sorted(  # noqa: E731
        p.relative_to(root).as_posix() for p in root.rglob("*") if p.suffix != ".json"
    )
    assert files(tmp_path / "again") == files(tmp_path / "root")
    assert files(tmp_path / "other") != files(tmp_path / "root")
    assert other.content_hash != summary.content_hash == again.content_hash


def test_idempotent_and_replaced_whole(tmp_path: Path) -> None:
    items = _items(tmp_path / "in")
    root = tmp_path / "root"
    first = write_vision_root(items, CLASSES, root)
    coco = root / "Cable" / "train" / "_annotations.coco.json"
    stamp = coco.stat().st_mtime_ns
    again = write_vision_root(list(reversed(items)), CLASSES, root)
    assert again.reused and again.content_hash == first.content_hash
    assert coco.stat().st_mtime_ns == stamp

    fewer = write_vision_root(items[:6], CLASSES, root)
    assert not fewer.reused and open_vision(root).names == ["Cable"]
    assert json.loads((root / ROOT_FILE).read_text())["content_hash"] == fewer.content_hash


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda i, p: LabeledImage(i.path, (LabeledBox("Cable/break", (70.0, 0, 12.0, 5.0)),)),
            "falls outside its 80x60 image",
        ),
        (
            lambda i, p: LabeledImage(i.path, (LabeledBox("Cable/bend", (0, 0, 5.0, 5.0)),)),
            "unknown class 'Cable/bend'",
        ),
        (lambda i, p: LabeledImage(p / "gone.jpg", i.boxes), "not found"),
        (
            lambda i, p: LabeledImage(i.path, (LabeledBox("Cable/break", (0, 0, 0.0, 5.0)),)),
            "has no size",
        ),
        (
            lambda i, p: LabeledImage(i.path, i.boxes, width=81, height=60),
            "declared size 81x60, but the image is 80x60",
        ),
        (
            lambda i, p: LabeledImage(i.path, (*i.boxes, LabeledBox("Capacitor/0", (0, 0, 4, 4)))),
            "boxes name two products (Cable, Capacitor)",
        ),
        (
            lambda i, p: LabeledImage(i.path, (LabeledBox("Cable/thunderbolt", (0, 0, 4.0, 4.0)),)),
            "are the same image with different boxes",
        ),
    ],
)
def test_bad_input_writes_nothing(tmp_path: Path, change, message: str) -> None:
    items = _items(tmp_path / "in")
    root = tmp_path / "root"
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        write_vision_root([*items, change(items[0], tmp_path)], CLASSES, root)
    assert not root.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".root")]

    # An existing root survives a bad import untouched.
    write_vision_root(items, CLASSES, root)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    with pytest.raises(DataError):
        write_vision_root([*items, change(items[0], tmp_path)], CLASSES, root)
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before


def test_refuses_foreign_folders_and_bad_classes(tmp_path: Path) -> None:
    items = _items(tmp_path / "in")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(UsageError, match="is not a VISION root written by VisionOps"):
        write_vision_root(items, CLASSES, tmp_path / "mine")
    with pytest.raises(DataError, match="not <Product>/<category>"):
        write_vision_root(items, [*CLASSES, "Bolt/rust"], tmp_path / "root")
    with pytest.raises(UsageError, match="val_fraction"):
        write_vision_root(items, CLASSES, tmp_path / "root", val_fraction=1.0)
    assert class_product("Cable/break") == "Cable" and class_product("rust") is None


def test_data_convert_includes_the_root_under_the_base_class_map(tmp_path: Path) -> None:
    base = small_dataset(tmp_path / "base", products=["Cable", "Capacitor"])
    root = tmp_path / "root"
    write_vision_root(_items(tmp_path / "in"), CLASSES, root, seed=1)
    result = CliRunner().invoke(
        app, ["data", "convert", str(base), "--out", str(tmp_path / "yolo"), "--include", str(root)]
    )
    assert result.exit_code == 0, result.output
    yolo = tmp_path / "yolo"
    class_map = ClassMap.load(yolo / "class_map.json")
    labels = {}
    for split in ("train", "val"):
        for path in (yolo / "labels" / split / "Cable" / "extra1").glob("*.txt"):
            labels[path.stem] = path.read_text().splitlines()
    assert len(labels) == 7  # six labelled images and the background one
    coco = {}
    for split in ("train", "val"):
        data = load_coco(root / "Cable" / split / "_annotations.coco.json")
        names = {c["id"]: c["name"] for c in data["categories"]}
        for image in data["images"]:
            stem = image["file_name"].rsplit(".", 1)[0]
            coco[stem] = sorted(
                (f"Cable/{names[a['category_id']]}", a["bbox"])
                for a in data["annotations"]
                if a["image_id"] == image["id"]
            )
    for stem, rows in labels.items():
        got = []
        for row in rows:
            cls, cx, cy, w, h = row.split()
            width, height = 80, 60
            got.append((int(cls), [(float(cx) - float(w) / 2) * width,
                                   (float(cy) - float(h) / 2) * height,
                                   float(w) * width, float(h) * height]))  # fmt: skip
        got = sorted((class_map.names[c], box) for c, box in got)  # ids through the class map
        assert [c for c, _ in got] == [c for c, _ in coco[stem]]
        for (_, a), (_, b) in zip(got, coco[stem], strict=True):
            assert np.allclose(a, b, atol=1e-3)
    assert sum(len(rows) for rows in labels.values()) == 9


def _batch(folder: Path) -> SelectionBatch:
    images = []
    for i in range(2):
        data = cv2.imencode(".png", np.full((10, 20, 3), i * 50, np.uint8))[1].tobytes()
        sha = hashlib.sha256(data).hexdigest()
        (folder / "images").mkdir(parents=True, exist_ok=True)
        (folder / "images" / f"{sha}.png").write_bytes(data)
        images.append(sha)
    items = [
        BatchItem(
            image=image_path(sha, "png"),
            image_key=f"images/dt=2026-01-01/{sha}.png",
            request_id=f"r{i}",
            timestamp="2026-01-01T10:00:00+00:00",
            width=20,
            height=10,
            reasons=("score 0.27 near the threshold 0.25",),
            score=0.5 - i / 10,
            predictions=(Prediction("Cable/break", 0.27, (1.0, 2.0, 3.5, 4.0)),),
        )
        for i, sha in enumerate(images)
    ]
    window = Window("2026-01-01T00:00:00+00:00", "2026-01-02T00:00:00+00:00", "/log")
    return SelectionBatch("m", "3", CLASSES, window, 7, 5, items)


def test_batch_manifest_round_trip(tmp_path: Path) -> None:
    batch = _batch(tmp_path / "b")
    write_manifest(tmp_path / "b", batch)
    back = read_batch(tmp_path / "b")
    assert back == batch
    raw = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert raw["model"] == {"name": "m", "version": "3"} and raw["version"] == 1
    assert raw["items"][0]["predictions"][0]["bbox"] == [1.0, 2.0, 3.5, 4.0]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(version=2), "manifest version 2"),
        (
            lambda m: m["items"][0]["predictions"][0].update(class_name="Cable/x"),
            "item 0, prediction 0: class 'Cable/x' is not in class_names",
        ),
        (
            lambda m: m["items"][0]["predictions"][0].update(bbox=[15, 0, 10, 4]),
            "falls outside the 20x10 image",
        ),
        (lambda m: m["items"].append(dict(m["items"][0])), "item 2 repeats image"),
        (lambda m: m.update(budget=1), "2 items exceed the budget of 1"),
        (lambda m: m["items"][1].update(image="../x.png"), "item 1: image path '../x.png'"),
        (lambda m: m["items"][1].pop("width"), "item 1: lacks 'width'"),
        (lambda m: m.pop("window"), "manifest lacks 'window'"),
        (lambda m: Path(m["_dir"], m["items"][1]["image"]).unlink(), "is missing from the batch"),
    ],
)
def test_bad_manifests_name_the_problem(tmp_path: Path, edit, message: str) -> None:
    folder = tmp_path / "b"
    write_manifest(folder, _batch(folder))
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["_dir"] = str(folder)
    edit(manifest)
    manifest.pop("_dir")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(".", r"\.")):
        read_batch(folder)
    with pytest.raises(DataError, match="not a selection batch"):
        read_batch(tmp_path)


def test_sizes_are_those_the_predictor_decodes(tmp_path: Path) -> None:
    """A JPEG whose EXIF turns it a quarter: OpenCV (the predictor) decodes it 20 wide, 40 high,
    and the model's boxes are in that frame; the root's sizes follow, and `data validate` reads
    the image in the same frame (no size mismatch, no box outside the image)."""
    from PIL import Image

    image = Image.fromarray(np.full((20, 40, 3), 90, np.uint8))
    exif = image.getexif()
    exif[0x0112] = 6
    path = tmp_path / "turned.jpg"
    image.save(path, "JPEG", exif=exif.tobytes())
    assert cv2.imread(str(path)).shape[:2] == (40, 20)
    item = LabeledImage(
        path, (LabeledBox("Cable/break", (1.0, 2.0, 18.0, 37.0)),), width=20, height=40
    )
    write_vision_root([item], CLASSES, tmp_path / "root")
    coco = load_coco(next((tmp_path / "root" / "Cable").glob("*/_annotations.coco.json")))
    assert [(i["width"], i["height"]) for i in coco["images"]] == [(20, 40)]
    report = validate(tmp_path / "root")
    checks = {f.check for f in report.errors + report.warnings}  # one image: splits missing
    assert not checks & {"image_size_mismatch", "bbox_outside_image"}, report.summary()
