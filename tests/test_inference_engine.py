"""The inference engine: decoding limits, letterbox/NMS equal to Ultralytics', same boxes as
`YOLO(...).predict` on the same weights, and clear errors for bad models and images."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from tests.images import encode, png_bomb, textured
from visionops.errors import (
    InvalidImage,
    ModelLoadError,
    ModelNotFound,
    PayloadTooLarge,
    UsageError,
)
from visionops.inference import Detector, decode_image
from visionops.inference.letterbox import letterbox, scale_boxes
from visionops.inference.postprocess import nms

SHAPES = [(480, 640), (500, 700), (320, 320), (123, 457), (1000, 300), (17, 913)]


# -- decoding --------------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".jpg", ".png", ".bmp", ".webp", ".tiff"])
def test_decode_supported_formats(ext: str) -> None:
    image = textured(48, 64)
    decoded = decode_image(encode(image, ext), max_pixels=10_000)
    assert decoded.shape == (48, 64, 3) and decoded.dtype == np.uint8
    if ext in (".png", ".bmp", ".tiff"):  # lossless
        assert np.array_equal(decoded, image)


def test_decode_grey_and_alpha_become_bgr() -> None:
    grey = textured(20, 30)[:, :, 0]
    assert decode_image(encode(grey, ".png")).shape == (20, 30, 3)
    rgba = np.dstack([textured(20, 30), np.full((20, 30), 128, np.uint8)])
    assert decode_image(encode(rgba, ".png")).shape == (20, 30, 3)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty image (0 bytes)"),
        (b"hello, this is text", "not an image"),
        (b"GIF", "unsupported image format GIF"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 40, "corrupt JPEG header (44 bytes)"),
    ],
)
def test_decode_rejects_non_images(data: bytes, message: str) -> None:
    if data == b"GIF":
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8)).save(buffer, format="GIF")
        data = buffer.getvalue()
    with pytest.raises(InvalidImage, match=re.escape(message)):
        decode_image(data)


def test_decode_rejects_truncated_images() -> None:
    jpeg, png = encode(textured(64, 64), ".jpg"), encode(textured(64, 64), ".png")
    with pytest.raises(InvalidImage, match="truncated JPEG"):
        decode_image(jpeg[: len(jpeg) // 2])
    with pytest.raises(InvalidImage, match="truncated JPEG"):
        decode_image(jpeg[:-2])
    with pytest.raises(InvalidImage, match="truncated PNG"):
        decode_image(png[: len(png) // 2])


def test_decompression_bomb_is_rejected_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = png_bomb(6000, 6000)  # 36 Mpixel of zeros in a few KB
    assert len(bomb) < 100_000

    def must_not_decode(*args: object) -> None:
        raise AssertionError("the pixel buffer of a bomb was allocated")

    monkeypatch.setattr(cv2, "imdecode", must_not_decode)
    with pytest.raises(PayloadTooLarge, match=r"6000x6000 = 36000000 pixels is over the limit"):
        decode_image(bomb, max_pixels=4_000_000)


def test_exif_orientation_is_applied_like_cv2_imread(tmp_path: Path) -> None:
    image = Image.fromarray(textured(20, 40)[:, :, ::-1])
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    (tmp_path / "rotated.jpg").write_bytes(buffer.getvalue())
    expected = cv2.imread(str(tmp_path / "rotated.jpg"))
    decoded = decode_image(buffer.getvalue())
    assert decoded.shape == expected.shape == (40, 20, 3)
    assert np.array_equal(decoded, expected)


# -- letterbox and NMS against Ultralytics' own -------------------------------------------------


@pytest.mark.parametrize("auto", [True, False])
def test_letterbox_and_scale_boxes_match_ultralytics(auto: bool) -> None:
    from ultralytics.data.augment import LetterBox
    from ultralytics.utils import ops

    rng = np.random.default_rng(1)
    for height, width in [*SHAPES, (1, 3000), (640, 640), (333, 333)]:
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        expected = LetterBox(320, auto=auto, stride=32)(image=image)
        ours = letterbox(image, (320, 320), stride=32, auto=auto)
        assert ours.shape == expected.shape
        assert np.array_equal(ours, expected)
        boxes = rng.uniform(0, 320, (20, 4)).astype(np.float32)
        boxes[:, 2:] += boxes[:, :2]
        theirs = ops.scale_boxes(ours.shape[:2], boxes.copy(), (height, width))
        np.testing.assert_allclose(
            scale_boxes(boxes, ours.shape[:2], (height, width)), theirs, atol=1e-3
        )


def test_nms_matches_torchvision() -> None:
    import torch
    import torchvision

    rng = np.random.default_rng(2)
    for _ in range(20):
        n = int(rng.integers(1, 400))
        xy = rng.uniform(0, 300, (n, 2))
        boxes = np.hstack([xy, xy + rng.uniform(1, 120, (n, 2))]).astype(np.float32)
        scores = rng.uniform(0, 1, n).astype(np.float32)
        for threshold in (0.3, 0.5, 0.7):
            expected = torchvision.ops.nms(
                torch.from_numpy(boxes), torch.from_numpy(scores), threshold
            )
            assert nms(boxes, scores, threshold, max_keep=10**6).tolist() == expected.tolist()
            assert nms(boxes, scores, threshold, max_keep=5).tolist() == expected[:5].tolist()


# -- the detector ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def detector(untrained_model: Path) -> Detector:
    return Detector.from_model_dir(untrained_model, threads=1, solo_threads=2)


@pytest.mark.parametrize("weights", ["model.onnx", "model.pt"])
def test_same_boxes_as_ultralytics_predict(
    untrained_model: Path, detector: Detector, weights: str
) -> None:
    """Within 1 px and 1e-3 score of `YOLO(weights).predict` (an untrained model scores low, so
    the comparison runs at conf 0.001 where every image has dozens of boxes)."""
    from visionops.bootstrap import configure_ultralytics

    configure_ultralytics()
    from ultralytics import YOLO

    yolo = YOLO(str(untrained_model / weights), task="detect")
    for index, (height, width) in enumerate(SHAPES):
        image = textured(height, width, seed=index)
        theirs = yolo.predict(image, conf=0.001, iou=0.7, imgsz=320, verbose=False)[0].boxes
        ours = detector.detect([image], conf=0.001, iou=0.7)[0]
        assert len(ours) == len(theirs) >= (5 if min(height, width) < 200 else 20)
        np.testing.assert_allclose(ours.boxes, theirs.xyxy.numpy(), atol=1.0)
        np.testing.assert_allclose(ours.scores, theirs.conf.numpy(), atol=1e-3)
        assert ours.class_ids.tolist() == theirs.cls.numpy().astype(int).tolist()
        assert (ours.boxes[:, [0, 2]] <= width).all() and (ours.boxes[:, [1, 3]] <= height).all()


def test_batches_give_the_same_detections(untrained_model: Path, detector: Detector) -> None:
    images = [textured(240, 320, seed=s) for s in range(3)] + [textured(100, 500, seed=9)]
    one_by_one = [detector.detect([image], conf=0.001)[0] for image in images]
    batched = Detector.from_model_dir(untrained_model, batch_size=4).detect(images, conf=0.001)
    for a, b in zip(one_by_one, batched, strict=True):
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)


def test_parameters_are_applied(detector: Detector) -> None:
    image = textured(320, 320)
    many = detector.detect([image], conf=0.001)[0]
    assert len(detector.detect([image], conf=0.001, max_det=3)[0]) == 3
    assert len(detector.detect([image], conf=0.001, iou=0.3)[0]) < len(many)
    assert len(detector.detect([image], conf=0.9)[0]) == 0
    assert (detector.detect([image], conf=0.0041)[0].scores > 0.0041).all()


def test_solo_and_shared_sessions_agree(detector: Detector) -> None:
    backend = detector.backend
    batch = np.random.default_rng(3).random((1, 3, 320, 320), dtype=np.float32)
    assert backend._solo is not None  # type: ignore[attr-defined]
    solo = backend._solo.run(None, {"images": batch})[0]  # type: ignore[attr-defined]
    shared = backend._shared.run(None, {"images": batch})[0]  # type: ignore[attr-defined]
    np.testing.assert_allclose(solo, shared, atol=1e-4)
    np.testing.assert_allclose(backend.run(batch), shared, atol=1e-4)


def test_bad_detector_arguments(detector: Detector) -> None:
    image = textured(32, 32)
    with pytest.raises(UsageError, match="conf must be between 0 and 1"):
        detector.detect([image], conf=1.5)
    with pytest.raises(UsageError, match="iou must be between 0 and 1"):
        detector.detect([image], iou=-0.1)
    with pytest.raises(UsageError, match="max_det must be at least 1"):
        detector.detect([image], max_det=0)
    with pytest.raises(InvalidImage, match=r"image 1: expected a BGR uint8 array \[H, W, 3\]"):
        detector.detect([image, image[:, :, 0]])


def test_model_directory_errors(untrained_model: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound, match="does not exist"):
        Detector.from_model_dir(tmp_path / "missing")
    corrupt = tmp_path / "corrupt"
    shutil.copytree(untrained_model, corrupt)
    (corrupt / "model.onnx").write_bytes(b"not a protobuf")
    with pytest.raises(ModelLoadError, match="cannot load ONNX model"):
        Detector.from_model_dir(corrupt)
    mismatched = tmp_path / "mismatched"
    shutil.copytree(untrained_model, mismatched)
    metadata = json.loads((mismatched / "metadata.json").read_text())
    (mismatched / "metadata.json").write_text(json.dumps({**metadata, "names": ["a", "b"]}))
    with pytest.raises(ModelLoadError, match=r"predicts 3 classes but metadata\.json names 2"):
        Detector.from_model_dir(mismatched).warmup()
    with pytest.raises(UsageError, match="unknown engine 'tensorrt'"):
        Detector.from_model_dir(untrained_model, engine="tensorrt")
    with pytest.raises(ModelNotFound, match=r"no model\.int8\.onnx"):
        Detector.from_model_dir(untrained_model, precision="int8")
    with pytest.raises(UsageError, match="unknown precision 'fp8'"):
        Detector.from_model_dir(untrained_model, precision="fp8")
