"""The compiled pipelines: deterministic, in sync with the committed YAML, loadable by kfp, and
configured for the cluster the manifests describe (images, commands, Secret and ConfigMap names).

No KFP server can run here: these check the YAML a server would receive.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from visionops.cli.app import app

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = ("training", "monitoring", "harvest")
SERVICE_STEPS = {  # steps that talk to MLflow, S3, KFP, Label Studio or the predictor: retried
    "fetch-dataset", "fetch-dataset-2", "evaluate-model", "register-model", "deploy-model",
    "compact", "collect", "drift-check", "retrain", "record-decision", "prune-images",
    "request-labels", "harvest-labels",
}  # fmt: skip
LABEL_STUDIO_STEPS = {"request-labels", "harvest-labels"}  # Label Studio's URL and token too
PURE_STEPS = {"validate-dataset", "convert-dataset"}  # functions of their inputs: cached


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("compiled")
    result = CliRunner().invoke(app, ["pipeline", "compile", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def _docs(path: Path) -> list[dict[str, Any]]:
    return list(yaml.safe_load_all(path.read_text(encoding="utf-8")))


def _tasks(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every task of the pipeline, including those inside dsl.If/Else groups."""
    found: dict[str, dict[str, Any]] = {}

    def walk(dag: dict[str, Any]) -> None:
        for name, task in dag.get("tasks", {}).items():
            component = spec["components"][task["componentRef"]["name"]]
            if "dag" in component:
                walk(component["dag"])
            else:
                found[name] = task

    walk(spec["root"]["dag"])
    return found


def test_compiling_twice_gives_the_same_bytes(compiled: Path, tmp_path: Path) -> None:
    again = CliRunner().invoke(app, ["pipeline", "compile", "--out", str(tmp_path)])
    assert again.exit_code == 0, again.output
    for name in PIPELINES:
        first, second = compiled / f"{name}.yaml", tmp_path / f"{name}.yaml"
        assert first.read_bytes() == second.read_bytes()


def test_the_committed_yaml_is_what_the_sources_compile_to(compiled: Path) -> None:
    for name in PIPELINES:
        committed = ROOT / "pipelines" / f"{name}.yaml"
        assert committed.read_bytes() == (compiled / f"{name}.yaml").read_bytes(), (
            f"pipelines/{name}.yaml is stale: run `python -m pipelines.{name}` and commit it"
        )


@pytest.mark.parametrize("name", PIPELINES)
def test_the_yaml_loads_back_with_kfp(compiled: Path, name: str) -> None:
    from kfp.components import load_component_from_file

    from pipelines import load_pipeline

    loaded = load_component_from_file(str(compiled / f"{name}.yaml"))
    source = load_pipeline(name)
    assert loaded.name == source.name
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", loaded.name)  # kebab-case
    assert set(loaded.component_spec.inputs) == set(source.component_spec.inputs)
    for key, spec in source.component_spec.inputs.items():
        assert loaded.component_spec.inputs[key].default == spec.default, key


@pytest.mark.parametrize("name", PIPELINES)
def test_every_step_runs_its_own_function_on_the_pipeline_image(compiled: Path, name: str):
    from visionops.config import get_settings

    spec = _docs(compiled / f"{name}.yaml")[0]
    executors = spec["deploymentSpec"]["executors"]
    assert executors
    for executor_name, executor in executors.items():
        container = executor["container"]
        assert container["image"] == get_settings().pipeline_image, executor_name
        command = " ".join(container["command"])
        assert "pip install" not in command  # kfp and visionops come with the image
        assert "_KFP_RUNTIME=true python3 -m kfp.dsl.executor_main" in command
        function = container["args"][container["args"].index("--function_to_execute") + 1]
        module = ast.parse(container["command"][-1])  # the embedded component source
        defined = [n.name for n in module.body if isinstance(n, ast.FunctionDef)]
        assert defined == [function], executor_name
        body = ast.get_source_segment(container["command"][-1], module.body[-1]) or ""
        assert "from visionops.bootstrap import bootstrap" in body, function


