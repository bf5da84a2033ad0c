"""Run a pipeline on this machine with KFP's local runner, each run in its own folder.

    <data dir>/pipelines/runs/<run name>/
        params.json     the parameters it ran with
        run.log         every step's output, as KFP streamed it
        outputs/        KFP's pipeline root: <pipeline>-<time>/<task>/<outputs>
        summary.json    status, seconds, and every step's outputs (written last)

Steps run as subprocesses of this process in this virtual environment
(`SubprocessRunner(use_venv=False)`), with this process's environment: the same settings, data
dir and MLflow store. Locally an artifact's path is its URI.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import secrets
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from visionops._compat.kfp import STARTED, allow_named_output_conditions, step_event, strip_colors
from visionops.config import Settings, get_settings
from visionops.data.files import atomic_write_text
from visionops.errors import PipelineError, UsageError
from visionops.orchestration.params import typed_params

log = logging.getLogger(__name__)

SUCCEEDED, FAILED, SKIPPED = "succeeded", "failed", "skipped"  # as `step_event` reports them
REPORT_TYPES = {"system.HTML": "html", "system.Markdown": "markdown"}

StepCallback = Callable[[str, str, str], None]
"""Called as `callback(task, display name, event)`; event: started, succeeded, failed or a log
line of the running step."""


@dataclass(frozen=True)
class TaskInfo:
    """One task of a compiled pipeline: its display name and its output artifacts' types."""

    name: str
    display_name: str
    artifact_types: dict[str, str] = field(default_factory=dict)


@dataclass
class StepResult:
    """What one step of a local run produced (parameters, and artifacts as path + metadata)."""

    task: str
    display_name: str
    state: str
    parameters: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0  # wall time of its attempts, as this process saw them


@dataclass
class LocalRun:
    """A finished (or failed) local run and where everything it wrote is."""

    pipeline: str
    run_name: str
    run_dir: Path
    status: str
    params: dict[str, Any]
    seconds: float
    steps: dict[str, StepResult] = field(default_factory=dict)
    error: str | None = None

    @property
    def log_path(self) -> Path:
        return self.run_dir / "run.log"

    def output(self, task: str, name: str, default: Any = None) -> Any:
        """An output parameter of `task` (None when the step did not run)."""
        step = self.steps.get(task)
        return step.parameters.get(name, default) if step else default

    def artifact(self, task: str, name: str) -> dict[str, Any] | None:
        """`{"path", "metadata", "type"}` of an output artifact of `task`, if it ran."""
        step = self.steps.get(task)
        return step.artifacts.get(name) if step else None

    def reports(self) -> list[tuple[str, Path]]:
        """(step display name, file) of every HTML and Markdown artifact the run wrote."""
        found = []
        for step in self.steps.values():
            for artifact in step.artifacts.values():
                if artifact.get("type") in REPORT_TYPES.values():
                    found.append((step.display_name, Path(artifact["path"])))
        return found

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["run_dir"] = str(self.run_dir)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LocalRun:
        steps = {k: StepResult(**v) for k, v in data.pop("steps", {}).items()}
        return cls(**{**data, "run_dir": Path(data["run_dir"]), "steps": steps})


def runs_dir(settings: Settings | None = None) -> Path:
    """Where local runs live: `<data dir>/pipelines/runs`."""
    return (settings or get_settings()).data_dir / "pipelines" / "runs"


def new_run_name(pipeline: str) -> str:
    """`<pipeline>-<UTC time>-<random>`: unique, and sorts by start time."""
    return f"{pipeline}-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def read_run(run_dir: Path) -> LocalRun | None:
    """The summary of a finished local run, or None while it runs (or if it never started)."""
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        return None
    return LocalRun.from_dict(json.loads(path.read_text(encoding="utf-8")))


