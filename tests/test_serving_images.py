"""Image retention in the real predictor (`python -m serving`) on 127.0.0.1, its prediction log in
the session's SeaweedFS behind a fault-injecting proxy (tests/faultproxy.py): every protocol keeps
the bytes it sent and names them in its record; 48 concurrent requests all answered, every image
kept or counted; S3 down during traffic, every request answered and what could not be kept
counted on /metrics, every record in S3 once the proxy is back. One predictor serves the module
(tests run in file order)."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest
from minio import Minio
from prometheus_client.parser import text_string_to_metric_families

from tests.faultproxy import FaultProxy
from tests.images import encode, textured
from tests.servers import Predictor, S3Server, predictor_server, wait_until
from visionops.config import DEFAULT_MODEL_NAME as MODEL
from visionops.storage import S3Store

pytestmark = pytest.mark.slow

V1 = f"/v1/models/{MODEL}:predict"
V2 = f"/v2/models/{MODEL}/infer"
GRPC_CLIENT = Path(__file__).with_name("grpc_client.py")
QUEUE_MB = 16  # the log's byte bound: images waiting for the store beyond half of it are spooled
SPOOL_MB = 1  # images may fill half of it


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _v2(*images: bytes) -> dict[str, Any]:
    tensor = {"name": "image", "datatype": "BYTES", "shape": [len(images)]}
    return {"inputs": [{**tensor, "data": [_b64(i) for i in images]}]}


def _metrics(http: httpx.Client) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(http.get("/metrics").text)
        for sample in family.samples
    }


def _sum(snapshot: dict, name: str) -> float:
    return sum(value for (n, _), value in snapshot.items() if n == name)


def _by_reason(now: dict, before: dict, name: str) -> dict[str, float]:
    """How much counter `name` grew since `before`, per `reason` label."""
    return {
        dict(labels)["reason"]: value - before.get((family, labels), 0)
        for (family, labels), value in now.items()
        if family == name
    }


class Stack:
    """The predictor, its S3 store (straight at SeaweedFS) and the proxy it reaches S3 through."""

    def __init__(self, server: Predictor, store: S3Store, proxy: FaultProxy) -> None:
        self.server, self.store, self.proxy = server, store, proxy
        self.http = httpx.Client(base_url=server.http, timeout=120)

    def value(self, name: str) -> float:
        return _sum(_metrics(self.http), name)

    def records(self) -> list[dict[str, Any]]:
        from visionops.monitoring.collect import read_window

        now = datetime.now(UTC)
        frame = read_window(self.store, now - timedelta(hours=2), now + timedelta(hours=1))
        return frame.to_dict("records") if len(frame) else []

    def wait_written(self, records: int) -> None:
        try:
            wait_until(
                lambda: self.value("visionops_prediction_log_written_total") >= records,
                timeout=90, what=f"{records} records written",
            )  # fmt: skip
        except TimeoutError as error:
            shown = {(n, *dict(k).values()): v for (n, k), v in _metrics(self.http).items()
                     if "prediction_log" in n}  # fmt: skip
            raise AssertionError(f"{error}: {shown}\n{self.server.log_text()[-5000:]}") from None


@pytest.fixture(scope="module")
def stack(
    s3: S3Server, untrained_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    client = Minio(s3.endpoint.removeprefix("http://"), s3.access_key, s3.secret_key, secure=False)
    bucket = f"images-{secrets.token_hex(3)}"
    client.make_bucket(bucket)
    store = S3Store(client, bucket, "predictions", endpoint=s3.endpoint)
    work = tmp_path_factory.mktemp("serving-images")
    with FaultProxy(int(s3.endpoint.rsplit(":", 1)[1])) as proxy:
        env = {
            **S3Server(proxy.url, s3.access_key, s3.secret_key).env(bucket),
            "VISIONOPS_LOG_IMAGES": "all",
            "VISIONOPS_LOG_FLUSH_EVERY_S": "0.5",
            "VISIONOPS_LOG_MAX_QUEUE_MB": str(QUEUE_MB),
            "VISIONOPS_LOG_SPOOL_DIR": str(work / "spool"),
            "VISIONOPS_LOG_SPOOL_MAX_MB": str(SPOOL_MB),
        }
        args = [f"--model_name={MODEL}", "--model-dir", str(untrained_model),
                "--prediction-log", f"s3://{bucket}/predictions"]  # fmt: skip
        with predictor_server(work / "predictor", args, env=env) as server:
            running = Stack(server, store, proxy)
            yield running
            running.http.close()


def _sha_key(records: list[dict[str, Any]], data: bytes) -> str:
    """The image key the records name for these bytes (exactly one distinct key)."""
    digest = hashlib.sha256(data).hexdigest()
    keys = {r["image_key"] for r in records if r["image_key"] and digest in r["image_key"]}
    assert len(keys) == 1, (digest, keys)
    return keys.pop()


def test_every_protocol_keeps_the_bytes_it_sent(stack: Stack) -> None:
    """v1, v2 JSON, v2 binary (UINT8) and gRPC: a JPEG, a 16-bit PNG and a grey PNG, each kept
    byte for byte under images/dt=<day>/<sha256>.<ext>, named by the record of its request."""
    import tritonclient.http as httpclient

    jpeg = encode(textured(120, 160, seed=11), ".jpg")
    png16 = encode(np.random.default_rng(12).integers(0, 65536, (90, 120), np.uint16), ".png")
    grey = encode(textured(100, 140, seed=13)[:, :, 0], ".png")
    grpc_jpeg = encode(textured(120, 160, seed=14), ".jpg")
    assert cv2.imdecode(np.frombuffer(png16, np.uint8), cv2.IMREAD_UNCHANGED).dtype == np.uint16

    response = stack.http.post(V1, json={"instances": [{"image": {"b64": _b64(jpeg)}}]},
                               headers={"x-request-id": "v1-jpeg"})  # fmt: skip
    assert response.status_code == 200, response.text
    response = stack.http.post(V2, json={**_v2(png16), "id": "v2-png16"})
    assert response.status_code == 200, response.text
    triton = httpclient.InferenceServerClient(stack.server.http.removeprefix("http://"))
    tensor = httpclient.InferInput("image", [len(grey)], "UINT8")
    tensor.set_data_from_numpy(np.frombuffer(grey, np.uint8), binary_data=True)
    triton.infer(MODEL, [tensor], request_id="v2-binary-grey")
    triton.close()
    calls = [{"call": "infer", "images": [_b64(grpc_jpeg)], "parameters": {}}]
    done = subprocess.run(
        [sys.executable, str(GRPC_CLIENT), stack.server.grpc, MODEL], input=json.dumps(calls),
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert json.loads(done.stdout)[0]["ok"], done.stdout

    stack.wait_written(4)
    records = stack.records()
    by_id = {r["request_id"]: r for r in records}
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    sent = [("v1-jpeg", jpeg, "jpg"), ("v2-png16", png16, "png"),
            ("v2-binary-grey", grey, "png"), (None, grpc_jpeg, "jpg")]  # fmt: skip
    for request_id, data, ext in sent:
        key = _sha_key(records, data)
        assert key == f"images/dt={day}/{hashlib.sha256(data).hexdigest()}.{ext}"
        if request_id is not None:
            assert by_id[request_id]["image_key"] == key
        assert stack.store.read_bytes(key) == data
    snapshot = _metrics(stack.http)
    assert _sum(snapshot, "visionops_prediction_log_images_retained_total") == 4
    assert _sum(snapshot, "visionops_prediction_log_images_retained_bytes_total") == sum(
        len(d) for d in (jpeg, png16, grey, grpc_jpeg)
    )
    assert _sum(snapshot, "visionops_prediction_log_images_dropped_total") == 0


def test_48_concurrent_requests_all_answered_every_image_kept_or_counted(stack: Stack) -> None:
    """A burst: 48 requests at once, 16 of them repeating one image. None fails; every image is
    in the store or counted as dropped, the repeated one stored once."""
    before = _metrics(stack.http)
    distinct = [encode(textured(96, 128, seed=100 + i), ".jpg") for i in range(32)]
    repeated = encode(textured(96, 128, seed=99), ".jpg")
    bodies = [_v2(d) for d in distinct] + [_v2(repeated)] * 16

    with ThreadPoolExecutor(48) as pool:
        statuses = list(pool.map(lambda b: stack.http.post(V2, json=b).status_code, bodies))
    assert statuses == [200] * 48
    written = before[("visionops_prediction_log_written_total", frozenset())] + 48
    stack.wait_written(int(written))
    after = _metrics(stack.http)

    def delta(name: str) -> float:
        return _sum(after, name) - _sum(before, name)

    retained = delta("visionops_prediction_log_images_retained_total")
    dropped = delta("visionops_prediction_log_images_dropped_total")
    repeats = delta("visionops_prediction_log_images_repeated_total")
    assert delta("visionops_prediction_log_dropped_total") == 0  # no record lost
    assert retained + dropped + repeats == 48 and retained >= 1
    records = stack.records()
    keys = {r["image_key"] for r in records if r["image_key"]}
    stored = set(stack.store.list_keys("images"))
    assert keys <= stored  # every key a record names is in the store
    same = [r for r in records if r["image_key"] and hashlib.sha256(repeated).hexdigest() in
            r["image_key"]]  # fmt: skip
    assert len({r["image_key"] for r in same}) <= 1


def test_s3_down_during_traffic_fails_no_request_and_counts_the_images_not_kept(
    stack: Stack,
) -> None:
    """S3 unreachable while 40 requests bring about 11 MB of images: every request 200; images
    wait in memory (their half of the 16 MB bound; beyond 4 MB moved to the spool) and in their
    half of the spool (0.5 MB); the rest is counted on /metrics by reason. Once S3 is back every
    record is in S3 or counted lost (a burst faster than the log's deferred feature rows can
    overrun the records' half of the bound: on a quiet machine 6 of 40 were), and every image is
    either in S3 byte for byte or counted."""
    before = _metrics(stack.http)
    rng = np.random.default_rng(7)
    images = [encode(rng.integers(0, 256, (300, 300, 3), np.uint8), ".png") for _ in range(40)]
    assert sum(len(i) for i in images) > (QUEUE_MB << 20) // 2 + (SPOOL_MB << 20)
    stack.proxy.down()
    try:
        with ThreadPoolExecutor(4) as pool:
            statuses = list(pool.map(lambda i: stack.http.post(V2, json=_v2(i)).status_code,
                                     images))  # fmt: skip
        assert statuses == [200] * 40
        wait_until(
            lambda: stack.value("visionops_prediction_log_images_dropped_total")
            > _sum(before, "visionops_prediction_log_images_dropped_total"),
            timeout=60, what="images counted as not kept",
        )  # fmt: skip
        outage = _metrics(stack.http)
        reasons = _by_reason(outage, before, "visionops_prediction_log_images_dropped_total")
        # the byte bound (queue_full, store_behind) or the spool's image share (spool_full)
        assert sum(reasons.values()) > 0 and reasons["no_features"] == 0, reasons
        assert outage[("visionops_prediction_log_spool_bytes", frozenset())] <= SPOOL_MB << 20
        assert stack.http.get("/v2/health/ready").status_code == 200
    finally:
        stack.proxy.up()

    def delta(name: str) -> float:
        return _sum(after, name) - _sum(before, name)

    def accounted() -> float:
        now = _metrics(stack.http)
        return sum(
            _sum(now, name) - _sum(before, name)
            for name in ("visionops_prediction_log_written_total",
                         "visionops_prediction_log_dropped_total")
        )  # fmt: skip

    wait_until(lambda: accounted() == 40, timeout=90, what="40 records written or counted")

    wait_until(
        lambda: stack.value("visionops_prediction_log_spool_bytes") == 0,
        timeout=60, what="the spool shipped",
    )  # fmt: skip
    after = _metrics(stack.http)
    lost = _by_reason(after, before, "visionops_prediction_log_dropped_total")
    assert {r for r, n in lost.items() if n} <= {"queue_full"}, lost  # only the byte bound
    assert delta("visionops_prediction_log_written_total") + sum(lost.values()) == 40
    retained = delta("visionops_prediction_log_images_retained_total")
    dropped = delta("visionops_prediction_log_images_dropped_total")
    assert retained + dropped == 40 and retained >= 1 and dropped >= 1
    digests = {hashlib.sha256(i).hexdigest(): i for i in images}
    records = [r for r in stack.records() if r["image_key"]
               and r["image_key"].rsplit("/", 1)[1][:64] in digests]  # fmt: skip
    kept = [r for r in records if stack.store.exists(r["image_key"])]
    assert len(kept) == retained
    for record in kept:
        assert stack.store.read_bytes(record["image_key"]) == digests[record["image_key"][-68:-4]]
