"""The candidates of a selection: the records of a window that name a kept image, in a pool of
bounded size whatever the window.

The pool keeps at most `capacity` distinct images (by the SHA-256 their key names): the most useful
half and a seeded uniform half (bottom-k of SHA-256(seed, digest)), one record per image (its most
useful, then its earliest), pruned as slices arrive and kept in digest order, so that nothing
depends on the order the log's files were read in. A candidate's boxes are a view into the flat
arrays of the slice it came from (`Boxes`), not a Python object per box.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np

from visionops.labeling.scoring import NUMERIC_COLUMNS

if TYPE_CHECKING:
    import pyarrow as pa  # pyarrow: loaded only where the log is read

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Boxes:
    """The detections of a slice of records, one row per box, shared by its candidates."""

    class_ids: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray  # (n, 4): x1, y1, x2, y2 in pixels
    name_index: np.ndarray
    names: list[str]  # name_index -> class name


NO_BOXES = Boxes(np.zeros(0, np.int64), np.zeros(0), np.zeros((0, 4)), np.zeros(0, np.int64), [])


@dataclass
class Candidate:
    """A record that names a kept image: where it is, and its boxes (a view into its slice's)."""

    key: str
    sha256: str
    request_id: str
    micros: int  # timestamp, microseconds since the epoch (UTC)
    boxes: Boxes
    start: int
    count: int

    @property
    def timestamp(self) -> str:
        return (_EPOCH + timedelta(microseconds=self.micros)).isoformat()

    @property
    def detections(self) -> list[dict[str, Any]]:
        """The record's detections as the log holds them (box, class id and name, score)."""
        b, span = self.boxes, range(self.start, self.start + self.count)
        return [
            {"box": b.boxes[i].tolist(), "class_id": int(b.class_ids[i]),
             "class_name": b.names[int(b.name_index[i])], "score": float(b.scores[i])}
            for i in span
        ]  # fmt: skip


class CandidatePool:
    """At most `capacity` distinct images: the most useful half and a seeded uniform half."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.items: list[Candidate] = []
        self.features = np.zeros((0, len(NUMERIC_COLUMNS)))
        self.usefulness = np.zeros(0)
        self.tiebreak = np.zeros(0)
        self.repeated = 0

    def add(self, items: list[Candidate], features: np.ndarray, usefulness: np.ndarray,
            tiebreak: np.ndarray) -> None:  # fmt: skip
        self.items.extend(items)
        self.features = np.vstack([self.features, features])
        self.usefulness = np.concatenate([self.usefulness, usefulness])
        self.tiebreak = np.concatenate([self.tiebreak, tiebreak])
        if len(self.items) > 2 * self.capacity:
            self.prune()

    def prune(self) -> None:
        """One row per image (its most useful record, then the earliest), then the two halves;
        kept in digest order, so nothing depends on the order the files were read in."""
        if not self.items:
            return
        shas = np.array([c.sha256 for c in self.items])
        micros = np.array([c.micros for c in self.items], np.int64)
        requests = np.array([c.request_id for c in self.items])
        order = np.lexsort((requests, micros, -self.usefulness, shas))
        first = np.ones(len(order), bool)
        first[1:] = shas[order][1:] != shas[order][:-1]
        self.repeated += int((~first).sum())
        index = order[first]
        if len(index) > self.capacity:
            half = self.capacity // 2
            useful = index[np.lexsort((self.tiebreak[index], -self.usefulness[index]))][:half]
            uniform = index[np.argsort(self.tiebreak[index], kind="stable")][: self.capacity - half]
            index = np.union1d(useful, uniform)
        ordered = index[np.argsort(shas[index], kind="stable")]
        self.items = [self.items[i] for i in ordered]
        self.features = self.features[ordered]
        self.usefulness = self.usefulness[ordered]
        self.tiebreak = self.tiebreak[ordered]


def flat_boxes(column: pa.Array) -> tuple[Boxes, np.ndarray]:
    """The detections of a slice's records, one row per box, and the number of boxes per record
    (a record without detections has none)."""
    import pyarrow as pa  # pyarrow: loaded only where the log is read
    import pyarrow.compute as pc  # pyarrow: loaded only where the log is read

    counts = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False)
    flat = column.flatten()  # null lists hold no boxes
    if not len(flat):
        return NO_BOXES, counts.astype(np.int64)
    scores = pc.fill_null(flat.field("score").cast(pa.float64()), 0.0).to_numpy()
    class_ids = pc.fill_null(flat.field("class_id").cast(pa.int64()), -1).to_numpy()
    coordinates = flat.field("box")
    if pc.all(pc.equal(pc.fill_null(pc.list_value_length(coordinates), 0), 4)).as_py():
        boxes = coordinates.flatten().cast(pa.float64()).to_numpy().reshape(-1, 4)
    else:  # a malformed box counts as an empty one
        boxes = np.array([b if b is not None and len(b) == 4 else [0.0] * 4
                          for b in coordinates.to_pylist()], np.float64)  # fmt: skip
    encoded = pc.dictionary_encode(pc.fill_null(flat.field("class_name").cast(pa.string()), ""))
    name_index = encoded.indices.to_numpy().astype(np.int64)
    found = Boxes(class_ids, scores, boxes, name_index, encoded.dictionary.to_pylist())
    return found, counts.astype(np.int64)


def image_digest(key: str) -> str:
    """The SHA-256 an image key names (`.../<sha256>.<ext>`), else one of the key itself."""
    stem = key.rsplit("/", 1)[-1].split(".", 1)[0]
    return stem if _DIGEST.match(stem) else hashlib.sha256(key.encode()).hexdigest()


def plain_key(value: Any) -> str | None:
    """An image key as text: a part compacted by a version that did not know the column holds
    it as JSON text (`"images/..."`)."""
    if not value:
        return None
    text = str(value)
    if text.startswith('"'):
        try:
            text = str(json.loads(text))
        except ValueError:
            return None
    return text or None


def uniform_key(seed: int, digest: str) -> float:
    """A number in [0, 1) fixed by the seed and the image: the uniform half's sampling key."""
    value = hashlib.sha256(f"{seed}:{digest}".encode()).digest()[:8]
    return int.from_bytes(value, "big") / 2**64
