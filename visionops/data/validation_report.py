"""The validation report: which checks exist (`CHECKS`), what a finding holds, and the report
as JSON (for machines and the KFP step) and Markdown (for people and the Kubeflow UI).
`visionops.data.validate` runs the checks and fills it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from visionops.data.files import atomic_write_text

Severity = Literal["error", "warning"]
MAX_IDS = 5  # ids listed per finding; `count` says how many there are in all
BBOX_TOLERANCE = 1.0  # pixels a box or polygon may exceed the image by (export rounding)

CHECKS: dict[str, tuple[Severity, str]] = {
    "missing_split": ("error", "a train/val split folder or its _annotations.coco.json is absent"),
    "json_syntax": ("error", "the annotations file is not valid JSON"),
    "coco_schema": ("error", "COCO keys missing or of the wrong type"),
    "empty_split": ("error", "a train/val split lists no images"),
    "duplicate_image_id": ("error", "two images share an id"),
    "duplicate_annotation_id": ("error", "two annotations share an id"),
    "duplicate_category_id": ("error", "two categories share an id"),
    "annotation_missing_image": ("error", "an annotation points to an image id that is not listed"),
    "annotation_missing_category": ("error", "an annotation points to an unknown category id"),
    "bbox_nonpositive": ("error", "a box has zero or negative width or height"),
    "bbox_outside_image": ("error", "a box extends beyond the image"),
    "invalid_polygon": ("error", "a segmentation polygon is malformed, degenerate or off-image"),
    "file_name_escapes": ("error", "file_name is absolute or contains '..'"),
    "image_file_missing": ("error", "a listed image file does not exist"),
    "image_unreadable": ("error", "an image file cannot be decoded"),
    "image_truncated": ("error", "an image file is cut short"),
    "image_size_mismatch": ("error", "an image's pixels differ from its declared width/height"),
    "class_without_train_instances": ("error", "a class has no annotation in train"),
    "split_leakage": ("error", "the same image (by content) is in two splits"),
    "image_without_annotations": ("warning", "a labeled-split image has no annotation"),
}
# Inference is unlabeled and optional: its structural problems are warnings, not errors.
_INFERENCE_WARNINGS = {"missing_split", "empty_split"}


@dataclass
class Finding:
    """One check that failed for one file: which ids, how many, and why."""

    check: str
    severity: Severity
    file: str
    message: str
    ids: list[Any] = field(default_factory=list)
    count: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ValidationReport:
    """Findings of one validation run, with per-split counts."""

    root: str
    products: list[str]
    findings: list[Finding]
    stats: dict[str, dict[str, dict[str, int]]]

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        """One line: verdict and counts."""
        images = sum(s.get("images", 0) for p in self.stats.values() for s in p.values())
        background = sum(s.get("background", 0) for p in self.stats.values() for s in p.values())
        verdict = "valid" if self.ok else "INVALID"
        marked = f" ({background} marked defect-free: no boxes expected)" if background else ""
        return (
            f"{verdict}: {len(self.products)} products, {images} images{marked}, "
            f"{sum(f.count for f in self.errors)} errors, "
            f"{sum(f.count for f in self.warnings)} warnings"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "summary": self.summary(),
            "root": self.root,
            "products": self.products,
            "errors": sum(f.count for f in self.errors),
            "warnings": sum(f.count for f in self.warnings),
            "stats": self.stats,
            "findings": [f.to_dict() for f in self.findings],
            "checks": {name: {"severity": s, "description": d} for name, (s, d) in CHECKS.items()},
        }

    def write(self, json_path: Path | None = None, markdown_path: Path | None = None) -> None:
        """Write the JSON report and/or the Markdown summary, atomically."""
        if json_path is not None:
            text = json.dumps(self.to_dict(), indent=2, default=str) + "\n"
            atomic_write_text(Path(json_path), text)
        if markdown_path is not None:
            atomic_write_text(Path(markdown_path), self.to_markdown())

    def to_markdown(self) -> str:
        """A summary for people (and the Kubeflow UI's Markdown viewer)."""
        lines = [
            f"# Dataset validation: {'passed' if self.ok else 'FAILED'}",
            "",
            f"`{self.root}`: {self.summary()}",
            "",
            "| product | split | images | annotations |",
            "| --- | --- | ---: | ---: |",
        ]
        for product, splits in self.stats.items():
            for split, counts in splits.items():
                lines.append(
                    f"| {product} | {split} | {counts.get('images', 0)} "
                    f"| {counts.get('annotations', 0)} |"
                )
        for title, findings in (("Errors", self.errors), ("Warnings", self.warnings)):
            if not findings:
                continue
            lines += [
                "",
                f"## {title}",
                "",
                "| check | file | count | ids | problem |",
                "| --- | --- | ---: | --- | --- |",
            ]
            for f in findings:
                ids = ", ".join(str(i) for i in f.ids)
                if f.count > len(f.ids):
                    ids += ", ..."
                lines.append(
                    f"| `{f.check}` | `{f.file}` | {f.count} | {_md(ids)} | {_md(f.message)} |"
                )
        return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


class FindingCollector:
    """Collects ids per (check, file) and turns them into findings with the first few ids."""

    def __init__(self) -> None:
        self._groups: dict[tuple[str, str], tuple[Severity, str, list[Any]]] = {}

    def add(
        self,
        check: str,
        file: str,
        message: str,
        ids: Iterable[Any] = (),
        *,
        split: str | None = None,
    ) -> None:
        severity = CHECKS[check][0]
        if split == "inference" and check in _INFERENCE_WARNINGS:
            severity = "warning"
        key = (check, file)
        if key not in self._groups:
            self._groups[key] = (severity, message, [])
        self._groups[key][2].extend(ids)

    def findings(self) -> list[Finding]:
        order = list(CHECKS)
        result = [
            Finding(check, severity, file, message, ids[:MAX_IDS], max(len(ids), 1))
            for (check, file), (severity, message, ids) in self._groups.items()
        ]
        result.sort(key=lambda f: (f.severity != "error", order.index(f.check), f.file))
        return result
