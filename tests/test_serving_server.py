"""The predictor as a real server on 127.0.0.1: every protocol, the bad-input corpus, load with
health checks, metrics, reload without dropped requests, and the prediction log on shutdown.

Every test runs twice, as a black box both times: against `python -m serving` as a process, and
against the predictor image as the kind overlay's InferenceService runs it (tests/containers.py:
read-only root, uid 1000, no capabilities, its CPU and memory limits, the model mounted read-only
at /mnt/models, the prediction log in S3 as the manifest's env says). One server serves each pass
(tests run in file order; the last one stops it). gRPC calls run in a separate process
(tests/grpc_client.py): tritonclient.grpc and kserve cannot share one.
"""

from __future__ import annotations

import base64
import json
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from minio import Minio
from prometheus_client.parser import text_string_to_metric_families

from tests.containers import predictor_container
from tests.images import encode, png_bomb, textured
from tests.k8s import find
from tests.models import DEFAULT_NAMES
from tests.servers import Predictor, S3Server, predictor_server, stop, wait_until
from visionops.config import DEFAULT_MODEL_NAME as MODEL
from visionops.inference import Detector
from visionops.storage import LocalStore, ObjectStore, S3Store

pytestmark = pytest.mark.slow

CONF, MAX_DET = 0.001, 50
MAX_IMAGES, MAX_PIXELS, MAX_BODY = 4, 4_000_000, 3_000_000
OUTPUT_NAMES = [
    "num_detections", "boxes", "scores", "class_ids", "class_names", "image_index", "image_sizes",
]  # fmt: skip
V1 = f"/v1/models/{MODEL}:predict"
V2 = f"/v2/models/{MODEL}/infer"
JPEG = encode(textured(240, 320, seed=1), ".jpg")
PNG = encode(textured(300, 200, seed=2), ".png")
GRPC_CLIENT = Path(__file__).with_name("grpc_client.py")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def v1_body(*images: bytes, **parameters: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"instances": [{"image": {"b64": b64(i)}} for i in images]}
    return {**body, "parameters": parameters} if parameters else body


def v2_body(*images: bytes, **parameters: Any) -> dict[str, Any]:
    tensor = {"name": "image", "datatype": "BYTES", "shape": [len(images)]}
    return {"inputs": [{**tensor, "data": [b64(i) for i in images]}], "parameters": parameters}


def grpc(server: Predictor, calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, str(GRPC_CLIENT), server.grpc, MODEL],
        input=json.dumps(calls),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout)


def grpc_infer(*images: bytes, **parameters: Any) -> dict[str, Any]:
    return {"call": "infer", "images": [b64(i) for i in images], "parameters": parameters}


def metrics(client: httpx.Client) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = client.get("/metrics").text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def metric(snapshot: dict, name: str, **labels: str) -> float:
    return snapshot.get((name, frozenset(labels.items())), 0.0)


def metric_sum(snapshot: dict, name: str) -> float:
    return sum(value for (n, _), value in snapshot.items() if n == name)


@pytest.fixture(scope="module", params=["process", "container"])
def where(request: pytest.FixtureRequest) -> str:
    """How the predictor runs: a process of this venv, or its image as the cluster runs it."""
    return str(request.param)


