"""Run a pipeline with every step in the pipeline image: `visionops pipeline run NAME --docker`.

KFP's own `DockerRunner` starts one container of `VISIONOPS_PIPELINE_IMAGE` per step, hardened as
`visionops.containers` runs every image: uid 1000, read-only root, all capabilities dropped, no
privilege escalation, `/tmp` a tmpfs. Containers share the host's network, so MLflow and S3 are
reached on 127.0.0.1 as the host reaches them. The run's pipeline root (its `outputs/`, made
writable by uid 1000) is the only writable mount; every host path a parameter names (a dataset
folder, the prediction log, weights) is mounted read-only at the same path.

Nothing a step writes outside its outputs survives it (the data dir is on the tmpfs), so models
and runs go to an MLflow server and records to S3: both must be servers (the MLflow image serves
one, see README "Run in containers"). A training run that a monitoring step re-submits cannot be
started from inside a container: the step records the request, and this process starts it, as
`visionops pipeline run training --docker` in its own process, once the monitoring run ends.
"""

from __future__ import annotations

import json
import logging
import secrets
import subprocess
from pathlib import Path
from typing import Any

from visionops.config import Settings, get_settings
from visionops.containers import (
    GID,
    LABEL,
    TMPFS_OPTIONS,
    UID,
    USER,
    ContainerSpec,
    Mount,
    docker_binary,
    require_images,
    run_container,
    writable_by_containers,
)
from visionops.errors import ContainerError, DataError, PipelineError, UsageError
from visionops.orchestration.local import (
    LocalRun,
    StepCallback,
    new_run_name,
    run_local,
    runs_dir,
)

log = logging.getLogger(__name__)

RUN_LABEL = "io.visionops.run"
STEP_HOME = "/tmp"
STEP_DATA_DIR = "/tmp/visionops"


def require_servers(settings: Settings) -> None:
    """UsageError unless MLflow and S3 are servers the step containers can reach."""
    missing = []
    if not (settings.mlflow_tracking_uri or "").startswith(("http://", "https://")):
        missing.append("VISIONOPS_MLFLOW_TRACKING_URI (an MLflow server)")
    if not settings.s3_endpoint:
        missing.append("VISIONOPS_S3_ENDPOINT and its keys (an S3 server)")
    if missing:
        raise UsageError(
            "--docker runs every step in a container that keeps nothing on this machine: set "
            + " and ".join(missing)
            + " (README: Run in containers)"
        )


def step_environment(settings: Settings) -> dict[str, str]:
    """The settings of this process as the steps' environment, with the data dir and home on
    the step's tmpfs, and the marker that makes a re-submitted training run in containers too."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        elif isinstance(value, (list, dict)):
            value = json.dumps(value)
        env[f"VISIONOPS_{name.upper()}"] = str(value)
    env.update(
        VISIONOPS_DATA_DIR=STEP_DATA_DIR, VISIONOPS_LOCAL_RUNNER="docker", HOME=STEP_HOME,
        PYTHONUNBUFFERED="1",
    )  # fmt: skip
    if settings.git_commit is None:
        from visionops.tracking import git_commit

        if commit := git_commit(settings):
            env["VISIONOPS_GIT_COMMIT"] = commit
    return env


def absolute_paths(params: dict[str, Any]) -> dict[str, Any]:
    """`params` with every parameter that names existing local paths (comma-separated) made
    absolute: a step's working directory is not this one."""
    fixed = dict(params)
    for key, value in params.items():
        if not isinstance(value, str) or not value or "://" in value:
            continue
        parts = value.split(",")
        if all(Path(p).exists() for p in parts):
            fixed[key] = ",".join(str(Path(p).resolve()) for p in parts)
    return fixed


def input_mounts(params: dict[str, Any], outputs_root: Path) -> list[Any]:
    """A read-only bind mount, at the same path, of every host path the parameters name.
    DataError when one is not readable by the steps' user."""
    import docker.types

    paths: set[Path] = set()
    for value in params.values():
        if isinstance(value, str) and value.startswith("/"):
            for part in value.split(","):
                path = Path(part)
                if path.exists() and not path.is_relative_to(outputs_root):
                    paths.add(path)
    unreadable = [str(p) for p in sorted(paths) if not readable_by_steps(p)]
    if unreadable:
        raise DataError(
            f"{', '.join(unreadable)}: not readable by uid {UID}, the steps' user in their "
            f"containers; make it readable (chmod -R a+rX {' '.join(unreadable)})"
        )
    return [
        docker.types.Mount(target=str(p), source=str(p), type="bind", read_only=True)
        for p in sorted(paths)
    ]


