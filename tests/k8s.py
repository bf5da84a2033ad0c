"""Helpers for the Kubernetes tests: render overlays offline, walk rendered objects, run the real
tools (kubectl's kustomize, kubernetes-validate, promtool). No cluster is involved anywhere.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
OVERLAYS = ("kind", "production")
NAMESPACE = "visionops"
CUSTOM_KINDS = {"InferenceService", "ServiceMonitor", "PodMonitor", "PrometheusRule"}
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job")

Doc = dict[str, Any]


def tool(name: str) -> str:
    """Path of a tool: the virtualenv's copy first (kubectl, hadolint), then the system's."""
    local = BIN / name
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} is not installed (make tools / make install)")
    return found


def run(
    *args: str, cwd: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing text output; on failure the error shows both streams."""
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def example_tree(dest: Path) -> Path:
    """A copy of manifests/ and kustomize/ whose secret env files are the committed examples.

    The real `secrets/*.env` files are not in git (and a developer's own are never read here):
    each `X.env.example` is copied to `X.env`, so the secretGenerators render offline.
    """
    ignore = shutil.ignore_patterns("*.env", "__pycache__")
    for part in ("manifests", "kustomize"):
        shutil.copytree(ROOT / part, dest / part, ignore=ignore)
    for example in dest.glob("kustomize/*/*/secrets/*.env.example"):  # overlays and components
        shutil.copyfile(example, example.with_suffix(""))
    return dest


@cache
def _rendered_text(overlay: str, tree: Path) -> str:
    kubectl = tool("kubectl")
    return run(kubectl, "kustomize", str(tree / "kustomize" / "overlays" / overlay)).stdout


def render(overlay: str, tree: Path) -> list[Doc]:
    """`kubectl kustomize` of an overlay, as a list of objects."""
    return [d for d in yaml.safe_load_all(_rendered_text(overlay, tree)) if d]


def rendered_yaml(overlay: str, tree: Path) -> str:
    return _rendered_text(overlay, tree)


def find(docs: list[Doc], kind: str, name: str) -> Doc:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def pod_specs(doc: Doc) -> Iterator[tuple[str, Doc]]:
    """(label, pod spec) for every pod template an object declares, built-in or KServe."""
    name = f"{doc['kind']}/{doc['metadata']['name']}"
    if doc["kind"] in WORKLOAD_KINDS:
        yield name, doc["spec"]["template"]["spec"]
    elif doc["kind"] == "CronJob":
        yield name, doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    elif doc["kind"] == "Pod":
        yield name, doc["spec"]
    elif doc["kind"] == "InferenceService":
        for component in ("predictor", "transformer", "explainer"):
            if component in doc["spec"]:
                yield f"{name}/{component}", doc["spec"][component]


def pod_labels(doc: Doc) -> dict[str, str]:
    """The labels a workload's pods carry."""
    if doc["kind"] in WORKLOAD_KINDS:
        return dict(doc["spec"]["template"]["metadata"].get("labels", {}))
    if doc["kind"] == "InferenceService":
        return dict(doc["spec"]["predictor"].get("labels", {}))
    return {}


def containers(spec: Doc) -> Iterator[Doc]:
    yield from spec.get("initContainers", [])
    yield from spec.get("containers", [])


def selects(selector: Doc, labels: dict[str, str]) -> bool:
    """Whether a Kubernetes label selector (matchLabels + matchExpressions) matches `labels`."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if (
            (op == "In" and labels.get(key) not in values)
            or (op == "NotIn" and labels.get(key) in values)
            or (op == "Exists" and key not in labels)
            or (op == "DoesNotExist" and key in labels)
        ):
            return False
    return True


def env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of an env file (comments and blank lines skipped)."""
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def shell_assignments(path: Path) -> dict[str, str]:
    """NAME=value lines of a sourced shell file such as hack/versions.env."""
    return dict(re.findall(r"^([A-Z_][A-Z0-9_]*)=(\S+)$", path.read_text(), flags=re.M))


VERSIONS = shell_assignments(ROOT / "hack" / "versions.env")


