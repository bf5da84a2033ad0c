"""The predictor's Prometheus metrics (module level, so KServe's `/metrics` exports them).

Names follow Prometheus conventions with the `visionops_` prefix; the Kubernetes manifests, alert
rules and dashboards refer to them by these names.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from visionops.monitoring.log_layout import IMAGE_LOSS_REASONS, LOSS_REASONS

if TYPE_CHECKING:
    from visionops.monitoring.prediction_log import PredictionLogWriter

PROTOCOLS = ("v1", "v2", "grpc")
OUTCOMES = ("success", "invalid_input", "too_large", "not_found", "unavailable", "error")

REQUESTS = Counter(
    "visionops_requests",
    "Inference requests, by protocol (v1, v2, grpc) and outcome.",
    ["protocol", "outcome"],
)
REQUEST_DURATION = Histogram(
    "visionops_request_duration_seconds",
    "End-to-end inference request latency (HTTP: body received to response sent).",
    ["protocol"],
    buckets=(0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2, 5, 10),
)
IMAGES = Counter("visionops_images", "Images run through the detector.", ["protocol"])
IMAGE_PIXELS = Histogram(
    "visionops_input_image_pixels",
    "Decoded input image size in pixels (width x height).",
    buckets=(1e4, 5e4, 1e5, 3e5, 5e5, 1e6, 2e6, 5e6, 1e7, 2e7, 4e7),
)
IMAGE_BYTES = Histogram(
    "visionops_input_image_bytes",
    "Encoded input image size in bytes.",
    buckets=(1e3, 1e4, 5e4, 1e5, 2e5, 5e5, 1e6, 2e6, 5e6, 1e7, 2e7),
)
DETECTIONS_PER_IMAGE = Histogram(
    "visionops_detections_per_image",
    "Detections returned per image.",
    buckets=(0, 1, 2, 3, 5, 10, 20, 50, 100, 300),
)
DETECTION_CONFIDENCE = Histogram(
    "visionops_detection_confidence",
    "Confidence of each returned detection.",
    buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0),
)
DETECTIONS = Counter("visionops_detections", "Detections returned, by class.", ["class_name"])
INFERENCE_IN_FLIGHT = Gauge(
    "visionops_inference_in_flight", "Requests currently decoding or running inference."
)
MODEL_INFO = Info(
    "visionops_model", "The model being served: name, version, source, engine, precision."
)
MODEL_READY = Gauge("visionops_model_ready", "1 when a model is loaded and serving, else 0.")
MODEL_LOADS = Counter(
    "visionops_model_loads", "Model loads and reloads, by outcome (success, failure).", ["outcome"]
)


class PredictionLogMetrics(Collector):
    """The prediction log's counters and gauges, read from the writer at each scrape.

    The writer keeps its own counts (it lives below the predictor and knows nothing of
    Prometheus); this collector exports them. Losses include those an earlier process could only
    note in the spool on its way out (see `visionops.monitoring.log_spool`).
    """

    def __init__(self) -> None:
        self.writer: PredictionLogWriter | None = None

    def collect(self) -> Iterator[Metric]:
        writer = self.writer
        queued = GaugeMetricFamily(
            "visionops_prediction_log_queued",
            "Prediction log records waiting for their feature row (the log defers them while "
            "inference runs, until the queue is half full).",
        )
        pending = GaugeMetricFamily(
            "visionops_prediction_log_pending",
            "Prediction log records cut into batches that the store has not taken yet (memory).",
        )
        written = CounterMetricFamily(
            "visionops_prediction_log_written", "Prediction log records the store took."
        )
        errors = CounterMetricFamily(
            "visionops_prediction_log_write_errors",
            "Writes of prediction log objects the store refused (every try counts).",
        )
        dropped = CounterMetricFamily(
            "visionops_prediction_log_dropped",
            "Prediction log records lost, by reason: queue_full (never slows a request), "
            "no_features, spool_full (store down and no room in the spool), shutdown_timeout.",
            labels=["reason"],
        )
        spool_bytes = GaugeMetricFamily(
            "visionops_prediction_log_spool_bytes",
            "Bytes of prediction log objects in the local spool, waiting for the store.",
        )
        spool_records = GaugeMetricFamily(
            "visionops_prediction_log_spool_records",
            "Prediction log records in the local spool, waiting for the store.",
        )
        age = GaugeMetricFamily(
            "visionops_prediction_log_oldest_unwritten_age_seconds",
            "Age of the oldest prediction log record not in the store yet (0: none waiting).",
        )
        images = CounterMetricFamily(
            "visionops_prediction_log_images_retained",
            "Request images kept in the store (original bytes; spooled ones once shipped).",
        )
        image_bytes = CounterMetricFamily(
            "visionops_prediction_log_images_retained_bytes",
            "Bytes of the request images kept in the store.",
        )
        repeated = CounterMetricFamily(
            "visionops_prediction_log_images_repeated",
            "Records naming an image already kept that day (content-addressed: stored once).",
        )
        images_dropped = CounterMetricFamily(
            "visionops_prediction_log_images_dropped",
            "Request images the retention policy wanted and the log could not keep, by reason: "
            "queue_full (the byte bound), store_behind (images waiting for the store fill the "
            "bound), spool_full, no_features, shutdown_timeout. Their records name no image, "
            "except spool_full (the image went missing after its record was cut).",
            labels=["reason"],
        )
        lost = dict.fromkeys(LOSS_REASONS, 0)
        images_lost = dict.fromkeys(IMAGE_LOSS_REASONS, 0)
        if writer is not None:
            images.add_metric([], writer.images_retained)
            image_bytes.add_metric([], writer.image_bytes_retained)
            repeated.add_metric([], writer.images_repeated)
            images_lost.update(writer.images_lost)
            queued.add_metric([], writer.queued)
            pending.add_metric([], writer.pending)
            written.add_metric([], writer.written + writer.shipped)
            errors.add_metric([], writer.write_errors)
            lost.update(writer.lost)
            spool = writer.spool
            spool_bytes.add_metric([], spool.size if spool is not None else 0)
            spool_records.add_metric([], spool.records if spool is not None else 0)
            oldest = writer.oldest_unwritten()
            waited = (datetime.now(UTC) - oldest).total_seconds() if oldest is not None else 0.0
            age.add_metric([], max(0.0, waited))
        else:
            for family in (queued, pending, spool_bytes, spool_records, age):
                family.add_metric([], 0)
            for family in (written, errors, images, image_bytes, repeated):
                family.add_metric([], 0)
        for reason, count in sorted(lost.items()):
            dropped.add_metric([reason], count)
        for reason, count in sorted(images_lost.items()):
            images_dropped.add_metric([reason], count)
        yield from (queued, pending, written, errors, dropped, spool_bytes, spool_records, age)
        yield from (images, image_bytes, repeated, images_dropped)


PREDICTION_LOG = PredictionLogMetrics()
REGISTRY.register(PREDICTION_LOG)

for _protocol in PROTOCOLS:
    IMAGES.labels(_protocol)
    REQUEST_DURATION.labels(_protocol)
    for _outcome in OUTCOMES:
        REQUESTS.labels(_protocol, _outcome)
for _outcome in ("success", "failure"):
    MODEL_LOADS.labels(_outcome)


def outcome_of_status(status: int) -> str:
    """The `outcome` label of an HTTP status code."""
    if status < 400:
        return "success"
    return {413: "too_large", 404: "not_found", 503: "unavailable"}.get(
        status, "invalid_input" if status < 500 else "error"
    )


def record_request(protocol: str, outcome: str, seconds: float) -> None:
    REQUESTS.labels(protocol, outcome).inc()
    REQUEST_DURATION.labels(protocol).observe(seconds)


def declare_classes(names: Iterable[str]) -> None:
    """Export a zero for every class, so rates exist before the first detection."""
    for name in names:
        DETECTIONS.labels(name)
