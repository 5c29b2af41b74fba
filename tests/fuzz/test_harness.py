"""The fuzz harness judges what it is meant to: the memory cap is in force in the processes it
starts, a refusal only counts as one when it is one clean line with a documented code, and the
oracle fails bounds that do not hold."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.fuzz.oracle import assert_bounds_hold, run_exact
from tests.fuzz.runner import MEMORY_CAP_BYTES, Outcome, _cap_memory


def test_memory_cap_turns_a_blow_up_into_a_failure():
    allocate = f"bytearray({MEMORY_CAP_BYTES + 2**30})"
    done = subprocess.run([sys.executable, "-c", allocate], capture_output=True, text=True, preexec_fn=_cap_memory,
                          timeout=60)
    assert done.returncode != 0 and "MemoryError" in done.stderr


def test_outcomes_are_judged_strictly():
    line = "popqorn: error: --eps must be a number, not 'abc'\n"
    assert Outcome([], 5, stderr=line).kind == "refusal"
    assert Outcome([], 2, stderr="popqorn certify: error: argument --eps: expected one argument\n").kind == "refusal"
    assert Outcome([], 5, stderr="warning: overflow\n" + line).kind == "bad refusal"
    assert Outcome([], 70, stderr="popqorn: internal error: KeyError: 'x'\n").kind == "internal error"
    assert Outcome([], 1, stderr="Traceback (most recent call last):\n").kind == "traceback"
    assert Outcome([], 0).kind == "answer" and Outcome([], None).kind == "hang"
    assert Outcome([], "worker died (status -9)").kind == "crash" and Outcome([], 9).kind == "unexpected exit 9"


def test_the_oracle_catches_bounds_that_do_not_hold(tiny):
    """Bounds squeezed to the centre's outputs cannot contain the outputs at the ball's corners."""
    center = run_exact(tiny.models["RNN"], tiny.x)
    report = {"logits": False, "samples": [0, 1], "lower": center.tolist(), "upper": center.tolist()}
    with pytest.raises(AssertionError, match="unsound bounds"):
        assert_bounds_hold(Outcome([], 0, stdout=json.dumps(report)), tiny.models["RNN"], tiny.x, 0.05)
    report.update(lower=(center - 100).tolist(), upper=(center + 100).tolist())
    assert assert_bounds_hold(Outcome([], 0, stdout=json.dumps(report)), tiny.models["RNN"], tiny.x, 0.05) > 0
    assert np.isfinite(center).all()
