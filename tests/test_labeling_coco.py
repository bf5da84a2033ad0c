"""COCO out and back in through the real CLI: a batch picked from a log the real writer wrote,
exported for CVAT, corrected, imported as a VISION root and merged by `data convert --include`:
boxes within 0.5 px, class ids through the base's class map; bad files refused whole."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.data_builders import small_dataset
from tests.labeling_data import SIZE, T0, T1, write_log
from visionops.cli.app import app
from visionops.data.classmap import ClassMap
from visionops.labeling.batch import read_batch
from visionops.storage import LocalStore

runner = CliRunner()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A base VISION root, a batch of 12 picked images and its COCO export."""
    where = tmp_path_factory.mktemp("coco")
    write_log(LocalStore(where / "log"))
    base = small_dataset(where / "base", products=["Cable", "Capacitor"])
    for args in (
        ["select", "--log", str(where / "log"), "--start", T0.isoformat(), "--end",
         T1.isoformat(), "--budget", "12", "--out", str(where / "batch")],
        ["export", str(where / "batch"), "--to", "coco", "--out", str(where / "export")],
    ):  # fmt: skip
        result = runner.invoke(app, ["label", *args])
        assert result.exit_code == 0, result.output
    return {"base": base, "batch": where / "batch", "export": where / "export"}


def _import(coco: Path, images: Path, out: Path, *extra: str) -> tuple[int, str]:
    result = runner.invoke(
        app,
        ["label", "import", "--from", "coco", str(coco), "--images", str(images), "--out",
         str(out), *extra],
    )  # fmt: skip
    return result.exit_code, result.output


def test_export_writes_the_predictions_as_annotations(exported: dict[str, Path]) -> None:
    batch = read_batch(exported["batch"])
    coco = json.loads((exported["export"] / "annotations" / "instances_default.json").read_text())
    assert [c["name"] for c in coco["categories"]] == batch.class_names
    assert len(coco["images"]) == len(batch.items) == 12
    names = {c["id"]: c["name"] for c in coco["categories"]}
    for image, item in zip(coco["images"], batch.items, strict=True):
        assert image["file_name"] == item.file_name and (image["width"], image["height"]) == SIZE
        assert (exported["export"] / "images" / item.file_name).read_bytes() == (
            exported["batch"] / item.image
        ).read_bytes()
        boxes = sorted(
            (names[a["category_id"]], a["bbox"], a["score"])
            for a in coco["annotations"]
            if a["image_id"] == image["id"]
        )
        assert boxes == sorted((p.class_name, list(p.bbox), p.score) for p in item.predictions)
        assert image.get("visionops_product") == ("Cable" if item.predictions else None)


