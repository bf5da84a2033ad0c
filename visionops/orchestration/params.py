"""Pipeline parameters from the command line (`--param k=v`), typed by the pipeline's signature.

The types come from a pipeline object (the caller hands it over: orchestration never imports the
`pipelines` package, whose components import orchestration), or from its compiled YAML: a
pipeline step (which runs with KFP's runtime-only SDK and cannot build pipelines) re-submits
training from the YAML installed beside `pipelines/training.py`, found without importing it.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from visionops.errors import PipelineError, UsageError

_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}
_YAML_TYPES = {
    "STRING": "String",
    "NUMBER_INTEGER": "Integer",
    "NUMBER_DOUBLE": "Float",
    "BOOLEAN": "Boolean",
    "STRUCT": "Dict",
    "LIST": "List",
}


def typed_params(pipeline: Any, params: dict[str, Any] | Iterable[str] | None) -> dict[str, Any]:
    """`params` typed for `pipeline` (a KFP pipeline object); UsageError for an unknown parameter
    or a value of the wrong type."""
    return parse_params(pipeline.name, parameter_types(pipeline), params or {})


def parameter_types(pipeline: Any) -> dict[str, str]:
    """`{name: KFP type}` of a pipeline's inputs (String, Integer, Float, Boolean, ...)."""
    return {name: spec.type for name, spec in pipeline.component_spec.inputs.items()}


def compiled_package(name: str) -> Path:
    """The compiled YAML of pipeline `name` beside its source (`pipelines/<name>.yaml`)."""
    spec = importlib.util.find_spec("pipelines")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise PipelineError("the `pipelines` package is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / f"{name}.yaml"
    if not path.is_file():
        raise PipelineError(f"{path} is missing: compile it with `python -m pipelines.{name}`")
    return path


def package_info(path: Path) -> tuple[str, dict[str, str]]:
    """(pipeline name, `{parameter: KFP type}`) of a compiled pipeline YAML."""
    spec = next(yaml.safe_load_all(Path(path).read_text(encoding="utf-8")))
    inputs = spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {})
    types = {k: _YAML_TYPES.get(v.get("parameterType", ""), "String") for k, v in inputs.items()}
    return spec["pipelineInfo"]["name"], types


def coerce(name: str, kind: str, value: Any) -> Any:
    """`value` (often a string) as the pipeline parameter `name` of KFP type `kind` wants it."""
    try:
        if kind == "Integer":
            if isinstance(value, float) and value.is_integer():
                return int(value)  # KFP hands ints back as floats inside dicts and lists
            return int(value)
        if kind == "Float":
            return float(value)
        if kind == "Boolean":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE | _FALSE:
                return text in _TRUE
            raise ValueError(value)
        if kind in ("Dict", "List") and isinstance(value, str):
            return json.loads(value)
    except (TypeError, ValueError) as error:
        raise UsageError(f"parameter {name} must be {kind.lower()}, got {value!r}") from error
    return value if kind in ("Dict", "List") else str(value)


def parse_params(
    pipeline_name: str, types: dict[str, str], items: Iterable[str] | dict[str, Any]
) -> dict[str, Any]:
    """Typed parameters from `k=v` strings (or a dict); UsageError names an unknown parameter."""
    pairs: list[tuple[str, Any]] = []
    if isinstance(items, dict):
        pairs = list(items.items())
    else:
        for item in items:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise UsageError(f"--param wants KEY=VALUE, got {item!r}")
            pairs.append((key.strip(), value))
    params: dict[str, Any] = {}
    for key, value in pairs:
        if key not in types:
            raise UsageError(
                f"{pipeline_name} has no parameter {key!r}; it has: {', '.join(sorted(types))}"
            )
        params[key] = coerce(key, types[key], value)
    return params
