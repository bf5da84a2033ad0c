"""One class map across products: YOLO class ids for every (product, category) pair.

Products name their classes independently (Screw's "defect", Capacitor's "0"), and two products may
use the same name for different things (two kinds of "scratch"). The map therefore keys classes by
(product, category name), names them `<Product>/<category>`, and numbers them in sorted order of
that pair: the same products give the same ids on every run, whatever the COCO ids or file order.
Roboflow-style parent categories (the supercategory of the real classes, never annotated) are left
out.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from visionops.data.vision import LABELED_SPLITS, VisionDataset
from visionops.errors import DataError

CLASS_MAP_FILE = "class_map.json"


@dataclass(frozen=True)
class ClassEntry:
    """One YOLO class: a product's category, with its COCO id in that product's files."""

    id: int
    product: str
    category: str
    category_id: int

    @property
    def name(self) -> str:
        return f"{self.product}/{self.category}"


@dataclass(frozen=True)
class ClassMap:
    """YOLO class ids for (product, category name) pairs; `names[i]` is class i."""

    entries: tuple[ClassEntry, ...]

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    def __len__(self) -> int:
        return len(self.entries)

    def class_id(self, product: str, category: str) -> int:
        for entry in self.entries:
            if entry.product == product and entry.category == category:
                return entry.id
        raise KeyError(f"{product}/{category}")

    def coco_lookup(self, product: str, categories: Iterable[Mapping[str, Any]]) -> dict[int, int]:
        """COCO category id -> class id, for one COCO file of `product` (matched by name)."""
        by_name = {e.category: e.id for e in self.entries if e.product == product}
        return {
            int(c["id"]): by_name[str(c["name"])]
            for c in categories
            if str(c.get("name")) in by_name
        }

    def to_dict(self) -> dict[str, Any]:
        classes = [{"name": e.name, **asdict(e)} for e in self.entries]
        return {"version": 1, "classes": classes}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClassMap:
        try:
            entries = tuple(
                ClassEntry(
                    int(c["id"]), str(c["product"]), str(c["category"]), int(c["category_id"])
                )
                for c in data["classes"]
            )
        except (KeyError, TypeError, ValueError) as error:
            raise DataError(f"malformed class map: {error!r}") from error
        if [e.id for e in entries] != list(range(len(entries))):
            raise DataError("malformed class map: ids must be 0..n-1 in order")
        return cls(entries)

    @classmethod
    def load(cls, path: Path) -> ClassMap:
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError) as error:
            raise DataError(f"cannot read class map {path}: {error}") from error


def product_categories(dataset: VisionDataset, product: str) -> dict[str, int]:
    """Category name -> COCO id for one product, over train and val, parent categories left out.

    The first split that names a category (train, then val) gives its id. The unlabeled inference
    split does not define classes.
    """
    seen: dict[str, int] = {}
    parents: set[str] = set()
    files: list[tuple[dict[str, Any], dict[int, str]]] = []
    for split_name in LABELED_SPLITS:
        split = dataset[product].split(split_name)
        if not split.exists:
            continue
        coco = split.coco
        categories = coco.get("categories")
        if not isinstance(categories, list):
            raise DataError(f"{split.annotations_path}: 'categories' must be a list")
        names_by_id: dict[int, str] = {}
        for category in categories:
            try:
                name, cid = str(category["name"]), int(category["id"])
            except (KeyError, TypeError, ValueError) as error:
                raise DataError(
                    f"{split.annotations_path}: malformed category {category!r}"
                ) from error
            seen.setdefault(name, cid)
            names_by_id[cid] = name
            parent = category.get("supercategory")
            if isinstance(parent, str) and parent != name:
                parents.add(parent)
        files.append((coco, names_by_id))
    parents &= set(seen)
    used: set[str] = set()
    if parents:  # a parent category stays only if something is annotated with it
        for coco, names_by_id in files:
            parent_ids = {cid for cid, name in names_by_id.items() if name in parents}
            for annotation in coco.get("annotations") or []:
                if isinstance(annotation, dict) and annotation.get("category_id") in parent_ids:
                    used.add(names_by_id[annotation["category_id"]])
    return {name: cid for name, cid in seen.items() if name not in parents or name in used}


def build_class_map(datasets: VisionDataset | Iterable[VisionDataset]) -> ClassMap:
    """The class map over every product of one or several VISION roots (merged by name)."""
    if isinstance(datasets, VisionDataset):
        datasets = [datasets]
    pairs: dict[tuple[str, str], int] = {}
    for dataset in datasets:
        for product in dataset.names:
            for name, cid in product_categories(dataset, product).items():
                pairs.setdefault((product, name), cid)
    if not pairs:
        raise DataError("no categories found in the selected products")
    entries = tuple(
        ClassEntry(i, product, category, pairs[(product, category)])
        for i, (product, category) in enumerate(sorted(pairs))
    )
    return ClassMap(entries)
