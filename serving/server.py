"""KServe's ModelServer with the guards a public endpoint needs and KServe leaves out.

- A request body limit (KServe has none): over it, 413 before the body is read.
- Malformed v2 bodies that KServe's decoder turns into 500s (KeyError, shape errors) become 400s,
  and REST binary-extension bodies are decoded by `protocol.binary_request`.
- `/v2/health/ready` is false until the model is loaded (KServe's is always true).
- `GET /v2/models/{name}` also returns class names and model version (`parameters`).
- `POST /v2/repository/models/{name}/load` reloads the model (KServe's repository does nothing).
- `--host` binds HTTP and gRPC to one address (KServe always binds every interface).
- HTTP requests are counted and timed end to end, by protocol and outcome.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import time
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent import futures
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from grpc import aio
from kserve import ModelServer
from kserve.constants.constants import (
    FASTAPI_APP_IMPORT_STRING,
    INFERENCE_CONTENT_LENGTH_HEADER,
    PredictorProtocol,
)
from kserve.errors import InferenceError as KServeInferenceError
from kserve.errors import InvalidInput, ModelNotReady
from kserve.errors import ModelNotFound as KServeModelNotFound
from kserve.model_repository import ModelRepository
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor, LoggingInterceptor
from kserve.protocol.grpc.server import GRPCServer
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.rest.server import RESTServer
from timing_asgi import TimingMiddleware

from serving import metrics
from serving.model import YoloModel
from serving.protocol import RequestRejected, binary_request
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


class GuardedDataPlane(DataPlane):
    """KServe's data plane with client errors kept client errors and model-aware readiness."""

    def decode(
        self,
        body: Any,
        headers: Any,
        protocol_version: str = PredictorProtocol.REST_V1.value,
        model_name: str | None = None,
    ) -> Any:
        try:
            length = (headers or {}).get(INFERENCE_CONTENT_LENGTH_HEADER)
            if (
                protocol_version == PredictorProtocol.REST_V2.value
                and isinstance(body, bytes)
                and length is not None
            ):
                return binary_request(body, int(length), model_name or ""), {}
            return super().decode(body, headers, protocol_version, model_name)
        except InvalidInput:
            raise
        except (KeyError, ValueError, TypeError, IndexError, AttributeError, struct.error) as error:
            raise RequestRejected(
                f"malformed inference request: {type(error).__name__}: {error}"
            ) from error
        except KServeInferenceError as error:
            raise RequestRejected(f"malformed inference request: {error}") from error

    async def ready(self) -> bool:
        """Ready only when every registered model is (KServe answers true with none loaded)."""
        models = self.model_registry.get_models()
        if not models:
            return False
        return all([await self.model_registry.is_model_ready(name) for name in models])


class ReloadingRepository(ModelRepository):
    """`load(name)` reloads the model from its source; an unloaded model can be loaded again."""

    def __init__(self) -> None:
        super().__init__()
        self._known: dict[str, YoloModel] = {}

    def update(self, model: Any, name: str | None = None) -> None:
        super().update(model, name)
        self._known[name or model.name] = model

    async def load(self, name: str) -> bool:
        model = self._known.get(name)
        if model is None:
            raise KServeModelNotFound(name)
        await model.reload()
        self.update(model, name)
        return model.ready


class BoundGRPCServer(GRPCServer):
    """KServe's gRPC server listening on one host instead of every interface."""

    def __init__(self, host: str, port: int, *args: Any, **kwargs: Any) -> None:
        super().__init__(port, *args, **kwargs)
        self._host = f"[{host}]" if ":" in host else host

    async def start(self, max_workers: int) -> None:
        servicer = InferenceServicer(self._data_plane, self._model_repository_extension)
        self._server = aio.server(
            futures.ThreadPoolExecutor(max_workers=max_workers),
            interceptors=(LoggingInterceptor(), ExceptionToStatusInterceptor()),
            options=[
                ("grpc.max_send_message_length", self._kwargs["grpc_max_send_message_length"]),
                (
                    "grpc.max_receive_message_length",
                    self._kwargs["grpc_max_receive_message_length"],
                ),
            ],
        )
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, self._server)
        address = f"{self._host}:{self._port}"
        if self._server.add_insecure_port(address) == 0:
            raise OSError(f"gRPC server cannot listen on {address}")
        log.info("gRPC server listening on %s", address)
        await self._server.start()
        await self._server.wait_for_termination()


