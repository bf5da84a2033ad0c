"""Two models scored on the same data, side by side, with the promotion gate's decision.

`visionops model compare` (and a person deciding by hand) looks at this before promoting: each
model is evaluated exactly as `visionops.training.evaluate` does, nothing is logged to their runs,
and one page shows both with the gate's verdict.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visionops.config import Settings, get_settings
from visionops.data.files import atomic_write_text
from visionops.models.sources import is_registry_uri, resolve_model
from visionops.progress import ProgressCallback, no_progress
from visionops.training.dataset import load_data_yaml
from visionops.training.evaluate import REPORT_HTML, REPORT_MD, EvaluationResult, evaluate
from visionops.training.evaluation_report import comparison_html
from visionops.training.gate import GateDecision, gate


@dataclass(frozen=True)
class Comparison:
    """Two models scored on the same data, and what the promotion gate decides between them
    (`second` the candidate, `first` the champion)."""

    first: EvaluationResult
    second: EvaluationResult
    decision: GateDecision
    out_dir: Path
    files: dict[str, Path] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "first": {"model": self.first.model, **self.first.metrics.summary()},
            "second": {"model": self.second.model, **self.second.metrics.summary()},
            "data_yaml": str(self.first.data_yaml),
            "split": self.first.split,
            "data_hash": self.first.data_hash,
            "gate": {"promote": self.decision.promote, "reason": self.decision.reason},
        }

    def markdown(self) -> str:
        """Headline metrics side by side, then the gate's decision."""
        a, b = self.first, self.second
        lines = [
            f"## {a.model} vs {b.model} on `{a.split}` ({a.images} images, data "
            f"{a.data_hash[:12]})",
            "",
            f"| metric | {a.model} | {b.model} | change |",
            "| --- | ---: | ---: | ---: |",
        ]
        for key, value in a.metrics.summary().items():
            other = b.metrics.summary()[key]
            lines.append(f"| {key} | {value:.4f} | {other:.4f} | {other - value:+.4f} |")
        verdict = "would replace" if self.decision.promote else "would not replace"
        lines += ["", f"Gate: {b.model} {verdict} {a.model}: {self.decision.reason}"]
        return "\n".join(lines) + "\n"


def compare(
    first: str | Path,
    second: str | Path,
    data_yaml: Path,
    *,
    split: str = "val",
    out_dir: Path | None = None,
    progress: ProgressCallback = no_progress,
    settings: Settings | None = None,
) -> Comparison:
    """Score `first` and `second` on the same `split` and write one side-by-side report.

    Both models and the data are checked before anything is scored, so a missing version or
    unreadable data fails with nothing written. Nothing is logged to the models' runs (a
    comparison is a look, not a new evaluation of record); each model's own evaluation files and
    report are written under `first/` and `second/` of the output folder.
    """
    settings = settings or get_settings()
    dataset = load_data_yaml(data_yaml)
    dataset.images(split)  # an unknown or empty split fails here
    resolved = [resolve_model(model, settings) for model in (first, second)]
    data_hash = dataset.split_hash(split)
    out = Path(
        out_dir or settings.data_dir / "evaluations" / "compare" / f"{split}-{data_hash[:12]}"
    )
    total = 2 * len(dataset.images(split))
    results = []
    for index, model in enumerate((first, second)):
        offset = index * total // 2

        def step(done: int, _: int, offset: int = offset) -> None:
            progress(offset + done, total)

        result = evaluate(
            model, data_yaml, split=split, out_dir=out / ("first", "second")[index],
            log_run=False, progress=step, settings=settings,
        )  # fmt: skip
        results.append(result)
    if results[0].model == results[1].model:
        results = [EvaluationResult(**{**r.__dict__, "model": f"{r.model} ({which})"})
                   for r, which in zip(results, ("first", "second"), strict=True)]  # fmt: skip
    a, b = results
    version = resolved[0].version if is_registry_uri(str(first)) else a.model
    decision = gate(b.metrics.summary(), a.metrics.summary(), settings, champion_version=version)
    comparison = Comparison(a, b, decision, out)
    facts = [
        ("data", str(a.data_yaml)),
        ("split", f"{split} ({a.images} images)"),
        ("data hash", data_hash),
        ("served confidence", f"{a.conf:g}"),
        ("gate", f"margin {settings.gate_margin:g}, minimums mAP50 {settings.gate_min_map50:g}, "
                 f"mAP50-95 {settings.gate_min_map50_95:g}"),
    ]  # fmt: skip
    files = {
        "report": out / REPORT_MD,
        "report_html": out / REPORT_HTML,
        "comparison": out / "comparison.json",
    }
    page = comparison_html(
        a.subject(), b.subject(), dataset.names, facts=facts, promote=decision.promote,
        reason=decision.reason,
    )  # fmt: skip
    atomic_write_text(files["report_html"], page)
    atomic_write_text(files["report"], comparison.markdown())
    atomic_write_text(files["comparison"], json.dumps(comparison.to_dict(), indent=2) + "\n")
    return Comparison(a, b, decision, out, files)
