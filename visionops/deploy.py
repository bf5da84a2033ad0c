"""Put the champion in front of users, on a cluster or on this machine.

Cluster: the champion's model directory is copied to the object store twice, under
`models/<name>/v<version>/` (immutable, what the InferenceService points at, so a canary and a
rollback each have their own location) and `models/<name>/champion/` (the fixed location the
manifest starts from). Then the InferenceService is patched by read-modify-write: the
`kserve-container` container's `STORAGE_URI` and the `visionops.io/model-version` annotation of the
predictor change (new pods pull the new model), and `canaryTrafficPercent` is set or cleared. The
write carries the `resourceVersion` it read, so a concurrent change makes it retry, not clobber.

Local: the running predictor (started with `--model-uri models:/<name>@champion`) is asked to
reload (`POST /v2/repository/models/<name>/load`), which resolves the alias again; the version it
serves afterwards must be the champion.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from visionops.cluster import in_cluster, resolve_mode
from visionops.config import Settings, get_settings
from visionops.errors import PipelineError, UsageError
from visionops.models.sources import resolve_model
from visionops.storage import default_store

if TYPE_CHECKING:
    from kubernetes.client import CustomObjectsApi

log = logging.getLogger(__name__)

CONTAINER = "kserve-container"
STORAGE_URI_ENV = "STORAGE_URI"
VERSION_ANNOTATION = "visionops.io/model-version"
ISVC_GROUP, ISVC_VERSION, ISVC_PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
_SERVERLESS = ("serverless", "")  # KServe's default mode when the annotation is absent
_CONFLICT_RETRIES = 3

TARGETS = ("auto", "cluster", "local", "none")


@dataclass(frozen=True)
class DeployResult:
    """What a deployment did, in one sentence (`detail`) and in fields."""

    target: str  # cluster, local or none
    version: str
    model_uri: str  # what serves it: an s3:// prefix (cluster) or models:/name@champion
    detail: str


def deploy(
    version: str,
    *,
    target: str = "auto",
    predictor_url: str | None = None,
    canary_traffic_percent: int = 0,
    name: str | None = None,
    settings: Settings | None = None,
) -> DeployResult:
    """Serve `version` of the registered model (it must be the champion).

    `predictor_url` (local; default VISIONOPS_PREDICTOR_URL): with none, nothing is running to
    reload and the result says so. `canary_traffic_percent` 1-99 sends that share of traffic to
    the new model (cluster, KServe Serverless mode only); 0 rolls it out fully.
    """
    settings = settings or get_settings()
    name = name or settings.model_name
    if not 0 <= canary_traffic_percent <= 99:
        raise UsageError(f"canary traffic must be 0 (none) to 99 %, got {canary_traffic_percent}")
    target = resolve_mode(target, TARGETS, "deploy target")
    if target == "cluster":
        uri = publish_model(version, name, settings)
        patch_inference_service(
            _custom_objects_api(),
            namespace=settings.kserve_namespace,
            name=settings.inference_service,
            storage_uri=uri,
            version=version,
            canary_traffic_percent=canary_traffic_percent,
        )
        share = f"{canary_traffic_percent}% canary" if canary_traffic_percent else "all traffic"
        detail = (
            f"InferenceService {settings.kserve_namespace}/{settings.inference_service} "
            f"now rolls out v{version} from {uri} ({share})"
        )
        return DeployResult("cluster", version, uri, detail)
    champion_uri = f"models:/{name}@champion"
    url = predictor_url or settings.predictor_url
    if target == "none" or not url:
        detail = f"no predictor to reload; the next one started on {champion_uri} serves v{version}"
        return DeployResult("none", version, champion_uri, detail)
    served = reload_predictor(url, name)
    if served != str(version):
        raise PipelineError(
            f"the predictor at {url} serves version {served} after reloading, not v{version}: "
            f"start it with --model-uri {champion_uri}"
        )
    return DeployResult("local", version, champion_uri, f"predictor {url} reloaded: v{served}")


# ---------------------------------------------------------------- local predictor


def _request(url: str, method: str, timeout: float) -> dict[str, Any]:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as error:
        text = error.read().decode(errors="replace")[:500]
        raise PipelineError(f"{method} {url} answered {error.code}: {text}") from error
    except OSError as error:
        raise PipelineError(f"the predictor at {url} is unreachable: {error}") from error
    return json.loads(body or b"{}")


def reload_predictor(url: str, model_name: str, *, timeout: float = 120.0) -> str:
    """Ask the predictor at `url` to reload `model_name`; returns the version it serves then."""
    base = url.rstrip("/")
    _request(f"{base}/v2/repository/models/{model_name}/load", "POST", timeout)
    metadata = _request(f"{base}/v2/models/{model_name}", "GET", timeout)
    served = str(metadata.get("parameters", {}).get("model_version", ""))
    log.info("predictor %s reloaded %s: version %s", base, model_name, served)
    return served


# ---------------------------------------------------------------- cluster


def publish_model(version: str, name: str, settings: Settings) -> str:
    """Copy version `version`'s model directory into the object store; returns its s3:// URI."""
    if not settings.s3_endpoint:
        raise UsageError("deploying to a cluster needs the object store (VISIONOPS_S3_ENDPOINT)")
    local = resolve_model(f"models:/{name}/{version}", settings).path
    store = default_store(f"models/{name}", settings)
    store.upload_tree(local, f"v{version}")
    store.upload_tree(local, "champion")
    return store.uri(f"v{version}")