def sdk_schema_problems(value: Any, type_name: str, path: str = "") -> list[str]:
    """Check `value` against an OpenAPI-generated SDK model type, strictly.

    `type_name` is a type string as the kserve and kubernetes SDKs write it in `openapi_types`
    ('V1beta1InferenceService', 'list[V1Container]', 'dict(str, str)', 'int', ...). Unknown
    fields, wrong types and nested errors are all reported, with their path.
    """
    import kserve.models
    import kubernetes.client.models

    where = path or "<root>"
    if match := re.fullmatch(r"list\[(.+)\]", type_name):
        if not isinstance(value, list):
            return [f"{where}: expected a list, got {type(value).__name__}"]
        return [
            p
            for i, item in enumerate(value)
            for p in sdk_schema_problems(item, match[1], f"{path}[{i}]")
        ]
    if match := re.fullmatch(r"dict\(([^,]+), (.+)\)", type_name):
        if not isinstance(value, dict):
            return [f"{where}: expected a map, got {type(value).__name__}"]
        return [
            p for k, v in value.items() for p in sdk_schema_problems(v, match[2], f"{path}.{k}")
        ]
    primitives: dict[str, tuple[type, ...]] = {
        "str": (str,),
        "int": (int,),
        "float": (int, float),
        "bool": (bool,),
        "datetime": (str,),
        "date": (str,),
    }
    if type_name == "object":
        return []
    if type_name in primitives:
        wrong_bool = type_name in ("int", "float") and isinstance(value, bool)
        if wrong_bool or not isinstance(value, primitives[type_name]):
            return [f"{where}: expected {type_name}, got {value!r}"]
        return []
    model = getattr(kserve.models, type_name, None) or getattr(
        kubernetes.client.models, type_name, None
    )
    if model is None:
        return [f"{where}: the SDKs define no type {type_name}"]
    if not isinstance(value, dict):
        return [f"{where}: expected a {type_name} object, got {value!r}"]
    by_json_name = {json_name: attr for attr, json_name in model.attribute_map.items()}
    problems = []
    for key, item in value.items():
        if key not in by_json_name:
            problems.append(f"{path}.{key}: unknown field of {type_name}")
            continue
        attr = by_json_name[key]
        problems += sdk_schema_problems(item, model.openapi_types[attr], f"{path}.{key}")
    # The generated constructors enforce required fields and enumerations.
    try:
        model(**{by_json_name[k]: v for k, v in value.items() if k in by_json_name})
    except ValueError as error:
        problems.append(f"{where}: {error}")
    return problems


def crd_model_problems(doc: Doc) -> list[str]:
    """Validate a Prometheus operator object with models generated from its CRD schema.

    cloudcoil's pydantic models carry the CRD's types, enums and patterns; they ignore unknown
    fields, so a round trip finds those: every key of the input must survive the dump.
    """
    from cloudcoil.models.prometheus_operator import v1
    from pydantic import ValidationError

    model = getattr(v1, doc["kind"])
    try:
        parsed = model.model_validate(doc)
    except ValidationError as error:
        return [f"{e['loc']}: {e['msg']}" for e in error.errors()]
    dumped = parsed.model_dump(by_alias=True, exclude_unset=True, mode="json")
    return _dropped_keys(doc, dumped, "")


def _dropped_keys(given: Any, kept: Any, path: str) -> list[str]:
    if isinstance(given, dict) and isinstance(kept, dict):
        return [
            p
            for k, v in given.items()
            for p in (
                [f"{path}.{k}: unknown field"]
                if k not in kept
                else _dropped_keys(v, kept[k], f"{path}.{k}")
            )
        ]
    if isinstance(given, list) and isinstance(kept, list):
        return [
            p
            for i, (g, k) in enumerate(zip(given, kept, strict=False))
            for p in _dropped_keys(g, k, f"{path}[{i}]")
        ]
    return []


def network_policies(docs: list[Doc]) -> list[Doc]:
    return [d for d in docs if d["kind"] == "NetworkPolicy"]


def _peers_select(peers: list[Doc], labels: dict[str, str]) -> bool:
    """Whether a same-namespace pod with `labels` is among a rule's `from`/`to` peers."""
    return any(
        "namespaceSelector" not in p and "ipBlock" not in p and selects(p["podSelector"], labels)
        for p in peers
    )


def _rule_ports(rule: Doc) -> set[int] | None:
    return {p["port"] for p in rule["ports"]} if "ports" in rule else None


def _applies(policy: Doc, labels: dict[str, str], kind: str) -> bool:
    return kind in policy["spec"]["policyTypes"] and selects(policy["spec"]["podSelector"], labels)


def policy_allows(
    policies: list[Doc], direction: str, subject: dict[str, str], peer: dict[str, str] | None,
    port: int,
) -> bool:  # fmt: skip
    """Whether a policy lets `subject` pods take (ingress) or make (egress) connections on `port`
    with `peer` pods of the namespace (`None`: with anyone)."""
    kind, key = ("Ingress", "from") if direction == "ingress" else ("Egress", "to")
    return any(
        (_rule_ports(rule) is None or port in _rule_ports(rule))  # type: ignore[operator]
        and (peer is None or _peers_select(rule.get(key, []), peer))
        for p in policies
        if _applies(p, subject, kind)
        for rule in p["spec"].get(direction, [])
    )
