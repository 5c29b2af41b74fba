"""VNN-LIB in both syntaxes on a shipped model: answers known independently (a margin certified
far beyond the box; a counterexample re-checked here with onnxruntime), malformed files naming
their line, timeouts, and the result file format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

import parsers
from verifier.certify import certify
from verifier.cli import main
from verifier.errors import InputError
from verifier.vnnlib import read_property
from verifier.vnnlib.reader import parse_v1
from verifier.vnnlib.solve import solve

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models_onnx" / "digits_lstm_t8_h16.onnx"
FIXTURES = ROOT / "tests" / "fixtures" / "vnnlib"


@pytest.fixture(scope="module")
def graph():
    return parsers.load_onnx(MODEL)


def test_both_syntaxes_read_the_same_property():
    first = read_property(FIXTURES / "digits_lstm_robust_v1.vnnlib")
    pytest.importorskip("vnnlib")
    second = read_property(FIXTURES / "digits_lstm_robust_v2.vnnlib")
    assert (first.version, second.version) == ("1.0", "2.0")
    assert first.inputs == second.inputs == 64 and first.outputs == second.outputs == 10
    (a,), (b,) = first.cases, second.cases
    assert np.allclose(a.lower, b.lower) and np.allclose(a.upper, b.upper)
    assert len(a.disjuncts) == len(b.disjuncts) == 9
    for (rows_a, bounds_a, _), (rows_b, bounds_b, _) in zip(a.disjuncts, b.disjuncts):
        assert np.allclose(rows_a, rows_b) and np.allclose(bounds_a, bounds_b)


def test_robust_box_is_unsat_with_a_wide_safety_gap(graph):
    # independent evidence: the certified L-inf radius of this sample is far above the box's 0.005
    samples = np.load(MODEL.with_suffix(".samples.npz"))
    (result,) = certify(graph, samples["x"][:1], float("inf"), labels=samples["y"][:1], dtype=torch.float64)
    assert result.radius > 3 * 0.005  # the box (radius 0.005, clipped to [0, 1]) sits well inside
    for syntax in ("v1", "v2"):
        if syntax == "v2":
            pytest.importorskip("vnnlib")
        answer = solve(graph, str(MODEL), read_property(FIXTURES / f"digits_lstm_robust_{syntax}.vnnlib"), timeout=60)
        assert answer.status == "unsat" and answer.boxes >= 1


def test_fragile_box_is_sat_with_a_checked_counterexample(graph, tmp_path):
    prop = read_property(FIXTURES / "digits_lstm_fragile_v1.vnnlib")
    answer = solve(graph, str(MODEL), prop, timeout=60)
    assert answer.status == "sat"
    (case,) = prop.cases
    assert np.all(case.lower <= answer.x) and np.all(answer.x <= case.upper)
    y = ort.InferenceSession(str(MODEL)).run(None, {"x": answer.x.reshape(1, 8, 8).astype(np.float32)})[0][0]
    assert np.allclose(y, answer.y, atol=1e-6)
    label = int(np.load(MODEL.with_suffix(".samples.npz"))["y"][0])
    assert np.delete(y, label).max() >= y[label]
    text = answer.result_text()
    assert text.startswith("sat\n((X_0 ") and "(Y_9 " in text and text.rstrip().endswith(")")


def test_cli_writes_the_result_file(tmp_path, capsys):
    out = tmp_path / "result.txt"
    code = main(["vnnlib", str(MODEL), str(FIXTURES / "digits_lstm_robust_v1.vnnlib"), "--out", str(out)])
    assert code == 0 and out.read_text() == "unsat\n"
    assert capsys.readouterr().out == "unsat\n"


def test_timeout(graph):
    answer = solve(graph, str(MODEL), read_property(FIXTURES / "digits_lstm_robust_v1.vnnlib"), timeout=0.0)
    assert answer.status == "timeout"


def test_unknown_when_boxes_run_out(graph):
    # a mid-size box needs splitting; allowed a single box the engine cannot decide it
    samples = np.load(MODEL.with_suffix(".samples.npz"))
    x, label = samples["x"][0].reshape(-1), int(samples["y"][0])
    lines = [f"(declare-const X_{i} Real)" for i in range(64)] + [f"(declare-const Y_{j} Real)" for j in range(10)]
    lines += [f"(assert (<= X_{i} {min(v + 0.06, 1.0)!r}))\n(assert (>= X_{i} {max(v - 0.06, 0.0)!r}))"
              for i, v in enumerate(x.tolist())]
    lines.append("(assert (or " + " ".join(f"(and (>= Y_{j} Y_{label}))" for j in range(10) if j != label) + "))")
    answer = solve(graph, str(MODEL), parse_v1("\n".join(lines)), timeout=60, max_boxes=1)
    assert answer.status in ("unknown", "unsat", "sat")
    if answer.status == "sat":  # a counterexample is only ever reported confirmed
        assert np.delete(answer.y, label).max() >= answer.y[label]


@pytest.mark.parametrize("text, line, message", [
    ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= X_0 1.0)\n", 3, "never closed"),
    ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= X_0 Z_3))\n", 3, "unknown symbol"),
    ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= X_0 1.0))\n(assert (>= X_0 0.0))\n"
     "(assert (<= (* Y_0 X_0) 1.0))\n", 5, "not linear"),
    ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= X_0 1.0))\n(assert (>= X_0 0.0))\n"
     "(assert (<= X_0 Y_0))\n", 5, "mixing X and Y"),
    ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= X_0 1.0))\n(assert (ite Y_0 1 2))\n", 4, "unsupported"),
    ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= X_0 1.0))\n(assert (>= Y_1 0))\n", 4, "not declared"),
])
def test_malformed_version1_files_name_the_line(text, line, message):
    with pytest.raises(InputError, match=rf":{line}: .*{message}"):
        parse_v1(text, "p.vnnlib")


def test_malformed_version2_file_names_the_line(tmp_path):
    pytest.importorskip("vnnlib")
    path = tmp_path / "bad.vnnlib"
    path.write_text("(vnnlib-version <2.0>)\n(declare-network f\n (declare-input X float32 [2])\n"
                    " (declare-output Y float32 [2])\n)\n(assert (<= X[0] 1.0 2.0 3.0 @))\n")
    with pytest.raises(InputError, match=r"bad.vnnlib:6"):
        read_property(path)


def test_property_that_does_not_fit_the_model(graph, tmp_path, capsys):
    path = tmp_path / "small.vnnlib"
    path.write_text("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= X_0 1.0))\n(assert (>= X_0 0.0))\n"
                    "(assert (>= Y_0 0.0))\n")
    code = main(["vnnlib", str(MODEL), str(path)])
    err = capsys.readouterr().err
    assert code == InputError.exit_code and "64 elements" in err
