"""kfp 2.17's internals that the local runner and the KFP client need.

- A lone `dsl.If` on a named output is silently skipped by kfp's local runner: its condition
  evaluator is patched (`allow_named_output_conditions`).
- The local runner reports step progress only as log lines on stdout ("Executing task 'x'",
  "Task 'x' finished with status SUCCESS", coloured): `step_event` reads them.
- kfp's DockerRunner takes a step container that was removed before its exit code could be read
  for a success (exit code 0): `fail_steps_without_outputs` fails a step whose executor did not
  write its output file.
- Inside a pipeline step kfp runs as its runtime-only SDK, where importing `kfp.client` first
  runs into a circular import: `kfp_client_class` imports the component factory before it.
"""

from __future__ import annotations

import re
from typing import Any

from visionops._compat import Internal

STARTED, SUCCEEDED, FAILED = "started", "succeeded", "failed"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STARTED = re.compile(r"Executing task '(?P<task>[^']+)'")
_FINISHED = re.compile(r"Task '(?P<task>[^']+)' finished with status (?P<status>[A-Z]+)")

INTERNALS = (
    Internal(
        "kfp.local.orchestrator.enhanced_dag_orchestrator:ConditionEvaluator._resolve_pipeline_channel",
        "allow_named_output_conditions wraps it and falls back to it",
        "8c061e7b1d2e75dc",
    ),
    Internal(
        "kfp.local.task_dispatcher:run_single_task_implementation",
        "step_event reads the 'Executing task' and 'finished with status' lines it logs",
        "352b81d11542f64a",
    ),
    Internal(
        "kfp.local.logging_utils:format_task_name",
        "step_event expects the task name quoted ('name') inside colour codes",
        "cf7769dc8cd38958",
    ),
    Internal(
        "kfp.local.logging_utils:format_status",
        "step_event expects the status as SUCCESS or FAILURE inside colour codes",
        "54e0a7879bf5ccc5",
    ),
    Internal(
        "kfp.local.docker_task_handler:DockerTaskHandler.run",
        "fail_steps_without_outputs wraps it and reads the executor input in its full_command",
        "6c945c7c91445b7f",
    ),
    Internal(
        "kfp.local.docker_task_handler:run_docker_container",
        "returns 0 when the auto-removed container is gone before wait(): the reason for "
        "fail_steps_without_outputs",
        "63183d16a5ae3514",
    ),
    Internal(
        "kfp.dsl.component_factory",
        "kfp_client_class imports it before kfp.client (circular import in the runtime-only SDK)",
    ),
)


def strip_colors(text: str) -> str:
    """`text` without the ANSI colour codes kfp's local runner puts in its messages."""
    return _ANSI.sub("", text)


def step_event(line: str) -> tuple[str, str] | None:
    """(task, `started` | `succeeded` | `failed`) if `line` of the local runner's output reports a
    step starting or ending, else None."""
    line = strip_colors(line)
    if started := _STARTED.search(line):
        return started["task"], STARTED
    if finished := _FINISHED.search(line):
        return finished["task"], SUCCEEDED if finished["status"] == "SUCCESS" else FAILED
    return None


def allow_named_output_conditions() -> None:
    """Let a `dsl.If` test a named output (`task.outputs["promoted"]`) under kfp's local runner.

    kfp 2.17.3's local condition evaluator resolves `pipelinechannel--<task>-<output>` as a task
    output only for outputs called `Output`, else as an input of the enclosing DAG: that works
    inside an If/Else group (whose DAG receives the value) but not for a lone `dsl.If` in the
    pipeline's own DAG, which is then silently skipped (a cluster evaluates it correctly). On a
    miss, try each split of the reference into an upstream task and one of its outputs.
    Idempotent.
    """
    from kfp.local.orchestrator.enhanced_dag_orchestrator import ConditionEvaluator  # kfp: heavy

    original = ConditionEvaluator.__dict__["_resolve_pipeline_channel"].__func__
    if getattr(original, "visionops_named_outputs", False):
        return

    def resolve(channel_ref: str, io_store: Any) -> Any:
        ref = channel_ref.removeprefix("pipelinechannel--")
        for cut in (i for i, c in enumerate(ref) if c == "-"):
            try:
                return io_store.get_task_output(ref[:cut], ref[cut + 1 :])
            except (ValueError, KeyError):
                continue
        return original(channel_ref, io_store)

    resolve.visionops_named_outputs = True  # type: ignore[attr-defined]
    resolve.__wrapped__ = original  # type: ignore[attr-defined] (what the compat check reads)
    ConditionEvaluator._resolve_pipeline_channel = staticmethod(resolve)  # type: ignore[method-assign]


def kfp_client_class() -> Any:
    """`kfp.client.Client`, importable also inside a pipeline step (runtime-only SDK)."""
    import kfp.dsl.component_factory  # noqa: F401 (first, see the module docstring)
    from kfp.client import Client

    return Client


def fail_steps_without_outputs() -> None:
    """Make kfp's DockerRunner fail a step whose container ended without writing its outputs.

    kfp 2.17.3 runs each step container with `auto_remove`; when the container is gone before
    `wait()` reads its exit code (killed, or removed by a concurrent cleanup), it reports exit
    code 0, so a killed step looks successful and the run goes on without its outputs. kfp's
    executor writes the executor output file last, only when the step's function returned: no
    file, no success. The step's log then says which declared outputs are missing. Idempotent.
    """
    from kfp.local import docker_task_handler, status  # kfp: heavy

    original = docker_task_handler.DockerTaskHandler.run
    if getattr(original, "visionops_checks_outputs", False):
        return

    def run(self: Any) -> Any:
        result = original(self)
        missing = missing_outputs(self.full_command)
        if result == status.Status.SUCCESS and missing:
            print(
                f"the step's container ended without writing its outputs ({', '.join(missing)}):"
                " it was killed, or removed before its exit code could be read",
                flush=True,
            )
            return status.Status.FAILURE
        return result

    run.visionops_checks_outputs = True  # type: ignore[attr-defined]
    docker_task_handler.DockerTaskHandler.run = run  # type: ignore[method-assign]


def missing_outputs(command: list[str]) -> list[str]:
    """The declared outputs (file names) a step's executor did not write; [] when it finished
    (its executor output file exists) or `command` is not a KFP executor's."""
    import json
    from pathlib import Path

    try:
        executor_input = json.loads(command[command.index("--executor_input") + 1])
    except (ValueError, IndexError, TypeError):
        return []
    outputs = executor_input.get("outputs", {})
    output_file = outputs.get("outputFile", "")
    if not output_file or Path(output_file).exists():
        return []
    declared = [output_file]
    declared += [a["artifacts"][0]["uri"] for a in outputs.get("artifacts", {}).values()]
    declared += [p["outputFile"] for p in outputs.get("parameters", {}).values()]
    return [Path(p).name for p in declared if not Path(p).exists()]
