"""The predictor under faults: its prediction log in a real SeaweedFS behind a fault-injecting
proxy, SeaweedFS killed and restarted for real, the predictor stopped with SIGTERM mid-outage
and mid-load, reloads during MLflow and S3 outages. Every scenario counts exactly: requests
answered, records in S3, records in the spool, records lost (always zero here).
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.images import encode, textured
from tests.servers import Predictor, predictor_server, wait_until
from visionops.config import DEFAULT_MODEL_NAME as MODEL
from visionops.config import get_settings

pytestmark = pytest.mark.faults

V2 = f"/v2/models/{MODEL}/infer"
LOAD = f"/v2/repository/models/{MODEL}/load"
GRACE_S, FLUSH_TIMEOUT_S = 30, 5  # the shutdown grace period is the default
JPEG = base64.b64encode(encode(textured(120, 160, seed=3), ".jpg")).decode()


def _body(images: int = 1) -> dict[str, object]:
    tensor = {"name": "image", "datatype": "BYTES", "shape": [images], "data": [JPEG] * images}
    return {"inputs": [tensor], "parameters": {"conf": 0.001, "max_det": 3}}


def _metrics(server: Predictor) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = httpx.get(f"{server.http}/metrics", timeout=30).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(server: Predictor, name: str) -> float:
    """The sum of every sample of `name` (over its labels)."""
    return sum(v for (n, _), v in _metrics(server).items() if n == name)


def _log_store():  # type: ignore[no-untyped-def]
    from visionops.storage import default_store

    settings = get_settings()
    return default_store(settings.log_prefix, settings)


def _stored(direct_endpoint: str | None = None) -> list[str]:
    """Request ids of every record in the log's S3 store (each object read once); through the
    proxy, or straight at SeaweedFS when the proxy is down."""
    from visionops.monitoring.collect import read_window
    from visionops.storage import S3Store, s3_client

    store = _log_store()
    if direct_endpoint is not None:
        settings = get_settings().model_copy(update={"s3_endpoint": direct_endpoint})
        store = S3Store(s3_client(settings), store.bucket, store.prefix, direct_endpoint)
    now = datetime.now(UTC)
    frame = read_window(store, now - timedelta(hours=2), now + timedelta(hours=1))
    return list(frame["request_id"]) if len(frame) else []


@contextmanager
def _predictor(workdir: Path, model_dir: Path) -> Iterator[Predictor]:
    """`python -m serving` logging to the fault stack's S3 (through the proxy), with a spool."""
    settings = get_settings()
    log = f"s3://{settings.s3_bucket}/{settings.log_prefix}"
    env = {
        "VISIONOPS_LOG_SPOOL_DIR": str(workdir.parent / "spool"),
        "VISIONOPS_LOG_FLUSH_EVERY_S": "1",
        "VISIONOPS_LOG_FLUSH_TIMEOUT_S": str(FLUSH_TIMEOUT_S),
    }
    args = [f"--model_name={MODEL}", "--model-dir", str(model_dir), "--prediction-log", log]
    with predictor_server(workdir, args, env=env) as server:
        yield server


def _send(server: Predictor, requests: int, images: int = 1) -> list[int]:
    """Send requests, 4 at a time; their status codes, in order."""

    def one(_: int) -> int:
        return httpx.post(f"{server.http}{V2}", json=_body(images), timeout=120).status_code

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(one, range(requests)))


def _spooled(spool: Path) -> int:
    from visionops.monitoring.log_spool import LogSpool

    return LogSpool(spool, _log_store(), 1 << 30).records


