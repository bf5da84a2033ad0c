"""The images a drift page shows: a few of the reference's and a few of the window's.

Reference: the thumbnails the evaluation kept of the images its reference table was built from
(`visionops.monitoring.reference.Reference.images`), or a folder the caller names. Current: the
images the predictor kept of the window (the prediction log's `image_key` column, read from the
log's store), topped up from folders the caller names (the demo knows the images it sent). Only
the few images a strip shows are ever read: a window of millions of rows costs one pass over one
column.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from visionops.data.thumbnails import THUMBNAILS, spread
from visionops.errors import StorageError
from visionops.monitoring.log_layout import IMAGE_KEY
from visionops.monitoring.reference import image_files

if TYPE_CHECKING:
    from visionops.data.tables import FeatureTableReader
    from visionops.storage import ObjectStore

log = logging.getLogger(__name__)

CANDIDATES = 2 * THUMBNAILS
"""Images a strip may try: a few spares for images that are gone (retention) or unreadable."""


@dataclass(frozen=True)
class PageImage:
    """An image's bytes and the name the page shows for it."""

    name: str
    data: bytes


@dataclass(frozen=True)
class Strip:
    """The images of one strip and where they come from, in words (`kept by the predictor: 1,234
    of the window's 5,000 images`)."""

    images: Iterable[Path | PageImage] = ()
    source: str = ""


def window_image_keys(table: FeatureTableReader, count: int = CANDIDATES) -> tuple[list[str], int]:
    """Up to `count` distinct image keys of a window table, and how many rows name a kept image.

    The keys whose content hash (the key's file name, a sha256) sorts first: a uniform sample
    that is the same for the same window, and an image sent twice is one candidate. Read one
    column, a batch at a time. ([], 0) when the table has no `image_key` column (a log written
    before retention, or with it off).
    """
    if IMAGE_KEY not in table.columns:
        return [], 0
    chosen: dict[str, str] = {}  # hash -> key
    kept = 0
    for batch in table.batches([IMAGE_KEY]):
        keys = batch[IMAGE_KEY].dropna()
        keys = keys[keys.astype(str).str.len() > 0].astype(str)
        kept += len(keys)
        for key in keys.unique():
            chosen.setdefault(key.rsplit("/", 1)[-1], key)
        if len(chosen) > count:
            chosen = {h: chosen[h] for h in sorted(chosen)[:count]}
    return [chosen[h] for h in sorted(chosen)[:count]], kept


class StoredImages:
    """The images behind `keys` in `store`, read one at a time as a strip takes them; an image
    that cannot be read (deleted by retention, store down) is logged and skipped."""

    def __init__(self, store: ObjectStore, keys: Sequence[str]) -> None:
        self.store, self.keys = store, list(keys)

    def __iter__(self) -> Iterator[PageImage]:
        for key in self.keys:
            try:
                data = self.store.read_bytes(key)
            except StorageError as error:
                log.warning("drift page: kept image %s not read: %s", key, error)
                continue
            yield PageImage(key.rsplit("/", 1)[-1], data)


def folder_images(folders: Iterable[Path], count: int = CANDIDATES) -> list[Path]:
    """`count` images spread over every image below `folders` (in the order given); a folder that
    does not exist is logged and left out (the page then shows fewer images)."""
    found: list[Path] = []
    for folder in folders:
        if Path(folder).is_dir():
            found += image_files(folder)
        else:
            log.warning("drift page: no image folder %s", folder)
    return spread(found, count)


def current_strip(
    table: FeatureTableReader, store: ObjectStore | None, folders: Sequence[Path] = ()
) -> Strip:
    """The window's images: those the predictor kept (through `image_key`, read from `store`,
    the log the window was collected from), then, to fill the strip when it kept fewer, those
    below `folders`; else none."""
    keys, kept = window_image_keys(table) if store is not None else ([], 0)
    parts: list[Iterable[Path | PageImage]] = []
    sources = []
    if keys:
        assert store is not None
        parts.append(StoredImages(store, keys))
        sources.append(f"kept by the predictor: {kept:,} of the window's {table.num_rows:,} images")
    if folders:
        parts.append(folder_images(folders))
        sources.append("given: " + ", ".join(str(f) for f in folders))
    if not parts:
        return Strip((), "none: the prediction log kept no image of this window")
    return Strip(itertools.chain(*parts), "; then ".join(sources))


def reference_strip(images: Sequence[Path], folders: Sequence[Path] = (), what: str = "") -> Strip:
    """The reference's images: those below `folders` if given, else `images` (the thumbnails its
    evaluation kept of `what`, e.g. `NAME vN`), else none."""
    if folders:
        return Strip(folder_images(folders), "given: " + ", ".join(str(f) for f in folders))
    if images:
        return Strip(tuple(images), f"evaluation images of {what}" if what else "evaluation images")
    return Strip((), "none: the reference names no images (a table given by hand, or a version "
                 "evaluated before its evaluation kept thumbnails)")  # fmt: skip
