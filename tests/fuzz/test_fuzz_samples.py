"""Fuzzed sample and label files through `bounds`, `certify`, `attack` and `check` (issue 13):
wrong rank and layout, NaN/inf/huge values, empty arrays, every dtype numpy writes, lying and
garbage headers, object arrays, damaged archives, zip bombs, and labels of every wrong kind.
Each ends in a one-line refusal or an answer; answers are checked against onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest

from tests.fuzz import generate
from tests.fuzz.oracle import assert_bounds_hold, assert_counterexamples_within, assert_radii_hold
from tests.fuzz.runner import ends_well, refused, run_fresh

EPS = 0.05
COMMANDS = {"bounds": ["--eps", EPS, "--json"], "certify": ["--json", "--no-progress", "--tol", "0.05"],
            "attack": ["--eps", 0.2, "--steps", 3, "--restarts", 1, "--json"], "check": []}

# (kind, fragment) every command must end in, for cases where the right outcome is certain
EXPECTED = {
    "good": ("answer", None), "npz-good": ("answer", None), "npz-stored": ("answer", None),
    "float16": ("answer", None), "big-endian": ("answer", None), "fortran-order": ("answer", None),
    "nan": ("refusal", "NaN"), "inf": ("refusal", "NaN or infinite"), "-inf": ("refusal", "NaN or infinite"),
    "complex": ("refusal", "complex"), "strings": ("refusal", "dtype"), "object-array": ("refusal", "never pickled"),
    "npz-object-member": ("refusal", "never pickled"), "header-huge-shape": ("refusal", "input budget"),
    "npz-huge-header": ("refusal", "input budget"), "header-negative-shape": ("refusal", "negative dimension"),
    "header-truncated-data": ("refusal", "truncated"), "npz-truncated-member": ("refusal", None),
    "empty-batch": ("refusal", "empty"), "time-major": ("refusal", "time-major"),
    "single-sample-no-batch": ("refusal", "without the batch axis"), "wrong-extension": ("refusal", ".npy or .npz"),
    "empty-file": ("refusal", None), "text-file": ("refusal", None), "gzip-file": ("refusal", None),
    "truncated-zip": ("refusal", None), "npz-no-x": ("refusal", "'x'"),
}
LABEL_RULES = {  # labels the commands that use them (certify, attack) must refuse
    "labels-float": "whole numbers", "labels-negative": "out of range", "labels-out-of-range": "out of range",
    "labels-nan": "whole numbers", "labels-inf": "whole numbers", "labels-strings": "integer class indices",
    "labels-one-hot": "one-hot", "labels-too-few": "for 2 samples", "labels-too-many": "for 2 samples",
    "labels-object": "never pickled", "labels-huge": "out of range", "labels-uint64-huge": "out of range",
}


def _loaded_samples(path) -> np.ndarray | None:
    """The samples as numpy reads them, when they are what the tiny models take (for the oracle)."""
    try:
        data = np.load(path, allow_pickle=False)
        x = data["x"] if hasattr(data, "files") else data
    except Exception:  # noqa: BLE001 - the commands judged the file; this only picks what to compare
        return None
    if x.shape[1:] != (generate.STEPS, generate.FEATURES) or x.dtype.kind != "f":
        return None
    return x.astype(np.float64)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in generate.sample_cases()])
def test_sample_file_is_refused_or_answered_soundly(case, popqorn, tiny, tmp_path):
    path = case.make(tmp_path)
    model = tiny.models["LSTM"]
    kind, fragment = EXPECTED.get(case.name, (None, None))
    for command, extra in COMMANDS.items():
        outcome = ends_well(popqorn.run([command, model, "--input", path, *extra]))
        if case.name in LABEL_RULES and command in ("certify", "attack"):
            refused(outcome, LABEL_RULES[case.name])
        elif kind is not None:
            assert outcome.kind == kind and (fragment is None or fragment in outcome.message), outcome.describe()
        if outcome.kind != "answer" or command == "check":
            continue
        x = _loaded_samples(path)
        if x is None or not np.isfinite(x).all():
            continue
        if command == "bounds":
            assert_bounds_hold(outcome, model, x.astype(np.float32), EPS)
        elif command == "certify":
            assert_radii_hold(outcome, model, x.astype(np.float32))
        else:
            assert_counterexamples_within(outcome, 0.2)


@pytest.mark.parametrize("labels, fragment", [
    (np.array([0.5, 1.0]), "whole numbers"), (np.array([-1, 0]), "out of range"), (np.array([0, 99]), "out of range"),
    (np.array(["a", "b"]), "integer class indices"), (np.array([np.nan, 1.0]), "whole numbers"),
    (np.array([[1, 0, 0], [0, 1, 0]]), "one-hot"), (np.array(1), "for 2 samples"), (np.zeros(0), "for 2 samples"),
    (np.array([1 + 0j, 0j]), "integer class indices"),
], ids=["float", "negative", "out-of-range", "strings", "nan", "one-hot", "scalar", "empty", "complex"])
def test_labels_file_follows_the_label_rule(labels, fragment, popqorn, tiny, tmp_path):
    np.save(tmp_path / "y.npy", labels)
    for command, extra in (("certify", ["--no-progress"]), ("attack", ["--eps", "0.1", "--steps", "2", "--restarts", "1"])):
        refused(popqorn.run([command, tiny.models["GRU"], "--input", tiny.x_npy, "--labels", tmp_path / "y.npy", *extra]),
                fragment)


def test_zip_bomb_is_read_only_within_the_input_budget(popqorn, tiny, tmp_path):
    """64 MiB of zeros deflated to ~64 KiB: refused under a 16 MiB budget before inflating; within
    the default budget it is read and sliced like any file."""
    path = tmp_path / "bomb.npz"
    path.write_bytes(generate.zip_bomb(64 * 2**20))
    assert path.stat().st_size < 2**20
    argv = ["bounds", tiny.models["RNN"], "--input", path, "--eps", EPS, "--start", 5, "--limit", 2, "--json"]
    refused(popqorn.run(argv, env={"POPQORN_MAX_INPUT_MB": "16"}), "input budget", "POPQORN_MAX_INPUT_MB")
    outcome = ends_well(popqorn.run(argv), "answer")
    assert_bounds_hold(outcome, tiny.models["RNN"], np.zeros((7, generate.STEPS, generate.FEATURES), np.float32), EPS)
    refused(run_fresh(argv, env={"POPQORN_MAX_INPUT_MB": "16"}), "input budget")
