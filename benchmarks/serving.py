"""Serving speed: the predictor over HTTP v2 and gRPC against in-process baselines.

    (a) Ultralytics `YOLO(model.pt).predict(path)`, in process, one image at a time
    (b) raw ONNX Runtime in process with our decode, letterbox and NMS (`Detector`, all cores)
    (c) `python -m serving` on 127.0.0.1 over HTTP v2 (JSON with base64, and the binary extension
        with one UINT8 tensor) and gRPC (raw bytes), at concurrency 1 and 8

The model is YOLOv8n (untrained weights: speed does not depend on them) exported at imgsz 640; the
inputs are 640x640 JPEGs, every request one image. Clients send pre-encoded bodies over keep-alive
connections, so client work is small, but it shares the machine's cores with the server. The
server runs as configured for production, prediction log included (to a temporary folder).
Goals: (c) at concurrency 1 has p50 <= 1.15x (b); at concurrency 8, throughput >= 0.95x (b)'s
sequential throughput and >= 2x (a)'s.

    .venv/bin/python benchmarks/serving.py [--requests 160] [--model-dir DIR]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.* helpers

from tests.images import encode, textured
from tests.models import untrained_model_dir
from tests.servers import predictor_server
from visionops.bootstrap import bootstrap, configure_ultralytics
from visionops.config import DEFAULT_MODEL_NAME as MODEL

IMGSZ = 640


def summary(latencies: list[float], wall: float) -> dict[str, float]:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {
        "p50": statistics.median(ordered) * 1000,
        "p99": p99 * 1000,
        "ips": len(latencies) / wall,
    }


def sequential(call: Callable[[int], object], n: int, warmup: int = 3) -> dict[str, float]:
    for i in range(warmup):
        call(i)
    latencies = []
    start = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter()
        call(i)
        latencies.append(time.perf_counter() - t0)
    return summary(latencies, time.perf_counter() - start)


def concurrent(
    make_client: Callable[[], Callable[[int], object]], n: int, concurrency: int
) -> dict[str, float]:
    """`n` requests from `concurrency` threads, each with its own client (connection)."""
    local = threading.local()

    def one(i: int) -> float:
        if not hasattr(local, "call"):
            local.call = make_client()
            local.call(i)  # connect and warm up outside the measurement
        t0 = time.perf_counter()
        local.call(i)
        return time.perf_counter() - t0

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(concurrency)))  # every thread connected and warm
        start = time.perf_counter()
        latencies = list(pool.map(one, range(n)))
        wall = time.perf_counter() - start
    return summary(latencies, wall)


def http_client(
    address: str, path: str, bodies: list[tuple[bytes, dict[str, str]]]
) -> Callable[[], Callable[[int], object]]:
    host, port = address.removeprefix("http://").split(":")

    def make() -> Callable[[int], object]:
        connection = http.client.HTTPConnection(host, int(port), timeout=60)

        def call(i: int) -> object:
            body, headers = bodies[i % len(bodies)]
            connection.request("POST", path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {data[:200]!r}")
            return data

        return call

    return make


def grpc_client(address: str, images: list[bytes]) -> Callable[[], Callable[[int], object]]:
    import tritonclient.grpc as grpcclient  # never in a process that imports kserve

    def make() -> Callable[[int], object]:
        client = grpcclient.InferenceServerClient(address)
        inputs = []
        for data in images:
            tensor = grpcclient.InferInput("image", [1], "BYTES")
            tensor.set_data_from_numpy(np.array([data], dtype=object))
            inputs.append(tensor)
        return lambda i: client.infer(MODEL, [inputs[i % len(inputs)]])

    return make


def request_bodies(images: list[bytes]) -> dict[str, list[tuple[bytes, dict[str, str]]]]:
    as_json, as_binary = [], []
    for data in images:
        body = {
            "inputs": [
                {"name": "image", "datatype": "BYTES", "shape": [1],
                 "data": [base64.b64encode(data).decode()]}
            ]
        }  # fmt: skip
        as_json.append((json.dumps(body).encode(), {"Content-Type": "application/json"}))
        header = json.dumps(
            {"inputs": [{"name": "image", "datatype": "UINT8", "shape": [len(data)],
                         "parameters": {"binary_data_size": len(data)}}]}
        ).encode()  # fmt: skip
        as_binary.append(
            (
                header + data,
                {
                    "Content-Type": "application/octet-stream",
                    "Inference-Header-Content-Length": str(len(header)),
                },
            )
        )
    return {"HTTP v2 JSON": as_json, "HTTP v2 binary": as_binary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=160, help="per server measurement")
    parser.add_argument("--images", type=int, default=16, help="distinct JPEGs, cycled")
    parser.add_argument("--model-dir", type=Path, help="default: an untrained YOLOv8n at 640")
    args = parser.parse_args()

    bootstrap()
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        rows = measure(Path(tmp), args)
    report(rows)


def measure(work: Path, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    model_dir = args.model_dir or untrained_model_dir(work / "model", imgsz=IMGSZ)
    jpegs = [encode(textured(640, 640, seed=s), ".jpg") for s in range(args.images)]
    paths = []
    for index, data in enumerate(jpegs):
        paths.append(work / f"image-{index}.jpg")
        paths[-1].write_bytes(data)
    rows: dict[str, dict[str, float]] = {}
    n = max(args.requests // 2, 20)

    configure_ultralytics()
    from ultralytics import YOLO

    yolo = YOLO(str(model_dir / "model.pt"), task="detect")
    rows["(a) Ultralytics YOLO(pt).predict"] = sequential(
        lambda i: yolo.predict(str(paths[i % len(paths)]), imgsz=IMGSZ, verbose=False), n // 2
    )

    from visionops.inference import Detector, decode_image

    detector = Detector.from_model_dir(model_dir)
    rows["(b) ONNX Runtime + our pre/post"] = sequential(
        lambda i: detector.detect([decode_image(jpegs[i % len(jpegs)])]), n
    )

    server_args = ["--model-dir", str(model_dir), "--prediction-log", str(work / "log")]
    with predictor_server(work / "server", server_args) as server:
        path = f"/v2/models/{MODEL}/infer"
        clients = {
            name: http_client(server.http, path, bodies)
            for name, bodies in request_bodies(jpegs).items()
        }
        clients["gRPC"] = grpc_client(server.grpc, jpegs)
        for name, make in clients.items():
            rows[f"(c) {name}, concurrency 1"] = concurrent(make, n, 1)
            rows[f"(c) {name}, concurrency 8"] = concurrent(make, args.requests, 8)

    return rows


def report(rows: dict[str, dict[str, float]]) -> None:
    a, b = rows["(a) Ultralytics YOLO(pt).predict"], rows["(b) ONNX Runtime + our pre/post"]
    print(f"\n{'':44} {'p50 ms':>8} {'p99 ms':>8} {'img/s':>7}   ratios")
    for name, row in rows.items():
        ratios = ""
        if "concurrency 1" in name:
            ratios = f"p50 {row['p50'] / b['p50']:.2f}x (b)  [goal <= 1.15]"
        elif "concurrency 8" in name:
            ratios = (
                f"img/s {row['ips'] / b['ips']:.2f}x (b) [>= 0.95], "
                f"{row['ips'] / a['ips']:.2f}x (a) [>= 2]"
            )
        print(f"{name:44} {row['p50']:8.1f} {row['p99']:8.1f} {row['ips']:7.1f}   {ratios}")


if __name__ == "__main__":
    main()