@pytest.fixture(scope="module")
def model_dir(where: str, untrained_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy: the reload test rewrites it."""
    target = tmp_path_factory.mktemp(f"served-{where}") / "model"
    shutil.copytree(untrained_model, target)
    return target


@pytest.fixture(scope="module")
def model_source(where: str, model_dir: Path) -> str:
    """The source the server reports: the folder, or KServe's /mnt/models in the container."""
    return str(model_dir) if where == "process" else "/mnt/models"


@pytest.fixture(scope="module")
def log_store(where: str, request: pytest.FixtureRequest, tmp_path_factory) -> ObjectStore:
    """Where the prediction log goes: a folder, or (container) the S3 bucket of its env."""
    if where == "process":
        return LocalStore(tmp_path_factory.mktemp("prediction-log"))
    s3: S3Server = request.getfixturevalue("s3")
    client = Minio(s3.endpoint.removeprefix("http://"), s3.access_key, s3.secret_key, secure=False)
    bucket = f"serving-log-{secrets.token_hex(3)}"
    client.make_bucket(bucket)
    return S3Store(client, bucket, "predictions", endpoint=s3.endpoint)


@pytest.fixture(scope="module")
def server(
    where: str,
    model_dir: Path,
    log_store: ObjectStore,
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Predictor]:
    limits = [f"--max-images={MAX_IMAGES}", f"--max-pixels={MAX_PIXELS}",
              f"--max-body-bytes={MAX_BODY}"]  # fmt: skip
    env = {"VISIONOPS_LOG_FLUSH_EVERY_S": "1"}
    workdir = tmp_path_factory.mktemp(f"predictor-{where}")
    if where == "process":
        assert isinstance(log_store, LocalStore)
        args = ["--model-dir", str(model_dir), *limits, "--prediction-log", str(log_store.root)]
        with predictor_server(workdir, args, env=env) as running:
            yield running
        return
    request.getfixturevalue("predictor_image")
    assert isinstance(log_store, S3Store)
    service = find(request.getfixturevalue("kind_docs"), "InferenceService", "visionops-predictor")
    with predictor_container(
        service, workdir, s3=request.getfixturevalue("s3"), bucket=log_store.bucket,
        model_dir=model_dir, extra_args=limits, env=env,
    ) as running:  # fmt: skip
        yield running


@pytest.fixture(scope="module")
def client(server: Predictor) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.http, timeout=60) as http:
        yield http


@pytest.fixture(scope="module")
def expected(model_dir: Path) -> list[dict[str, Any]]:
    """What the engine itself finds on JPEG and PNG at CONF/MAX_DET (decoded the same way)."""
    from visionops.inference import decode_image

    detector = Detector.from_model_dir(model_dir)
    images = [decode_image(JPEG), decode_image(PNG)]
    results = detector.detect(images, conf=CONF, max_det=MAX_DET)
    return [
        {
            "boxes": d.boxes,
            "scores": d.scores,
            "names": [DEFAULT_NAMES[c] for c in d.class_ids],
            "size": [image.shape[1], image.shape[0]],
        }
        for d, image in zip(results, images, strict=True)
    ]


def check_v2_outputs(outputs: dict[str, Any], expected: list[dict[str, Any]]) -> None:
    """`outputs`: name -> flat or nested list/array, as any client returns them."""
    counts = np.asarray(outputs["num_detections"]).reshape(-1).tolist()
    assert counts == [len(e["scores"]) for e in expected]
    assert all(count > 10 for count in counts)
    boxes = np.asarray(outputs["boxes"], np.float32).reshape(-1, 4)
    np.testing.assert_allclose(boxes, np.concatenate([e["boxes"] for e in expected]), atol=1e-3)
    scores = np.asarray(outputs["scores"]).reshape(-1)
    np.testing.assert_allclose(scores, np.concatenate([e["scores"] for e in expected]), atol=1e-6)
    names = [n.decode() if isinstance(n, bytes) else n for n in np.ravel(outputs["class_names"])]
    assert names == [n for e in expected for n in e["names"]]
    index = np.asarray(outputs["image_index"]).reshape(-1).tolist()
    assert index == [i for i, e in enumerate(expected) for _ in e["scores"]]
    if "image_sizes" in outputs:
        assert np.asarray(outputs["image_sizes"]).reshape(-1, 2).tolist() == [
            e["size"] for e in expected
        ]


