"""A stand-in for the Kubeflow Pipelines API server, at the REST layer of `kfp.Client`.

No KFP server can run here. `KfpApi.request` replaces `kfp_server_api.rest.RESTClientObject
.request`, so the real client builds every request (paths, query, JSON and multipart bodies) and
parses every answer; the stand-in records the requests and answers like the v2beta1 API would.
"""

from __future__ import annotations

import copy
import itertools
import json
from dataclasses import dataclass, field
from typing import Any

import urllib3
from kfp_server_api import rest

API = "/apis/v2beta1"


def json_response(rest_module: Any, status: int, payload: Any) -> Any:
    """A JSON answer as a generated client's REST layer returns it (`RESTResponse`); an error
    status raises the client's `ApiException`, as its own REST layer does."""
    response = rest_module.RESTResponse(
        urllib3.HTTPResponse(
            body=json.dumps(payload).encode(),
            status=status,
            preload_content=True,
            headers={"Content-Type": "application/json"},
        )
    )
    if not 200 <= status < 300:
        raise rest_module.ApiException(http_resp=response)
    return response


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, Any]
    body: Any
    files: Any


@dataclass
class KfpApi:
    pipelines: dict[str, str] = field(default_factory=dict)  # display name -> pipeline id
    final_state: str = "SUCCEEDED"
    drop_next_run_create: bool = False  # the connection breaks after the server created the run
    refuse_next_run_create: bool = False  # the server answers 500 and creates nothing
    requests: list[Request] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    versions: dict[str, list[str]] = field(default_factory=dict)
    _ids: Any = field(default_factory=itertools.count)

    def created_runs(self) -> list[Request]:
        return [r for r in self.requests if (r.method, r.path) == ("POST", f"{API}/runs")]

    def request(self, method, url, query_params=None, headers=None, body=None, post_params=None,  # type: ignore[no-untyped-def]
                **_: Any):  # fmt: skip
        path = urllib3.util.parse_url(url).path
        query = dict(query_params or [])
        self.requests.append(Request(method, path, query, copy.deepcopy(body), post_params))
        return json_response(rest, *self._answer(method, path, query, body))

    def _new_id(self, kind: str) -> str:
        return f"{kind}-{next(self._ids)}"

    @staticmethod
    def _filtered_name(query: dict[str, Any]) -> str | None:
        if "filter" not in query:
            return None
        return json.loads(query["filter"])["predicates"][0]["stringValue"]

    def _answer(self, method: str, path: str, query: dict[str, Any], body: Any):  # type: ignore[no-untyped-def]
        if path == f"{API}/healthz":
            return 200, {"multi_user": False}
        if path == f"{API}/experiments":
            name = self._filtered_name(query) or (body or {}).get("display_name", "")
            experiment = {"experiment_id": "exp-1", "display_name": name}
            return 200, ({"experiments": [experiment]} if method == "GET" else experiment)
        if path == f"{API}/pipelines" and method == "GET":
            name = self._filtered_name(query)
            found = [{"pipeline_id": i, "display_name": n} for n, i in self.pipelines.items()
                     if n == name]  # fmt: skip
            return 200, ({"pipelines": found, "total_size": len(found)} if found else {})
        if path == f"{API}/pipelines/upload":
            pipeline_id = self._new_id("pipeline")
            self.pipelines[query["name"]] = pipeline_id
            self.versions[pipeline_id] = [self._new_id("version")]
            return 200, {"pipeline_id": pipeline_id, "display_name": query["name"]}
        if path == f"{API}/pipelines/upload_version":
            version = self._new_id("version")
            self.versions[query["pipelineid"]].append(version)
            return 200, {"pipeline_id": query["pipelineid"], "pipeline_version_id": version,
                         "display_name": query["name"]}  # fmt: skip
        if path.startswith(f"{API}/pipelines/") and path.endswith("/versions"):
            pipeline_id = path.split("/")[-2]
            latest = self.versions.get(pipeline_id, [])[-1:]
            return 200, {"pipeline_versions": [
                {"pipeline_id": pipeline_id, "pipeline_version_id": v} for v in latest
            ]}  # fmt: skip
        if path == f"{API}/runs" and method == "POST" and self.refuse_next_run_create:
            self.refuse_next_run_create = False
            return 500, {"error": "database unavailable"}
        if path == f"{API}/runs" and method == "POST":
            run = {**body, "run_id": self._new_id("run"), "state": "PENDING"}
            self.runs.append(run)
            if self.drop_next_run_create:
                self.drop_next_run_create = False
                raise urllib3.exceptions.ProtocolError("Connection aborted after the request")
            return 200, run
        if path == f"{API}/runs" and method == "GET":
            name = self._filtered_name(query)
            found = [r for r in self.runs if r.get("display_name") == name]
            return 200, ({"runs": found} if found else {})
        if path.startswith(f"{API}/runs/"):
            run_id = path.rsplit("/", 1)[-1]
            run = next(r for r in self.runs if r["run_id"] == run_id)
            return 200, {**run, "state": self.final_state}
        return 404, {"error": f"no route {method} {path}"}
