"""Deploying a champion to the cluster: the InferenceService patch, and the model in S3.

No Kubernetes API server can run here. The patch is checked against the requests the official
Kubernetes client builds (method, path, content type, body): its REST layer is replaced by a
recorder that answers like an API server would, with the InferenceService of manifests/. The
object store and MLflow are real servers on 127.0.0.1. The local path (the predictor reloads)
is tested against a real predictor in test_pipeline_e2e.py.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import urllib3
import yaml
from kubernetes import client
from kubernetes.client import rest

from tests.kfp_api import json_response
from visionops.deploy import CONTAINER, VERSION_ANNOTATION, patch_inference_service
from visionops.errors import PipelineError, UsageError

ROOT = Path(__file__).resolve().parents[1]
PATH = "/apis/serving.kserve.io/v1beta1/namespaces/visionops/inferenceservices/visionops-predictor"


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


class ApiServer(rest.RESTClientObject):
    """The client's REST layer, answering from a script instead of an API server."""

    def __init__(self, replies: list[tuple[int, Any]]) -> None:  # no pool: nothing is sent
        self.replies = replies
        self.requests: list[Request] = []

    def request(self, method, url, query_params=None, headers=None, body=None, **_: Any):  # type: ignore[no-untyped-def]
        path = urllib3.util.parse_url(url).path
        self.requests.append(Request(method, path, dict(headers or {}), copy.deepcopy(body)))
        status, payload = self.replies.pop(0)
        return json_response(rest, status, payload)


def _api(server: ApiServer) -> client.CustomObjectsApi:
    configuration = client.Configuration()
    configuration.host = "https://kubernetes.invalid"
    api_client = client.ApiClient(configuration)
    api_client.rest_client = server
    return client.CustomObjectsApi(api_client)


def _isvc(resource_version: str = "41", mode: str = "Standard") -> dict[str, Any]:
    """The InferenceService of manifests/predictor as the API server would return it."""
    isvc = yaml.safe_load((ROOT / "manifests/predictor/inferenceservice.yaml").read_text())
    isvc["metadata"].update(namespace="visionops", resourceVersion=resource_version)
    isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] = mode
    return isvc


def _patch(server: ApiServer, **kwargs: Any) -> dict[str, Any]:
    return patch_inference_service(
        _api(server), namespace="visionops", name="visionops-predictor",
        storage_uri=kwargs.pop("storage_uri", "s3://visionops/models/m/v7"), version="7", **kwargs,
    )  # fmt: skip


def _container(body: dict[str, Any]) -> dict[str, Any]:
    (container,) = [c for c in body["spec"]["predictor"]["containers"] if c["name"] == CONTAINER]
    return container


def test_the_patch_changes_the_model_source_and_nothing_else() -> None:
    original = _isvc()
    server = ApiServer([(200, original), (200, original)])
    _patch(server)

    read, write = server.requests
    assert (read.method, read.path) == ("GET", PATH)
    assert (write.method, write.path) == ("PATCH", PATH)
    assert write.headers["Content-Type"] == "application/merge-patch+json"
    assert write.body["metadata"] == {"resourceVersion": "41"}  # a concurrent change: 409
    predictor = write.body["spec"]["predictor"]
    assert predictor["annotations"] == {VERSION_ANNOTATION: "7"}
    assert "canaryTrafficPercent" in predictor and predictor["canaryTrafficPercent"] is None
    before, after = _container(original), _container(write.body)
    env = {e["name"]: e for e in after["env"]}
    assert env["STORAGE_URI"] == {"name": "STORAGE_URI", "value": "s3://visionops/models/m/v7"}
    # The merge patch replaces the list whole: every other field and variable is kept as read.
    assert [e for e in after["env"] if e["name"] != "STORAGE_URI"] == [
        e for e in before["env"] if e["name"] != "STORAGE_URI"
    ]
    assert {k: v for k, v in after.items() if k != "env"} == {
        k: v for k, v in before.items() if k != "env"
    }


def test_a_concurrent_change_is_read_again_and_kept() -> None:
    changed = _isvc("42")
    _container(changed)["env"].append({"name": "ADDED_BY_SOMEONE", "value": "1"})
    server = ApiServer([(200, _isvc("41")), (409, {"reason": "Conflict"}), (200, changed),
                        (200, changed)])  # fmt: skip
    _patch(server)

    assert [r.method for r in server.requests] == ["GET", "PATCH", "GET", "PATCH"]
    final = server.requests[-1].body
    assert final["metadata"]["resourceVersion"] == "42"
    assert {"name": "ADDED_BY_SOMEONE", "value": "1"} in _container(final)["env"]


def test_a_canary_needs_serverless_mode() -> None:
    server = ApiServer([(200, _isvc(mode="Standard"))])
    with pytest.raises(UsageError, match="Serverless"):
        _patch(server, canary_traffic_percent=10)
    assert [r.method for r in server.requests] == ["GET"]  # nothing was written

    serverless = _isvc(mode="Serverless")
    server = ApiServer([(200, serverless), (200, serverless)])
    _patch(server, canary_traffic_percent=10)
    assert server.requests[-1].body["spec"]["predictor"]["canaryTrafficPercent"] == 10


def test_refusals_and_a_missing_container_are_clear_errors() -> None:
    server = ApiServer([(200, _isvc()), (403, {"reason": "Forbidden"})])
    with pytest.raises(PipelineError, match="403"):
        _patch(server)

    no_container = _isvc()
    no_container["spec"]["predictor"]["containers"][0]["name"] = "other"
    with pytest.raises(PipelineError, match=CONTAINER):
        _patch(ApiServer([(200, no_container)]))


def test_cluster_deploy_publishes_the_version_and_points_the_service_at_it(
    mlflow_settings, s3, tiny_data_yaml: Path, trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole cluster path but the API server: registry -> S3 -> InferenceService patch."""
    from visionops import deploy as deploy_module
    from visionops.config import get_settings
    from visionops.storage import S3Store, s3_client
    from visionops.training.promotion import register

    bucket = "deploy-test"
    for key, value in s3.env(bucket).items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    settings = get_settings()
    S3Store(s3_client(settings), bucket, endpoint=s3.endpoint).ensure_bucket()
    version = register(trained.result.run_id, data_yaml=tiny_data_yaml).version
    server = ApiServer([(200, _isvc()), (200, _isvc())])
    monkeypatch.setattr(deploy_module, "_custom_objects_api", lambda: _api(server))

    result = deploy_module.deploy(version, target="cluster")

    prefix = f"models/{settings.model_name}"
    assert result.model_uri == f"s3://{bucket}/{prefix}/v{version}"
    store = S3Store(s3_client(settings), bucket, endpoint=s3.endpoint)
    for where in (f"v{version}", "champion"):
        assert {"model.onnx", "metadata.json"} <= {
            k.rsplit("/", 1)[-1] for k in store.list_keys(f"{prefix}/{where}")
        }
    env = {e["name"]: e.get("value") for e in _container(server.requests[-1].body)["env"]}
    assert env["STORAGE_URI"] == result.model_uri
    get_settings.cache_clear()