@pytest.mark.parametrize("name", PIPELINES)
def test_every_step_is_configured_for_the_cluster(compiled: Path, name: str) -> None:
    spec, platform = _docs(compiled / f"{name}.yaml")
    executors = spec["deploymentSpec"]["executors"]
    kubernetes = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for task_name, task in _tasks(spec).items():
        assert task["taskInfo"]["name"] != task_name, f"{task_name} has no display name"
        executor = spec["components"][task["componentRef"]["name"]]["executorLabel"]
        resources = executors[executor]["container"]["resources"]
        assert resources["resourceCpuRequest"] and resources["resourceMemoryRequest"], task_name
        cached = task.get("cachingOptions", {}).get("enableCache", False)
        assert cached == (task_name in PURE_STEPS), task_name
        retries = task.get("retryPolicy", {}).get("maxRetryCount", 0)
        assert (retries > 0) == (task_name in SERVICE_STEPS), task_name
        assert kubernetes[executor]["secretAsEnv"] and kubernetes[executor]["configMapAsEnv"]


def _manifest_settings() -> tuple[str, dict[str, str]]:
    doc = yaml.safe_load((ROOT / "manifests/pipelines-rbac/settings.yaml").read_text())
    return doc["metadata"]["name"], doc["data"]


@pytest.mark.parametrize("name", PIPELINES)
def test_settings_and_credentials_come_from_the_manifests_objects(compiled: Path, name: str):
    """Names and keys must match the ConfigMap in manifests/ and the overlays' Secret."""
    config_map, data = _manifest_settings()
    secret_keys = {
        line.split("=", 1)[0]
        for line in (ROOT / "kustomize/overlays/kind/secrets/s3-pipeline.env.example")
        .read_text()
        .splitlines()
        if "=" in line and not line.startswith("#")
    }
    overlay = yaml.safe_load((ROOT / "kustomize/overlays/kind/kustomization.yaml").read_text())
    kubeflow_secrets = [
        g["name"] for g in overlay["secretGenerator"] if g.get("namespace") == "kubeflow"
    ]
    platform = _docs(compiled / f"{name}.yaml")[1]["platforms"]["kubernetes"]
    for label, executor in platform["deploymentSpec"]["executors"].items():
        from_map, *label_studio_url = executor["configMapAsEnv"]
        assert from_map["configMapName"] == config_map
        assert {e["configMapKey"] for e in from_map["keyToEnv"]} == set(data)
        assert all(e["configMapKey"] == e["envVar"] for e in from_map["keyToEnv"])
        from_secret, *label_studio_token = executor["secretAsEnv"]
        if label.removeprefix("exec-") in LABEL_STUDIO_STEPS:
            # Optional: without Label Studio (no URL) the window goes out as COCO.
            (url,) = label_studio_url
            assert (url["configMapName"], url["optional"]) == (config_map, True)
            assert [e["envVar"] for e in url["keyToEnv"]] == ["VISIONOPS_LABEL_STUDIO_URL"]
            (token,) = label_studio_token
            assert (token["secretName"], token["optional"]) == ("label-studio-pipeline", True)
            assert [e["envVar"] for e in token["keyToEnv"]] == ["VISIONOPS_LABEL_STUDIO_TOKEN"]
        else:
            assert label_studio_url == label_studio_token == [], label
        assert from_secret["secretName"] in kubeflow_secrets
        assert {e["secretKey"] for e in from_secret["keyToEnv"]} == secret_keys
        assert {e["envVar"] for e in from_secret["keyToEnv"]} == {
            "VISIONOPS_S3_ACCESS_KEY",
            "VISIONOPS_S3_SECRET_KEY",
        }


def test_pipeline_sources_stay_small() -> None:
    for name in PIPELINES:
        lines = (ROOT / "pipelines" / f"{name}.py").read_text().count("\n")
        assert lines <= 130, f"pipelines/{name}.py has {lines} lines"
