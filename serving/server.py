"""KServe's ModelServer with the guards a public endpoint needs and KServe leaves out.

- A request body limit (KServe has none): over it, 413 before the body is read.
- Malformed v2 bodies that KServe's decoder turns into 500s (KeyError, shape errors) become 400s,
  and REST binary-extension bodies are decoded by `protocol.binary_request`.
- `/v2/health/ready` is false until the model is loaded (KServe's is always true).
- `GET /v2/models/{name}` also returns class names and model version (`parameters`).
- `POST /v2/repository/models/{name}/load` reloads the model (KServe's repository does nothing).
- `--host` binds HTTP and gRPC to one address (KServe always binds every interface).
- HTTP requests are counted and timed end to end, by protocol and outcome.

KServe has no public hooks for these: the subclasses of its server classes that add them live in
`visionops._compat.kserve` (with the other private internals VisionOps relies on); this module
says what they do.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from serving import metrics
from serving.model import YoloModel
from serving.protocol import RequestRejected, binary_request
from visionops._compat.kserve import Guards, PredictorServer
from visionops.errors import UsageError

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def _protocol_of(path: str) -> str | None:
    """`v1`/`v2` for an inference path, None for anything else (health, metadata, metrics)."""
    if path.startswith("/v1/models/") and path.endswith(":predict"):
        return "v1"
    if path.startswith("/v2/models/") and path.endswith("/infer"):
        return "v2"
    return None


async def _send_error(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    """ASGI middleware: body size limit on every request, metrics for inference requests."""

    def __init__(self, app: Callable[..., Awaitable[None]], max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        protocol = _protocol_of(scope["path"])
        start, status = time.perf_counter(), 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            receive = await self._limited(scope, receive)
            if receive is None:
                status = 413
                await _send_error(send, 413, self._too_large())
            else:
                await self.app(scope, receive, send_status)
        finally:
            if protocol is not None:
                outcome = metrics.outcome_of_status(status)
                metrics.record_request(protocol, outcome, time.perf_counter() - start)

    def _too_large(self) -> str:
        return f"request body over the limit of {self.max_body_bytes} bytes"

    async def _limited(self, scope: Scope, receive: Receive) -> Receive | None:
        """`receive` unchanged when the declared length fits; None when the body is too large.
        Without a declared length (chunked) the body is read here, up to the limit."""
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            try:
                fits = int(declared) <= self.max_body_bytes
            except ValueError:
                fits = False
            return receive if fits else None
        if scope["method"] in ("GET", "HEAD"):
            return receive
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body_bytes:
                return None
            if not message.get("more_body"):
                break
        replay: list[Message] = [{"type": "http.request", "body": b"".join(chunks)}]

        async def replayed() -> Message:
            return replay.pop() if replay else await receive()

        return replayed


async def _rejected(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestRejected)
    log.warning("rejected request (%d): %s", error.status, error.reason)
    return JSONResponse(status_code=error.status, content={"error": error.reason})


async def _invalid_body(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in error.errors()
    )
    log.warning("rejected request (400): %s", problems)
    return JSONResponse(status_code=400, content={"error": f"invalid request body: {problems}"})


def _model_metadata(model: Any) -> dict[str, Any]:
    return model.metadata() if isinstance(model, YoloModel) else {}


def predictor_server(
    *, host: str | None, max_body_bytes: int, grpc_options: dict[str, int], **kserve: Any
) -> PredictorServer:
    """KServe's ModelServer (built with `kserve`, its own options) with the guards above."""
    if kserve.get("workers", 1) != 1:
        raise UsageError(
            "--workers must be 1: more uvicorn workers would copy the model into every "
            "process and split /metrics; scale with replicas instead"
        )
    guards = Guards(
        max_body_bytes=max_body_bytes,
        middleware=RequestGuard,
        decode_binary=binary_request,
        malformed=RequestRejected,
        model_metadata=_model_metadata,
        exception_handlers={RequestRejected: _rejected, RequestValidationError: _invalid_body},
    )
    return PredictorServer(host=host, guards=guards, grpc_options=grpc_options, **kserve)
