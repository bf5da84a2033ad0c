"""A registered version as an MLflow Model, against a real `mlflow server` (artifacts in S3).

The session's trained model directory (written by `visionops train`, so it carries MLmodel) is
registered through the real gate; `mlflow.pyfunc.load_model`, `mlflow models serve` and the KServe
predictor (`python -m serving`, serving under the registered model's name) must then give the same
detections on the same images. A version made before the flavour existed (no MLmodel) must still
serve through the predictor.
"""

from __future__ import annotations

import base64
import os
import subprocess
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from tests.images import encode, textured
from tests.servers import (
    BIN,
    MlflowServer,
    free_port,
    http_status,
    predictor_server,
    stop,
    wait_until,
)
from tests.trained import ObservedTraining
from visionops.config import Settings
from visionops.inference.mlflow_model import OUTPUT_COLUMNS, serve_requirements
from visionops.models.artifact import METADATA_JSON, MODEL_ARTIFACT_DIR, MODEL_ONNX
from visionops.tracking import connect
from visionops.training.promotion import register

pytestmark = pytest.mark.slow

PARAMS = {"conf": 0.001, "iou": 0.7, "max_det": 20}
IMAGES = [encode(textured(64, 96)), encode(textured(80, 64, seed=1), ".png")]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def candidate_run(settings: Settings, model_dir: Path, files: list[str] | None = None) -> str:
    """A FINISHED run holding `model_dir` (or only `files` of it) with an evaluation logged."""
    tracking = connect(settings)
    client = tracking.client
    run_id = client.create_run(
        tracking.experiment_id,
        tags={"visionops.eval.data_hash": "0" * 64, "visionops.git_commit": "0123abc"},
    ).info.run_id
    if files is None:
        client.log_artifacts(run_id, str(model_dir), MODEL_ARTIFACT_DIR)
    for name in files or []:
        client.log_artifact(run_id, str(model_dir / name), MODEL_ARTIFACT_DIR)
    client.log_metric(run_id, "eval.map50", 0.5)
    client.log_metric(run_id, "eval.map50_95", 0.3)
    client.set_terminated(run_id, "FINISHED")
    return run_id


def predictor_rows(client: httpx.Client, name: str) -> pd.DataFrame:
    """The predictor's v1 detections of IMAGES as rows shaped like the pyfunc's output."""
    body = {"instances": [{"image": {"b64": b64(i)}} for i in IMAGES], "parameters": PARAMS}
    response = client.post(f"/v1/models/{name}:predict", json=body)
    assert response.status_code == 200, response.text
    rows = [
        (index, *r["box"], r["score"], r["class_id"], r["class_name"])
        for index, prediction in enumerate(response.json()["predictions"])
        for r in prediction["detections"]
    ]
    return pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS))


def assert_same(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    """Same detections in the same order; the predictor rounds boxes to 0.01."""
    assert list(got.columns) == list(OUTPUT_COLUMNS)
    assert len(got) == len(expected) > 0
    for column in ("image_index", "class_id", "class_name"):
        assert got[column].tolist() == expected[column].tolist()
    boxes = ["x1", "y1", "x2", "y2"]
    np.testing.assert_allclose(
        got[boxes].to_numpy(float), expected[boxes].to_numpy(float), atol=0.01
    )
    np.testing.assert_allclose(got["score"].to_numpy(float), expected["score"], atol=1e-5)


def mlflow_models_serve(tmp_path: Path, uri: str, server: MlflowServer) -> tuple[str, Any]:
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": server.url,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # it execs the venv's uvicorn
    }
    log = (tmp_path / "mlflow-serve.log").open("wb")
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "models", "serve", "-m", uri, "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_status(f"{url}/ping") == 200, timeout=300, what="mlflow serve",
                   proc=proc)  # fmt: skip
    except BaseException:
        stop(proc)
        log.close()
        raise RuntimeError((tmp_path / "mlflow-serve.log").read_text()[-4000:]) from None
    return url, (proc, log)