def test_health_and_metadata(client: httpx.Client, model_source: str) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get(f"/v2/models/{MODEL}/ready").json() == {"name": MODEL, "ready": True}
    meta = client.get(f"/v2/models/{MODEL}").json()
    assert meta["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    assert [o["name"] for o in meta["outputs"]] == OUTPUT_NAMES
    assert meta["parameters"]["class_names"] == list(DEFAULT_NAMES)
    version = meta["parameters"]["model_version"]
    assert meta["versions"] == [version] and version.startswith("sha256-")
    assert meta["parameters"]["model_source"] == model_source


def test_every_protocol_returns_the_engines_detections(
    server: Predictor, client: httpx.Client, expected: list[dict[str, Any]]
) -> None:
    import tritonclient.http as httpclient

    # v1: JSON with base64 images, detections as records (boxes rounded to 0.01)
    response = client.post(V1, json=v1_body(JPEG, PNG, conf=CONF, max_det=MAX_DET))
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    for prediction, wanted in zip(predictions, expected, strict=True):
        assert [prediction["width"], prediction["height"]] == wanted["size"]
        records = prediction["detections"]
        np.testing.assert_allclose([r["box"] for r in records], wanted["boxes"], atol=0.01)
        np.testing.assert_allclose([r["score"] for r in records], wanted["scores"], atol=1e-5)
        assert [r["class_name"] for r in records] == wanted["names"]

    # v2 JSON: one BYTES input of base64 strings
    response = client.post(V2, json=v2_body(JPEG, PNG, conf=CONF, max_det=MAX_DET))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_name"] == MODEL and body["model_version"].startswith("sha256-")
    check_v2_outputs({o["name"]: o["data"] for o in body["outputs"]}, expected)

    # v2 binary extension (tritonclient.http): BYTES of raw images, and one UINT8 input per image
    triton = httpclient.InferenceServerClient(server.http.removeprefix("http://"))
    params = {"conf": CONF, "max_det": MAX_DET}
    as_bytes = httpclient.InferInput("image", [2], "BYTES")
    as_bytes.set_data_from_numpy(np.array([JPEG, PNG], dtype=object), binary_data=True)
    as_uint8 = []
    for name, data in (("image", JPEG), ("image_1", PNG)):
        tensor = httpclient.InferInput(name, [len(data)], "UINT8")
        tensor.set_data_from_numpy(np.frombuffer(data, np.uint8), binary_data=True)
        as_uint8.append(tensor)
    for inputs in ([as_bytes], as_uint8):
        result = triton.infer(MODEL, inputs, parameters=params)
        check_v2_outputs({n: result.as_numpy(n) for n in OUTPUT_NAMES}, expected)
    triton.close()

    # gRPC v2 (separate process): raw bytes; float parameters travel as strings
    (result,) = grpc(server, [grpc_infer(JPEG, PNG, conf=str(CONF), max_det=MAX_DET)])
    assert result["ok"], result
    check_v2_outputs(result["outputs"], expected)


def test_detection_parameters(client: httpx.Client) -> None:
    def counts(**parameters: Any) -> list[int]:
        response = client.post(V2, json=v2_body(JPEG, PNG, **parameters))
        assert response.status_code == 200, response.text
        return next(o["data"] for o in response.json()["outputs"] if o["name"] == "num_detections")

    assert counts(conf=CONF, max_det=1) == [1, 1]  # the range's ends are accepted
    assert len(counts(conf=CONF, max_det=10_000)) == 2
    assert sum(counts(conf=CONF, iou=0.3)) < sum(counts(conf=CONF, iou=0.9))
    response = client.post(V2, json=v2_body(JPEG, conf=0.99))
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert outputs["num_detections"]["data"] == [0]
    assert outputs["boxes"]["shape"] == [0, 4] and outputs["class_names"]["data"] == []


def bad_http_requests() -> list[tuple[str, dict[str, Any], int, str]]:
    """(what, httpx request arguments, status, text the error must contain)."""
    truncated = JPEG[: len(JPEG) // 2]
    binary_header = json.dumps(
        {"inputs": [{"name": "image", "shape": [10], "datatype": "UINT8",
                     "parameters": {"binary_data_size": 10_000}}]}
    ).encode()  # fmt: skip
    over = b"x" * (MAX_BODY + 1)
    return [
        ("v1 not an image", {"url": V1, "json": v1_body(b"hello")}, 400, "image 0: not an image"),
        ("v1 truncated JPEG", {"url": V1, "json": v1_body(truncated)}, 400, "truncated JPEG"),
        ("v1 zero bytes", {"url": V1, "json": v1_body(b"")}, 400, "image 0: empty image (0 bytes)"),
        ("v1 bad base64", {"url": V1, "json": {"instances": [{"image": {"b64": "%%%"}}]}},
         400, "instances[0].image.b64: invalid base64"),
        ("v1 no instances", {"url": V1, "json": {"inputs": []}}, 400, '"instances" must be a list'),
        ("v1 wrong instance", {"url": V1, "json": {"instances": [{"img": "x"}]}},
         400, 'instances[0]: expected {"image": {"b64"'),
        ("v1 not JSON", {"url": V1, "content": b"{not json",
                         "headers": {"content-type": "application/json"}},
         400, "Unrecognized request format"),
        ("v1 too many images", {"url": V1, "json": v1_body(*[JPEG] * 5)},
         413, "5 images in one request, over the limit of 4"),
        ("v1 decompression bomb", {"url": V1, "json": v1_body(png_bomb(3000, 3000))},
         413, "3000x3000 = 9000000 pixels is over the limit of 4000000"),
        ("v1 conf out of range", {"url": V1, "json": v1_body(JPEG, conf=2)},
         400, 'parameter "conf" must be between 0 and 1'),
        ("v1 conf not a number", {"url": V1, "json": v1_body(JPEG, conf="high")},
         400, 'parameter "conf" must be a number'),
        ("v1 iou out of range", {"url": V1, "json": v1_body(JPEG, iou=-0.1)},
         400, 'parameter "iou" must be between 0 and 1, got -0.1'),
        ("v1 max_det zero", {"url": V1, "json": v1_body(JPEG, max_det=0)},
         400, 'parameter "max_det" must be 1..10000, got 0'),
        ("v1 max_det over the range", {"url": V1, "json": v1_body(JPEG, max_det=10_001)},
         400, 'parameter "max_det" must be 1..10000, got 10001'),
        ("v1 max_det not an integer", {"url": V1, "json": v1_body(JPEG, max_det=2.5)},
         400, 'parameter "max_det" must be an integer'),
        ("v1 no image", {"url": V1, "json": {"instances": []}},
         400, "the request holds no image"),
        ("v1 parameters not an object", {"url": V1, "json": {**v1_body(JPEG), "parameters": [1]}},
         400, '"parameters" must be a JSON object'),
        ("v2 wrong datatype", {"url": V2, "json": {"inputs": [
            {"name": "image", "datatype": "FP32", "shape": [1], "data": [0.5]}]}},
         400, "datatype FP32 is not accepted"),
        ("v2 shape and data disagree", {"url": V2, "json": {"inputs": [
            {"name": "image", "datatype": "BYTES", "shape": [3], "data": [b64(JPEG), b64(PNG)]}]}},
         400, "BYTES data does not match shape [3]"),
        ("v2 UINT8 of two rows", {"url": V2, "json": {"inputs": [
            {"name": "image", "datatype": "UINT8", "shape": [2, 2], "data": [1, 2, 3, 4]}]}},
         400, "a UINT8 input holds one encoded image"),
        ("v2 element not a string", {"url": V2, "json": {"inputs": [
            {"name": "image", "datatype": "BYTES", "shape": [1], "data": [7]}]}},
         400, "expected an encoded image, got int"),
        ("v2 no inputs", {"url": V2, "json": {"inputs": []}}, 400, "no inputs"),
        ("v2 no image", {"url": V2, "json": {"inputs": [
            {"name": "image", "datatype": "BYTES", "shape": [0], "data": []}]}},
         400, "the request holds no image"),
        ("v2 max_det over the range", {"url": V2, "json": v2_body(PNG, max_det=10_001)},
         400, 'parameter "max_det" must be 1..10000, got 10001'),
        ("v2 input without data", {"url": V2, "json": {"inputs": [{"name": "image"}]}},
         400, "invalid request body"),
        ("v2 too many images", {"url": V2, "json": v2_body(*[PNG] * 5)},
         413, "5 images in one request, over the limit of 4"),
        ("v2 binary past the body", {"url": V2, "content": binary_header + b"\x00" * 10,
         "headers": {"inference-header-content-length": str(len(binary_header)),
                     "content-type": "application/octet-stream"}},
         400, "binary_data_size 10000 does not fit the body"),
        ("v2 binary input not an object", {"url": V2, "content": b'{"inputs": [5]}',
         "headers": {"inference-header-content-length": "15",
                     "content-type": "application/octet-stream"}},
         400, "malformed inference request"),
        ("v2 binary bad JSON", {"url": V2, "content": b"{nope" + JPEG,
         "headers": {"inference-header-content-length": "5",
                     "content-type": "application/octet-stream"}},
         400, "malformed inference request"),
        ("body over the limit", {"url": V2, "content": over,
                                 "headers": {"content-type": "application/json"}},
         413, f"request body over the limit of {MAX_BODY} bytes"),
        ("chunked body over the limit", {"url": V1, "content": iter([over[:MAX_BODY], b"xy"]),
                                         "headers": {"content-type": "application/json"}},
         413, f"request body over the limit of {MAX_BODY} bytes"),
        ("unknown model", {"url": "/v2/models/nope/infer", "json": v2_body(JPEG)},
         404, "Model with name nope does not exist"),
    ]  # fmt: skip


def test_bad_http_input_is_a_4xx_naming_the_problem(client: httpx.Client) -> None:
    failures = []
    for what, request, status, text in bad_http_requests():
        response = client.post(**request)
        if response.status_code != status or text not in response.json().get("error", ""):
            failures.append(f"{what}: {response.status_code} {response.text[:300]}")
    assert not failures, "\n".join(failures)
    assert client.get("/v2/health/live").status_code == 200
    assert client.post(V1, json=v1_body(JPEG)).status_code == 200


def test_bad_grpc_input_is_invalid_argument(server: Predictor) -> None:
    cases = [
        (grpc_infer(b"hello"), "INVALID_ARGUMENT", "image 0: not an image"),
        (grpc_infer(JPEG[:-200]), "INVALID_ARGUMENT", "image 0: truncated JPEG"),
        (grpc_infer(b""), "INVALID_ARGUMENT", "image 0: empty image (0 bytes)"),
        ({"call": "infer", "datatype": "FP32", "values": [0.5]}, "INVALID_ARGUMENT",
         "datatype FP32 is not accepted"),
        ({**grpc_infer(JPEG, PNG), "shape": [3]}, "INVALID_ARGUMENT",
         "BYTES data does not match shape [3]"),
        (grpc_infer(*[JPEG] * 5), "INVALID_ARGUMENT", "over the limit of 4"),
        (grpc_infer(png_bomb(3000, 3000)), "INVALID_ARGUMENT", "over the limit of 4000000"),
        (grpc_infer(JPEG, conf="much"), "INVALID_ARGUMENT", 'parameter "conf" must be a number'),
        (grpc_infer(), "INVALID_ARGUMENT", "the request holds no image"),
        (grpc_infer(JPEG, max_det=0), "INVALID_ARGUMENT", 'parameter "max_det" must be 1..10000'),
        (grpc_infer(b"\xff" * (MAX_BODY + 10)), "RESOURCE_EXHAUSTED", "larger than max"),
    ]  # fmt: skip
    results = grpc(server, [c for c, _, _ in cases] + [grpc_infer(JPEG), {"call": "live"}])
    for (call, code, text), result in zip(cases, results, strict=False):
        assert not result["ok"] and result["code"] == code, (call.get("parameters"), result)
        assert text in result["message"], result
    assert results[-2]["ok"] and results[-1] == {"ok": True, "value": True}


def test_200_requests_at_concurrency_16_while_health_answers(client: httpx.Client) -> None:
    before = metrics(client)
    requests = [(V1, v1_body(JPEG)) if i % 2 else (V2, v2_body(PNG)) for i in range(200)]
    done, live = threading.Event(), []

    def poll_live() -> None:
        with httpx.Client(base_url=str(client.base_url), timeout=10) as own:
            while not done.is_set():  # each check must answer within the client's 10 s
                live.append(own.get("/v2/health/live").status_code)
                time.sleep(0.02)

    poller = threading.Thread(target=poll_live)
    poller.start()
    try:
        with ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(lambda r: client.post(r[0], json=r[1]).status_code, requests))
    finally:
        done.set()
        poller.join()
    assert Counter(statuses) == {200: 200}
    assert len(live) >= 10 and set(live) == {200}
    after = metrics(client)
    for protocol in ("v1", "v2"):
        key = {"protocol": protocol, "outcome": "success"}
        delta = metric(after, "visionops_requests_total", **key) - metric(
            before, "visionops_requests_total", **key
        )
        assert delta == 100


def test_runs_uvloop_and_logs_one_access_line_per_request(
    server: Predictor, client: httpx.Client
) -> None:
    for _ in range(3):
        assert client.post(V2, json=v2_body(JPEG)).status_code == 200
    text = server.log_text()
    assert "event loop: uvloop.Loop" in text
    assert text.count('"POST /v2/models/') >= 3  # uvicorn's access log
    assert "kserve.trace" not in text  # latency lines and KServe's timing lines are off


def test_metrics_show_what_was_sent(server: Predictor, client: httpx.Client) -> None:
    before = metrics(client)
    sent = {("v1", "success"): 0, ("v2", "success"): 0, ("v1", "invalid_input"): 0}
    detections = images = 0
    for _ in range(3):
        response = client.post(V1, json=v1_body(JPEG, PNG, conf=CONF))
        sent["v1", "success"] += 1
        images += 2
        detections += sum(len(p["detections"]) for p in response.json()["predictions"])
    for _ in range(2):
        response = client.post(V2, json=v2_body(JPEG))
        sent["v2", "success"] += 1
        images += 1
        detections += next(
            o["data"][0] for o in response.json()["outputs"] if o["name"] == "num_detections"
        )
    for _ in range(2):
        assert client.post(V1, json=v1_body(b"junk")).status_code == 400
        sent["v1", "invalid_input"] += 1
    assert client.post(V2, content=b"x" * (MAX_BODY + 1)).status_code == 413
    sent["v2", "too_large"] = 1
    grpc_results = grpc(server, [grpc_infer(PNG), grpc_infer(b"junk")])
    assert [r["ok"] for r in grpc_results] == [True, False]
    sent["grpc", "success"], sent["grpc", "invalid_input"] = 1, 1
    images += 1
    detections += grpc_results[0]["outputs"]["num_detections"][0]
    after = metrics(client)

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    for (protocol, outcome), count in sent.items():
        assert delta("visionops_requests_total", protocol=protocol, outcome=outcome) == count
    for protocol in ("v1", "v2", "grpc"):
        requests = sum(c for (p, _), c in sent.items() if p == protocol)
        assert delta("visionops_request_duration_seconds_count", protocol=protocol) == requests
    assert sum(delta("visionops_images_total", protocol=p) for p in ("v1", "v2", "grpc")) == images
    assert delta("visionops_detections_per_image_count") == images
    assert delta("visionops_input_image_pixels_count") == images
    assert delta("visionops_input_image_bytes_count") == images
    assert delta("visionops_detection_confidence_count") == detections
    by_class = metric_sum(after, "visionops_detections_total") - metric_sum(
        before, "visionops_detections_total"
    )
    assert by_class == detections > 0
    version = client.get(f"/v2/models/{MODEL}").json()["parameters"]["model_version"]
    assert ("visionops_prediction_log_queued", frozenset()) in after
    deadline = time.monotonic() + 30
    while metric(metrics(client), "visionops_prediction_log_queued") > 0:  # idle: it drains
        assert time.monotonic() < deadline, "the prediction log never caught up"
        time.sleep(0.1)
    info = [labels for (name, labels), v in after.items() if name == "visionops_model_info"]
    assert len(info) == 1 and ("version", version) in info[0] and ("name", MODEL) in info[0]
    assert metric(after, "visionops_model_ready") == 1
    assert metric_sum(after, "visionops_prediction_log_dropped_total") == 0
    assert metric(after, "visionops_prediction_log_write_errors_total") == 0
    assert metric(after, "visionops_inference_in_flight") == 0


def test_reload_swaps_the_model_without_dropping_requests(
    client: httpx.Client, model_dir: Path
) -> None:
    import onnx

    old = client.get(f"/v2/models/{MODEL}").json()["parameters"]["model_version"]
    stop_event, statuses, versions = threading.Event(), [], set()

    def stream() -> None:
        with httpx.Client(base_url=str(client.base_url), timeout=60) as own:
            while not stop_event.is_set():
                response = own.post(V2, json=v2_body(JPEG, conf=0.001, max_det=1))
                statuses.append(response.status_code)
                if response.status_code == 200:
                    body = response.json()
                    names = next(o for o in body["outputs"] if o["name"] == "class_names")
                    versions.add((body["model_version"], tuple(names["data"])))

    def served(count: int, version: str | None = None) -> None:
        """Wait until `count` more answers (of `version`, if given) have come back."""
        seen = len(statuses)
        wait_until(
            lambda: len(statuses) >= seen + count
            and (version is None or any(v == version for v, _ in versions)),
            timeout=120, what=f"{count} answers while reloading",
        )  # fmt: skip

    streamer = threading.Thread(target=stream)
    streamer.start()
    try:
        served(3, old)
        # A new model in place: the same network with another version and other class names.
        graph = onnx.load(str(model_dir / "model.onnx"))
        graph.doc_string = "retrained"
        onnx.save(graph, str(model_dir / "model.onnx"))
        metadata = json.loads((model_dir / "metadata.json").read_text())
        metadata["names"] = ["Screw/new", "Cable/new", "Nut/new"]
        (model_dir / "metadata.json").write_text(json.dumps(metadata))
        response = client.post(f"/v2/repository/models/{MODEL}/load")
        assert response.status_code == 200, response.text
        assert response.json() == {"name": MODEL, "load": True}
        new = client.get(f"/v2/models/{MODEL}").json()["parameters"]["model_version"]
        served(3, new)
        # A broken model: the reload fails with the reason, the current model keeps serving.
        (model_dir / "model.onnx").rename(model_dir / "model.onnx.bak")
        response = client.post(f"/v2/repository/models/{MODEL}/load")
        (model_dir / "model.onnx.bak").rename(model_dir / "model.onnx")
        assert response.status_code == 503 and "no model.onnx" in response.json()["error"]
        served(3)
    finally:
        stop_event.set()
        streamer.join()
    meta = client.get(f"/v2/models/{MODEL}").json()["parameters"]
    assert meta["model_version"] != old and meta["class_names"] == metadata["names"]
    assert statuses and set(statuses) == {200}, Counter(statuses)
    assert {v for v, _ in versions} == {old, meta["model_version"]}
    assert all(set(names) <= set(metadata["names"]) for v, names in versions if v != old)
    assert client.get("/v2/health/ready").status_code == 200
    snapshot = metrics(client)
    assert metric(snapshot, "visionops_model_loads_total", outcome="success") == 2
    assert metric(snapshot, "visionops_model_loads_total", outcome="failure") == 1


def test_a_failing_prediction_log_store_fails_no_request(model_dir: Path, tmp_path: Path) -> None:
    """README: the prediction log never slows or fails a request, and the server stays up. Its
    store here refuses every write (the folder's parent is a file), with a queue of 4 records."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the log's parent folder should be\n")
    args = ["--model-dir", str(model_dir), "--prediction-log", str(blocker / "log")]
    env = {"VISIONOPS_LOG_FLUSH_EVERY_S": "0.2", "VISIONOPS_LOG_MAX_QUEUE": "4"}
    with (
        predictor_server(tmp_path / "failing-log", args, env=env) as broken,
        httpx.Client(base_url=broken.http, timeout=60) as own,
    ):
        statuses = [own.post(V1, json=v1_body(JPEG, PNG)).status_code for _ in range(6)]
        statuses += [own.post(V2, json=v2_body(PNG)).status_code for _ in range(6)]
        results = grpc(broken, [grpc_infer(JPEG) for _ in range(3)])
        deadline = time.monotonic() + 60
        while str(blocker) not in broken.log_text():  # the writes were tried, and failed
            assert time.monotonic() < deadline, broken.log_text()[-3000:]
            time.sleep(0.1)
        statuses += [own.post(V2, json=v2_body(JPEG)).status_code for _ in range(3)]
        assert statuses == [200] * 15 and [r["ok"] for r in results] == [True] * 3
        assert own.get("/v2/health/live").status_code == 200
        assert own.get("/v2/health/ready").status_code == 200
        snapshot = metrics(own)
        for protocol, count in (("v1", 6), ("v2", 9), ("grpc", 3)):
            labels = {"protocol": protocol, "outcome": "success"}
            assert metric(snapshot, "visionops_requests_total", **labels) == count
    assert not (blocker / "log").exists() and blocker.is_file()


def test_shutdown_writes_every_prediction_to_the_log(
    server: Predictor, client: httpx.Client, log_store: ObjectStore
) -> None:
    """Runs last: stops the server (SIGTERM) and reads the prediction log it flushed."""
    from visionops.monitoring.collect import read_window

    snapshot = metrics(client)
    images = sum(
        metric(snapshot, "visionops_images_total", protocol=p) for p in ("v1", "v2", "grpc")
    )
    stop(server.proc)
    assert server.proc.returncode == 0, server.log_text()[-3000:]
    now = datetime.now(UTC)
    records = read_window(log_store, now - timedelta(hours=2), now + timedelta(hours=1))
    assert len(records) == images > 200
    assert set(records["model_name"]) == {MODEL}
    assert records["model_version"].str.startswith("sha256-").all()
    assert {"brightness_mean", "img_width", "request_id"} <= set(records.columns)
