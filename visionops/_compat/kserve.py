"""KServe 0.21's server internals, subclassed in one place for the predictor (`serving/`).

KServe has no public hooks for what a public endpoint needs, so these subclasses add them and the
predictor (`serving/server.py`) says what they do through `Guards`:

- `GuardedDataPlane`: REST v2 binary-extension bodies are decoded by the predictor, and bodies
  KServe's decoder fails on with KeyError, shape errors... become client errors, not 500s;
  readiness is false until every registered model is ready (KServe's is always true).
- `ReloadingRepository`: `POST /v2/repository/models/{name}/load` reloads the model from its
  source (KServe's repository does nothing for a model it already has).
- `BoundGRPCServer` and `PredictorServer.start` re-implement KServe's `start` methods to bind one
  host (KServe binds every interface), register a model that is not ready yet, and run uvloop.
- `GuardedRESTServer`: the predictor's middleware and routes, KServe's TimingMiddleware left out.

This module imports KServe; only `serving` imports it (import-linter checks that `visionops` never
does), so `import visionops` stays free of KServe. `INTERNALS` lists each internal relied on.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Awaitable, Callable, Mapping
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from grpc import aio
from kserve import ModelServer
from kserve.constants.constants import (
    FASTAPI_APP_IMPORT_STRING,
    INFERENCE_CONTENT_LENGTH_HEADER,
    PredictorProtocol,
)
from kserve.errors import InferenceError, InvalidInput, ModelNotFound, ModelNotReady
from kserve.model_repository import ModelRepository
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor, LoggingInterceptor
from kserve.protocol.grpc.server import GRPCServer
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.rest.server import RESTServer
from timing_asgi import TimingMiddleware

from visionops._compat import Internal
from visionops.errors import UsageError

log = logging.getLogger(__name__)

INTERNALS = (
    Internal(
        "kserve.model_server:ModelServer.start",
        "PredictorServer.start re-implements it (one host, models registered when not ready, "
        "uvloop); port what changed",
        "efa96502018b04e9",
    ),
    Internal(
        "kserve.model_server:ModelServer.__init__",
        "PredictorServer.start reads the attributes it sets (dataplane, servers, http_port...)",
        "1029569ff98894af",
    ),
    Internal(
        "kserve.model_server:ModelServer._serve",
        "PredictorServer.start runs it on its own event loop",
        "ff3ff3ccb85e49d3",
    ),
    Internal(
        "kserve.protocol.grpc.server:GRPCServer.start",
        "BoundGRPCServer.start re-implements it to bind one host; port what changed",
        "f4ea7b4eb6f0d9f7",
    ),
    Internal(
        "kserve.protocol.grpc.server:GRPCServer.__init__",
        "BoundGRPCServer.start reads the attributes it sets (_data_plane, _kwargs, _port...)",
        "d2f75891584958f5",
    ),
    Internal(
        "kserve.protocol.rest.server:RESTServer.create_application",
        "GuardedRESTServer adds its route before and its handlers after KServe's",
        "f821f63b402457eb",
    ),
    Internal(
        "kserve.protocol.rest.server:RESTServer._add_middlewares",
        "GuardedRESTServer removes the TimingMiddleware it adds",
        "eb71860ac9500c56",
    ),
    Internal(
        "kserve.protocol.dataplane:DataPlane.decode",
        "GuardedDataPlane.decode wraps it and turns its decoding errors into client errors",
        "d24588584bae5b4c",
    ),
    Internal(
        "kserve.protocol.dataplane:DataPlane.ready",
        "GuardedDataPlane.ready replaces it (not ready without a ready model)",
        "092ec924c2558e83",
    ),
    Internal(
        "kserve.model_repository:ModelRepository.update",
        "ReloadingRepository.update remembers every model it registers",
        "eaa943330fd0c2f2",
    ),
    Internal(
        "kserve.model_repository:ModelRepository.load",
        "ReloadingRepository.load replaces it with a reload from the model's source",
        "f679bb6dada62bd2",
    ),
    Internal(
        "kserve.model:Model.__call__",
        "serving.model.YoloModel wraps it to count and time gRPC requests",
        "acf019685a2c07de",
    ),
    Internal(
        "kserve.model_server:app",
        "GuardedRESTServer adds the predictor's routes and handlers to this FastAPI app",
    ),
)

Handler = Callable[[Request, Exception], Awaitable[JSONResponse]]


@dataclass(frozen=True)
class Guards:
    """What the predictor adds to KServe's server (see `serving/server.py`)."""

    max_body_bytes: int
    middleware: type  # an ASGI middleware, built as middleware(app, max_body_bytes=...)
    decode_binary: Callable[[bytes, int, str], Any]  # REST v2 binary body -> InferRequest
    malformed: Callable[[str], Exception]  # the client error for a body KServe cannot decode
    model_metadata: Callable[[Any], dict[str, Any]]  # GET /v2/models/{name} of a model
    exception_handlers: Mapping[type[Exception], Handler] = field(default_factory=dict)


