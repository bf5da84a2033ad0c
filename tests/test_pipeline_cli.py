"""`visionops pipeline`: parameters typed by the pipeline's signature, and the usage errors."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from pipelines import load_pipeline
from visionops.cli.app import app
from visionops.errors import UsageError
from visionops.orchestration.params import (
    compiled_package,
    package_info,
    parameter_types,
    parse_params,
)


def _training() -> tuple[str, dict[str, str]]:
    pipeline = load_pipeline("training")
    return pipeline.name, parameter_types(pipeline)


def test_parameters_take_the_types_of_the_signature() -> None:
    params = parse_params(
        *_training(),
        ["epochs=3", "min_map50=0.25", "products=Cable,Screw", "dataset=synthetic?train=8"],
    )
    assert params == {
        "epochs": 3,
        "min_map50": 0.25,
        "products": "Cable,Screw",
        "dataset": "synthetic?train=8",
    }
    # KFP hands ints back as floats inside dicts: they come back as ints.
    assert parse_params(*_training(), {"epochs": 2.0})["epochs"] == 2


def test_the_compiled_yaml_declares_the_same_parameters() -> None:
    name, types = package_info(compiled_package("training"))
    assert (name, types) == _training()


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["epoch=3"], "has no parameter 'epoch'"),
        (["epochs=three"], "epochs must be integer"),
        (["epochs"], "KEY=VALUE"),
        (["min_map50=high"], "min_map50 must be float"),
    ],
)
def test_bad_parameters_name_the_problem(items: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_params(*_training(), items)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "training"], "--local, --docker or --host"),
        (
            ["run", "training", "--local", "--host", "http://127.0.0.1:9"],
            "--local, --docker or --host",
        ),
        (["run", "training", "--local", "--wait"], "--wait follows a run"),
        (["run", "nightly", "--local"], "unknown pipeline 'nightly'"),
        (["run", "training", "--local", "-p", "epochs=x"], "epochs must be integer"),
    ],
)
def test_the_cli_rejects_wrong_usage_with_exit_2(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["pipeline", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
