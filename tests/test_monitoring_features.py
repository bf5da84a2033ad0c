"""Image and prediction features: each responds to the change it is meant to measure."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from visionops.data import features as F  # noqa: N812 (F.COLUMN reads like a table)
from visionops.detections import Detections
from visionops.errors import InvalidImage
from visionops.monitoring.simulate import drift_image


def _scene(height: int = 480, width: int = 640) -> np.ndarray:
    """A textured surface with axis-aligned stripes and a few objects, like a product photo."""
    rng = np.random.default_rng(0)
    image = np.full((height, width, 3), (90, 110, 130), np.float32)
    image[:, ::13] += 60  # vertical traces (periods off the 8-pixel JPEG grid)
    image[::19, :] += 40  # horizontal traces
    image += rng.normal(0, 2, image.shape)
    image = cv2.GaussianBlur(image, (0, 0), 0.8)
    cv2.rectangle(image, (100, 120), (260, 300), (40, 60, 200), -1)
    cv2.circle(image, (450, 250), 60, (220, 220, 220), -1)
    ok, encoded = cv2.imencode(".jpg", np.clip(image, 0, 255).astype(np.uint8))
    assert ok
    return cv2.imdecode(encoded, cv2.IMREAD_COLOR)


SCENE = _scene()


def test_image_features_have_every_column_as_finite_floats():
    row = F.image_features(SCENE)
    assert tuple(row) == F.IMAGE_COLUMNS
    assert all(isinstance(v, float) and np.isfinite(v) for v in row.values())
    assert (row[F.IMG_WIDTH], row[F.IMG_HEIGHT]) == (640.0, 480.0)
    assert 0 <= row[F.EDGE_DENSITY] <= 1
    assert -1 <= row[F.AXIS_ALIGNMENT] <= 1


@pytest.mark.parametrize(
    ("kind", "column", "direction"),
    [
        ("brightness", F.BRIGHTNESS_MEAN, -1),
        ("contrast", F.BRIGHTNESS_STD, -1),
        ("contrast", F.CONTRAST, -1),
        ("noise", F.NOISE_SIGMA, +1),
        ("blur", F.SHARPNESS, -1),
        ("jpeg", F.JPEG_BLOCKINESS, +1),
        ("rotation", F.AXIS_ALIGNMENT, -1),
        ("color-shift", F.RED_MEAN, +1),
        ("color-shift", F.BLUE_MEAN, -1),
        ("occlusion", F.EDGE_DENSITY, -1),
    ],
)
def test_each_drift_kind_moves_its_feature(kind: str, column: str, direction: int):
    before = F.image_features(SCENE)[column]
    after = F.image_features(drift_image(SCENE, kind, 0.75, np.random.default_rng(3)).image)[column]
    assert (after - before) * direction > 0.1 * abs(before), (before, after)


def test_grey_bgra_and_16_bit_inputs_mean_the_same_image():
    grey = cv2.cvtColor(SCENE, cv2.COLOR_BGR2GRAY)
    as_bgr = F.image_features(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR))
    assert F.image_features(grey) == pytest.approx(as_bgr)
    bgra = cv2.cvtColor(SCENE, cv2.COLOR_BGR2BGRA)
    assert F.image_features(bgra) == pytest.approx(F.image_features(SCENE))
    wide = SCENE.astype(np.uint16) * 257
    assert F.image_features(wide) == pytest.approx(F.image_features(SCENE))


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((0, 10, 3), np.uint8),
        np.zeros((4, 4, 2), np.uint8),
        "image.jpg",
        np.full((8, 8, 3), np.nan),
    ],
)
def test_invalid_images_raise_invalid_image(bad: object):
    with pytest.raises(InvalidImage):
        F.image_features(bad)  # type: ignore[arg-type]


def test_tiny_images_still_give_features():
    row = F.image_features(np.full((2, 3, 3), 128, np.uint8))
    assert row[F.NOISE_SIGMA] == 0.0
    assert row[F.JPEG_BLOCKINESS] == 1.0


def test_prediction_features():
    detections = Detections(
        boxes=np.array([[0, 0, 100, 50], [10, 10, 20, 30], [0, 0, 64, 48]], np.float32),
        scores=np.array([0.9, 0.6, 0.3], np.float32),
        class_ids=np.array([2, 0, 2]),
    )
    row = F.prediction_features(detections, (480, 640), num_classes=3)
    assert tuple(row) == F.PREDICTION_COLUMNS
    assert row[F.DET_COUNT] == 3
    assert row[F.CONF_MEAN] == pytest.approx(0.6)
    assert (row[F.CONF_MIN], row[F.CONF_MAX]) == pytest.approx((0.3, 0.9))
    areas = np.array([5000, 200, 3072]) / (480 * 640)
    assert row[F.BOX_AREA_MEAN] == pytest.approx(areas.mean())
    assert (row[F.BOX_AREA_MIN], row[F.BOX_AREA_MAX]) == pytest.approx((areas.min(), areas.max()))
    assert row[F.BOX_ASPECT_MEAN] == pytest.approx((2.0 + 0.5 + 64 / 48) / 3)
    share = np.array([2 / 3, 1 / 3])
    assert row[F.CLASS_ENTROPY] == pytest.approx(-(share * np.log(share)).sum() / np.log(3))
    assert row[F.TOP_CLASS] == 2


def test_no_detections_give_zeros_not_nan():
    row = F.prediction_features(Detections.empty(), (10, 10), num_classes=3)
    assert row[F.DET_COUNT] == 0 and row[F.TOP_CLASS] == F.NO_CLASS
    assert all(np.isfinite(v) for v in row.values())


def test_feature_row_combines_both_and_names_are_unique():
    row = F.feature_row(SCENE, Detections.empty(), num_classes=2)
    assert tuple(row) == F.FEATURE_COLUMNS
    assert len(set(F.FEATURE_COLUMNS)) == len(F.FEATURE_COLUMNS)
    assert tuple(F.feature_row(SCENE)) == F.IMAGE_COLUMNS


def test_feature_rows_of_files_skip_unreadable(tmp_path):
    good = tmp_path / "a.png"
    cv2.imwrite(str(good), SCENE)
    broken = tmp_path / "b.jpg"
    broken.write_bytes(b"not an image")
    rows, failures = F.image_feature_rows(
        [good, broken, tmp_path / "missing.png"], extra=lambda p: {"file_name": p.name}
    )
    assert [r["file_name"] for r in rows] == ["a.png"]
    assert [p.name for p, _ in failures] == ["b.jpg", "missing.png"]
    assert "not a decodable image" in failures[0][1]