class GuardedRESTServer(RESTServer):
    """KServe's REST server plus the body limit, our metadata route and our error handlers."""

    def __init__(self, max_body_bytes: int, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_body_bytes = max_body_bytes

    def _add_middlewares(self, app: Any) -> None:
        """KServe's middlewares without its TimingMiddleware: `RequestGuard` already times every
        inference request into /metrics, and the two log lines per request it adds cost the
        event loop about 0.2 ms each request."""
        super()._add_middlewares(app)
        app.user_middleware[:] = [m for m in app.user_middleware if m.cls is not TimingMiddleware]

    def create_application(self) -> None:
        from kserve.model_server import app

        dataplane = self.dataplane

        async def model_metadata(model_name: str) -> dict[str, Any]:
            model = dataplane.get_model_from_registry(model_name)
            return model.metadata() if isinstance(model, YoloModel) else {}

        async def not_ready(_: Request, error: Exception) -> JSONResponse:
            assert isinstance(error, ModelNotReady)
            model = dataplane.model_registry.get_model(error.model_name)
            reason = getattr(model, "load_error", None)
            message = f"{error} Last load failed: {reason}" if reason else str(error)
            return JSONResponse(status_code=503, content={"error": message})

        # Before KServe's routes, so this one answers GET /v2/models/{name}.
        app.add_api_route("/v2/models/{model_name}", model_metadata, methods=["GET"])
        app.add_middleware(RequestGuard, max_body_bytes=self.max_body_bytes)
        super().create_application()
        # After KServe's handlers, which would replace these.
        app.add_exception_handler(RequestRejected, _rejected)
        app.add_exception_handler(RequestValidationError, _invalid_body)
        app.add_exception_handler(ModelNotReady, not_ready)


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


class PredictorServer(ModelServer):
    """ModelServer for one `YoloModel`, started even when the model failed to load (not ready)."""

    def __init__(
        self, *, host: str | None, max_body_bytes: int, grpc_options: dict[str, int], **kwargs: Any
    ) -> None:
        super().__init__(registered_models=ReloadingRepository(), **kwargs)
        self.dataplane = GuardedDataPlane(model_registry=self.registered_models)
        self.host = host
        self.max_body_bytes = max_body_bytes
        self.grpc_options = grpc_options
        if self.workers != 1:
            raise UsageError(
                "--workers must be 1: more uvicorn workers would copy the model into every "
                "process and split /metrics; scale with replicas instead"
            )

    def start(self, models: list[Any]) -> None:  # type: ignore[override]
        for model in models:
            self.register_model(model)  # also when not ready: readiness says so, loads can retry
            model.enable_latency_logging = self.enable_latency_logging
        self._rest_server = GuardedRESTServer(
            self.max_body_bytes,
            FASTAPI_APP_IMPORT_STRING,
            self.dataplane,
            self.model_repository_extension,
            self.http_port,
            access_log_format=self.access_log_format,
            workers=1,
            grace_period=self.grace_period,
            event_loop=self.event_loop,
            timeout_keep_alive=self.timeout_keep_alive,
            ssl_certfile=self.ssl_certfile,
            ssl_keyfile=self.ssl_keyfile,
        )
        if self.host:
            self._rest_server.config.host = self.host
        self.servers.append(self._rest_server.start())
        if self.enable_grpc:
            self._grpc_server = BoundGRPCServer(
                self.host or "::",
                self.grpc_port,
                self.dataplane,
                self.model_repository_extension,
                kwargs=self.grpc_options,
                grace_period=self.grace_period,
            )
            self.servers.append(self._grpc_server.start(self.max_threads))
        with asyncio.Runner(loop_factory=self._loop_factory()) as runner:
            loop = runner.get_loop()  # the loop that serves, so KServe's setup configures it
            log.info("event loop: %s.%s", type(loop).__module__, type(loop).__qualname__)
            self.setup_event_loop()
            self.register_signal_handler()
            runner.run(self._serve())

    def _loop_factory(self) -> Callable[[], asyncio.AbstractEventLoop] | None:
        """uvloop unless `--event-loop asyncio` (KServe's own start always runs asyncio's loop,
        whatever the flag says); about 0.3 ms less per request on the event loop."""
        if self.event_loop == "asyncio":
            return None
        try:
            import uvloop
        except ImportError:
            if self.event_loop == "uvloop":
                raise UsageError("--event-loop uvloop: uvloop is not installed") from None
            return None
        return uvloop.new_event_loop