class GuardedDataPlane(DataPlane):
    """KServe's data plane with client errors kept client errors and model-aware readiness."""

    def __init__(self, model_registry: ModelRepository, guards: Guards) -> None:
        super().__init__(model_registry=model_registry)
        self.guards = guards

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
                return self.guards.decode_binary(body, int(length), model_name or ""), {}
            return super().decode(body, headers, protocol_version, model_name)
        except InvalidInput:
            raise
        except (KeyError, ValueError, TypeError, IndexError, AttributeError, struct.error) as error:
            message = f"malformed inference request: {type(error).__name__}: {error}"
            raise self.guards.malformed(message) from error
        except InferenceError as error:
            raise self.guards.malformed(f"malformed inference request: {error}") from error

    async def ready(self) -> bool:
        """Ready only when every registered model is (KServe answers true with none loaded)."""
        models = self.model_registry.get_models()
        if not models:
            return False
        return all([await self.model_registry.is_model_ready(name) for name in models])


class ReloadingRepository(ModelRepository):
    """`load(name)` reloads the model from its source (`await model.reload()`); an unloaded
    model can be loaded again."""

    def __init__(self) -> None:
        super().__init__()
        self._known: dict[str, Any] = {}

    def update(self, model: Any, name: str | None = None) -> None:
        super().update(model, name)
        self._known[name or model.name] = model

    async def load(self, name: str) -> bool:
        model = self._known.get(name)
        if model is None:
            raise ModelNotFound(name)
        await model.reload()
        self.update(model, name)
        return bool(model.ready)


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
    """KServe's REST server plus the predictor's middleware, metadata route and error handlers."""

    def __init__(self, guards: Guards, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.guards = guards

    def _add_middlewares(self, app: Any) -> None:
        """KServe's middlewares without its TimingMiddleware: the predictor's middleware already
        times every inference request into /metrics, and the two log lines per request it adds
        cost the event loop about 0.2 ms each request."""
        super()._add_middlewares(app)
        app.user_middleware[:] = [m for m in app.user_middleware if m.cls is not TimingMiddleware]

    def create_application(self) -> None:
        # KServe's module-level app; kserve.model_server parses sys.argv when first imported,
        # which `python -m serving` has done already (its flags extend KServe's parser).
        from kserve.model_server import app

        dataplane, guards = self.dataplane, self.guards

        async def model_metadata(model_name: str) -> dict[str, Any]:
            return guards.model_metadata(dataplane.get_model_from_registry(model_name))

        async def not_ready(_: Request, error: Exception) -> JSONResponse:
            assert isinstance(error, ModelNotReady)
            model = dataplane.model_registry.get_model(error.model_name)
            reason = getattr(model, "load_error", None)
            message = f"{error} Last load failed: {reason}" if reason else str(error)
            return JSONResponse(status_code=503, content={"error": message})

        # Before KServe's routes, so this one answers GET /v2/models/{name}.
        app.add_api_route("/v2/models/{model_name}", model_metadata, methods=["GET"])
        app.add_middleware(guards.middleware, max_body_bytes=guards.max_body_bytes)
        super().create_application()
        # After KServe's handlers, which would replace these.
        for kind, handler in guards.exception_handlers.items():
            app.add_exception_handler(kind, handler)
        app.add_exception_handler(ModelNotReady, not_ready)


class PredictorServer(ModelServer):
    """ModelServer for the predictor's models, started even when a model failed to load (not
    ready), bound to `host` when given, on uvloop unless `--event-loop asyncio`."""

    def __init__(
        self, *, host: str | None, guards: Guards, grpc_options: dict[str, int], **kwargs: Any
    ) -> None:
        super().__init__(registered_models=ReloadingRepository(), **kwargs)
        self.dataplane = GuardedDataPlane(self.registered_models, guards)
        self.host = host
        self.guards = guards
        self.grpc_options = grpc_options

    def start(self, models: list[Any]) -> None:  # type: ignore[override]
        for model in models:
            self.register_model(model)  # also when not ready: readiness says so, loads can retry
            model.enable_latency_logging = self.enable_latency_logging
        self._rest_server = GuardedRESTServer(
            self.guards,
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
            import uvloop  # optional: the faster event loop when installed
        except ImportError:
            if self.event_loop == "uvloop":
                raise UsageError("--event-loop uvloop: uvloop is not installed") from None
            return None
        return uvloop.new_event_loop
