"""MLproject and the click CLI agree: every parameter passed, every option declared, same defaults."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
import yaml

from defectlab.cli import main

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONTRACT_ENTRY_POINTS = (
    "main", "metric", "ssim", "tune", "evaluate", "predict", "compare", "promote", "synth",
)


def load_entry_points():
    return yaml.safe_load((PROJECT_ROOT / "MLproject").read_text())["entry_points"]


def click_command(command_line: str) -> click.Command:
    words = shlex.split(command_line.replace("{", "").replace("}", ""))
    assert words[0] == "defectlab", f"entry point does not call the console script: {command_line}"
    command = main
    for word in words[1:]:
        if word.startswith("-"):
            break
        command = command.get_command(click.Context(command), word)
    return command


def normalise(value):
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return ""
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value).lower()


def entry_point_cases():
    return sorted(load_entry_points().items())


def test_every_contract_entry_point_is_declared():
    declared = set(load_entry_points())
    missing = [name for name in CONTRACT_ENTRY_POINTS if name not in declared]
    assert not missing, f"contract entry points missing from MLproject: {missing}"


def test_mlproject_is_the_file_the_cli_generates():
    from defectlab.mlproject_file import render_mlproject

    assert (PROJECT_ROOT / "MLproject").read_text() == render_mlproject(), (
        "MLproject is out of date: run `python -m defectlab.mlproject_file > MLproject`"
    )


def test_main_is_metric():
    entry_points = load_entry_points()
    assert entry_points["main"] == entry_points["metric"]


@pytest.mark.parametrize("name,entry_point", entry_point_cases())
def test_parameters_match_click_options(name, entry_point):
    command = click_command(entry_point["command"])
    options = {
        parameter.name: parameter for parameter in command.params if isinstance(parameter, click.Option)
    }
    declared = entry_point.get("parameters", {}) or {}
    passed = dict(re.findall(r"--([a-z0-9-]+) \{([a-z0-9_]+)\}", entry_point["command"]))
    for parameter_name, spec in declared.items():
        assert parameter_name in passed.values(), f"{name}: parameter {parameter_name} is never passed"
        assert parameter_name in options, f"{name}: parameter {parameter_name} has no click option"
        option = options[parameter_name]
        if option.required:
            continue
        assert normalise(spec.get("default")) == normalise(option.default), (
            f"{name}: default of {parameter_name} differs: MLproject {spec.get('default')!r}, "
            f"click {option.default!r}"
        )
    for option_flag, parameter_name in passed.items():
        assert option_flag.replace("-", "_") == parameter_name, f"{name}: --{option_flag} gets {{{parameter_name}}}"
    # A repeatable option (e.g. synth --category) has no single MLproject parameter.
    repeatable = {option_name for option_name, option in options.items() if option.multiple}
    undeclared = set(options) - set(declared) - repeatable
    assert not undeclared, f"{name}: click options not declared in MLproject: {sorted(undeclared)}"


def test_no_path_named_mlproject_other_than_the_file():
    clashes = [
        path for path in PROJECT_ROOT.iterdir()
        if path.name.lower() == "mlproject" and path.name != "MLproject"
    ]
    assert not clashes and (PROJECT_ROOT / "MLproject").is_file()
