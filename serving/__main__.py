"""`python -m serving`: the VisionOps KServe predictor.

KServe's own server flags (`--http_port`, `--grpc_port`, `--model_name`, ...) come from its parser,
used as parent as in KServe's custom model sample; the flags below choose the model and its limits.
Defaults come from the settings (`VISIONOPS_SERVE_*`, `VISIONOPS_MODEL_NAME`, `VISIONOPS_LOG_*`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from visionops.bootstrap import bootstrap
from visionops.config import Settings
from visionops.errors import VisionOpsError

log = logging.getLogger("serving")

KSERVE_MODEL_DIR = "/mnt/models"
OFF = "off"


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def _count(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {number}")
    return number


def _fraction(value: str) -> float:
    number = float(value)
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {number}")
    return number


def build_parser(settings: Settings) -> argparse.ArgumentParser:
    from kserve import model_server

    from visionops.inference.backends import ENGINES
    from visionops.inference.variants import AUTO
    from visionops.storage import default_store

    parser = argparse.ArgumentParser(
        prog="python -m serving",
        description="VisionOps YOLOv8 predictor (KServe v1, v2 REST and gRPC).",
        parents=[model_server.parser],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--model-dir",
        help=f"model directory (model.onnx + metadata.json); default {KSERVE_MODEL_DIR}",
    )
    source.add_argument(
        "--model-uri", help="s3://bucket/prefix or models:/name@alias (resolved on every reload)"
    )
    parser.add_argument("--engine", default="onnxruntime", choices=sorted(ENGINES))
    parser.add_argument(
        "--precision", default="fp32", choices=["fp32", "int8", AUTO],
        help="model variant; auto: the fastest that passed the accuracy guard on the engine",
    )  # fmt: skip
    parser.add_argument(
        "--host", default=None, help="address to bind HTTP and gRPC to (default: all interfaces)"
    )
    parser.add_argument(
        "--inference-workers", type=_positive, default=settings.serve_inference_workers,
        help="requests decoded and inferred at once (a dedicated thread pool; default: one per "
        "core, one more with --engine openvino)",
    )  # fmt: skip
    parser.add_argument(
        "--inference-threads", type=_count, default=settings.serve_inference_threads,
        help="engine threads per inference when several run at once (0: all cores)",
    )  # fmt: skip
    parser.add_argument(
        "--solo-threads", type=_count, default=settings.serve_solo_threads,
        help="engine threads for a request that runs alone (default: all cores; 0: off)",
    )  # fmt: skip
    parser.add_argument("--max-body-bytes", type=_positive, default=settings.serve_max_body_bytes)
    parser.add_argument("--max-images", type=_positive, default=settings.serve_max_images)
    parser.add_argument("--max-pixels", type=_positive, default=settings.serve_max_pixels)
    # Not --conf: KServe parses sys.argv at import with abbreviations on, where --conf would
    # stand for its --configure_logging.
    parser.add_argument("--confidence", type=_fraction, default=settings.serve_conf)
    parser.add_argument("--iou", type=_fraction, default=settings.serve_iou)
    parser.add_argument("--max-det", type=_positive, default=settings.serve_max_det)
    parser.add_argument(
        "--prediction-log",
        default=default_store(settings.log_prefix, settings).uri(),
        help=f"directory or s3://bucket/prefix for the prediction log; '{OFF}' to disable",
    )
    # A gRPC message may be as large as an HTTP body unless set explicitly.
    # Latency is in /metrics: a log line per request (KServe's default) only costs event-loop time.
    parser.set_defaults(
        model_name=settings.model_name,
        grpc_max_receive_message_length=None,
        enable_latency_logging=False,
    )
    return parser


def default_workers(engine: str, cores: int) -> int:
    """Requests decoded and inferred at once: one per core. OpenVINO runs inference on threads of
    its own while the worker waits, so one more worker decodes the next image meanwhile (2 cores,
    INT8 at concurrency 8: 70 -> 77 images/s; ONNX Runtime, which infers on the worker's own
    thread, gains nothing)."""
    return cores + 1 if engine == "openvino" else cores


def main(argv: list[str] | None = None) -> None:
    settings = bootstrap()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = build_parser(settings).parse_args(argv)

    from serving.model import ServeOptions, YoloModel
    from serving.protocol import Defaults
    from serving.server import predictor_server
    from visionops.inference.backends import require_runtime

    require_runtime(args.engine)  # a missing engine stops the predictor here, not at each load

    cores = len(os.sched_getaffinity(0))
    solo = args.solo_threads if args.solo_threads is not None else cores
    options = ServeOptions(
        source=args.model_uri or args.model_dir or KSERVE_MODEL_DIR,
        engine=args.engine,
        precision=args.precision,
        inference_workers=args.inference_workers or default_workers(args.engine, cores),
        inference_threads=args.inference_threads,
        solo_threads=solo,
        max_pixels=args.max_pixels,
        defaults=Defaults(args.max_images, args.confidence, args.iou, args.max_det),
        prediction_log=None if args.prediction_log == OFF else args.prediction_log,
    )
    model = YoloModel(args.model_name, options, settings)
    model.load()
    grpc_receive = args.grpc_max_receive_message_length or args.max_body_bytes
    server = predictor_server(
        host=args.host,
        max_body_bytes=args.max_body_bytes,
        grpc_options={
            "grpc_max_send_message_length": args.grpc_max_send_message_length,
            "grpc_max_receive_message_length": grpc_receive,
        },
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        workers=args.workers,
        max_threads=args.max_threads,
        enable_grpc=args.enable_grpc,
        enable_docs_url=args.enable_docs_url,
        enable_latency_logging=args.enable_latency_logging,
        access_log_format=args.access_log_format,
        event_loop=args.event_loop,
        timeout_keep_alive=args.timeout_keep_alive,
        grace_period=settings.serve_shutdown_grace_s,
    )
    server.start([model])


if __name__ == "__main__":
    try:
        main()
    except VisionOpsError as error:
        log.error("%s", error)
        sys.exit(error.exit_code)
