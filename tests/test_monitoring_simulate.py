"""The drift simulator: every kind writes a complete split whose annotations still fit."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from visionops.cli.app import app
from visionops.data.coco import ANNOTATIONS_FILE, load_coco, write_coco
from visionops.errors import DataError, UsageError
from visionops.monitoring.simulate import (
    KINDS,
    Drifted,
    drift_image,
    jpeg_drift_quality,
    jpeg_quality,
    simulate_split,
    transform_annotation,
)

runner = CliRunner()
W, H = 200, 160
SQUARE = (60, 40, 110, 90)  # x0, y0, x1, y1 of the bright object


def _split(root: Path, count: int = 6) -> Path:
    """A split folder: textured dark images, each with one bright square annotated as polygon."""
    split = root / "Thing" / "val"
    split.mkdir(parents=True)
    coco = {
        "info": {"description": "test"},
        "categories": [{"id": 1, "name": "square"}],
        "images": [],
        "annotations": [],
    }
    x0, y0, x1, y1 = SQUARE
    for i in range(count):
        rng = np.random.default_rng(i)
        image = rng.integers(20, 60, (H, W, 3), dtype=np.uint8)
        image[y0:y1, x0:x1] = 250
        name = f"img_{i}.png" if i % 2 else f"img_{i}.jpg"
        cv2.imwrite(str(split / name), image)
        coco["images"].append({"id": i, "file_name": name, "width": W, "height": H})
        coco["annotations"].append(
            {
                "id": i,
                "image_id": i,
                "category_id": 1,
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "area": (x1 - x0) * (y1 - y0),
                "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]],
                "iscrowd": 0,
            }
        )
    write_coco(split / ANNOTATIONS_FILE, coco)
    return split


def _bright_box(image: np.ndarray) -> tuple[float, float, float, float]:
    ys, xs = np.nonzero(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) > 150)
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_rotation_moves_boxes_and_polygons_with_the_pixels(tmp_path: Path):
    src = _split(tmp_path / "src")
    # 30 degrees: at 45 (severity 1) the reflected borders bring copies of the square into view
    result = simulate_split(src, tmp_path / "out", kind="rotation", severity=2 / 3, seed=4)
    assert result.drifted == result.images == 6
    coco = load_coco(tmp_path / "out" / ANNOTATIONS_FILE)
    for entry, annotation in zip(coco["images"], coco["annotations"], strict=True):
        image = cv2.imread(str(tmp_path / "out" / entry["file_name"]))
        x, y, w, h = annotation["bbox"]
        assert (x, y, w, h) != (60, 40, 50, 50)  # it moved
        assert _iou((x, y, x + w, y + h), _bright_box(image)) > 0.85
        polygon = np.array(annotation["segmentation"][0]).reshape(-1, 2)
        assert polygon.min(0) == pytest.approx([x, y], abs=0.05)
        assert annotation["area"] == pytest.approx(50 * 50, rel=0.02)  # a rotated square
        assert entry["visionops_drift"] == "rotation"


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_writes_a_complete_split(tmp_path: Path, kind: str):
    src = _split(tmp_path / "src")
    out = tmp_path / "out" / "Thing" / "val"
    result = simulate_split(src, out, kind=kind, severity=0.5, fraction=0.5, seed=1)
    coco = load_coco(out / ANNOTATIONS_FILE)
    assert result.drifted == 3 and len(coco["images"]) == 6
    assert coco["info"]["visionops_drift"]["kind"] == kind
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in src.iterdir())
    assert len(coco["annotations"]) + result.annotations_dropped == 6
    changed = 0
    for entry in coco["images"]:
        before = cv2.imread(str(src / entry["file_name"]))
        after = cv2.imread(str(out / entry["file_name"]))
        assert after.shape == before.shape
        differs = not np.array_equal(before, after)
        assert differs == ("visionops_drift" in entry)
        changed += differs
    assert changed == 3
    again = simulate_split(src, tmp_path / "again", kind=kind, severity=0.5, fraction=0.5, seed=1)
    assert again.kinds == result.kinds
    for entry in coco["images"]:
        assert (tmp_path / "again" / entry["file_name"]).read_bytes() == (
            out / entry["file_name"]
        ).read_bytes()


def test_occlusion_drops_annotations_it_hides():
    annotation = {"bbox": [10, 10, 20, 20], "segmentation": [], "area": 400}
    image = np.zeros((100, 100, 3), np.uint8)
    hidden = Drifted(image, "occlusion", occluder=(5, 5, 25, 40))  # covers 75% of the box
    partly = Drifted(image, "occlusion", occluder=(25, 5, 60, 60))  # covers 25%
    assert transform_annotation(annotation, hidden, 100, 100) is None
    assert transform_annotation(annotation, partly, 100, 100) == annotation


def test_unreadable_images_are_skipped_with_their_annotations(tmp_path: Path):
    src = _split(tmp_path / "src")
    (src / "img_2.jpg").write_bytes(b"\xff\xd8 truncated")
    (src / "img_3.png").unlink()
    result = runner.invoke(
        app,
        ["drift", "simulate", "--src", str(src), "--out", str(tmp_path / "out"),
         "--kind", "noise", "--severity", "0.5"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "wrote 4 images" in result.output
    assert "img_2.jpg" in result.output and "img_3.png" in result.output
    coco = load_coco(tmp_path / "out" / ANNOTATIONS_FILE)
    assert {e["file_name"] for e in coco["images"]} == {"img_0.jpg", "img_1.png", "img_4.jpg",
                                                       "img_5.png"}  # fmt: skip
    assert {a["image_id"] for a in coco["annotations"]} == {0, 1, 4, 5}
    skipped = coco["info"]["visionops_drift"]["skipped"]
    assert {s["file"] for s in skipped} == {"img_2.jpg", "img_3.png"}


def test_bad_requests_are_clear_errors(tmp_path: Path):
    src = _split(tmp_path / "src", count=2)
    with pytest.raises(DataError, match="product folder"):
        simulate_split(src.parent, tmp_path / "o", kind="blur", severity=0.5)
    with pytest.raises(UsageError, match="unknown drift kind 'fog'"):
        simulate_split(src, tmp_path / "o", kind="fog", severity=0.5)
    with pytest.raises(UsageError, match="inside"):
        simulate_split(src, src / "out", kind="blur", severity=0.5)
    for path in src.glob("*.*g"):
        path.write_bytes(b"junk")
    with pytest.raises(DataError, match="no image"):
        simulate_split(src, tmp_path / "o", kind="blur", severity=0.5)
    assert not (tmp_path / "o").exists()  # nothing half-written

    cli = ["drift", "simulate", "--src", str(src), "--out", str(tmp_path / "o"), "--kind"]
    assert runner.invoke(app, [*cli, "fog", "--severity", "0.5"]).exit_code == 2
    assert runner.invoke(app, [*cli, "blur", "--severity", "1.5"]).exit_code == 2
    cli[3] = str(tmp_path / "nope")
    missing = runner.invoke(app, [*cli, "blur", "--severity", "0.5"])
    assert missing.exit_code == 1
    assert "not a split folder" in missing.output


def test_drift_record_is_json_serialisable(tmp_path: Path):
    src = _split(tmp_path / "src", count=3)
    result = simulate_split(src, tmp_path / "out", kind="mixed", severity=0.75, seed=2)
    assert sum(result.kinds.values()) == 3
    json.dumps(result.to_dict())


def test_drifted_jpegs_keep_their_source_quality(tmp_path: Path):
    """Only the simulated drift reaches the pixels: severity 0 is (almost) a no-op."""
    src = _split(tmp_path / "src", count=2)
    image = cv2.imread(str(src / "img_0.jpg"))
    cv2.imwrite(str(src / "img_0.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 70])
    assert jpeg_quality(src / "img_0.jpg") == 70
    assert jpeg_quality(src / "img_1.png") is None
    simulate_split(src, tmp_path / "out", kind="brightness", severity=0.0)
    assert jpeg_quality(tmp_path / "out" / "img_0.jpg") == 70
    for name in ("img_0.jpg", "img_1.png"):
        before = cv2.imread(str(src / name)).astype(np.int16)
        after = cv2.imread(str(tmp_path / "out" / name)).astype(np.int16)
        assert np.abs(after - before).mean() < 0.5, name


def test_jpeg_quality_is_relative_to_the_source():
    """Known answers of the log-step scale (README "Drift simulator"): severity 0 is the source's
    own quality, 1 is quality 10, and a lossless source counts as quality 100."""
    assert [jpeg_drift_quality(92, s) for s in (0, 0.05, 0.25, 0.5, 1)] == [92, 90, 81, 55, 10]
    assert [jpeg_drift_quality(None, s) for s in (0, 0.05, 0.5, 1)] == [100, 99, 89, 10]
    assert [jpeg_drift_quality(70, s) for s in (0, 0.05, 0.5, 1)] == [70, 67, 29, 10]
    image = np.random.default_rng(5).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    drifted = drift_image(image, "jpeg", 0.05, np.random.default_rng(0), source_quality=92)
    _, at_90 = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert np.array_equal(drifted.image, cv2.imdecode(at_90, cv2.IMREAD_COLOR))


@pytest.mark.parametrize(("severity", "degrees"), [(0.05, 2.25), (0.5, 22.5), (1.0, 45.0)])
def test_rotation_turns_by_45_s_degrees_without_mixing_pixels(severity: float, degrees: float):
    """Every output pixel is one source pixel (nearest, no interpolation blur): a noise image
    rotated keeps its set of colours exactly, and the matrix is a turn by 45 s degrees."""
    image = np.random.default_rng(6).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    drifted = drift_image(image, "rotation", severity, np.random.default_rng(1))
    assert not np.array_equal(drifted.image, image)
    colours = {tuple(p) for p in image.reshape(-1, 3)}
    assert {tuple(p) for p in drifted.image.reshape(-1, 3)} <= colours
    angle = np.degrees(np.arctan2(-drifted.matrix[0, 1], drifted.matrix[0, 0]))
    assert abs(angle) == pytest.approx(degrees)
