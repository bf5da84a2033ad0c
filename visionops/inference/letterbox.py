"""Letterbox preprocessing and its inverse, as Ultralytics' `LetterBox` and `scale_boxes` do it.

Matching Ultralytics to the pixel is what makes the served boxes equal to `YOLO(...).predict`:
the same rounding of the resized size, the same split of the padding, the same grey (114) and the
same way back from network-input to original pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2  # heavy; resizing is what this module does
import numpy as np

PAD_VALUE = 114


def letterbox_shape(
    image_shape: tuple[int, int], new_shape: tuple[int, int], *, stride: int, auto: bool
) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """For an image of (h, w): its resized (w, h) and the padding (top, bottom, left, right).

    `auto` pads only up to a multiple of `stride` (a rectangular input, as Ultralytics does for
    models with dynamic input size) instead of up to `new_shape`.
    """
    h, w = image_shape
    r = min(new_shape[0] / h, new_shape[1] / w)
    new_w, new_h = max(round(w * r), 1), max(round(h * r), 1)
    dw, dh = new_shape[1] - new_w, new_shape[0] - new_h
    if auto:
        dw, dh = dw % stride, dh % stride
    top, bottom = round(dh / 2 - 0.1), round(dh / 2 + 0.1)
    left, right = round(dw / 2 - 0.1), round(dw / 2 + 0.1)
    return (new_w, new_h), (top, bottom, left, right)


def letterbox(
    image: np.ndarray, new_shape: tuple[int, int], *, stride: int, auto: bool
) -> np.ndarray:
    """Resize `image` (BGR uint8) to fit `new_shape` (h, w) keeping its aspect, pad with grey."""
    (new_w, new_h), (top, bottom, left, right) = letterbox_shape(
        image.shape[:2], new_shape, stride=stride, auto=auto
    )
    if (image.shape[1], image.shape[0]) != (new_w, new_h):
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    if top or bottom or left or right:
        image = cv2.copyMakeBorder(
            image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3
        )
    return image


def to_input_tensor(images: Sequence[np.ndarray]) -> np.ndarray:
    """Letterboxed BGR uint8 images of one shape -> float32 NCHW RGB in [0, 1].

    Channel by channel into one preallocated array (about 10x faster than `cv2.dnn.blobFromImages`
    here), divided by 255 as Ultralytics does.
    """
    height, width = images[0].shape[:2]
    batch = np.empty((len(images), 3, height, width), np.float32)
    for index, image in enumerate(images):
        blue, green, red = cv2.split(image)
        batch[index, 0], batch[index, 1], batch[index, 2] = red, green, blue
    batch /= np.float32(255)
    return batch


def scale_boxes(
    boxes: np.ndarray, input_shape: tuple[int, int], image_shape: tuple[int, int]
) -> np.ndarray:
    """xyxy boxes in network-input pixels -> original-image pixels, clipped to the image.

    Like Ultralytics, the gain and padding are recomputed from the two shapes.
    """
    h, w = image_shape
    gain = min(input_shape[0] / h, input_shape[1] / w)
    new_h, new_w = max(round(h * gain), 1), max(round(w * gain), 1)
    pad_x = round((input_shape[1] - new_w) / 2 - 0.1)
    pad_y = round((input_shape[0] - new_h) / 2 - 0.1)
    out = np.empty_like(boxes)
    out[:, [0, 2]] = ((boxes[:, [0, 2]] - pad_x) / (new_w / w)).clip(0, w)
    out[:, [1, 3]] = ((boxes[:, [1, 3]] - pad_y) / (new_h / h)).clip(0, h)
    return out