def test_round_trip_through_data_convert(exported: dict[str, Path], tmp_path: Path) -> None:
    source = exported["export"] / "annotations" / "instances_default.json"
    coco = json.loads(source.read_text())
    # A person's corrections: one box moved, one removed, the rest accepted unchanged.
    coco["annotations"][0]["bbox"] = [10.25, 11.5, 20.0, 15.75]
    coco["annotations"].pop()
    for image in coco["images"]:  # CVAT does not keep the extra keys
        image.pop("visionops_product", None)
    corrected = tmp_path / "corrected.json"
    corrected.write_text(json.dumps(coco))
    root = tmp_path / "root"
    code, output = _import(corrected, exported["export"] / "images", root,
                           "--base", str(exported["base"]), "--seed", "2")  # fmt: skip
    assert code == 0, output
    summary = json.loads(output[: output.rindex("}") + 1])
    assert summary["total_images"] == 12 and summary["boxes"] == len(coco["annotations"])
    assert summary["unplaced"] == 0  # images without boxes: the file's one product, Cable

    result = runner.invoke(app, ["data", "convert", str(exported["base"]), "--out",
                                 str(tmp_path / "yolo"), "--include", str(root)])  # fmt: skip
    assert result.exit_code == 0, result.output
    class_map = ClassMap.load(tmp_path / "yolo" / "class_map.json")
    names = {c["id"]: c["name"] for c in coco["categories"]}
    expected: dict[str, list[tuple[str, list[float]]]] = {}
    for image in coco["images"]:
        expected[image["file_name"].rsplit(".", 1)[0]] = sorted(
            (names[a["category_id"]], a["bbox"])
            for a in coco["annotations"]
            if a["image_id"] == image["id"]
        )
    labels = list((tmp_path / "yolo" / "labels").glob("*/Cable/extra1/*.txt"))
    assert len(labels) == 12
    width, height = SIZE
    for path in labels:
        got = []
        for row in path.read_text().splitlines():
            cls, cx, cy, w, h = (float(v) for v in row.split())
            box = [(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height]
            got.append((class_map.names[int(cls)], box))
        got.sort()
        want = expected[path.stem]
        assert [c for c, _ in got] == [c for c, _ in want], path.stem
        for (_, a), (_, b) in zip(got, want, strict=True):
            assert max(abs(x - y) for x, y in zip(a, b, strict=True)) <= 0.5
    assert sum(len(rows) for rows in expected.values()) == len(coco["annotations"])  # not `removed`

    # Idempotent: the same import again writes nothing.
    stamp = next(root.rglob("_annotations.coco.json")).stat().st_mtime_ns
    code, output = _import(corrected, exported["export"] / "images", root,
                           "--base", str(exported["base"]), "--seed", "2")  # fmt: skip
    assert code == 0 and '"reused": true' in output and "already held 12 images" in output
    assert next(root.rglob("_annotations.coco.json")).stat().st_mtime_ns == stamp


def _edit(coco: dict, how: str, images: Path) -> None:
    if how == "outside":
        coco["annotations"][0]["bbox"] = [60.0, 40.0, 10.0, 10.0]
    elif how == "unknown-class":
        coco["categories"][0]["name"] = "Bolt/rust"
    elif how == "not-in-base":
        coco["categories"][0]["name"] = "Cable/bend"
    elif how == "unknown-category":
        coco["annotations"][0]["category_id"] = 99
    elif how == "missing-image":
        (images / coco["images"][3]["file_name"]).unlink()


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("outside", "falls outside its 64x48 image"),
        ("unknown-class", "unknown class 'Bolt/rust'"),
        ("not-in-base", "unknown class 'Cable/bend' (not in the base)"),
        ("unknown-category", "names unknown category id 99"),
        ("missing-image", "not found in"),
    ],
)
def test_bad_coco_is_one_line_and_no_root(
    exported: dict[str, Path], tmp_path: Path, how: str, message: str
) -> None:
    images = tmp_path / "images"
    shutil.copytree(exported["export"] / "images", images)
    coco = json.loads((exported["export"] / "annotations" / "instances_default.json").read_text())
    _edit(coco, how, images)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(coco))
    code, output = _import(bad, images, tmp_path / "root", "--base", str(exported["base"]))
    assert code == 1, output
    assert message in output and output.startswith("error: ") and len(output.splitlines()) == 1
    assert not (tmp_path / "root").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".root")]


def test_bad_flags_and_files(exported: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text("{not json")
    code, output = _import(tmp_path / "x.json", exported["export"] / "images", tmp_path / "r")
    assert code == 1 and "invalid JSON" in output and not (tmp_path / "r").exists()
    code, output = _import(tmp_path / "x.json", tmp_path / "nowhere", tmp_path / "r")
    assert code == 1 and "image folder not found" in output
    result = runner.invoke(app, ["label", "import", "--from", "cvat", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "unknown --from 'cvat'" in result.output
    result = runner.invoke(app, ["label", "export", str(tmp_path), "--to", "coco", "--out",
                                 str(tmp_path / "e")])  # fmt: skip
    assert result.exit_code == 1 and "not a selection batch" in result.output
    assert not (tmp_path / "e").exists()