def readable_by_steps(path: Path) -> bool:
    """Whether uid 1000 can read `path` and what it holds (checked to one level down: a folder
    made by `mkdtemp`, mode 0700, is the common case)."""
    import os
    import stat

    def readable(entry: Path) -> bool:
        info = entry.stat()
        if info.st_uid == UID:
            need = stat.S_IRUSR | (stat.S_IXUSR if entry.is_dir() else 0)
        elif info.st_gid == GID:
            need = stat.S_IRGRP | (stat.S_IXGRP if entry.is_dir() else 0)
        else:
            need = stat.S_IROTH | (stat.S_IXOTH if entry.is_dir() else 0)
        return info.st_mode & need == need

    if not readable(path):
        return False
    if path.is_dir():
        with os.scandir(path) as entries:
            return all(readable(Path(e.path)) for e in entries if not e.is_symlink())
    return True


def docker_runner(
    settings: Settings, run_name: str, mounts: list[Any]
) -> Any:  # kfp.local.DockerRunner
    """KFP's DockerRunner with the containers' hardening (module docstring)."""
    from kfp import local

    return local.DockerRunner(
        network_mode="host", read_only=True, user=USER, cap_drop=["ALL"],
        security_opt=["no-new-privileges"], tmpfs={"/tmp": TMPFS_OPTIONS},
        environment=step_environment(settings), mounts=mounts,
        labels={LABEL: "1", RUN_LABEL: run_name},
    )  # fmt: skip


def remove_step_containers(run_name: str) -> list[str]:
    """Remove every container of `run_name` that is still there (after Ctrl-C or a failure);
    returns their ids."""
    docker = docker_binary()
    found = subprocess.run(
        [docker, "ps", "--all", "--quiet", "--filter", f"label={RUN_LABEL}={run_name}"],
        capture_output=True, text=True, timeout=60,
    ).stdout.split()  # fmt: skip
    if found:
        subprocess.run([docker, "rm", "--force", *found], capture_output=True, timeout=120)
    return found


def run_in_containers(
    name: str,
    pipeline: Any,
    params: dict[str, Any] | list[str] | None = None,
    *,
    run_name: str | None = None,
    on_step: StepCallback | None = None,
    settings: Settings | None = None,
) -> LocalRun:
    """`run_local` with every step in the pipeline image (module docstring). PipelineError names
    the failed step, its image and the run's log; ContainerError when there is no engine or no
    image; UsageError when MLflow or S3 is not a server."""
    from visionops._compat.kfp import fail_steps_without_outputs
    from visionops.orchestration.params import typed_params

    settings = settings or get_settings()
    require_servers(settings)
    require_images(settings.pipeline_image)
    typed = absolute_paths(typed_params(pipeline, params))
    run_name = run_name or new_run_name(name)
    outputs_root = runs_dir(settings) / run_name / "outputs"
    writable_by_containers(outputs_root)
    fail_steps_without_outputs()
    runner = docker_runner(settings, run_name, input_mounts(typed, outputs_root))
    stop_on_sigterm()
    try:
        run = run_local(
            name, pipeline, typed, run_name=run_name, on_step=on_step, settings=settings,
            runner=runner,
        )  # fmt: skip
    except PipelineError as error:
        raise PipelineError(f"{error} (steps run in {settings.pipeline_image})") from error
    finally:
        if left := remove_step_containers(run_name):
            log.warning("removed %d step container(s) of %s left running", len(left), run_name)
    if name in ("monitoring", "harvest"):  # both may ask for a training run (`retrain`)
        start_requested_training(run, settings)
    return run


def predictor_in_container(
    settings: Settings, args: list[str], log_dir: Path, log_path: Path
) -> tuple[ContainerSpec, subprocess.Popen[bytes]]:
    """The predictor image serving `args` (`python -m serving`'s) on the host's network, hardened
    as every container, with this process's settings as the steps get them and `log_dir` (its
    prediction log) the one writable mount, at the same path; stop it with `stop_container`."""
    require_servers(settings)
    require_images(settings.predictor_image)
    spec = ContainerSpec(
        image=settings.predictor_image, name=f"visionops-predictor-{secrets.token_hex(3)}",
        args=tuple(args), env={**step_environment(settings), "VISIONOPS_LOG_FLUSH_EVERY_S": "1"},
        mounts=(Mount(writable_by_containers(log_dir), str(log_dir), read_only=False),),
    )  # fmt: skip
    return spec, run_container(spec, log_path)


def stop_on_sigterm() -> None:
    """SIGTERM ends this process as Ctrl-C does, so the step containers it started are removed
    on the way out (the default action would leave them running)."""
    import signal
    import threading

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


def start_requested_training(run: LocalRun, settings: Settings) -> None:
    """Start the training run a containerised monitoring or harvest run asked for (its retrain
    step could not: it runs in a container), once: as `visionops pipeline run training --docker`."""
    from visionops.orchestration.resubmit import DOCKER, SUBMITTING, list_submissions, spawn

    wanted = run.output("retrain", "run_name")
    if not wanted:
        return
    for submission in list_submissions(settings):
        if submission.run_name == wanted and submission.mode == DOCKER:
            if submission.status == SUBMITTING:
                started = spawn(submission, settings)
                log.info("started %s (process %s)", started.run_name, started.pid)
            return
    raise ContainerError(f"the monitoring run asked for {wanted}, but no request was recorded")