def pipeline_tasks(pipeline: Any) -> dict[str, TaskInfo]:
    """Every task of `pipeline` by KFP task name, including tasks inside dsl.If/Else groups."""
    spec = pipeline.pipeline_spec
    components = spec.components
    found: dict[str, TaskInfo] = {}

    def walk(dag: Any) -> None:
        for name, task in dag.tasks.items():
            component = components[task.component_ref.name]
            if component.WhichOneof("implementation") == "dag":
                walk(component.dag)
                continue
            types = {
                out: REPORT_TYPES.get(a.artifact_type.schema_title, a.artifact_type.schema_title)
                for out, a in component.output_definitions.artifacts.items()
            }
            found[name] = TaskInfo(name, task.task_info.name or name, types)

    walk(spec.root.dag)
    return found


class StepStream(io.TextIOBase):
    """stdout while KFP runs: every line goes to the run log, and step events to the callback."""

    def __init__(self, log_file: TextIO, tasks: dict[str, TaskInfo], callback: StepCallback):
        self.log_file, self.tasks, self.callback = log_file, tasks, callback
        self.running: str | None = None
        self.states: dict[str, str] = {}
        self.order: list[str] = []
        self.seconds: dict[str, float] = {}
        self._started: dict[str, float] = {}
        self._buffer = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.log_file.write(text)
        *lines, self._buffer = (self._buffer + text).split("\n")
        for line in lines:
            self._line(strip_colors(line))
        return len(text)

    def flush(self) -> None:
        self.log_file.flush()

    def _display(self, task: str) -> str:
        info = self.tasks.get(task)
        return info.display_name if info else task

    def _line(self, line: str) -> None:
        task, event = step_event(line) or ("", "")
        if event == STARTED:
            self.running = task
            self._started[self.running] = time.monotonic()
            if self.running not in self.order:
                self.order.append(self.running)
            self.callback(self.running, self._display(self.running), STARTED)
        elif event:  # succeeded or failed
            self.states[task] = event
            spent = time.monotonic() - self._started.get(task, time.monotonic())
            self.seconds[task] = round(self.seconds.get(task, 0.0) + spent, 2)
            self.callback(task, self._display(task), event)
            self.running = None
        elif self.running and line.strip():
            self.callback(self.running, self._display(self.running), line.strip())


def _collect_steps(
    outputs_root: Path, tasks: dict[str, TaskInfo], stream: StepStream
) -> dict[str, StepResult]:
    """Each step's outputs, read back from the executor_output.json files KFP wrote, in the
    order the steps ran (then those that did not)."""
    states = stream.states
    steps: dict[str, StepResult] = {}
    names = [*stream.order, *(n for n in tasks if n not in stream.order)]
    for name, info in ((n, tasks.get(n, TaskInfo(n, n))) for n in names):
        steps[name] = StepResult(
            name, info.display_name, states.get(name, SKIPPED), seconds=stream.seconds.get(name, 0)
        )
    for path in sorted(outputs_root.glob("*/*/executor_output.json")):
        name = path.parent.name
        info = tasks.get(name, TaskInfo(name, name))
        data = json.loads(path.read_text(encoding="utf-8"))
        artifacts = {}
        for out, entry in (data.get("artifacts") or {}).items():
            first = (entry.get("artifacts") or [{}])[0]
            artifacts[out] = {
                "path": first.get("uri", ""),
                "metadata": first.get("metadata", {}),
                "type": info.artifact_types.get(out, ""),
            }
        parameters = dict(data.get("parameterValues") or {})
        steps[name] = StepResult(
            name, info.display_name, SUCCEEDED, parameters, artifacts, stream.seconds.get(name, 0)
        )
    return steps


@contextlib.contextmanager
def _kfp_local(outputs_root: Path, runner: Any = None) -> Iterator[None]:
    """KFP's local runner for one run: subprocess steps in this venv (or `runner`, e.g. the
    DockerRunner of visionops/orchestration/docker.py), outputs under the run."""
    from kfp import local  # kfp: heavy, and only this module runs it

    allow_named_output_conditions()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "You may be attemping", RuntimeWarning)  # our image
        warnings.filterwarnings("ignore", ".*no effect in the current local runner", UserWarning)
        local.init(
            runner=runner or local.SubprocessRunner(use_venv=False),
            pipeline_root=str(outputs_root),
            raise_on_error=True,
        )
        yield


