"""Label Studio's REST API over `requests`, each failure one line naming it.

label-studio-sdk would pull a code generator and formatters into our environment for a handful of
calls. Authentication is what Label Studio 1.23 offers: a personal access token (a JWT refresh
token) is exchanged at `/api/token/refresh/` for a short-lived access token, renewed when it
expires; a legacy token (no dots) is sent as `Token <key>`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import requests

from visionops.errors import DataError, LabelStudioError

PAGE_SIZE = 100


class LabelStudioClient:
    """Label Studio's REST API at `url`, authenticated by `token`; every failure is one line."""

    def __init__(self, url: str, token: str, *, timeout: float = 30.0) -> None:
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise LabelStudioError(f"Label Studio URL must look like http://host:port, got {url!r}")
        if not token:
            raise LabelStudioError(
                "no Label Studio token: set VISIONOPS_LABEL_STUDIO_TOKEN (its Account & Settings "
                "page, or what `visionops label studio` printed)"
            )
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._token = token.strip()
        self._legacy = self._token.count(".") != 2  # a JWT has three dot-separated parts
        self._access: str | None = None
        self._session = requests.Session()

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> LabelStudioClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ transport

    def _send(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        try:
            return self._session.request(method, self.url + path, timeout=self.timeout, **kwargs)
        except requests.ConnectionError as error:
            raise LabelStudioError(
                f"Label Studio is unreachable at {self.url}: {_reason(error)}"
            ) from error
        except requests.Timeout as error:
            raise LabelStudioError(
                f"Label Studio at {self.url} did not answer within {self.timeout:g} s"
            ) from error

    def _authorization(self, *, renew: bool = False) -> str:
        if self._legacy:
            return f"Token {self._token}"
        if self._access is None or renew:
            response = self._send("POST", "/api/token/refresh/", json={"refresh": self._token})
            if response.status_code in (400, 401, 403):
                raise LabelStudioError(
                    f"Label Studio at {self.url} refused the token "
                    f"(VISIONOPS_LABEL_STUDIO_TOKEN): {_detail(response)}"
                )
            _check(response, "POST /api/token/refresh/", self.url)
            self._access = str(response.json()["access"])
        return f"Bearer {self._access}"

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """An authenticated request; a 2xx response, else LabelStudioError naming the call."""
        headers = {"Authorization": self._authorization(), **kwargs.pop("headers", {})}
        response = self._send(method, path, headers=headers, **kwargs)
        if response.status_code == 401 and not self._legacy:  # the access token expired
            headers["Authorization"] = self._authorization(renew=True)
            response = self._send(method, path, headers=headers, **kwargs)
        if response.status_code == 401:
            raise LabelStudioError(
                f"Label Studio at {self.url} refused the token (VISIONOPS_LABEL_STUDIO_TOKEN): "
                f"{_detail(response)}"
            )
        _check(response, f"{method} {path}", self.url)
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    # ------------------------------------------------------------------ resources

    def find_project(self, title: str) -> dict[str, Any] | None:
        """The project titled exactly `title`; None if there is none, an error if several."""
        found: list[dict[str, Any]] = []
        page = 1
        while True:
            body = self.json(
                "GET", "/api/projects/", params={"title": title, "page": page,
                                                 "page_size": PAGE_SIZE},
            )  # fmt: skip
            found += [p for p in body.get("results", []) if p.get("title") == title]
            if not body.get("next"):
                break
            page += 1
        if len(found) > 1:
            ids = ", ".join(str(p["id"]) for p in found)
            raise LabelStudioError(
                f"{len(found)} projects are titled {title!r} at {self.url} (ids {ids}): "
                "rename all but one"
            )
        return found[0] if found else None

    def create_project(self, title: str, config: str) -> dict[str, Any]:
        body = {"title": title, "label_config": config}
        return dict(self.json("POST", "/api/projects/", json=body))

    def set_label_config(self, project_id: int, config: str) -> None:
        self.request("PATCH", f"/api/projects/{project_id}/", json={"label_config": config})

    def tasks(self, project_id: int, *, full: bool = False) -> Iterator[dict[str, Any]]:
        """Every task of a project, a page at a time (`full`: with its annotations)."""
        page, seen = 1, 0
        while True:
            params: dict[str, Any] = {"project": project_id, "page": page, "page_size": PAGE_SIZE}
            if full:
                params["fields"] = "all"
            body = self.json("GET", "/api/tasks/", params=params)
            tasks = body.get("tasks", [])
            yield from tasks
            seen += len(tasks)
            if not tasks or seen >= int(body.get("total", 0)):
                return
            page += 1

    def upload_image(self, project_id: int, path: Path) -> str:
        """Upload an image file to a project (no task yet); its URL, as tasks reference it."""
        with path.open("rb") as handle:
            body = self.json(
                "POST", f"/api/projects/{project_id}/import",
                params={"commit_to_project": "false"}, files={path.name: (path.name, handle)},
            )  # fmt: skip
        (upload_id,) = body["file_upload_ids"]
        upload = self.json("GET", f"/api/import/file-upload/{upload_id}")
        return "/data/" + str(upload["file"]).lstrip("/")

    def create_tasks(self, project_id: int, tasks: list[dict[str, Any]]) -> list[int]:
        body = self.json(
            "POST", f"/api/projects/{project_id}/import", params={"return_task_ids": "true"},
            json=tasks,
        )  # fmt: skip
        return [int(i) for i in body.get("task_ids", [])]

    def download(self, url: str, target: Path) -> None:
        """A file Label Studio serves (a task's image), streamed to `target`."""
        response = self.request("GET", self._served_path(url), stream=True)
        with target.open("wb") as out:
            for chunk in response.iter_content(1 << 20):
                out.write(chunk)

    def content(self, url: str) -> bytes:
        """A file Label Studio serves (a task's image), whole: for small files."""
        return self.request("GET", self._served_path(url)).content

    def annotate(self, task_id: int, result: list[dict[str, Any]]) -> int:
        """Submit an annotation of task `task_id` (Label Studio results); its id."""
        body = {"result": result, "was_cancelled": False, "ground_truth": False}
        return int(self.json("POST", f"/api/tasks/{task_id}/annotations/", json=body)["id"])

    def _served_path(self, url: str) -> str:
        """The path of `url` (absolute, or relative as tasks hold it) on this Label Studio."""
        parsed = urlparse(url)
        if parsed.netloc and f"{parsed.scheme}://{parsed.netloc}" != self.url:
            raise DataError(f"image {url} is not stored in Label Studio at {self.url}")
        return parsed.path + (f"?{parsed.query}" if parsed.query else "")


def _reason(error: Exception) -> str:
    text = str(error)
    for marker in ("Connection refused", "Name or service not known", "timed out",
                   "No route to host", "Connection reset"):  # fmt: skip
        if marker in text:
            return marker.lower()
    return text.splitlines()[0][:200] if text else type(error).__name__


def _detail(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    if isinstance(body, dict):
        detail = body.get("detail") or body.get("validation_errors") or body
        return f"{detail} (HTTP {response.status_code})"[:400]
    return f"HTTP {response.status_code}"


def _check(response: requests.Response, call: str, url: str) -> None:
    if not response.ok:
        raise LabelStudioError(f"Label Studio at {url} answered {call}: {_detail(response)}")
