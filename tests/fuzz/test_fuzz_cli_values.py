"""Fuzzed command-line values (issue 13): every value listed in generate.CLI_VALUES for every
command that takes the flag, then seeded mixes of several flags. Each run ends in a one-line
refusal or an answer; answers in the default threat model are checked against onnxruntime."""

from __future__ import annotations

import json

import pytest

from tests.fuzz import generate
from tests.fuzz.conftest import scale
from tests.fuzz.oracle import assert_bounds_hold, assert_counterexamples_within, assert_radii_hold
from tests.fuzz.runner import ends_well

BASE_EPS = 0.05
# flags that change the set the oracle samples (an l-inf ball around every frame)
THREAT_FLAGS = ("--norm", "--ball", "--frames", "--target", "--domain", "--output", "--input-shape", "--eps")
KNOWN_ENGINE_BUGS = {}


def base_argv(command: str, tiny) -> list:
    """A command that answers on the tiny GRU; the fuzzed flags come after it (argparse keeps the last)."""
    model = tiny.models["GRU"]
    return {"bounds": ["bounds", model, "--input", tiny.samples, "--eps", BASE_EPS, "--json"],
            "certify": ["certify", model, "--input", tiny.samples, "--no-progress", "--json", "--tol", "0.05"],
            "attack": ["attack", model, "--input", tiny.samples, "--eps", 0.2, "--steps", 3, "--restarts", 1, "--json"],
            "check": ["check", model, "--samples", 2],
            "inspect": ["inspect", model],
            "vnnlib": ["vnnlib", model, tiny.property, "--prepare"]}[command]


def judge(outcome, command: str, flags: list[str], tiny) -> None:
    """Refusal or answer; an answer that parses as a report in the default threat model is checked
    against onnxruntime."""
    ends_well(outcome)
    if outcome.kind != "answer" or any(f.split("=")[0] in THREAT_FLAGS for f in flags):
        return
    try:
        json.loads(outcome.stdout)
    except ValueError:
        return  # a table (e.g. --json=PATH sent the report to a file)
    model = tiny.models["GRU"]
    if command == "bounds":
        assert_bounds_hold(outcome, model, tiny.x, BASE_EPS)
    elif command == "certify":
        assert_radii_hold(outcome, model, tiny.x)
    elif command == "attack":
        assert_counterexamples_within(outcome, 0.2)


def _param(command: str, flag: str, value: str):
    marks = [pytest.mark.xfail(strict=True, reason=KNOWN_ENGINE_BUGS[(command, flag, value)])] \
        if (command, flag, value) in KNOWN_ENGINE_BUGS else []
    return pytest.param(command, flag, value, id=f"{command}{flag}={value}", marks=marks)


@pytest.mark.parametrize("command, flag, value", [_param(*case) for case in generate.cli_value_cases()])
def test_one_fuzzed_value(command, flag, value, popqorn, tiny, tmp_path):
    flags = [f"{flag}={value}"]
    judge(popqorn.run([*base_argv(command, tiny), *flags], cwd=tmp_path), command, flags, tiny)


MIXES = [(command, seed, mix) for command in ("bounds", "certify", "attack", "check")
         for seed, mix in enumerate(generate.cli_combinations(command, 8 * scale(), seed=len(command)))]


@pytest.mark.parametrize("command, seed, flags", [pytest.param(c, s, m, id=f"{c}-{s}") for c, s, m in MIXES])
def test_fuzzed_flag_mix(command, seed, flags, popqorn, tiny, tmp_path):
    judge(popqorn.run([*base_argv(command, tiny), *flags], cwd=tmp_path), command, flags, tiny)


@pytest.mark.parametrize("argv", [["frobnicate"], ["certify", "--eps"], ["--version", "x"], ["bounds", "-"],
                                  ["certify", "m.onnx", "--input"], ["inspect", "\x00"], ["check", "-" * 5000]],
                         ids=["unknown-command", "missing-value", "version-extra", "dash", "no-input-value",
                              "nul-byte", "long-dashes"])
def test_malformed_command_lines(argv, popqorn, tmp_path):
    ends_well(popqorn.run(argv, cwd=tmp_path))


def test_no_command_prints_the_help_and_exits_2(popqorn, tmp_path):
    outcome = popqorn.run([], cwd=tmp_path)
    assert outcome.code == 2 and "usage: popqorn" in outcome.stdout and not outcome.stderr, outcome.describe()


@pytest.mark.parametrize("command", ["bounds", "certify"])  # the optimised mode computes in float64 whatever --dtype
def test_alpha_in_float32(command, popqorn, tiny, tmp_path):
    flags = ["--method=alpha", "--dtype=float32"]
    judge(popqorn.run([*base_argv(command, tiny), *flags], cwd=tmp_path), command, flags, tiny)