def _custom_objects_api() -> CustomObjectsApi:
    from kubernetes import client, config  # optional (pipeline extra): only the cluster path

    if in_cluster():
        config.load_incluster_config()
    else:
        config.load_kube_config()
    return client.CustomObjectsApi()


def updated_spec(
    isvc: dict[str, Any], *, storage_uri: str, version: str, canary_traffic_percent: int
) -> dict[str, Any]:
    """The `spec.predictor` merge patch that points `isvc` at `storage_uri` (pure function)."""
    predictor = isvc.get("spec", {}).get("predictor", {})
    containers = [dict(c) for c in predictor.get("containers") or []]
    target = next((c for c in containers if c.get("name") == CONTAINER), None)
    if target is None:
        name = isvc.get("metadata", {}).get("name", "?")
        raise PipelineError(f"InferenceService {name} has no container named {CONTAINER}")
    env = [e for e in target.get("env") or [] if e.get("name") != STORAGE_URI_ENV]
    target["env"] = [{"name": STORAGE_URI_ENV, "value": storage_uri}, *env]
    annotations = dict(predictor.get("annotations") or {})
    annotations[VERSION_ANNOTATION] = str(version)
    mode = isvc.get("metadata", {}).get("annotations", {}).get("serving.kserve.io/deploymentMode")
    if canary_traffic_percent and (mode or "").lower() not in _SERVERLESS:
        raise UsageError(
            f"a canary needs KServe's Serverless mode; this InferenceService runs in {mode} mode "
            "(deploy with canary traffic 0)"
        )
    return {
        "containers": containers,
        "annotations": annotations,
        "canaryTrafficPercent": canary_traffic_percent or None,  # None deletes the field
    }


def patch_inference_service(
    api: CustomObjectsApi,
    *,
    namespace: str,
    name: str,
    storage_uri: str,
    version: str,
    canary_traffic_percent: int = 0,
) -> dict[str, Any]:
    """Read the InferenceService, change its model source, write it back with the version read.

    A JSON merge patch replaces lists whole, so the containers are read and written complete; the
    `resourceVersion` makes the API server refuse the write (409) if someone changed the object
    in between, and then it is read again. Returns the patched object.
    """
    from kubernetes.client.exceptions import ApiException  # optional: only the cluster path

    where = {"group": ISVC_GROUP, "version": ISVC_VERSION, "namespace": namespace,
             "plural": ISVC_PLURAL}  # fmt: skip
    conflicts = 0
    while True:
        try:
            isvc = api.get_namespaced_custom_object(name=name, **where)
            body = {
                "metadata": {"resourceVersion": isvc["metadata"]["resourceVersion"]},
                "spec": {
                    "predictor": updated_spec(
                        isvc,
                        storage_uri=storage_uri,
                        version=version,
                        canary_traffic_percent=canary_traffic_percent,
                    )
                },
            }
            patched = api.patch_namespaced_custom_object(name=name, body=body, **where)
        except ApiException as error:
            if error.status == 409 and conflicts < _CONFLICT_RETRIES:
                conflicts += 1
                log.info("InferenceService %s changed meanwhile; reading it again", name)
                continue
            raise PipelineError(
                f"cannot patch InferenceService {namespace}/{name}: {error.status} {error.reason}"
            ) from error
        log.info("InferenceService %s/%s -> %s (v%s)", namespace, name, storage_uri, version)
        return dict(patched)