def test_version_is_an_mlflow_model_with_the_predictors_detections(
    mlflow_settings: Settings,
    mlflow: MlflowServer,
    trained: ObservedTraining,
    settings_env: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    from mlflow import pyfunc

    model_dir = trained.result.model_dir
    assert (model_dir / "MLmodel").is_file()
    assert (model_dir / "requirements.txt").read_text().split() == serve_requirements()
    first = register(candidate_run(mlflow_settings, model_dir))
    assert first.alias == "champion"
    name = mlflow_settings.model_name
    uri = f"models:/{name}@champion"
    settings_env.setenv("MLFLOW_TRACKING_URI", mlflow.url)

    model = pyfunc.load_model(uri)
    schema = model.metadata.get_input_schema()
    assert schema.input_names() == ["image"]
    assert model.metadata.get_params_schema().to_dict() == [
        {"name": "conf", "default": 0.25, "shape": None, "type": "double"},
        {"name": "iou", "default": 0.7, "shape": None, "type": "double"},
        {"name": "max_det", "default": 300, "shape": None, "type": "long"},
    ]
    detected = model.predict(pd.DataFrame({"image": IMAGES}), params=PARAMS)
    as_base64 = model.predict(pd.DataFrame({"image": [b64(i) for i in IMAGES]}), params=PARAMS)
    pd.testing.assert_frame_equal(detected, as_base64)
    assert set(detected["image_index"]) == {0, 1}

    # Bad input: MLflow's invalid-input error, naming the missing column or the row.
    with pytest.raises(MlflowException, match=r"missing inputs \['image'\]"):
        model.predict(pd.DataFrame({"picture": IMAGES}))
    with pytest.raises(MlflowException, match="row 1: not an image") as error:
        model.predict(pd.DataFrame({"image": [IMAGES[0], b"not an image"]}))
    assert error.value.error_code == "INVALID_PARAMETER_VALUE"

    # The same version through the KServe predictor, and through `mlflow models serve`.
    with (
        predictor_server(tmp_path / "predictor", ["--model-uri", uri], env=mlflow.env()) as pred,
        httpx.Client(base_url=pred.http, timeout=60) as client,
    ):
        assert_same(detected, predictor_rows(client, name))

        url, (proc, log) = mlflow_models_serve(tmp_path, uri, mlflow)
        try:
            with httpx.Client(base_url=url, timeout=60) as serve:
                split = {"columns": ["image"], "data": [[b64(i)] for i in IMAGES]}
                response = serve.post(
                    "/invocations", json={"dataframe_split": split, "params": PARAMS}
                )
                assert response.status_code == 200, response.text
                served = pd.DataFrame(response.json()["predictions"])
                assert_same(served[list(OUTPUT_COLUMNS)], detected)

                bad = {"columns": ["image"], "data": [[b64(IMAGES[0])], [b64(b"GIF89a")]]}
                response = serve.post("/invocations", json={"dataframe_split": bad})
                assert response.status_code == 400
                assert response.json()["error_code"] == "INVALID_PARAMETER_VALUE"
                assert "row 1: not an image" in response.json()["message"]
                wrong = {"columns": ["picture"], "data": [[b64(IMAGES[0])]]}
                response = serve.post("/invocations", json={"dataframe_split": wrong})
                assert response.status_code == 400 and "image" in response.json()["message"]
                assert serve.get("/ping").status_code == 200  # still up
        finally:
            stop(proc)
            log.close()

        # A version made before the flavour (model.onnx + metadata.json only): pyfunc loading
        # says what is missing; the predictor still serves it once it is the champion.
        old_run = candidate_run(mlflow_settings, model_dir, [MODEL_ONNX, METADATA_JSON])
        tracking = connect(mlflow_settings)
        run = tracking.client.get_run(old_run)
        source = f"{run.info.artifact_uri}/{MODEL_ARTIFACT_DIR}"
        old = tracking.client.create_model_version(name, source, run_id=old_run).version
        with pytest.raises(MlflowException, match="MLmodel"):
            pyfunc.load_model(f"models:/{name}/{old}")
        tracking.client.set_registered_model_alias(name, "champion", old)
        assert client.post(f"/v2/repository/models/{name}/load").status_code == 200
        assert client.get(f"/v2/models/{name}").json()["parameters"]["model_version"] == old
        assert_same(predictor_rows(client, name), detected)


def test_serve_requirements_are_the_serve_extra_pinned_by_the_constraints() -> None:
    import tomllib

    from packaging.requirements import Requirement

    root = Path(__file__).resolve().parents[1]
    extra = tomllib.loads((root / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]["serve"]
    pins = {}
    for line in (root / "requirements" / "constraints.txt").read_text().splitlines():
        if "==" in line:
            pkg, version = line.split("==", 1)
            pins[pkg.strip().lower().replace("_", "-")] = version.strip()
    expected = []
    for text in extra:
        pkg = Requirement(text).name.lower().replace("_", "-")
        expected.append(f"{pkg}=={pins[pkg]}")
    assert serve_requirements() == expected, (
        "visionops/inference/serve_requirements.txt must be the serve extra pinned from "
        "requirements/constraints.txt:\n" + "\n".join(expected)
    )