def _sigterm(server: Predictor) -> float:
    """Stop the predictor as Kubernetes does; the seconds it took to exit."""
    started = time.monotonic()
    os.killpg(server.proc.pid, signal.SIGTERM)
    try:
        server.proc.wait(timeout=GRACE_S + FLUSH_TIMEOUT_S + 30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the predictor ignored SIGTERM; log:\n{server.log_text()[-3000:]}")
    return time.monotonic() - started


def test_s3_killed_and_restarted_during_traffic(faults, untrained_model: Path, tmp_path: Path):
    """Every request answered; while S3 is gone /metrics shows the write errors and the age of
    the oldest unwritten record; once it is back every record is in S3, exactly once."""
    with _predictor(tmp_path / "predictor", untrained_model) as server:
        assert _send(server, 10) == [200] * 10
        wait_until(
            lambda: _value(server, "visionops_prediction_log_written_total") == 10,
            timeout=60, what="the first 10 records written",
        )  # fmt: skip
        faults.s3.process.kill()
        assert _send(server, 20) == [200] * 20
        wait_until(
            lambda: _value(server, "visionops_prediction_log_write_errors_total") > 0,
            timeout=60, what="a failed write",
        )  # fmt: skip
        time.sleep(2)
        outage = _metrics(server)
        waiting = sum(
            v for (n, _), v in outage.items()
            if n in ("visionops_prediction_log_pending", "visionops_prediction_log_spool_records")
        )  # fmt: skip
        assert waiting == 20
        age = outage[("visionops_prediction_log_oldest_unwritten_age_seconds", frozenset())]
        assert age >= 2

        faults.s3.process.start()
        wait_until(
            lambda: _value(server, "visionops_prediction_log_written_total") == 30,
            timeout=90, what="the 20 records of the outage written",
        )  # fmt: skip
        after = _metrics(server)
        assert after[("visionops_prediction_log_pending", frozenset())] == 0
        assert after[("visionops_prediction_log_spool_records", frozenset())] == 0
        assert after[("visionops_prediction_log_oldest_unwritten_age_seconds", frozenset())] == 0
        assert _value(server, "visionops_prediction_log_dropped_total") == 0
        assert _value(server, "visionops_requests_total") == 30
        stored = _stored()
        assert len(stored) == len(set(stored)) == 30


def test_sigterm_during_an_s3_outage_spools_and_the_next_start_ships(
    faults, untrained_model: Path, tmp_path: Path
):
    """A rolling update while S3 is down: the old pod answers every request, puts what S3 did not
    take in the spool within the flush timeout and exits 0; the next pod ships it."""
    with _predictor(tmp_path / "first", untrained_model) as first:
        assert _send(first, 5) == [200] * 5
        wait_until(
            lambda: _value(first, "visionops_prediction_log_written_total") == 5,
            timeout=60, what="the first 5 records written",
        )  # fmt: skip
        faults.s3_proxy.down()
        assert _send(first, 15) == [200] * 15
        took = _sigterm(first)
        assert first.proc.returncode == 0, first.log_text()[-3000:]
        assert took < GRACE_S + FLUSH_TIMEOUT_S + 10, took
        assert "15 in the spool, 0 lost" in first.log_text()
    assert len(_stored(faults.s3.endpoint)) == 5
    assert _spooled(tmp_path / "spool") == 15

    faults.s3_proxy.up()
    with _predictor(tmp_path / "second", untrained_model) as second:
        wait_until(lambda: len(_stored()) == 20, timeout=90, what="the spool shipped")
        assert _spooled(tmp_path / "spool") == 0
        assert _value(second, "visionops_prediction_log_dropped_total") == 0
    stored = _stored()
    assert len(stored) == len(set(stored)) == 20


def test_sigterm_while_s3_hangs_meets_the_deadline(faults, untrained_model: Path, tmp_path: Path):
    """S3 accepts connections and never answers: shutdown still ends within the grace period
    plus the flush timeout, with every record in the spool, and nothing is written twice when
    the next start ships them."""
    from tests.faultproxy import Fault

    with _predictor(tmp_path / "first", untrained_model) as first:
        faults.s3_proxy.add(Fault("hang", times=None))
        assert _send(first, 12) == [200] * 12
        time.sleep(2)  # a batch is cut and its write hangs
        took = _sigterm(first)
        assert first.proc.returncode == 0 and took < GRACE_S + FLUSH_TIMEOUT_S + 10, took
        assert "12 in the spool, 0 lost" in first.log_text()
    faults.s3_proxy.clear()
    with _predictor(tmp_path / "second", untrained_model):
        wait_until(lambda: len(_stored()) == 12, timeout=90, what="the spool shipped")
        assert _spooled(tmp_path / "spool") == 0
    stored = _stored()
    assert len(stored) == len(set(stored)) == 12


def test_sigterm_under_load_answers_every_request_in_flight(
    faults, untrained_model: Path, tmp_path: Path
):
    def all_arrived_some_in_flight() -> bool:
        """Every request reached the predictor (answered or in flight) and some are in flight:
        16 images of 640x480 a request keep the two inference workers busy for seconds."""
        in_flight = _value(server, "visionops_inference_in_flight")
        answered = _value(server, "visionops_requests_total")
        return in_flight >= 1 and in_flight + answered >= 8

    large = base64.b64encode(encode(textured(480, 640, seed=4), ".jpg")).decode()
    body = {
        **_body(),
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [16], "data": [large] * 16}],
    }
    with _predictor(tmp_path / "predictor", untrained_model) as server:
        with ThreadPoolExecutor(8) as pool:
            futures = [
                pool.submit(lambda: httpx.post(f"{server.http}{V2}", json=body, timeout=120))
                for _ in range(8)
            ]
            wait_until(all_arrived_some_in_flight, timeout=60, what="8 requests at the predictor")
            _sigterm(server)
            statuses = [f.result().status_code for f in futures]
        assert statuses == [200] * 8
        assert server.proc.returncode == 0
    stored = _stored()
    assert len(stored) == 8 * 16


