"""`make mutation`: the mutation score of the code that decides things, per module.

Each target is one decision (a module, or the functions in it that decide) and the test files
that hold it. For each, mutmut (pinned in the `dev` extra) runs in a scratch copy of the checkout
under `.visionops/mutation/<target>/`: it changes the code one mutant at a time and runs the
target's tests; a mutant no test fails on survived. Printed: killed / total per target, and
every surviving mutant as a diff. Mutants listed in `EQUIVALENT` behave exactly like the original
(the README lists them with the reason); they do not count against the score.

    .venv/bin/python -m tests.mutation              # every target
    .venv/bin/python -m tests.mutation gate drift   # some
    .venv/bin/python -m tests.mutation --list

Exit code 1 when a target is under `GOAL`. Not part of `make test`: see the README for how long
it takes.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKDIR = ROOT / ".visionops" / "mutation"
GOAL = 0.90


@dataclass(frozen=True)
class Target:
    """A decision, the file it lives in, the functions mutated (all when empty) and its tests."""

    name: str
    module: str
    tests: tuple[str, ...]
    functions: tuple[str, ...] = ()
    what: str = ""
    pytest_args: tuple[str, ...] = field(default=())


TARGETS: tuple[Target, ...] = (
    Target(
        "gate",
        "visionops/training/gate.py",
        ("tests/test_training_gate.py",),
        what="the promotion rule",
    ),
    Target(
        "promotion",
        "visionops/training/promotion.py",
        ("tests/test_promotion_decision.py",),
        functions=(
            "promote",
            "decide",
            "_evaluate_version",
            "_evaluation_on",
            "_version_evaluation",
        ),
        what="which data the gate compares on, and promotion by hand",
    ),
    Target(
        "request-validation",
        "serving/protocol.py",
        ("tests/test_serving_protocol.py",),
        functions=(
            "_number",
            "_detection_parameters",
            "_check_count",
            "b64_image",
            "parse_v1",
            "_input_images",
            "parse_v2",
            "binary_request",
            "xǁRequestRejectedǁ*",
        ),
        what="what the predictor accepts and how it refuses the rest",
    ),
    Target(
        "drift-decision",
        "visionops/monitoring/drift.py",
        ("tests/test_drift_decision.py",),
        functions=("xǁDriftConfigǁ*", "compared_columns", "check_drift", "_decide"),
        what="drift / no_drift / not_enough_data, the compared columns and their thresholds",
    ),
    Target(
        "drift-statistics",
        "visionops/monitoring/drift_stats.py",
        ("tests/test_drift_stats.py",),
        functions=(
            "_ks",
            "_anderson",
            "_wasserstein",
            "_classes",
            "_chisquare",
            "_fill_zeroes",
            "_psi",
            "stattest",
        ),
        what="the statistics each column is compared with (Evidently's, without Evidently)",
    ),
    Target(
        "drift-cleaning",
        "visionops/monitoring/drift_sample.py",
        ("tests/test_drift_decision.py",),
        functions=("_clean", "_category"),
        what="which values a drift check compares, and which it refuses or leaves out",
    ),
    Target(
        "conversion-filters",
        "visionops/data/convert.py",
        ("tests/test_data_convert.py",),
        functions=("_label_rows", "_polygon"),
        what="which COCO boxes become YOLO rows",
        pytest_args=("-k", "convert_coco or crowd or labels_back or malformed"),
    ),
    Target(
        "resubmission",
        "visionops/orchestration/resubmit.py",
        ("tests/test_pipeline_resubmit.py",),
        functions=("submit_training", "read_submission"),
        what="one training run per monitoring run",
        pytest_args=(
            "-k",
            "interrupted or cluster or refused or auto_mode or unknown_mode or settings_given",
        ),
    ),
    Target(
        "accuracy-guard",
        "visionops/training/quantize.py",
        ("tests/test_accuracy_guard.py",),
        functions=("_judged",),
        what="an INT8 variant ships only within the allowed mAP50-95 drop",
    ),
    Target(
        "prediction-log-guard",
        "visionops/monitoring/prediction_log.py",
        ("tests/test_monitoring_log.py",),
        functions=("xǁPredictionLogWriterǁsubmit", "xǁPredictionLogWriterǁ_drop"),
        what="a request never fails because of the prediction log",
        pytest_args=("-k", "not s3"),
    ),
)

# Mutants that cannot change behaviour, by mutmut's name: why (also in the README). mutmut
# numbers a function's mutants in source order: after editing one of these functions, run its
# target and check that each name still points at the mutant described.
_SAME_FALSE = "integer=None is as false as integer=False"
_RAW = "binary inputs are read from raw_inputs: their own parameters and placeholder are unused"
EQUIVALENT: dict[str, str] = {
    "serving.protocol.x__detection_parameters__mutmut_9": _SAME_FALSE,
    "serving.protocol.x__detection_parameters__mutmut_22": _SAME_FALSE,
    "serving.protocol.x__input_images__mutmut_36": "numpy reads reshape(-2) as reshape(-1)",
    "serving.protocol.x_binary_request__mutmut_23": _RAW,
    "serving.protocol.x_binary_request__mutmut_27": _RAW,
    "serving.protocol.x_binary_request__mutmut_28": _RAW,
    **dict.fromkeys(
        (f"visionops.data.convert.x__label_rows__mutmut_{n}" for n in (13, 15)),
        "a missing iscrowd reads None instead of False: as false",
    ),
    **dict.fromkeys(
        (f"visionops.data.convert.x__label_rows__mutmut_{n}" for n in (23, 25, 32, 34, 45, 47)),
        "dtype left to numpy: COCO's integer sizes and indices come out float64 / int64 anyway",
    ),
    **dict.fromkeys(
        (f"visionops.data.convert.x__label_rows__mutmut_{n}" for n in (42, 55)),
        "-2 for -1 as the not-found index: still below 0, still refused",
    ),
    **dict.fromkeys(
        (
            f"visionops.data.convert.x__label_rows__mutmut_{n}"
            for n in (119, 123, 124, 160, 163, 164, 167, 170, 171)
        ),
        "zip(strict=...) over sequences of one length by construction",
    ),
    "visionops.data.convert.x__label_rows__mutmut_172": "the dict is an ordered set: values unused",
    **dict.fromkeys(
        (f"visionops.training.promotion.x__version_evaluation__mutmut_{n}" for n in (3, 5, 7, 10)),
        "no evaluation hash tag: '', None or 'XXXX' all find no evaluation (hashes are hex)",
    ),
    "visionops.training.promotion.x__evaluate_version__mutmut_23": (
        "log_run=None is as false as log_run=False"
    ),
    "visionops.training.promotion.x__version_evaluation__mutmut_28": (
        "the split left out: Evaluation's own default is 'val', the same"
    ),
    **dict.fromkeys(
        (
            f"visionops.monitoring.drift.x_compared_columns__mutmut_{n}"
            for n in (3, 9, 10, 13, 19, 20)
        ),
        "a DataFrame iterates over its column names: .columns read or not, the same list",
    ),
    **dict.fromkeys(
        (f"visionops.monitoring.drift.x_check_drift__mutmut_{n}" for n in (47, 48, 53)),
        "an empty window's side: dropped None is as false as 0, stats unused, iloc[1:0] empty too",
    ),
    **dict.fromkeys(
        (f"visionops.monitoring.drift.x_check_drift__mutmut_{n}" for n in (60, 79)),
        "the initial reason is always replaced before the result is returned",
    ),
    "visionops.monitoring.drift.x_check_drift__mutmut_105": (
        "Evidently's report computed without a report dir: not written, only time spent"
    ),
    **dict.fromkeys(
        (f"visionops.monitoring.drift.x__decide__mutmut_{n}" for n in (1, 2, 3, 4)),
        "numpy's floating-point warnings are RuntimeWarnings, ignored by the filter either way",
    ),
    "visionops.monitoring.drift_sample.x__clean__mutmut_14": (
        "float columns parsed too: to_numeric returns them as they are, nothing is refused"
    ),
    **dict.fromkeys(
        (f"visionops.monitoring.drift_sample.x__clean__mutmut_{n}" for n in (29, 30, 31, 32)),
        "pandas 2.3 gives the same float64 array with NaN for every numeric dtype left here",
    ),
    **dict.fromkeys(
        (f"visionops.monitoring.drift_sample.x__clean__mutmut_{n}" for n in (47, 49)),
        "the dict's keys are the columns in order: naming them again changes nothing",
    ),
    "visionops.monitoring.drift.x__decide__mutmut_10": (
        "a filter of category None: nothing warns in the block (numpy's warnings are off there)"
    ),
    "visionops.monitoring.drift.x__decide__mutmut_12": (
        "the filter ignores every warning category, not only RuntimeWarning: what is shown changes"
    ),
    "visionops.monitoring.drift.x__decide__mutmut_37": (
        "the effect's threshold goes to its test directly; the one _statistic returns is unused"
    ),
    **dict.fromkeys(
        (f"visionops.monitoring.drift_stats.x__anderson__mutmut_{n}" for n in (3, 5, 7, 9)),
        "the samples' dtype left to numpy: the check's samples are float64 arrays already",
    ),
    "visionops.monitoring.drift_stats.x__anderson__mutmut_18": (
        "every warning ignored, not only UserWarning: the same p-value, only what is shown changes"
    ),
    "visionops.monitoring.drift_stats.x__anderson__mutmut_26": (
        "variant left out: scipy 1.17's default is midrank, the same p-value with a warning"
    ),
    **dict.fromkeys(
        (f"visionops.monitoring.drift_stats.x_stattest__mutmut_{n}" for n in (7, 8)),
        "the kinds joined in the refusal: only a one-kind statistic refuses, one name joins alone",
    ),
    "visionops.monitoring.drift.x__decide__mutmut_115": (
        "> vs >= against share - 1e-12: differs only for a share exactly 1e-12 below the threshold"
    ),
    **dict.fromkeys(
        (f"visionops.data.convert.x__polygon__mutmut_{n}" for n in (17, 19, 23)),
        "concatenate(axis=None / default 0) and reshape(-2) give the same flat list",
    ),
}

STATUS = re.compile(r"^\s+(\S+): (.+)$")
KILLED = {"killed", "timeout", "caught by type check"}


def _copy_checkout(target: Target) -> Path:
    """The checkout as git sees it (tracked and untracked, not ignored) in a fresh folder, with
    mutmut configured for `target`."""
    scratch = WORKDIR / target.name
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, check=True, capture_output=True,
    ).stdout.decode()  # fmt: skip
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            (scratch / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, scratch / name)
    packages = sorted({target.module.split("/")[0], "visionops"})
    settings = [
        "",
        "[tool.mutmut]",
        f"source_paths = {_toml_list(packages)}",
        f"only_mutate = {_toml_list([target.module])}",
        f"pytest_add_cli_args_test_selection = {_toml_list([*target.tests, *target.pytest_args])}",
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q"]',
        f"also_copy = {_toml_list(['tests', 'components', 'pipelines', 'serving'])}",
    ]
    with (scratch / "pyproject.toml").open("a") as pyproject:
        pyproject.write("\n".join(settings) + "\n")
    return scratch


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(f'"{item}"' for item in items) + "]"


def _mutmut(scratch: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONWARNINGS"] = "ignore"
    return subprocess.run(
        [sys.executable, "-m", "mutmut", *args],
        cwd=scratch, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip


def _patterns(target: Target) -> list[str]:
    module = target.module.removesuffix(".py").replace("/", ".")
    if not target.functions:
        return []
    return [
        f"{module}.{name if name.startswith('xǁ') else 'x_' + name}__mutmut_*"
        for name in target.functions
    ]


def run_target(target: Target) -> tuple[int, int, list[tuple[str, str]], float]:
    """(killed, counted, survivors with their diff, seconds) of one target."""
    started = time.monotonic()
    scratch = _copy_checkout(target)
    done = _mutmut(scratch, "run", "--max-children", str(os.cpu_count() or 2), *_patterns(target))
    if done.returncode != 0:
        raise RuntimeError(f"mutmut run failed for {target.name}:\n{done.stdout[-3000:]}")
    listed = _mutmut(scratch, "results", "--all", "true").stdout
    statuses = {m[1]: m[2].strip() for m in map(STATUS.match, listed.splitlines()) if m}
    wanted = [re.compile(p.replace(".", r"\.").replace("*", ".*")) for p in _patterns(target)]
    statuses = {
        name: status
        for name, status in statuses.items()
        if not wanted or any(p.fullmatch(name) for p in wanted)
    }
    counted = [n for n in statuses if n not in EQUIVALENT]
    killed = sum(1 for n in counted if statuses[n] in KILLED)
    survivors = []
    for name in counted:
        if statuses[name] not in KILLED:
            diff = _mutmut(scratch, "show", name).stdout
            lines = [
                line for line in diff.splitlines() if line.startswith(("-  ", "+  ", "- ", "+ "))
            ]
            survivors.append((f"{name} ({statuses[name]})", "\n".join(lines)))
    return killed, len(counted), survivors, time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", help="target names (default: all)")
    parser.add_argument("--list", action="store_true", help="list the targets and exit")
    args = parser.parse_args(argv)
    known = {t.name: t for t in TARGETS}
    if args.list:
        for t in TARGETS:
            print(f"{t.name:22} {t.module:40} {' '.join(t.tests)}  ({t.what})")
        return 0
    unknown = [name for name in args.targets if name not in known]
    if unknown:
        parser.error(f"unknown target(s) {unknown}; known: {sorted(known)}")
    chosen = [known[name] for name in args.targets] or list(TARGETS)
    rows, failed = [], False
    for target in chosen:
        print(f">> {target.name}: mutating {target.module} against {' '.join(target.tests)}",
              flush=True)  # fmt: skip
        killed, counted, survivors, seconds = run_target(target)
        score = killed / counted if counted else 1.0
        failed |= score < GOAL
        rows.append((target.name, killed, counted, score, seconds))
        print(f"   {killed}/{counted} killed ({score:.1%}) in {seconds:.0f} s", flush=True)
        for name, diff in survivors:
            print(
                f"   survived: {name}\n" + "\n".join(f"      {line}" for line in diff.splitlines())
            )
    print(f"\nmutation score (goal >= {GOAL:.0%}):")
    for name, killed, counted, score, seconds in rows:
        print(f"  {name:22} {killed:4}/{counted:<4} {score:7.1%}  {seconds:6.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
