"""Fuzzed VNN-LIB properties (issue 13): token soup, deep nesting, unbalanced parentheses, huge
and non-finite numbers, undeclared names, input/output counts that do not match the model, empty
boxes, exponential disjunctive normal forms, both syntaxes. Every file is prepared (read and
matched to the model) in the warm worker; then all of them run as one `popqorn vnnlib
--instances` list, whose `sat` answers are confirmed with onnxruntime."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest

from tests.fuzz import generate
from tests.fuzz.conftest import scale
from tests.fuzz.oracle import run_onnx
from tests.fuzz.runner import ends_well, run_fresh

UNSAFE_ROW = "(assert (>= Y_1 Y_0))"  # the unsafe outputs of most generated properties
BOX = 0.1

EXPECTED = {
    "good": ("answer", None), "v2-good": ("answer", None), "deep-nesting": ("answer", None),
    "many-asserts": ("answer", None), "deep-arithmetic": ("answer", None),
    "empty": ("refusal", "no declarations"), "unbalanced-open": ("refusal", "unbalanced"),
    "unbalanced-close": ("refusal", "unexpected ')'"), "deep-unbalanced": ("refusal", "unbalanced"),
    "huge-number": ("refusal", "not a finite number"), "nan-bound": ("refusal", "not a finite number"),
    "inf-bound": ("refusal", "not a finite number"), "nan-output-constant": ("refusal", "not a finite number"),
    "huge-finite-box": ("refusal", "too large"), "undeclared-input": ("refusal", "not declared"),
    "undeclared-output": ("refusal", "not declared"), "too-few-inputs": ("refusal", "declares 5 inputs"),
    "too-many-inputs": ("refusal", "declares 7 inputs"), "too-many-outputs": ("refusal", "declares 5 outputs"),
    "exponential-dnf": ("refusal", "disjunctive normal form"), "nonlinear": ("refusal", "not linear"),
    "unbounded-input": ("refusal", "no lower or upper bound"), "v2-version-9": ("refusal", "version"),
}


def text_cases() -> list[tuple[str, str | bytes]]:
    extra = [(f"token-soup-{seed}", generate.token_soup(seed)) for seed in range(6, 6 * scale())]
    return generate.vnnlib_cases() + extra


def _write(folder: Path, name: str, text: str | bytes) -> Path:
    path = folder / f"{name}.vnnlib"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


@pytest.mark.parametrize("name, text", [pytest.param(n, t, id=n) for n, t in text_cases()])
def test_property_is_refused_or_prepared(name, text, popqorn, tiny, tmp_path):
    outcome = ends_well(popqorn.run(["vnnlib", tiny.models["LSTM"], _write(tmp_path, name, text), "--prepare"]))
    kind, fragment = EXPECTED.get(name, (None, None))
    assert kind in (None, outcome.kind) and (fragment is None or fragment in outcome.message), outcome.describe()


def counterexample(result: str) -> tuple[np.ndarray, np.ndarray]:
    pairs = re.findall(r"\((X|Y)_(\d+) ([^()\s]+)\)", result)
    x = np.array([float(v) for kind, _, v in pairs if kind == "X"])
    y = np.array([float(v) for kind, _, v in pairs if kind == "Y"])
    return x, y


def assert_sat_is_real(result: str, model: Path, text: str) -> None:
    """The counterexample lies in the input box, onnxruntime gives the reported outputs, and they
    are unsafe (Y_1 >= Y_0) when that is the property's only output constraint."""
    x, y = counterexample(result)
    assert x.size == generate.STEPS * generate.FEATURES and y.size == generate.CLASSES, result
    assert (np.abs(x) <= BOX + 1e-6).all() or "3e38" in text or "1e308" in text, result
    expected = run_onnx(model, x.reshape(1, generate.STEPS, generate.FEATURES).astype(np.float32)).reshape(-1)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    if text.count("(assert (") == text.count("(assert (>= X_") + text.count("(assert (<= X_") + 1 and UNSAFE_ROW in text:
        assert y[1] >= y[0] - 1e-6, result


def test_instance_list_answers_every_property(popqorn, tiny, tmp_path):
    """Every generated property in one `--instances` run (one warm worker): each row is an answer or
    an error that is not internal; every `sat` is confirmed with onnxruntime."""
    model = tiny.models["LSTM"]
    texts = dict(text_cases())
    rows = []
    for name, text in texts.items():
        _write(tmp_path, name, text)
        rows.append(f"{model.name},{name}.vnnlib,10")
    (tmp_path / model.name).write_bytes(model.read_bytes())
    (tmp_path / "instances.csv").write_text("\n".join(rows) + "\n")
    outcome = ends_well(popqorn.run(["vnnlib", "--instances", tmp_path / "instances.csv"], timeout=240), "answer")
    summary = list(csv.DictReader(open(tmp_path / "results" / "summary.csv")))
    assert len(summary) == len(texts), outcome.describe()
    answers = {}
    for row in summary:
        name = Path(row["vnnlib"]).stem
        answers[name] = row["result"]
        assert row["result"] in ("sat", "unsat", "unknown", "timeout", "error"), row
        assert "internal error" not in row["detail"] and "ended unexpectedly" not in row["detail"], row
        if row["result"] == "sat":
            assert_sat_is_real(Path(row["result_file"]).read_text(), model, texts[name])
    assert answers["good"] == answers["v2-good"] == "sat", answers  # the tiny LSTM reaches Y_1 >= Y_0 in the box
    assert answers["empty-box"] == "unsat" and answers["contradictory-outputs"] == "unsat", answers
    assert all(answers[name] == "error" for name, (kind, _) in EXPECTED.items() if kind == "refusal"), answers


def test_full_command_in_a_fresh_process(tiny, tmp_path):
    """`popqorn vnnlib MODEL PROPERTY --timeout` as VNN-COMP runs it (worker process included), under
    the memory cap: an answer within the timeout, or a one-line refusal for a property that does not fit."""
    outcome = ends_well(run_fresh(["vnnlib", tiny.models["LSTM"], tiny.property, "--timeout", "20",
                                   "--out", tmp_path / "result.txt"]), "answer")
    result = (tmp_path / "result.txt").read_text()
    assert result.split()[0] in ("sat", "unsat", "unknown"), outcome.describe()
    if result.startswith("sat"):
        assert_sat_is_real(result, tiny.models["LSTM"], tiny.property.read_text())
