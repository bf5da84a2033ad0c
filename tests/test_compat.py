"""The private internals of kfp, MLflow, boto3 and KServe that `visionops._compat` relies on are
still what the pinned versions hold: an upgrade that changes one fails here, naming it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from visionops import _compat
from visionops._compat import Internal, check
from visionops._compat import kfp as kfp_compat
from visionops._compat import mlflow as mlflow_compat

IN_PROCESS = {"visionops/_compat/kfp.py": kfp_compat, "visionops/_compat/mlflow.py": mlflow_compat}


@pytest.mark.parametrize(
    ("module", "internal"),
    [(path, internal) for path, mod in IN_PROCESS.items() for internal in mod.INTERNALS],
    ids=lambda value: value.target if isinstance(value, Internal) else "",
)
def test_internal_is_as_pinned(module: str, internal: Internal) -> None:
    problem = check(internal, module)
    assert problem is None, problem


def test_kserve_internals_are_as_pinned() -> None:
    """In a process of its own: importing KServe parses sys.argv (pytest's flags here)."""
    code = (
        "import json; from visionops._compat import check; import visionops._compat.kserve as m\n"
        "print(json.dumps([p for i in m.INTERNALS if (p := check(i, 'visionops/_compat/kserve.py'))"
        "] + [len(m.INTERNALS)]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    *problems, count = json.loads(done.stdout.strip().splitlines()[-1])
    assert count >= 10
    assert not problems, "\n".join(problems)


def test_a_changed_or_missing_internal_is_named_with_what_to_recheck() -> None:
    target = "kfp.local.logging_utils:format_status"
    changed = check(Internal(target, "step_event reads it", "0" * 16), "visionops/_compat/kfp.py")
    assert changed is not None
    assert changed.startswith(f"{target} changed in kfp {_compat.installed_version('kfp')}")
    assert "re-check visionops/_compat/kfp.py, which relies on it: step_event reads it" in changed
    gone = check(
        Internal("kfp.local.logging_utils:no_such_thing", "why"), "visionops/_compat/kfp.py"
    )
    assert gone is not None and "kfp.local.logging_utils:no_such_thing is gone in kfp" in gone


def test_step_events_are_read_from_lines_formatted_by_kfp_itself() -> None:
    from kfp.local import logging_utils, status

    name = logging_utils.format_task_name("train-model")
    assert kfp_compat.step_event(f"INFO - Executing task {name}") == ("train-model", "started")
    for state, event in ((status.Status.SUCCESS, "succeeded"), (status.Status.FAILURE, "failed")):
        line = f"Task {name} finished with status {logging_utils.format_status(state)}"
        assert kfp_compat.step_event(line) == ("train-model", event)
    assert kfp_compat.step_event("    epoch 3/16: box_loss=1.2") is None


def test_the_patched_condition_evaluator_is_still_checked_against_kfps_own() -> None:
    kfp_compat.allow_named_output_conditions()
    kfp_compat.allow_named_output_conditions()  # idempotent
    (patched,) = [i for i in kfp_compat.INTERNALS if "ConditionEvaluator" in i.target]
    assert check(patched, "visionops/_compat/kfp.py") is None
