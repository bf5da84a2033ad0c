"""One typed settings object, read once from the environment (prefix `VISIONOPS_`).

Everything configurable lives here, so a newcomer finds every knob in one file and nothing else in
the project reads `os.environ` for its own configuration. `bootstrap.py` exports the few values that
third-party libraries read from the environment themselves (MLflow, boto3, KServe storage).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from visionops.errors import ConfigError

ENV_PREFIX = "VISIONOPS_"
DEFAULT_MODEL_NAME = "visionops-yolov8n"
IMAGE_REGISTRY = "localhost:5001"
IMAGE_TAG = "0.1.0"

IMAGE_POLICIES = ("none", "all", "sample:<fraction>", "uncertain")


def parse_image_policy(text: str) -> tuple[str, float]:
    """(kind, sample fraction) of a `VISIONOPS_LOG_IMAGES` value; ValueError naming the problem."""
    value = text.strip().lower()
    if value in ("none", "all", "uncertain"):
        return value, 1.0 if value == "all" else 0.0
    if value.startswith("sample:"):
        raw = value.split(":", 1)[1]
        try:
            fraction = float(raw)
        except ValueError:
            fraction = -1.0
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"sample:<fraction> needs a fraction between 0 and 1, got {raw!r}")
        return "sample", fraction
    raise ValueError(f"must be one of {', '.join(IMAGE_POLICIES)}; got {text!r}")


def parse_score_band(text: str) -> tuple[float, float]:
    """(low, high) of a score band such as `0.25,0.6`; ValueError naming the problem."""
    try:
        low, high = (float(p.strip()) for p in text.split(","))
    except ValueError:
        raise ValueError(
            f"must be two scores 'low,high' such as '0.25,0.6', got {text!r}"
        ) from None
    if not 0.0 <= low < high <= 1.0:
        raise ValueError(f"needs 0 <= low < high <= 1, got {text!r}")
    return low, high


class Settings(BaseSettings):
    """VisionOps configuration; each field is the env var `VISIONOPS_<FIELD>`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="ignore", frozen=True, validate_default=True
    )

    # Where everything local goes: datasets, MLflow store, Ultralytics config, caches, reports.
    data_dir: Path = Path(".visionops")
    debug: bool = Field(False, description="Show tracebacks for errors the CLI reports.")

    # Tracking and registry (MLflow). Unset: sqlite store + local artifacts under data_dir.
    mlflow_tracking_uri: str | None = None
    mlflow_experiment: str = "visionops"
    model_name: str = DEFAULT_MODEL_NAME

    # Object storage (MinIO on a cluster, any S3 server locally). Unset endpoint: local disk.
    s3_endpoint: str | None = None
    s3_access_key: SecretStr | None = None
    s3_secret_key: SecretStr | None = None
    s3_region: str = "us-east-1"
    s3_bucket: str = "visionops"

    # Training defaults (CLI flags and pipeline parameters override them).
    imgsz: int = Field(320, ge=32, le=2048)
    epochs: int = Field(30, ge=1)
    batch: int = Field(16, ge=1)
    device: str = Field("auto", description="auto, cpu, cuda:0, ...")
    seed: int = 0

    # Promotion gate (training/gate.py): a version becomes `champion` only if it meets both
    # minimums and its mAP50-95 beats the champion's, on the same evaluation data, by > margin.
    gate_min_map50: float = Field(0.05, ge=0, le=1)
    gate_min_map50_95: float = Field(0.0, ge=0, le=1)
    gate_margin: float = Field(0.005, ge=0, le=1)
    # INT8 variant (training/quantize.py): calibrated on a sample of training images, shipped only
    # if its mAP50-95 on the evaluation split is at most `quantize_max_map_drop` below fp32's.
    quantize_calibration_images: int = Field(32, ge=0, description="0: no INT8 variant")
    quantize_max_map_drop: float = Field(0.01, ge=-1, le=1, description="absolute mAP50-95")
    # MLflow calls: bounded retries with exponential backoff, then a clear error.
    mlflow_retries: int = Field(3, ge=0, le=10)
    mlflow_backoff: int = Field(1, ge=0, le=10, description="seconds; doubles per retry")
    mlflow_timeout: int = Field(30, gt=0, description="seconds per HTTP request")
    # A running registration renews its pending version's heartbeat every third of this; a
    # pending version whose heartbeat is older is an orphan, which the next registration deletes
    # (`visionops model gc` does at once).
    registry_orphan_after_s: int = Field(60, ge=1, description="seconds")
    # The code version recorded with every run; default: `git rev-parse HEAD` of the checkout.
    git_commit: str | None = None

    # Container images the cluster runs (compiled pipelines, manifests, hack/build-images.sh).
    pipeline_image: str = f"{IMAGE_REGISTRY}/visionops-pipeline:{IMAGE_TAG}"
    predictor_image: str = f"{IMAGE_REGISTRY}/visionops-predictor:{IMAGE_TAG}"
    mlflow_image: str = f"{IMAGE_REGISTRY}/visionops-mlflow:{IMAGE_TAG}"
    kfp_host: str = "http://ml-pipeline.kubeflow:8888"
    # Pipelines (visionops/orchestration/) and deployment (visionops/deploy.py).
    kfp_experiment: str = Field("visionops", min_length=1, description="KFP experiment of runs")
    kfp_namespace: str | None = Field(None, description="KFP user namespace (multi-user only)")
    predictor_url: str | None = Field(
        None, description="a running predictor to reload after a local promotion"
    )
    local_runner: Literal["subprocess", "docker"] = Field(
        "subprocess",
        description="how a local run's steps run (`pipeline run --docker`: docker); a training "
        "run that monitoring re-submits runs the same way",
    )
    kserve_namespace: str = "visionops"
    inference_service: str = "visionops-predictor"

    # Predictor (serving/): what one request may carry, default detection parameters and the
    # inference executor. `python -m serving` flags override them.
    serve_max_body_bytes: int = Field(16 << 20, ge=1024, description="HTTP body, gRPC message")
    serve_max_images: int = Field(16, ge=1, description="images per request")
    serve_max_pixels: int = Field(40_000_000, ge=1, description="pixels per image (header)")
    serve_conf: float = Field(0.25, ge=0, le=1)
    serve_iou: float = Field(0.7, ge=0, le=1)
    serve_max_det: int = Field(300, ge=1, le=10_000)
    serve_inference_workers: int | None = Field(
        None, ge=1, description="inferences run at once; unset: per engine (see serving)"
    )
    serve_inference_threads: int = Field(1, ge=0, description="threads each; 0: all cores")
    serve_solo_threads: int | None = Field(
        None, ge=0, description="threads for a request running alone; unset: all cores, 0: off"
    )
    serve_shutdown_grace_s: int = Field(
        30, ge=1, description="after SIGTERM, how long requests in flight get to finish"
    )

    # Drift check (monitoring/drift.py). Defaults chosen by benchmarks/drift_calibration.py; see
    # README "Monitoring". Methods are Evidently stattest names; thresholds: p-value methods
    # (anderson, ks, chisquare) drift below it, distance methods (wasserstein, psi, ...) at or above
    # it. Anderson-Darling rather than KS: it weighs the tails, so a few images changed a lot (a
    # mixed drift in a 50-row window) are found; KS missed up to a quarter of them.
    drift_min_rows: int = Field(50, ge=2, description="fewer current rows: not enough data")
    drift_num_method: str = "anderson"
    drift_cat_method: str = "chisquare"
    drift_num_threshold: float | None = Field(0.01, gt=0, description="None: method default")
    drift_cat_threshold: float | None = Field(0.001, gt=0, description="None: method default")
    # 0.04: one drifted column decides, for up to 25 compared columns.
    drift_share: float = Field(0.04, gt=0, le=1, description="drifted-column share for drift")
    drift_columns: list[str] | None = Field(None, description="JSON list; default: all features")
    drift_column_methods: dict[str, str] = Field(default_factory=dict, description="JSON object")
    drift_column_thresholds: dict[str, float] = Field(default_factory=dict, description="JSON")
    # A column drifts only when the test above finds a change AND this effect size (an Evidently
    # distance method) says it is large enough to matter: big windows make tiny changes significant.
    drift_num_effect: str = "wasserstein"
    drift_num_effect_threshold: float = Field(0.45, gt=0, description="normed Wasserstein")
    drift_cat_effect: str = "psi"
    drift_cat_effect_threshold: float = Field(0.1, gt=0, description="population stability")
    # Per-column effect thresholds (JSON object), for columns that harmless variation moves more
    # than the others; calibrated, see README "Calibration": a small flat occluder (2% of the
    # image) makes edges axis-aligned.
    drift_column_effect_thresholds: dict[str, float] = Field(
        default_factory=lambda: {"axis_alignment": 0.6},
        description='JSON object, e.g. {"noise_sigma": 0.6}',
    )
    # The decision compares a seeded uniform sample of at most this many rows of each side.
    drift_sample_rows: int = Field(20_000, ge=100, description="rows compared, at most")
    drift_sample_seed: int = Field(0, description="seed of the row sample")
    # Where drift results are pushed for the "drift detected" alert (unset: not pushed).
    pushgateway_url: str | None = Field(None, description="e.g. http://pushgateway:9091")
    # Prediction log (monitoring/prediction_log.py), written by the predictor off the request path.
    log_prefix: str = Field("predictions", min_length=1, description="store prefix of the log")
    log_max_queue: int = Field(512, ge=1, description="records waiting; more are dropped")
    log_max_queue_mb: int = Field(256, ge=1, description="image memory waiting; more dropped")
    log_batch_size: int = Field(256, ge=1, description="records per file, at most")
    log_flush_every_s: float = Field(10.0, gt=0, description="longest a record waits for disk")
    # Reading the log (monitoring/log_files.py, compact.py): DuckDB threads; each holds a buffer.
    log_read_threads: int = Field(2, ge=1, description="threads reading JSON lines")
    # Compaction (monitoring/compact.py) leaves an hour alone until it ended this long ago.
    log_compact_after_s: float = Field(600.0, ge=0, description="seconds after an hour's end")
    # While the store is down, what memory cannot hold (and what is unwritten at shutdown) goes to
    # a spool on local disk (the pod's volume), shipped when the store answers again.
    log_spool_dir: Path | None = Field(None, description="unset: <data_dir>/prediction-log-spool")
    log_spool_max_mb: int = Field(512, ge=0, description="spool size bound; 0: no spool")
    log_flush_timeout_s: float = Field(
        20.0, gt=0, description="at shutdown, the log's time to write or spool what it holds"
    )
    # Image retention (monitoring/image_retention.py): the request's original bytes, kept beside
    # the log for labelling. `uncertain`: a detection score inside the band, or none at or above
    # its upper end (README "Image retention" says why that is the default).
    log_images: str = Field("uncertain", description="none, all, sample:<fraction>, uncertain")
    log_images_uncertain_band: str = Field("0.25,0.6", description="low,high detection scores")
    log_images_retention_days: int = Field(30, ge=0, description="days kept; 0: forever")

    # Label Studio (visionops/labeling/): `label export/import --to/--from label-studio` talk to it
    # with a personal access token (its API token page; `label studio` prints one); `label studio`
    # runs it from its own virtualenv (`make label-studio`).
    label_studio_url: str | None = Field(None, description="default of --url, e.g. http://h:8080")
    label_studio_token: SecretStr | None = Field(None, description="Label Studio API token")
    label_studio_timeout: float = Field(30.0, gt=0, description="seconds per HTTP request")
    label_studio_venv: Path = Field(Path(".label-studio"), description="its virtualenv")

    @field_validator("data_dir", "log_spool_dir")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        return value.expanduser().resolve() if value is not None else None

    @field_validator("log_images")
    @classmethod
    def _image_policy(cls, value: str) -> str:
        parse_image_policy(value)
        return value.strip().lower()

    @field_validator("log_images_uncertain_band")
    @classmethod
    def _uncertain_band(cls, value: str) -> str:
        low, high = parse_score_band(value)
        return f"{low:g},{high:g}"

    @field_validator("s3_endpoint", "label_studio_url")
    @classmethod
    def _endpoint_is_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        parsed = urlparse(value)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"must look like http://host:port, got {value!r}")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _credentials_in_pairs(self) -> Settings:
        if (self.s3_access_key is None) != (self.s3_secret_key is None):
            raise ValueError(
                "set both VISIONOPS_S3_ACCESS_KEY and VISIONOPS_S3_SECRET_KEY, or neither"
            )
        return self

    @property
    def mlflow_dir(self) -> Path:
        return self.data_dir / "mlflow"

    @property
    def log_spool_path(self) -> Path:
        """The prediction log's spool root in effect."""
        return self.log_spool_dir or self.data_dir / "prediction-log-spool"

    @property
    def tracking_uri(self) -> str:
        """The MLflow tracking URI in effect: the configured one or the embedded sqlite store."""
        return self.mlflow_tracking_uri or f"sqlite:///{self.mlflow_dir / 'mlflow.db'}"

    @property
    def s3_secure(self) -> bool:
        return bool(self.s3_endpoint and self.s3_endpoint.startswith("https://"))

    def public_dict(self) -> dict[str, object]:
        """Settings as shown to users: secrets masked, paths as strings."""
        shown: dict[str, object] = {}
        for name, value in self.model_dump().items():
            if isinstance(value, SecretStr):
                value = "********"
            elif isinstance(value, Path):
                value = str(value)
            shown[name] = value
        shown["tracking_uri"] = self.tracking_uri
        return shown

    def environment_view(self) -> list[tuple[str, str]]:
        """What `visionops config` prints: each setting under its variable `VISIONOPS_*`, secrets
        masked, with the tracking URI in effect (not an unset one beside the derived one)."""
        rows = []
        for name, value in self.model_dump().items():
            shown = "********" if isinstance(value, SecretStr) else value
            if name == "mlflow_tracking_uri" and value is None:
                shown = f"{self.tracking_uri} (unset: the embedded store)"
            elif name == "log_spool_dir" and value is None:
                shown = f"{self.log_spool_path} (unset: in the data dir)"
            elif isinstance(value, (dict, list)):
                shown = json.dumps(value)
            elif value is None:
                shown = "(unset)"
            rows.append((f"{ENV_PREFIX}{name.upper()}", str(shown)))
        return rows


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    try:
        return Settings()
    except ValidationError as error:
        problems = "; ".join(
            f"VISIONOPS_{'_'.join(str(p) for p in e['loc']).upper() or '*'}: "
            f"{e['msg'].removeprefix('Value error, ')}"
            for e in error.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from error
