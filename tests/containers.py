"""The project's images as containers in tests, run exactly as the rendered kind overlay runs them.

`spec_from_manifest` turns a container of a rendered Deployment or InferenceService into
`docker run` settings: its image, command, args (with `$(VAR)` expanded as the kubelet does),
env (Secret references filled in by the test), user and group, read-only root, dropped
capabilities, no privilege escalation, CPU and memory limits, emptyDir volumes as tmpfs and other
volumes as host folders. What a pod has and a local container cannot, the test changes openly:
service addresses in env (the test's S3 and MLflow on 127.0.0.1), and, since containers share the
host's network here instead of having their own, free ports bound to 127.0.0.1 in the args.

Container tests need a Docker engine: they run when one answers or can be started (root and
dockerd installed: `hack/docker-engine.sh start`, stopped again at the end of the session); else
they are skipped, or fail when `VISIONOPS_REQUIRE_DOCKER=1` (CI sets it: never a vacuous pass).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

from tests.k8s import ROOT, pod_specs
from tests.servers import Predictor, free_port, http_status, wait_until
from visionops.containers import (
    TMPFS_OPTIONS,
    ContainerSpec,
    Mount,
    engine_problem,
    readable_by_containers,
    remove_container,
    run_container,
    stop_container,
    writable_by_containers,
)

# Read at import: the session fixture clears every VISIONOPS_* variable for the tests.
REQUIRE_DOCKER = os.environ.get("VISIONOPS_REQUIRE_DOCKER", "").lower() in ("1", "true", "yes")
# The pipeline image (8 GB: torch with its CUDA libraries from PyPI) costs more to build than CI's
# budget allows: its tests run where it is already built, or where this asks for the build
# (`make test-containers`); elsewhere they are skipped with PIPELINE_IMAGE_SKIP as the reason.
BUILD_PIPELINE_IMAGE = os.environ.get("VISIONOPS_BUILD_PIPELINE_IMAGE", "").lower() in (
    "1", "true", "yes",
)  # fmt: skip
PIPELINE_IMAGE_SKIP = "pipeline image not built"
ENGINE_SCRIPT = ROOT / "hack" / "docker-engine.sh"
IMAGES_SCRIPT = ROOT / "hack" / "images.sh"
# Containers of this test session are named with this prefix: the session removes any left over
# (and fails), without touching containers of anyone else on a shared engine.
SESSION_PREFIX = f"vo-test-{secrets.token_hex(3)}-"

Doc = dict[str, Any]


def container_name(what: str) -> str:
    return f"{SESSION_PREFIX}{what}-{secrets.token_hex(2)}"


def engine_can_be_started() -> bool:
    return os.geteuid() == 0 and shutil.which("dockerd") is not None


@cache
def engine_status() -> str | None:
    """None if an engine answers (or could be started), else why container tests cannot run."""
    problem = engine_problem()
    if problem is None or (engine_can_be_started() and shutil.which("docker")):
        return None
    return problem


def start_engine() -> bool:
    """Start dockerd if none answers and this process may; True if it started one."""
    if engine_problem() is None:
        return False
    done = subprocess.run(
        ["bash", str(ENGINE_SCRIPT), "start"], capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        raise RuntimeError(f"could not start dockerd: {done.stderr.strip() or done.stdout}")
    return True


def stop_engine() -> None:
    subprocess.run(["bash", str(ENGINE_SCRIPT), "stop"], capture_output=True, timeout=120)


def session_leftovers() -> list[str]:
    """Containers of this test session that still exist."""
    done = subprocess.run(
        ["docker", "ps", "--all", "--filter", f"name=^{SESSION_PREFIX}",
         "--format", "{{.Names}} ({{.Status}})"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return done.stdout.split("\n") if done.stdout.strip() else []


class ContainerStarts:
    """Every container start with label `label` while it runs, from `docker events`.

    The engine answers `docker events --since` from a buffer of its last 256 events only (a
    container's create, start, die, destroy and network events fill it fast), so the starts are
    streamed as they happen; a read also asks the engine for what its buffer still holds since
    the stream began, in case the stream missed one (a loaded engine drops events for a reader
    that falls behind). A start found by neither did not happen.
    """

    def __init__(self, label: str) -> None:
        self.label = label
        self._out = Path(os.environ.get("TMPDIR", "/tmp")) / f"{container_name('events')}.jsonl"
        self._process: subprocess.Popen[bytes] | None = None
        self._since = ""

    def _command(self) -> list[str]:
        return ["docker", "events", "--filter", f"label={self.label}", "--filter", "event=start",
                "--format", "{{json .}}"]  # fmt: skip

    def __enter__(self) -> ContainerStarts:
        self._since = str(int(time.time()) - 1)
        with self._out.open("wb") as out:
            self._process = subprocess.Popen(self._command(), stdout=out, stderr=subprocess.DEVNULL)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=30)
        self._out.unlink(missing_ok=True)

    def images(self, value: str) -> list[str]:
        """The image of each container started so far whose label `label` is `value`."""
        import json

        buffered = subprocess.run(
            [*self._command(), "--since", self._since, "--until", str(int(time.time()) + 1)],
            capture_output=True, text=True, timeout=60,
        ).stdout  # fmt: skip
        lines = self._out.read_text().splitlines() + buffered.splitlines()
        started = {e["id"]: e["Actor"]["Attributes"] for e in map(json.loads, filter(None, lines))}
        return [a["image"] for a in started.values() if a.get(self.label) == value]


def images_env(**extra: str) -> dict[str, str]:
    """This process's environment for hack/images.sh, less the session's PIP_NO_INDEX: bootstrap
    sets it so that nothing at run time reaches an index, and hack/images.sh hands pip's settings
    to the builds, which install from indexes by design."""
    return {**{k: v for k, v in os.environ.items() if k != "PIP_NO_INDEX"}, **extra}


def image_present(ref: str) -> bool:
    done = subprocess.run(["docker", "image", "inspect", ref], capture_output=True, timeout=60)
    return done.returncode == 0


@cache
def build_image(name: str) -> str:
    """`hack/images.sh NAME` once per session (a no-op when the cache holds it); its reference."""
    from visionops.config import Settings
    from visionops.containers import image_refs

    done = subprocess.run(
        ["bash", str(IMAGES_SCRIPT), name], capture_output=True, text=True, timeout=3600,
        env=images_env(),
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"hack/images.sh {name} failed:\n{done.stdout[-3000:]}\n{done.stderr}")
    return image_refs(Settings())[name]  # not the cached settings: tests change them


# ----------------------------------------------------------------- manifest -> docker run


def cpus(quantity: str | int | float) -> float:
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def memory_bytes(quantity: str | int) -> int:
    text = str(quantity)
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "K": 1000, "M": 10**6, "G": 10**9}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(text)


def pod_container(doc: Doc, name: str) -> tuple[Doc, Doc]:
    """(pod spec, container) of the container called `name` in a rendered workload."""
    for _, pod in pod_specs(doc):
        for container in pod.get("containers", []):
            if container["name"] == name:
                return pod, container
    raise AssertionError(f"{doc['kind']}/{doc['metadata']['name']} has no container {name!r}")


def spec_from_manifest(
    doc: Doc,
    container: str,
    *,
    name: str,
    secrets: dict[tuple[str, str], str],
    env: dict[str, str] | None = None,
    volumes: dict[str, Path] | None = None,
    mounts: tuple[Mount, ...] = (),
    args: Callable[[list[str]], list[str]] | None = None,
) -> ContainerSpec:
    """`docker run` settings for `container` of `doc`, as its pod would run it (module docstring).

    `secrets`: (Secret name, key) -> value for every secretKeyRef; `env`: values that replace or
    join the manifest's (service addresses); `volumes`: host folder of each non-emptyDir volume;
    `mounts`: what the cluster adds besides the manifest (KServe's /mnt/models); `args`: rewrites
    the expanded args (ports on the shared host network).
    """
    pod, spec = pod_container(doc, container)
    values: dict[str, str] = {}
    for item in spec.get("env", []):
        if "value" in item:
            values[item["name"]] = str(item["value"])
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            # kustomize's secretGenerator appends a content hash to the name.
            secret = re.sub(r"-[a-z0-9]{10}$", "", ref["name"])
            values[item["name"]] = secrets[secret, ref["key"]]
    values.update(env or {})
    expand = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
    argv = [expand.sub(lambda m: values.get(m[1], m[0]), str(a)) for a in spec.get("args", [])]
    pod_security, security = pod.get("securityContext", {}), spec.get("securityContext", {})
    uid = security.get("runAsUser", pod_security.get("runAsUser"))
    gid = security.get("runAsGroup", pod_security.get("runAsGroup", uid))
    if security.get("runAsNonRoot", pod_security.get("runAsNonRoot")):
        assert uid not in (None, 0), "runAsNonRoot needs a numeric non-root runAsUser"
    seccomp = security.get("seccompProfile", pod_security.get("seccompProfile", {}))
    # Docker applies its default seccomp profile, the runtime's default the manifest asks for.
    assert seccomp.get("type", "RuntimeDefault") == "RuntimeDefault", seccomp
    limits = spec.get("resources", {}).get("limits", {})
    pod_volumes = {v["name"]: v for v in pod.get("volumes", [])}
    tmpfs: dict[str, str] = {}
    bound: list[Mount] = []
    for mount in spec.get("volumeMounts", []):
        volume = pod_volumes[mount["name"]]
        if "emptyDir" in volume:
            size = volume["emptyDir"].get("sizeLimit")
            tmpfs[mount["mountPath"]] = TMPFS_OPTIONS + (
                f",size={memory_bytes(size)}" if size else ""
            )
        else:
            source = (volumes or {})[mount["name"]]
            bound.append(Mount(source, mount["mountPath"], bool(mount.get("readOnly", False))))
    return ContainerSpec(
        image=spec["image"],
        name=name,
        entrypoint=tuple(spec.get("command", [])),
        args=tuple(args(argv) if args else argv),
        env=values,
        user=f"{uid}:{gid}",
        group_add=(str(pod_security["fsGroup"]),) if "fsGroup" in pod_security else (),
        read_only=bool(security.get("readOnlyRootFilesystem", False)),
        cap_drop_all="ALL" in security.get("capabilities", {}).get("drop", []),
        no_new_privileges=security.get("allowPrivilegeEscalation") is False,
        tmpfs=tmpfs,
        cpus=cpus(limits["cpu"]) if "cpu" in limits else None,
        memory_bytes=memory_bytes(limits["memory"]) if "memory" in limits else None,
        mounts=(*bound, *mounts),
    )


def replace_flag(argv: list[str], flag: str, value: str | None) -> list[str]:
    """`argv` with `flag=...` given `value` (None: dropped); AssertionError if it is not there."""
    assert any(a.startswith(f"{flag}=") for a in argv), f"{flag} is not in {argv}"
    return [
        f"{flag}={value}" if a.startswith(f"{flag}=") else a
        for a in argv
        if value is not None or not a.startswith(f"{flag}=")
    ]


def inspect(name: str) -> Doc:
    """`docker inspect` of a running container."""
    import json

    done = subprocess.run(
        ["docker", "inspect", name], capture_output=True, text=True, timeout=60, check=True
    )
    return json.loads(done.stdout)[0]


# ----------------------------------------------------------------- the project's servers


def s3_secrets(access_key: str, secret_key: str, *names: str) -> dict[tuple[str, str], str]:
    """secretKeyRef values for the overlay's S3 Secrets, all holding the test server's keys."""
    return {
        pair: value
        for name in names
        for pair, value in (
            ((name, "AWS_ACCESS_KEY_ID"), access_key),
            ((name, "AWS_SECRET_ACCESS_KEY"), secret_key),
        )
    }


def predictor_spec(
    inference_service: Doc,
    workdir: Path,
    *,
    s3: Any,
    bucket: str,
    http_port: int,
    grpc_port: int,
    model_dir: Path | None = None,
    model_args: list[str] | None = None,
    extra_args: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> ContainerSpec:
    """The predictor image as the InferenceService runs it, on `http_port` and `grpc_port` of
    127.0.0.1.

    `model_dir` is mounted read-only at /mnt/models (where KServe's storage initializer leaves
    the model); `model_args` replace `--model-dir=/mnt/models` (e.g. `--model-uri=s3://...`), and
    the manifest's own value of any flag they give as `--flag=value`.
    The prediction log goes where the manifest's env sends it: the S3 bucket `bucket` of `s3`
    (anything with `endpoint`, `access_key` and `secret_key`).
    """

    def local(argv: list[str]) -> list[str]:
        argv = replace_flag(argv, "--http_port", str(http_port))
        argv = replace_flag(argv, "--grpc_port", str(grpc_port))
        if model_args is not None:
            argv = replace_flag(argv, "--model-dir", None)
            for arg in model_args:  # a flag the manifest sets gets the new value, others join
                flag, _, value = arg.partition("=")
                if value and any(a.startswith(f"{flag}=") for a in argv):
                    argv = replace_flag(argv, flag, value)
                else:
                    argv.append(arg)
        return [*argv, "--host=127.0.0.1", *(extra_args or [])]

    mounts = ()
    if model_dir is not None:
        mounts = (Mount(readable_by_containers(model_dir), "/mnt/models"),)
    name = container_name("predictor")
    workdir.mkdir(parents=True, exist_ok=True)
    # The prediction log's spool claim (a PersistentVolumeClaim on the cluster): a host folder,
    # writable by uid 1000 as the claim's fsGroup makes it there.
    spool = writable_by_containers(workdir / f"spool-{name}")
    return spec_from_manifest(
        inference_service, "kserve-container", name=name,
        secrets=s3_secrets(s3.access_key, s3.secret_key, "s3-serving"),
        env={"VISIONOPS_S3_ENDPOINT": s3.endpoint, "VISIONOPS_S3_BUCKET": bucket, **(env or {})},
        mounts=mounts, args=local, volumes={"prediction-log-spool": spool},
    )  # fmt: skip


@contextmanager
def predictor_container(
    inference_service: Doc,
    workdir: Path,
    *,
    s3: Any,
    bucket: str,
    model_dir: Path | None = None,
    model_args: list[str] | None = None,
    extra_args: list[str] | None = None,
    env: dict[str, str] | None = None,
    wait_ready: bool = True,
) -> Iterator[Predictor]:
    """`predictor_spec` running on free 127.0.0.1 ports, once it answers; stopped after."""
    http_port, grpc_port = free_port(), free_port()
    spec = predictor_spec(
        inference_service, workdir, s3=s3, bucket=bucket, http_port=http_port,
        grpc_port=grpc_port, model_dir=model_dir, model_args=model_args, extra_args=extra_args,
        env=env,
    )  # fmt: skip
    name = spec.name
    log_path = workdir / f"predictor-container-{http_port}.log"
    process = run_container(spec, log_path)
    server = Predictor(f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", log_path, process)
    path = "/v2/health/ready" if wait_ready else "/v2/health/live"
    try:
        try:
            wait_until(
                lambda: http_status(server.http + path) == 200,
                timeout=120, what=f"predictor container {name}", proc=process,
            )  # fmt: skip
        except (RuntimeError, TimeoutError) as error:
            raise RuntimeError(f"{error}; log:\n{server.log_text()[-4000:]}") from error
        yield server
    finally:
        stop_container(name, process)


@contextmanager
def mlflow_container(deployment: Doc, workdir: Path, s3: Any) -> Iterator[str]:
    """The MLflow image as the overlay's Deployment runs it: sqlite on its data volume (a host
    folder writable by uid 1000), artifacts proxied to `s3://mlflow/artifacts` of the test S3
    server; yields its URL once /health answers."""
    from minio import Minio

    client = Minio(
        s3.endpoint.removeprefix("http://"), access_key=s3.access_key,
        secret_key=s3.secret_key, secure=False,
    )  # fmt: skip
    if not client.bucket_exists("mlflow"):
        client.make_bucket("mlflow")
    port = free_port()

    def local(argv: list[str]) -> list[str]:
        return replace_flag(replace_flag(argv, "--host", "127.0.0.1"), "--port", str(port))

    name = container_name("mlflow")
    spec = spec_from_manifest(
        deployment, "mlflow", name=name,
        secrets=s3_secrets(s3.access_key, s3.secret_key, "s3-mlflow"),
        env={"MLFLOW_S3_ENDPOINT_URL": s3.endpoint},
        volumes={"data": writable_by_containers(workdir / "data")}, args=local,
    )  # fmt: skip
    process = run_container(spec, workdir / "mlflow-container.log")
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_until(
                lambda: http_status(f"{url}/health") == 200,
                timeout=180, what=f"MLflow container {name}", proc=process,
            )  # fmt: skip
        except (RuntimeError, TimeoutError) as error:
            log = (workdir / "mlflow-container.log").read_text(errors="replace")[-4000:]
            raise RuntimeError(f"{error}; log:\n{log}") from error
        yield url
    finally:
        stop_container(name, process)
        remove_container(name)
