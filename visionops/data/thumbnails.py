"""Small JPEG copies of a few images: what a page shows of a data set without carrying it.

The drift page puts a strip of reference and of current thumbnails above its numbers; the
evaluation keeps thumbnails of a few of its images beside the reference feature table it builds,
so that a drift check anywhere later (a pipeline step on a cluster, where the evaluation data is
gone) can show what the reference looked like.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from visionops.data.files import atomic_write_bytes
from visionops.errors import InvalidImage

log = logging.getLogger(__name__)

THUMBNAILS = 6
"""Images in a strip: enough to see what changed, few enough to read only those."""
THUMBNAIL_PX = 96
"""The longer side of a thumbnail, in pixels."""

T = TypeVar("T")


def spread(items: Sequence[T], count: int = THUMBNAILS) -> list[T]:
    """`count` items evenly spaced over `items` (all of them when there are fewer): a split
    sorted by product then shows every product, not the first product's first images."""
    if len(items) <= count:
        return list(items)
    step = len(items) / count
    return [items[int(i * step)] for i in range(count)]


def thumbnail_jpeg(data: bytes, px: int = THUMBNAIL_PX, *, quality: int = 80) -> bytes | None:
    """`data` (any image format the predictor reads: 8 or 16 bit, grey or colour) as a JPEG whose
    longer side is at most `px`; None when it is not a readable image."""
    import cv2  # only where a thumbnail is made

    from visionops.inference.images import decode_image  # cv2 and numpy: loaded here only

    try:
        pixels = decode_image(data)
    except InvalidImage as error:  # PayloadTooLarge included
        log.warning("no thumbnail: %s", error)
        return None
    scale = min(1.0, px / max(pixels.shape[:2]))
    if scale < 1.0:
        pixels = cv2.resize(pixels, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return encoded.tobytes() if ok else None


def write_thumbnails(
    images: Sequence[tuple[Path, str]], folder: Path, count: int = THUMBNAILS
) -> list[Path]:
    """Thumbnails of `count` of `images` ((file, name relative to its data set), spread over
    them) in `folder`, named `NN-<name with / as __>.jpg` in the images' order; unreadable images
    are left out. Returns the files written."""
    written = []
    for index, (path, name) in enumerate(spread(images, count)):
        try:
            data = path.read_bytes()
        except OSError as error:
            log.warning("no thumbnail of %s: %s", path, error)
            continue
        jpeg = thumbnail_jpeg(data)
        if jpeg is None:
            continue
        stem = Path(name).with_suffix("").as_posix().replace("/", "__")
        written.append(atomic_write_bytes(folder / f"{index:02d}-{stem}.jpg", jpeg))
    return written