def test_reloads_during_outages_name_the_service_and_keep_serving(
    faults, untrained_model: Path, tmp_path: Path
):
    """A predictor following models:/NAME@champion: a reload while MLflow is down, then while the
    S3 behind MLflow is down, answers 503 naming that service; the loaded model answers every
    request meanwhile; once both are back the reload picks up the new champion."""
    from visionops.tracking import connect
    from visionops.training.registry import CHAMPION, Registry

    settings = get_settings()
    tracking = connect(settings)
    client = tracking.client

    def champion(model_dir: Path) -> str:
        run = client.create_run(tracking.experiment_id)
        client.log_artifacts(run.info.run_id, str(model_dir), "model")
        Registry().ensure_model()
        source = f"{run.info.artifact_uri}/model"
        mv = client.create_model_version(settings.model_name, source, run_id=run.info.run_id)
        client.set_registered_model_alias(settings.model_name, CHAMPION, mv.version)
        return str(mv.version)

    assert champion(untrained_model) == "1"
    uri = f"models:/{settings.model_name}@champion"
    args = [f"--model_name={MODEL}", "--model-uri", uri, "--prediction-log", "off"]
    with (
        predictor_server(tmp_path / "predictor", args) as server,
        httpx.Client(base_url=server.http, timeout=120) as http,
    ):
        assert champion(untrained_model) == "2"
        statuses: list[int] = []
        stop = threading.Event()

        def traffic() -> None:
            with httpx.Client(base_url=server.http, timeout=120) as own:
                while not stop.is_set():
                    statuses.append(own.post(V2, json=_body()).status_code)

        streamer = threading.Thread(target=traffic)
        streamer.start()
        try:
            faults.mlflow_proxy.down()
            response = http.post(LOAD)
            assert response.status_code == 503
            error = response.json()["error"]
            assert f"cannot reach MLflow at {faults.mlflow_proxy.url}" in error, error
            faults.mlflow_proxy.up()
            faults.s3_proxy.down()
            response = http.post(LOAD)
            assert response.status_code == 503
            error = response.json()["error"]
            assert "StorageError: the artifact store behind MLflow failed" in error, error
            faults.s3_proxy.up()
            assert http.get(f"/v2/models/{MODEL}").json()["versions"] == ["1"]
            response = http.post(LOAD)
            assert response.status_code == 200, response.text
        finally:
            stop.set()
            streamer.join()
        assert http.get(f"/v2/models/{MODEL}").json()["versions"] == ["2"]
        assert len(statuses) > 5 and set(statuses) == {200}


def test_collect_names_s3_and_its_endpoint(faults, tmp_path: Path):
    """The monitoring pipeline's collect step (one call of `collect_window`) with S3 down, with
    S3 resetting every connection, and with S3 answering 503: the error names S3 and where it
    is, and what happened on the way, never MLflow."""
    from tests.faultproxy import Fault
    from visionops.errors import StorageError
    from visionops.monitoring.collect import collect_window

    s3 = faults.s3_proxy.url
    out = tmp_path / "window.parquet"
    faults.s3_proxy.down()
    with pytest.raises(StorageError, match=rf"cannot reach S3 at {s3} to list .*refused"):
        collect_window("", out, hours=1)
    faults.s3_proxy.up()
    faults.s3_proxy.add(Fault("reset", times=None))
    with pytest.raises(StorageError, match=rf"cannot reach S3 at {s3} to list .*was reset"):
        collect_window("", out, hours=1)
    faults.s3_proxy.clear()
    faults.s3_proxy.add(Fault("status", times=None))
    with pytest.raises(StorageError, match=rf"S3 at {s3} failed to list .*it answered 503"):
        collect_window("", out, hours=1)
    assert not out.exists()  # nothing half-written
