"""Where the predictor's model comes from: the registry (`models:/...@champion` on a real MLflow
server with S3 artifacts) and an `s3://` prefix (a real S3 server). A missing or corrupt model
leaves the server up and not ready; `POST .../load` then loads it, and picks up a promotion.

Each test runs against `python -m serving` as a process, and against the predictor image as the
kind overlay runs it (tests/containers.py), then with the registry served by the MLflow image as
the overlay's Deployment runs it."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.containers import predictor_container
from tests.images import encode, textured
from tests.k8s import find
from tests.servers import BIN, MlflowServer, Predictor, predictor_server
from visionops.config import DEFAULT_MODEL_NAME as MODEL

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("where", ["process", "container"])]

V2 = f"/v2/models/{MODEL}/infer"
LOAD = f"/v2/repository/models/{MODEL}/load"
IMAGE = {
    "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [""]}],
    "parameters": {"conf": 0.001},
}


def infer(client: httpx.Client) -> httpx.Response:
    import base64

    body = json.loads(json.dumps(IMAGE))
    body["inputs"][0]["data"] = [base64.b64encode(encode(textured(64, 96))).decode()]
    return client.post(V2, json=body)


def retrained_copy(model_dir: Path, target: Path, names: list[str]) -> Path:
    """The same network as another version: new ONNX bytes, other class names."""
    import onnx

    shutil.copytree(model_dir, target)
    graph = onnx.load(str(target / "model.onnx"))
    graph.doc_string = f"retrained as {target.name}"
    onnx.save(graph, str(target / "model.onnx"))
    metadata = json.loads((target / "metadata.json").read_text())
    (target / "metadata.json").write_text(json.dumps({**metadata, "names": names}))
    return target


@contextmanager
def started(
    where: str,
    request: pytest.FixtureRequest,
    workdir: Path,
    source: list[str],
    env: dict[str, str],
    *,
    log_bucket: str,
    command: list[str] | None = None,
) -> Iterator[Predictor]:
    """The predictor on model source `source`: a process, or its image as the cluster runs it
    (prediction log in the S3 bucket `log_bucket`, created here)."""
    if where == "process":
        with predictor_server(workdir, source, env=env, command=command, wait_ready=False) as s:
            yield s
        return
    from minio import Minio

    request.getfixturevalue("predictor_image")
    s3 = request.getfixturevalue("s3")
    client = Minio(s3.endpoint.removeprefix("http://"), s3.access_key, s3.secret_key, secure=False)
    if not client.bucket_exists(log_bucket):
        client.make_bucket(log_bucket)
    service = find(request.getfixturevalue("kind_docs"), "InferenceService", "visionops-predictor")
    with predictor_container(
        service, workdir, s3=s3, bucket=log_bucket, model_args=source, env=env, wait_ready=False
    ) as server:
        yield server


def assert_not_ready(client: httpx.Client, reason: str) -> None:
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 503
    assert client.get(f"/v2/models/{MODEL}/ready").status_code == 503
    response = infer(client)
    assert response.status_code == 503 and reason in response.json()["error"], response.text
    assert reason in client.get(f"/v2/models/{MODEL}").json()["parameters"]["load_error"]


def test_registry_champion_is_served_and_a_promotion_is_picked_up(
    where: str,
    request: pytest.FixtureRequest,
    untrained_model: Path,
    tmp_path: Path,
    settings_env: pytest.MonkeyPatch,
) -> None:
    from visionops.models.artifact import MODEL_ARTIFACT_DIR
    from visionops.tracking import connect

    # The session's MLflow server (a process, or the MLflow image's container) is shared: this
    # test's registered model has its own name, the predictor still serves it as MODEL.
    mlflow: MlflowServer = request.getfixturevalue(
        "mlflow" if where == "process" else "mlflow_in_container"
    )
    registered = f"serving-sources-champion-{where}"
    settings_env.setenv("VISIONOPS_MLFLOW_TRACKING_URI", mlflow.url)
    uri = f"models:/{registered}@champion"
    command = [str(BIN / "visionops"), "serve", "--model_name", MODEL]
    with started(
        where, request, tmp_path / "predictor", ["--model-uri", uri], mlflow.env(),
        log_bucket="serving-sources-log", command=command,
    ) as server, httpx.Client(base_url=server.http, timeout=60) as client:  # fmt: skip
        # Nothing registered yet: up, not ready, and the log says why.
        assert_not_ready(client, f"Registered Model with name={registered} not found")
        assert f"model {MODEL} from {uri} not loaded" in server.log_text()

        tracking = connect()
        client_ml = tracking.client
        client_ml.create_registered_model(registered)

        def register(model_dir: Path) -> str:
            run = client_ml.create_run(tracking.experiment_id)
            client_ml.log_artifacts(run.info.run_id, str(model_dir), MODEL_ARTIFACT_DIR)
            source = f"{run.info.artifact_uri}/{MODEL_ARTIFACT_DIR}"
            version = client_ml.create_model_version(registered, source, run_id=run.info.run_id)
            client_ml.set_registered_model_alias(registered, "champion", version.version)
            return str(version.version)

        first = register(untrained_model)
        response = client.post(LOAD)
        assert response.status_code == 200, (response.text, server.log_text()[-3000:])
        assert client.get("/v2/health/ready").status_code == 200
        response = infer(client)
        assert response.status_code == 200 and response.json()["model_version"] == first == "1"

        names = ["Nut/crack", "Nut/dent", "Plate/scratch"]
        second = register(retrained_copy(untrained_model, tmp_path / "v2", names))
        assert infer(client).json()["model_version"] == first  # until the reload
        response = client.post(LOAD)
        assert response.status_code == 200, response.text
        meta = client.get(f"/v2/models/{MODEL}").json()
        assert meta["versions"] == [second] == ["2"]
        assert meta["parameters"]["class_names"] == names
        assert meta["parameters"]["model_source"] == uri
        assert infer(client).json()["model_version"] == second
        metrics = client.get("/metrics").text
        assert f'visionops_model_info{{engine="onnxruntime",name="{MODEL}"' in metrics
        assert 'version="2"' in metrics


def test_s3_model_corrupt_then_fixed(
    where: str,
    request: pytest.FixtureRequest,
    s3_settings: object,
    untrained_model: Path,
    tmp_path: Path,
) -> None:
    from visionops.config import get_settings
    from visionops.storage import open_store

    settings = get_settings()
    uri = f"s3://{settings.s3_bucket}/models/{MODEL}/champion"
    store = open_store(uri, settings)
    store.upload_file(untrained_model / "metadata.json", "metadata.json")
    store.write_bytes("model.onnx", b"this is not an ONNX graph")
    env = {k: v for k, v in (("VISIONOPS_S3_ENDPOINT", settings.s3_endpoint),
                             ("VISIONOPS_S3_BUCKET", settings.s3_bucket)) if v}  # fmt: skip
    assert settings.s3_access_key and settings.s3_secret_key
    env["VISIONOPS_S3_ACCESS_KEY"] = settings.s3_access_key.get_secret_value()
    env["VISIONOPS_S3_SECRET_KEY"] = settings.s3_secret_key.get_secret_value()
    with (
        started(
            where, request, tmp_path / "predictor", ["--model-uri", uri], env,
            log_bucket=settings.s3_bucket,
        ) as server,
        httpx.Client(base_url=server.http, timeout=60) as client,
    ):  # fmt: skip
        assert_not_ready(client, "cannot load ONNX model")
        assert f"model {MODEL} from {uri} not loaded: cannot load ONNX model" in server.log_text()
        store.upload_file(untrained_model / "model.onnx", "model.onnx")
        response = client.post(LOAD)
        assert response.status_code == 200, response.text
        assert client.get("/v2/health/ready").status_code == 200
        response = infer(client)
        assert response.status_code == 200, response.text
        assert response.json()["model_version"].startswith("sha256-")
        meta = client.get(f"/v2/models/{MODEL}").json()["parameters"]
        assert meta["model_source"] == uri and "load_error" not in meta
