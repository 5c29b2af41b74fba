"""Fuzzed model files through `inspect`, `check`, `bounds`, `certify` and `attack` (issue 13): damaged bytes of the
shipped and tiny models, structural mutations (dims, types, names, cycles, operators, opsets,
attributes, weights), hostile sizes (Loop trip counts, huge constants, 10^6 steps), random op
chains and random recurrent nodes (every activation, direction, clip, peepholes, initial states).
Each ends in a one-line refusal or an answer; an accepted model's bounds and certified radii must
hold at random points of the ball (see oracle.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.fuzz import generate
from tests.fuzz.conftest import scale
from tests.fuzz.oracle import assert_bounds_hold, assert_counterexamples_within, assert_radii_hold
from tests.fuzz.runner import ends_well, refused, run_fresh

EPS = 0.05
MAX_NODES_TO_BOUND = 500

# what some cases must end in: (kind, fragment of the message or None)
EXPECTED = {
    "dims-zero-time": ("refusal", "is empty"),
    "dims-negative-time": ("refusal", "negative length"),
    "input-float16-with-cast": ("answer", None),
    "dims-million-time": ("refusal", "max_"),
    "dims-huge-features": ("refusal", "max_elements"),
    "input-type-int64": ("refusal", "INT64"),
    "input-type-string": ("refusal", "STRING"),
    "input-type-complex64": ("refusal", "COMPLEX64"),
    "input-type-float16": ("refusal", "type"),
    "input-type-double": ("refusal", "type"),
    "weight-as-int64": ("refusal", "type"),
    "output-type-string": ("refusal", "type"),
    "missing-initializer-W": ("refusal", None),
    "cycle": ("refusal", None),
    "duplicate-output-name": ("refusal", None),
    "unknown-op": ("refusal", "FuzzOp"),
    "unknown-domain": ("refusal", "com.fuzz"),
    "opset-99": ("refusal", "opset 99"),
    "hidden-size-0": ("refusal", "hidden_size 0"),
    "hidden-size-1000000000": ("refusal", None),
    "clip-negative": ("refusal", "clip"),
    "clip-nan": ("refusal", "clip"),
    "weight-W-nan": ("refusal", "NaN"),
    "weight-R-inf": ("refusal", "NaN or infinite"),
    "empty-graph": ("refusal", None),
    "loop-1e12-trips": ("refusal", "10000 iterations"),
    "loop-no-trip-count-forever": ("refusal", "10000 iterations"),
    "constant-of-shape-1e12": ("refusal", "max_elements"),
    "expand-1e10": ("refusal", "max_elements"),
    "tile-1e11": ("refusal", "max_elements"),
    "lstm-declares-1e6-steps": ("refusal", "max_"),
    "activation-relu": ("answer", None),
    "clip-tiny": ("answer", None),
    "loop-3-trips": ("answer", None),
    "weight-R-denormal": ("answer", None),
    "weight-all-3e38": ("answer", None),
}

CASES = (generate.byte_cases(count_per_kind=3 * scale()) + generate.structural_cases() + generate.hostile_size_cases()
         + generate.chain_cases(count=12 * scale()) + generate.recurrent_cases(count=12 * scale()))


def samples_for(report: dict) -> np.ndarray | None:
    """Samples in the layout of the model's first input: the tiny models' [N, T, F], or [N, F]."""
    if len(report["inputs"]) != 1:
        return None
    shape = report["inputs"][0]["shape"]
    x = generate.samples(2)
    if shape == [1, generate.STEPS, generate.FEATURES]:
        return x
    if shape == [1, generate.FEATURES]:
        return x[:, 0, :].copy()
    return None


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in CASES])
def test_model_is_refused_or_answered_soundly(case, popqorn, tmp_path):
    path = case.make(tmp_path)
    inspect = ends_well(popqorn.run(["inspect", path, "--json"]))
    kind, fragment = ("refusal", "not UTF-8") if case.name.startswith("not-utf8") else EXPECTED.get(case.name, (None, None))
    assert kind in (None, inspect.kind), inspect.describe()
    if fragment:
        assert fragment in inspect.message, inspect.describe()
    if inspect.kind == "refusal":
        return
    ends_well(popqorn.run(["check", path, "--samples", "2"]))
    report = json.loads(inspect.stdout)
    x = samples_for(report)
    if x is None or sum(report["nodes"].values()) > MAX_NODES_TO_BOUND:
        return  # bounds on deep graphs: see test_deep_graph_is_bounded_or_refused_in_time
    np.save(tmp_path / "x.npy", x)
    bounds = ends_well(popqorn.run(["bounds", path, "--input", tmp_path / "x.npy", "--eps", EPS, "--json"]))
    if bounds.kind == "answer":
        assert_bounds_hold(bounds, path, x, EPS)
    certify = ends_well(popqorn.run(["certify", path, "--input", tmp_path / "x.npy", "--json", "--no-progress",
                                     "--tol", "0.05"]))
    if certify.kind == "answer":
        assert_radii_hold(certify, path, x)
    attack = ends_well(popqorn.run(["attack", path, "--input", tmp_path / "x.npy", "--eps", 0.2, "--steps", 3,
                                    "--restarts", 1, "--json"]))
    if attack.kind == "answer":
        assert_counterexamples_within(attack, 0.2)


def test_shipped_model_damaged_in_many_ways_in_one_pass(popqorn, tmp_path):
    """Many cheap byte-level variants of a shipped model through `inspect` only (one line each)."""
    kinds = {"refusal": 0, "answer": 0}
    for seed in range(24 * scale()):
        how = ("truncate", "bitflip", "overwrite", "splice")[seed % 4]
        path = tmp_path / f"{how}_{seed}.onnx"
        path.write_bytes(generate.damaged_bytes("digits_lstm_t8_h16", how, 7919 * seed + 1))
        kinds[ends_well(popqorn.run(["inspect", path])).kind] += 1
    assert kinds["refusal"] > 0


@pytest.mark.parametrize("name, fragment", [("constant-of-shape-1e12", "max_elements"),
                                            ("lstm-declares-1e6-steps", "max_")])
def test_hostile_sizes_in_a_fresh_process_under_the_memory_cap(name, fragment, tmp_path):
    """The way a user meets them: `python -m verifier.cli` started for the one file, under the cap."""
    (case,) = [c for c in generate.hostile_size_cases() if c.name == name]
    refused(run_fresh(["inspect", case.make(tmp_path)]), fragment)


def test_deep_graph_is_bounded_or_refused_in_time(popqorn, tmp_path):
    """Back-substitution is quadratic in depth: a 3000-deep chain is refused by the visit budget."""
    path = generate.save(generate.repeated_names(3000), tmp_path / "deep.onnx")
    np.save(tmp_path / "x.npy", generate.samples(2)[:, 0, :].copy())
    ends_well(popqorn.run(["bounds", path, "--input", tmp_path / "x.npy", "--eps", EPS], timeout=3))
