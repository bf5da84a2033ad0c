"""What went wrong in an evaluation, image by image and product by product.

The evaluation page (`visionops.training.evaluation_report`) shows per-product rows and the worst
images; both come from here, scored with the same `detection_metrics` and paired with the same
`pair_boxes` as the confusion matrix, so the page's numbers add up to `metrics.json`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visionops.detections import Detections
from visionops.training.metrics import (
    DetectionMetrics,
    GroundTruth,
    detection_metrics,
    pair_boxes,
)

CONFUSION_IOU = 0.5  # detection_metrics' default: the gallery pairs boxes as the matrix does
UNKNOWN_PRODUCT = "unknown"


@dataclass(frozen=True)
class ScoredImage:
    """One evaluated image: its ground truth and every detection kept for scoring."""

    path: Path
    relative: str
    product: str
    truth: GroundTruth
    detections: Detections


@dataclass(frozen=True)
class ImageErrors:
    """What went wrong on one image at the served confidence."""

    index: int
    missed: int
    false_alarms: int
    wrong_class: int


@dataclass(frozen=True)
class ProductScore:
    """The evaluation restricted to one product's images."""

    product: str
    images: int
    instances: int
    metrics: DetectionMetrics
    missed: int
    false_alarms: int
    wrong_class: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "instances": self.instances,
            **self.metrics.summary(),
            "missed": self.missed,
            "false_alarms": self.false_alarms,
            "wrong_class": self.wrong_class,
        }


def image_product(
    relative: str, truth: GroundTruth, names: Sequence[str], products: list[str]
) -> str:
    """The product an image belongs to: a folder of its path named after a product (the
    converter's layout, images/<split>/<Product>/...), else its ground truth's product."""
    for part in Path(relative).parts:
        if part in products:
            return part
    for class_id in truth.class_ids:
        name = names[int(class_id)]
        if "/" in name:
            return name.split("/", 1)[0]
    return UNKNOWN_PRODUCT


def image_errors(images: Sequence[ScoredImage], conf: float) -> list[ImageErrors]:
    """Missed defects, false alarms and wrong classes per image, paired as the confusion matrix."""
    found = []
    for index, image in enumerate(images):
        pairing = pair_boxes(image.truth, image.detections, conf=conf, iou=CONFUSION_IOU)
        predicted = image.detections.class_ids[pairing.served]
        wrong = sum(1 for g, d in pairing.pairs if image.truth.class_ids[g] != predicted[d])
        found.append(ImageErrors(index, len(pairing.missed), len(pairing.false_alarms), wrong))
    return found


def product_scores(
    images: Sequence[ScoredImage], names: Sequence[str], conf: float
) -> list[ProductScore]:
    """`detection_metrics` on each product's images, with its error counts; products sorted."""
    errors = image_errors(images, conf)
    by_product: dict[str, list[int]] = {}
    for index, image in enumerate(images):
        by_product.setdefault(image.product, []).append(index)
    scores = []
    for product in sorted(by_product):
        indices = by_product[product]
        metrics = detection_metrics(
            [images[i].truth for i in indices], [images[i].detections for i in indices], names,
            conf=conf,
        )  # fmt: skip
        scores.append(
            ProductScore(
                product=product,
                images=len(indices),
                instances=sum(len(images[i].truth.class_ids) for i in indices),
                metrics=metrics,
                missed=sum(errors[i].missed for i in indices),
                false_alarms=sum(errors[i].false_alarms for i in indices),
                wrong_class=sum(errors[i].wrong_class for i in indices),
            )
        )
    return scores


def worst_images(errors: Sequence[ImageErrors], kind: str, limit: int) -> list[int]:
    """Indices of the `limit` images with most errors of `kind` (ties: split order)."""
    ranked = sorted((e for e in errors if getattr(e, kind) > 0), key=lambda e: -getattr(e, kind))
    return [e.index for e in ranked[:limit]]
