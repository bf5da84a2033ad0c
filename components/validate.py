"""KFP component `validate_dataset`: the dataset checks, as a Markdown summary and a JSON report."""

# No `from __future__ import annotations` here: KFP reads the real annotation objects.

from typing import NamedTuple, Optional

from kfp.dsl import Artifact, Dataset, Input, Markdown, Output

from components import visionops_component


@visionops_component
def validate_dataset(
    summary: Output[Markdown],
    report: Output[Artifact],
    dataset_dir: str = "",
    dataset: Optional[Input[Dataset]] = None,  # noqa: UP045 (KFP needs Optional[...])
    products: str = "",
    fail_on_error: bool = True,
) -> NamedTuple("ValidationOutputs", [("ok", bool), ("errors", int), ("warnings", int)]):  # type: ignore[valid-type]
    """Validate a VISION dataset: the `dataset` artifact if given, else the `dataset_dir` path.

    `products`: comma-separated names, empty for all. Writes the Markdown summary (shown in the
    Kubeflow UI) and the JSON report, then fails the step when there are errors and
    `fail_on_error` is set.
    """
    from collections import namedtuple

    from visionops.bootstrap import bootstrap

    bootstrap()
    from visionops.data.validate import validate
    from visionops.errors import UsageError, ValidationFailed

    root = dataset.path if dataset is not None else dataset_dir
    if not root:
        raise UsageError("give the dataset as the `dataset` artifact or the `dataset_dir` path")
    selected = [p.strip() for p in products.split(",") if p.strip()] or None
    result = validate(root, products=selected)
    result.write(json_path=report.path, markdown_path=summary.path)
    errors = sum(f.count for f in result.errors)
    warnings = sum(f.count for f in result.warnings)
    report.metadata.update({"ok": result.ok, "errors": errors, "warnings": warnings})
    print(result.summary())
    if fail_on_error and not result.ok:
        raise ValidationFailed(f"dataset {root} failed validation: {result.summary()}", result)
    return namedtuple("ValidationOutputs", ["ok", "errors", "warnings"])(
        result.ok, errors, warnings
    )
