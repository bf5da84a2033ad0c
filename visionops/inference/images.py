"""Turn untrusted encoded image bytes into a BGR array, or a clear `InvalidImage`.

The header is read first (Pillow parses only the header on `open`), so the pixel limit rejects a
decompression bomb before any pixel buffer is allocated; only then does OpenCV decode. JPEG and PNG
are checked for their end markers, so a truncated upload is named as such instead of being decoded
into a half-grey image.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import cv2  # heavy; decoding is what this module does
import numpy as np
from PIL import Image, UnidentifiedImageError

from visionops.errors import InvalidImage, PayloadTooLarge

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

SUPPORTED_FORMATS = ("JPEG", "PNG", "BMP", "WEBP", "TIFF")
DEFAULT_MAX_PIXELS = 40_000_000

_JPEG_SOS = b"\xff\xda"
_JPEG_EOI = b"\xff\xd9"
_PNG_IEND = b"IEND\xaeB`\x82"
_MAGIC = {
    b"\xff\xd8\xff": "JPEG",
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"BM": "BMP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
}


@contextmanager
def open_pil(source: bytes | Path) -> Iterator[PILImage]:
    """`PIL.Image.open` whose "not an image" is always `UnidentifiedImageError`.

    Once Ultralytics is imported in the process it patches `Image.open` to load the pi-heif plugin
    on unidentified files; that plugin is not installed (nor installable offline), so the same
    file then fails with ImportError. Every VisionOps reader of untrusted images goes through here.
    """
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        image = Image.open(stream)
    except ImportError as error:
        raise UnidentifiedImageError(f"cannot identify image file {source!r:.60}") from error
    with image:
        yield image


_ORIENTATION = 0x0112  # EXIF tag; values 5-8 turn the stored pixels a quarter
_QUARTER_TURNS = frozenset({5, 6, 7, 8})


def shown_size(image: PILImage) -> tuple[int, int]:
    """(width, height) as the image is shown and decoded for training and serving: EXIF
    orientation applied, as OpenCV's decoder and Ultralytics' `exif_size` do. Annotation tools
    draw on the shown image, so a label's size is this one, not the stored pixels'."""
    width, height = int(image.width), int(image.height)
    if image.getexif().get(_ORIENTATION) in _QUARTER_TURNS:
        return height, width
    return width, height


def image_size(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[str, int, int]:
    """(format, width, height) from the header alone; raises if it is not a supported image."""
    if not data:
        raise InvalidImage("empty image (0 bytes)")
    try:
        with open_pil(data) as header:
            fmt, (width, height) = header.format or "?", header.size
    except Image.DecompressionBombError as error:
        raise PayloadTooLarge(f"image too large (decompression bomb): {error}") from error
    except UnidentifiedImageError as error:
        claimed = next((fmt for magic, fmt in _MAGIC.items() if data.startswith(magic)), None)
        if claimed:
            raise InvalidImage(f"corrupt {claimed} header ({len(data)} bytes)") from error
        raise InvalidImage(
            f"not an image: {len(data)} bytes in no recognised format "
            f"(expected one of {', '.join(SUPPORTED_FORMATS)})"
        ) from error
    except (OSError, ValueError, SyntaxError) as error:
        raise InvalidImage(f"corrupt image header: {error}") from error
    if fmt not in SUPPORTED_FORMATS:
        raise InvalidImage(
            f"unsupported image format {fmt} (expected one of {', '.join(SUPPORTED_FORMATS)})"
        )
    if width <= 0 or height <= 0:
        raise InvalidImage(f"{fmt} image with invalid size {width}x{height}")
    if width * height > max_pixels:
        raise PayloadTooLarge(
            f"{fmt} image of {width}x{height} = {width * height} pixels is over the limit of "
            f"{max_pixels} pixels"
        )
    return fmt, width, height


def _check_complete(fmt: str, data: bytes) -> None:
    if fmt == "JPEG" and data.rfind(_JPEG_EOI) < data.rfind(_JPEG_SOS):
        raise InvalidImage(
            f"truncated JPEG: no end-of-image marker after the last scan ({len(data)} bytes)"
        )
    if fmt == "PNG" and data.rfind(_PNG_IEND) < 0:
        raise InvalidImage(f"truncated PNG: no IEND chunk ({len(data)} bytes)")


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode JPEG/PNG/BMP/WebP/TIFF bytes into a BGR uint8 array [H, W, 3].

    Grey, 16-bit and alpha images become 8-bit BGR, and EXIF orientation is applied, as in
    Ultralytics' own `cv2.imread`. Raises `InvalidImage` naming the problem (empty, not an image,
    truncated, corrupt) or `PayloadTooLarge` when the header announces more than `max_pixels`.
    """
    data = bytes(data) if not isinstance(data, bytes) else data
    fmt, width, height = image_size(data, max_pixels=max_pixels)
    _check_complete(fmt, data)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise InvalidImage(f"{fmt} image of {width}x{height} could not be decoded (corrupt data)")
    return image
