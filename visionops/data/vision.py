"""The VISION dataset layout: 14 products, three splits, one COCO file per split.

A VISION root holds `<Product>/` folders or `<Product>.tar.gz` archives (the form the dataset is
published in). Each product has `train/`, `val/` and `inference/` folders with images and
`_annotations.coco.json`; `inference` is unlabeled. Archives are extracted once into a cache under
the data dir, keyed by the archive's content hash, so a changed archive is never read stale.
"""

from __future__ import annotations

import logging
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from visionops.config import get_settings
from visionops.data.coco import ANNOTATIONS_FILE, load_coco
from visionops.data.files import sha256_file
from visionops.errors import DataError, UsageError

log = logging.getLogger(__name__)

PRODUCTS: tuple[str, ...] = (
    "Cable",
    "Capacitor",
    "Casting",
    "Console",
    "Cylinder",
    "Electronics",
    "Groove",
    "Hemisphere",
    "Lens",
    "PCB_1",
    "PCB_2",
    "Ring",
    "Screw",
    "Wood",
)
SPLITS: tuple[str, ...] = ("train", "val", "inference")
LABELED_SPLITS: tuple[str, ...] = ("train", "val")
ARCHIVE_SUFFIX = ".tar.gz"


def normalize_products(names: Iterable[str] | None) -> list[str] | None:
    """Canonical product names (case-insensitive input), in PRODUCTS order; None means all.

    Raises UsageError naming the unknown product and listing the valid ones.
    """
    if names is None:
        return None
    by_lower = {p.lower(): p for p in PRODUCTS}
    chosen: set[str] = set()
    for name in names:
        canonical = by_lower.get(name.strip().lower())
        if canonical is None:
            raise UsageError(f"unknown product {name!r}; choose from {', '.join(PRODUCTS)}")
        chosen.add(canonical)
    if not chosen:
        raise UsageError("no product selected")
    return [p for p in PRODUCTS if p in chosen]


@dataclass
class Split:
    """One split of one product: its folder, its COCO file and (parsed on first use) its COCO."""

    product: str
    name: str
    dir: Path

    @property
    def annotations_path(self) -> Path:
        return self.dir / ANNOTATIONS_FILE

    @property
    def exists(self) -> bool:
        """True when the split folder and its COCO file are both present."""
        return self.annotations_path.is_file()

    @property
    def labeled(self) -> bool:
        return self.name in LABELED_SPLITS

    @cached_property
    def coco(self) -> dict[str, Any]:
        """The parsed COCO file (DataError naming the file if absent or not JSON)."""
        return load_coco(self.annotations_path)

    def image_path(self, file_name: str) -> Path:
        return self.dir / file_name


@dataclass
class Product:
    """One product of a VISION root; `source` is its folder or the archive it came from."""

    name: str
    dir: Path
    source: Path
    splits: dict[str, Split] = field(init=False)

    def __post_init__(self) -> None:
        self.splits = {s: Split(self.name, s, self.dir / s) for s in SPLITS}

    def split(self, name: str) -> Split:
        if name not in self.splits:
            raise UsageError(f"unknown split {name!r}; choose from {', '.join(SPLITS)}")
        return self.splits[name]


@dataclass
class VisionDataset:
    """The selected products of one VISION root, in PRODUCTS order."""

    root: Path
    products: dict[str, Product]

    def __iter__(self) -> Iterator[Product]:
        return iter(self.products.values())

    def __getitem__(self, name: str) -> Product:
        return self.products[name]

    def __len__(self) -> int:
        return len(self.products)

    @property
    def names(self) -> list[str]:
        return list(self.products)

    def splits(self, names: Iterable[str] = SPLITS) -> Iterator[Split]:
        """Every (product, split) pair, products first."""
        wanted = tuple(names)
        for product in self:
            for name in wanted:
                yield product.split(name)


def open_vision(
    root: Path,
    products: Iterable[str] | None = None,
    *,
    cache_dir: Path | None = None,
) -> VisionDataset:
    """Open a VISION root holding `<Product>/` folders or `<Product>.tar.gz` archives.

    `products` selects a subset (case-insensitive); by default every product found. Archives are
    extracted into `cache_dir` (default: `<data_dir>/cache/vision`). A folder wins over an archive
    of the same product. Raises DataError for a missing or empty root, a requested product that is
    absent or a broken archive, and UsageError for a name that is not a VISION product.
    """
    root = Path(root).expanduser()
    selected = normalize_products(products)
    if not root.exists():
        raise DataError(f"dataset folder not found: {root}")
    if not root.is_dir():
        raise DataError(f"not a folder: {root}")
    found = {p: root / p for p in PRODUCTS if (root / p).is_dir()}
    archives = {
        p: root / f"{p}{ARCHIVE_SUFFIX}"
        for p in PRODUCTS
        if p not in found and (root / f"{p}{ARCHIVE_SUFFIX}").is_file()
    }
    available = [p for p in PRODUCTS if p in found or p in archives]
    if not available:
        hint = ""
        if any((root / s).is_dir() for s in SPLITS):
            hint = " (it looks like one product's folder: pass the folder above it)"
        raise DataError(
            f"no VISION products in {root}{hint}: expected <Product>/ folders or "
            f"<Product>{ARCHIVE_SUFFIX} archives named after {', '.join(PRODUCTS)}"
        )
    if selected is None:
        selected = available
    missing = [p for p in selected if p not in available]
    if missing:
        raise DataError(
            f"product {', '.join(missing)} not found in {root} (found: {', '.join(available)})"
        )
    chosen: dict[str, Product] = {}
    for name in selected:
        if name in found:
            chosen[name] = Product(name, found[name], found[name])
        else:
            cache = cache_dir if cache_dir is not None else _default_cache_dir()
            chosen[name] = Product(
                name, extract_archive(archives[name], name, cache), archives[name]
            )
    return VisionDataset(root, chosen)


def _default_cache_dir() -> Path:
    return get_settings().data_dir / "cache" / "vision"


def extract_archive(archive: Path, product: str, cache_dir: Path) -> Path:
    """The product folder inside the extracted `archive`, extracting it on first use only.

    The cache entry is named after the archive's SHA-256, built in a temporary sibling and renamed
    into place, so concurrent or interrupted extractions never leave a half-extracted product.
    """
    try:
        digest = sha256_file(archive)
    except OSError as error:
        raise DataError(f"cannot read archive {archive}: {error}") from error
    target = cache_dir / f"{product}-{digest[:24]}"
    if not target.is_dir():
        cache_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=cache_dir))
        try:
            with tarfile.open(archive, "r:gz") as tar:
                tar.extractall(staging, filter="data")
            try:
                staging.rename(target)
            except OSError:
                if not target.is_dir():  # not a concurrent extraction that won the race
                    raise
        except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
            raise DataError(f"broken archive {archive}: {error}") from error
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log.info("extracted %s into %s", archive, target)
    return _product_dir(target, product, archive)


def _product_dir(extracted: Path, product: str, archive: Path) -> Path:
    """Archives hold either `<Product>/<split>/...` or `<split>/...` at their top."""
    candidates = [extracted / product, extracted]
    subdirs = [p for p in extracted.iterdir() if p.is_dir()]
    if len(subdirs) == 1:
        candidates.append(subdirs[0])
    for candidate in candidates:
        if any((candidate / s).is_dir() for s in SPLITS):
            return candidate
    raise DataError(f"broken archive {archive}: no {'/, '.join(SPLITS)}/ folder inside")
