"""The KServe model: YOLOv8 detection on the `visionops.inference` engine.

`preprocess` parses the request on the event loop (cheap), `predict` decodes the images and runs
the detector in a dedicated thread pool so health checks and gRPC stay responsive, `postprocess`
builds the response, records metrics and queues the prediction log record with the encoded bytes
the request sent (v1, v2 JSON, v2 binary and gRPC alike: `ParsedRequest.images`), which the log
keeps when the image retention policy wants them. `reload` builds a new
detector beside the serving one and swaps it in; requests already running finish on the old one.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from kserve import Model
from kserve.errors import ModelNotReady
from kserve.model import InferenceVerb
from kserve.protocol.infer_type import InferRequest, InferResponse

from serving import metrics
from serving.protocol import (
    Defaults,
    ParsedRequest,
    RequestRejected,
    metadata_tensors,
    parse_v1,
    parse_v2,
    v1_response,
    v2_response,
)
from visionops.config import Settings
from visionops.detections import Detections
from visionops.errors import InvalidImage, UsageError, VisionOpsError
from visionops.inference import Detector, decode_image
from visionops.models.sources import ResolvedModel, resolve_model
from visionops.monitoring.activity import Activity
from visionops.monitoring.image_retention import ImagePolicy
from visionops.monitoring.log_spool import LogSpool
from visionops.monitoring.prediction_log import PredictionLogWriter
from visionops.storage import open_store

log = logging.getLogger(__name__)

PLATFORM = "onnxruntime_onnx"


@dataclass(frozen=True)
class ServeOptions:
    """How the model is loaded and run (from `python -m serving` flags)."""

    source: str
    engine: str = "onnxruntime"
    precision: str = "fp32"  # fp32, int8 or auto
    inference_workers: int = 2
    inference_threads: int = 1
    solo_threads: int = 0
    max_pixels: int = 40_000_000
    defaults: Defaults = field(default_factory=lambda: Defaults(16, 0.25, 0.7, 300))
    prediction_log: str | None = None  # a store location; None: no prediction log


@dataclass(frozen=True)
class Loaded:
    """A detector ready to serve and where it came from."""

    detector: Detector
    model: ResolvedModel


@dataclass
class Prediction:
    """What `predict` hands to `postprocess`."""

    parsed: ParsedRequest
    loaded: Loaded
    images: list[np.ndarray]
    results: list[Detections]


class YoloModel(Model):
    """One served YOLOv8 model; `ready` only while a detector is loaded."""

    def __init__(self, name: str, options: ServeOptions, settings: Settings) -> None:
        super().__init__(name)
        self.options = options
        self.settings = settings
        self.loaded: Loaded | None = None
        self.load_error: str | None = None
        self._load_attempted = False
        self._executor = ThreadPoolExecutor(
            options.inference_workers, thread_name_prefix="inference"
        )
        self._reload_lock: asyncio.Lock | None = None
        self._log: PredictionLogWriter | None = None
        self._activity = Activity()  # lets the log's features wait for a pause in inference

    # -- loading ----------------------------------------------------------------------------------

    def _build(self) -> Loaded:
        model = resolve_model(self.options.source, self.settings)
        detector = Detector.from_model_dir(
            model.path,
            engine=self.options.engine,
            precision=self.options.precision,
            threads=self.options.inference_threads,
            solo_threads=self.options.solo_threads,
        )
        detector.warmup()
        return Loaded(detector, model)

    def _activate(self, loaded: Loaded) -> None:
        names = loaded.detector.names
        if self.options.prediction_log and (self._log is None or self._log.closed):  # may raise
            self._log = self._open_log(names, loaded.model.version)
            metrics.PREDICTION_LOG.writer = self._log
        elif self._log is not None:
            self._log.names = list(names)
        self.loaded = loaded  # one assignment: requests that took the old one keep it
        self.load_error = None
        self.ready = True
        metrics.declare_classes(names)
        metrics.MODEL_READY.set(1)
        metrics.MODEL_LOADS.labels("success").inc()
        metrics.MODEL_INFO.info(
            {
                "name": self.name,
                "version": loaded.model.version,
                "source": loaded.model.source,
                "engine": self.options.engine,
                "precision": loaded.detector.precision,
            }
        )
        log.info(
            "serving %s version %s from %s (%d classes: %s)",
            self.name, loaded.model.version, loaded.model.source, len(names), ", ".join(names),
        )  # fmt: skip

    def _open_log(self, names: list[str], version: str) -> PredictionLogWriter:
        """The prediction log writer, with its spool on the pod's volume (what an earlier
        process spooled is shipped from here on)."""
        settings = self.settings
        store = open_store(self.options.prediction_log or "", settings)
        spool = None
        if settings.log_spool_max_mb > 0:
            spool = LogSpool(settings.log_spool_path, store, settings.log_spool_max_mb << 20)
            if spool.records:
                log.warning(
                    "prediction log: %d records in the spool %s from an earlier process; "
                    "shipping them to %s", spool.records, spool.dir, store.uri(),
                )  # fmt: skip
        return PredictionLogWriter(
            store,
            names=names,
            model_name=self.name,
            model_version=version,
            max_queue=settings.log_max_queue,
            max_queue_bytes=settings.log_max_queue_mb << 20,
            batch_size=settings.log_batch_size,
            flush_every_s=settings.log_flush_every_s,
            spool=spool,
            activity=self._activity,
            images=ImagePolicy.from_settings(settings),
        )

    def _failed(self, error: Exception) -> None:
        metrics.MODEL_LOADS.labels("failure").inc()
        self.load_error = f"{type(error).__name__}: {error}"
        log.error("model %s from %s not loaded: %s", self.name, self.options.source, error)

    def load(self) -> bool:
        """Load the model once. A missing or corrupt model leaves the server up and not ready.

        KServe's data plane calls `load()` again for every request to a model that is not ready;
        those calls return at once: reloading is explicit (`POST .../load`), never on a request.
        """
        if self._load_attempted:
            return self.ready
        self._load_attempted = True
        try:
            self._activate(self._build())
        except (VisionOpsError, OSError) as error:
            self._failed(error)
        return self.ready

    async def reload(self) -> None:
        """Re-resolve the source and swap in the new detector; raises if it fails (the old one,
        if any, keeps serving)."""
        if self._reload_lock is None:
            self._reload_lock = asyncio.Lock()
        async with self._reload_lock:
            self._load_attempted = True
            try:
                self._activate(await asyncio.to_thread(self._build))
            except (VisionOpsError, OSError) as error:
                self._failed(error)
                raise

    def stop(self) -> None:
        """Unload (at shutdown, once requests in flight are answered): stop serving, then write
        out the prediction log, spooling what the store does not take within the flush timeout."""
        self.ready = False
        metrics.MODEL_READY.set(0)
        if self._log is not None:
            self._log.close(timeout=self.settings.log_flush_timeout_s)

    # -- inference --------------------------------------------------------------------------------

    def validate(self, payload: Any) -> Any:
        return payload  # `preprocess` has validated everything a client sent

    async def __call__(
        self,
        body: Any,
        headers: dict[str, str] | None = None,
        verb: InferenceVerb = InferenceVerb.PREDICT,
    ) -> Any:
        """gRPC requests are counted and timed here (HTTP ones by the server's middleware)."""
        if not (isinstance(body, InferRequest) and body.from_grpc):
            return await super().__call__(body, headers, verb)
        start, outcome = time.perf_counter(), "error"
        try:
            result = await super().__call__(body, headers, verb)
            outcome = "success"
            return result
        except RequestRejected as error:
            outcome = "too_large" if error.status == 413 else "invalid_input"
            raise
        except ModelNotReady:
            outcome = "unavailable"
            raise
        finally:
            metrics.record_request("grpc", outcome, time.perf_counter() - start)

    async def preprocess(self, payload: Any, headers: dict[str, str] | None = None) -> Any:
        defaults = self.options.defaults
        if isinstance(payload, InferRequest):
            return parse_v2(payload, defaults, "grpc" if payload.from_grpc else "v2")
        request_id = (headers or {}).get("x-request-id") or uuid.uuid4().hex
        return parse_v1(payload, defaults, request_id)

    async def predict(self, payload: Any, headers: dict[str, str] | None = None) -> Any:
        loaded = self.loaded
        if loaded is None or not self.ready:
            raise ModelNotReady(self.name, self.load_error or "no model loaded")
        loop = asyncio.get_running_loop()
        metrics.INFERENCE_IN_FLIGHT.inc()
        try:
            images, results = await loop.run_in_executor(
                self._executor, self._detect, loaded, payload
            )
        except (InvalidImage, UsageError) as error:
            raise RequestRejected.from_error(error) from error
        finally:
            metrics.INFERENCE_IN_FLIGHT.dec()
        return Prediction(payload, loaded, images, results)

    def _detect(
        self, loaded: Loaded, parsed: ParsedRequest
    ) -> tuple[list[np.ndarray], list[Detections]]:
        """Decode and detect (in an executor thread)."""
        with self._activity.busy():
            return self._decode_and_detect(loaded, parsed)

    def _decode_and_detect(
        self, loaded: Loaded, parsed: ParsedRequest
    ) -> tuple[list[np.ndarray], list[Detections]]:
        images = []
        for index, data in enumerate(parsed.images):
            try:
                images.append(decode_image(data, max_pixels=self.options.max_pixels))
            except InvalidImage as error:
                raise type(error)(f"image {index}: {error}") from error
        results = loaded.detector.detect(
            images, conf=parsed.conf, iou=parsed.iou, max_det=parsed.max_det
        )
        return images, results

    async def postprocess(
        self, result: Any, headers: dict[str, str] | None = None, response_headers: Any = None
    ) -> dict[str, Any] | InferResponse:
        prediction: Prediction = result
        parsed, loaded = prediction.parsed, prediction.loaded
        names, version = loaded.detector.names, loaded.model.version
        sizes = [(image.shape[1], image.shape[0]) for image in prediction.images]
        self._observe(prediction, names)
        if parsed.protocol == "v1":
            return v1_response(prediction.results, sizes, names, self.name, version)
        return v2_response(parsed, prediction.results, sizes, names, self.name, version)

    def _observe(self, prediction: Prediction, names: list[str]) -> None:
        parsed = prediction.parsed
        metrics.IMAGES.labels(parsed.protocol).inc(len(prediction.images))
        for index, (image, data, detections) in enumerate(
            zip(prediction.images, parsed.images, prediction.results, strict=True)
        ):
            metrics.IMAGE_PIXELS.observe(image.shape[0] * image.shape[1])
            metrics.IMAGE_BYTES.observe(len(data))
            metrics.DETECTIONS_PER_IMAGE.observe(len(detections))
            for score, class_id in zip(detections.scores, detections.class_ids, strict=True):
                metrics.DETECTION_CONFIDENCE.observe(float(score))
                metrics.DETECTIONS.labels(names[int(class_id)]).inc()
            if self._log is not None:
                self._log.submit(
                    image,
                    detections,
                    encoded=data,  # the bytes as sent, for image retention
                    model_version=prediction.loaded.model.version,
                    request_id=parsed.request_id,
                    image_index=index,
                )

    # -- metadata ---------------------------------------------------------------------------------

    def get_input_types(self) -> list[dict[str, Any]]:
        return metadata_tensors()[0]

    def get_output_types(self) -> list[dict[str, Any]]:
        return metadata_tensors()[1]

    def metadata(self) -> dict[str, Any]:
        """v2 model metadata plus what a client needs to read the outputs: class names, version."""
        inputs, outputs = metadata_tensors()
        loaded = self.loaded
        info: dict[str, Any] = {"ready": self.ready, "engine": self.options.engine}
        if loaded is not None:
            info.update(
                class_names=loaded.detector.names,
                model_version=loaded.model.version,
                model_source=loaded.model.source,
                imgsz=loaded.detector.metadata.imgsz,
                precision=loaded.detector.precision,
                requested_precision=self.options.precision,
            )
        else:
            info["load_error"] = self.load_error
        return {
            "name": self.name,
            "versions": [loaded.model.version] if loaded else [],
            "platform": PLATFORM,
            "inputs": inputs,
            "outputs": outputs,
            "parameters": info,
        }
