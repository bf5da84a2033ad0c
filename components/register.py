"""KFP component `register_model`: a model version through the promotion gate."""

# No `from __future__ import annotations` here: KFP reads the real annotation objects.

from typing import NamedTuple, Optional

from kfp.dsl import Dataset, Input, Markdown, Output

from components import visionops_component


@visionops_component
def register_model(
    run_id: str,
    card: Output[Markdown],
    dataset: Optional[Input[Dataset]] = None,  # noqa: UP045 (KFP needs Optional[...])
    split: str = "val",
    model_name: str = "",
    min_map50: float = -1.0,
    min_map50_95: float = -1.0,
    margin: float = -1.0,
) -> NamedTuple(  # type: ignore[valid-type]
    "RegisterOutputs", [("version", str), ("promoted", bool), ("alias", str), ("reason", str)]
):
    """Register run `run_id`; `promoted` tells whether it became the champion, `reason` why.

    `card` is the version's model card (its MLflow description), shown in the Kubeflow UI.

    With `dataset`, the gate compares on that data (evaluating the run first if it was not).
    `model_name` empty means the configured registered model. The gate's `min_map50`,
    `min_map50_95` and `margin` override the settings' (VISIONOPS_GATE_*) when not negative.
    """
    from collections import namedtuple
    from pathlib import Path

    from visionops.bootstrap import bootstrap

    settings = bootstrap()
    from visionops.training.promotion import register

    gate = {"gate_min_map50": min_map50, "gate_min_map50_95": min_map50_95, "gate_margin": margin}
    settings = settings.model_copy(update={k: v for k, v in gate.items() if v >= 0})

    data_yaml = None
    if dataset is not None:
        data_yaml = Path(dataset.path) / dataset.metadata.get("data_yaml", "data.yaml")
    result = register(
        run_id, data_yaml=data_yaml, split=split, name=model_name or None, settings=settings
    )
    Path(card.path).write_text(result.card)
    print(f"{result.name} v{result.version} -> {result.alias}: {result.reason}")
    return namedtuple("RegisterOutputs", ["version", "promoted", "alias", "reason"])(
        result.version, result.promoted, result.alias, result.reason
    )