def run_local(
    name: str,
    pipeline: Any,
    params: dict[str, Any] | list[str] | None = None,
    *,
    run_name: str | None = None,
    on_step: StepCallback | None = None,
    settings: Settings | None = None,
    runner: Any = None,
) -> LocalRun:
    """Run `pipeline` (a KFP pipeline object, called `name`: training, monitoring) with `params`
    here (each step a subprocess, or as KFP `runner` runs it); returns the run.

    Raises PipelineError when a step fails (the message names it and the log); the run's summary
    is written in either case. UsageError for an unknown parameter.
    """
    settings = settings or get_settings()
    params = typed_params(pipeline, params)
    run_name = run_name or new_run_name(name)
    run_dir = runs_dir(settings) / run_name
    if (run_dir / "summary.json").exists():
        raise UsageError(f"local run {run_name} exists already ({run_dir})")
    outputs_root = run_dir / "outputs"
    outputs_root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "params.json", json.dumps(params, indent=2) + "\n")
    tasks = pipeline_tasks(pipeline)
    callback = on_step or (lambda task, display, event: None)
    error: str | None = None
    started = time.monotonic()
    log.info("local run %s of %s in %s", run_name, name, run_dir)
    with (run_dir / "run.log").open("a", encoding="utf-8", buffering=1) as log_file:
        stream = StepStream(log_file, tasks, callback)
        try:
            with _kfp_local(outputs_root, runner), contextlib.redirect_stdout(stream):
                pipeline(**params)
        except RuntimeError as failure:  # KFP's way of saying a task failed
            error = strip_colors(str(failure))
        except Exception as failure:  # KFP's own machinery (e.g. outputs it cannot read back)
            log.debug("local runner failed", exc_info=True)
            error = f"KFP's local runner failed: {type(failure).__name__}: {failure}"
        finally:
            stream.flush()
    run = LocalRun(
        pipeline=name, run_name=run_name, run_dir=run_dir,
        status=FAILED if error else SUCCEEDED, params=params,
        seconds=round(time.monotonic() - started, 1),
        steps=_collect_steps(outputs_root, tasks, stream), error=error,
    )  # fmt: skip
    atomic_write_text(run_dir / "summary.json", json.dumps(run.to_dict(), indent=2) + "\n")
    if error:
        raise PipelineError(f"{error} Log: {run.log_path}")
    return run


def alive(pid: int) -> bool:
    """True while process `pid` runs (a zombie, finished but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def follow_run(
    pipeline: Any,
    run_dir: Path,
    pid: int | None,
    on_step: StepCallback,
    *,
    poll_seconds: float = 1.0,
) -> LocalRun:
    """Follow a local run of `pipeline` that another process runs (e.g. a re-submitted
    training): its step events as its log grows, then its summary. PipelineError if it fails or
    its process `pid` exits without a summary."""
    stream = StepStream(io.StringIO(), pipeline_tasks(pipeline), on_step)
    log_path, offset = Path(run_dir) / "run.log", 0
    gone_since: float | None = None
    while True:
        if log_path.is_file():
            with log_path.open("r", encoding="utf-8", errors="replace") as handle:
                handle.seek(offset)
                stream.write(handle.read())
                offset = handle.tell()
        run = read_run(run_dir)
        if run is not None:
            if run.status != SUCCEEDED:
                raise PipelineError(f"run {run.run_name} failed: {run.error} Log: {run.log_path}")
            return run
        if pid is not None and not alive(pid):
            gone_since = gone_since or time.monotonic()
            if time.monotonic() - gone_since > 5:
                raise PipelineError(f"the process of run {Path(run_dir).name} ({pid}) exited "
                                    f"without finishing it; see {log_path}")  # fmt: skip
        time.sleep(poll_seconds)
