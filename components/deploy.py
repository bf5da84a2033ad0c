"""KFP component `deploy_model`: serve a newly promoted champion (cluster or local predictor)."""

# No `from __future__ import annotations` here: KFP reads the real annotation objects.

from typing import NamedTuple

from kfp.dsl import Markdown, Output

from components import visionops_component


@visionops_component
def deploy_model(
    version: str,
    summary: Output[Markdown],
    model_name: str = "",
    target: str = "auto",
    predictor_url: str = "",
    canary_traffic_percent: int = 0,
) -> NamedTuple("DeployOutputs", [("target", str), ("model_uri", str)]):  # type: ignore[valid-type]
    """Serve champion `version`: on a cluster patch the InferenceService (optionally as a canary
    with `canary_traffic_percent`), locally ask the predictor at `predictor_url` (default
    VISIONOPS_PREDICTOR_URL) to reload. `target`: auto, cluster, local or none.
    """
    from collections import namedtuple
    from pathlib import Path

    from visionops.bootstrap import bootstrap

    bootstrap()
    from visionops.deploy import deploy

    result = deploy(
        version, target=target, predictor_url=predictor_url or None,
        canary_traffic_percent=canary_traffic_percent, name=model_name or None,
    )  # fmt: skip
    Path(summary.path).write_text(
        f"## Deployment\n\n| target | version | model |\n| --- | --- | --- |\n"
        f"| {result.target} | {result.version} | `{result.model_uri}` |\n\n{result.detail}\n",
        encoding="utf-8",
    )
    print(result.detail)
    return namedtuple("DeployOutputs", ["target", "model_uri"])(result.target, result.model_uri)
