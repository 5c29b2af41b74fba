"""`popqorn inspect` / `popqorn check` (untrusted files: tests/parsers/test_untrusted.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import verifier
from verifier.cli import main
from verifier.errors import InputError

MODELS = Path(__file__).resolve().parents[1] / "models_onnx"


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_inspect_reports_cells_inputs_and_outputs(capsys):
    code, out, _ = run(capsys, "inspect", MODELS / "mnist_lstm_t4_h32.onnx", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["cells"][0]["kind"] == "LSTM" and report["cells"][0]["steps"] == 4
    assert report["cells"][0]["hidden_size"] == 32 and report["cells"][0]["input_size"] == 196
    assert report["inputs"][0] == {"name": "x", "shape": [1, 4, 196], "batch_axis": 0, "frame_axis": 1, "frames": 4}
    assert report["outputs"][0]["name"] == "logits" and report["outputs"][0]["dropped"] is None
    code, out, _ = run(capsys, "inspect", MODELS / "mnist_gru_t4_h32.onnx")
    assert code == 0 and "GRU forward, 4 steps" in out


def test_inspect_reports_a_dropped_softmax(tmp_path, capsys):
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["z"]), helper.make_node("Softmax", ["z"], ["p"], axis=-1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
                              [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["batch", 2])],
                              [numpy_helper.from_array(rng.normal(size=(3, 2)).astype(np.float32), "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "s.onnx")
    code, out, _ = run(capsys, "inspect", tmp_path / "s.onnx", "--json")
    assert code == 0 and json.loads(out)["outputs"][0]["dropped"] == "softmax"
    code, out, _ = run(capsys, "check", tmp_path / "s.onnx")
    assert code == 0 and "check passed" in out  # evaluate re-applies the softmax


@pytest.mark.parametrize("name", sorted(p.name for p in MODELS.glob("*.onnx")))
def test_check_passes_on_every_shipped_model(name, capsys):
    code, out, err = run(capsys, "check", MODELS / name, "--samples", "3")
    assert code == 0, out + err


def test_check_reports_a_mismatch(monkeypatch, capsys):
    real = verifier.evaluate
    monkeypatch.setattr(verifier, "evaluate", lambda graph, feeds: [o + 1e-3 for o in real(graph, feeds)])
    code, out, _ = run(capsys, "check", MODELS / "mnist_rnn_tanh_t4_h32.onnx", "--json")
    report = json.loads(out)
    assert code == 1 and not report["ok"] and report["outputs"][0]["max_abs_diff"] > 5e-4


KERAS = Path(__file__).resolve().parent / "fixtures" / "keras"


def test_inspect_reports_an_unrolled_keras_loop(capsys):
    code, out, _ = run(capsys, "inspect", KERAS / "simple_rnn.onnx", "--json")
    report = json.loads(out)
    assert code == 0 and set(report) >= {"model", "opset", "producer", "inputs", "outputs", "cells", "nodes", "notes"}
    (cell,) = report["cells"]
    assert cell["kind"] == "Loop" and cell["steps"] == 5 and cell["hidden_size"] == 4
    assert report["opset"] == 17 and report["producer"].startswith("tf2onnx")
    assert report["nodes"]["Input"] == 1 and report["nodes"]["Activation"] == 5  # one tanh per step
    assert any("unrolled into 5 iterations" in note for note in report["notes"])
    code, out, _ = run(capsys, "inspect", KERAS / "simple_rnn.onnx")
    assert code == 0 and "Loop forward, 5 steps" in out and "note: Loop" in out


def test_check_on_a_sample_file_and_json(tmp_path, capsys):
    data = np.load(KERAS / "gru_reset_before.npz")
    np.save(tmp_path / "x.npy", data["x"])
    for source in (KERAS / "gru_reset_before.npz", tmp_path / "x.npy"):
        code, out, _ = run(capsys, "check", KERAS / "gru_reset_before.onnx", "--input", source, "--json")
        report = json.loads(out)
        assert code == 0 and report["ok"] and report["outputs"][0]["shape"] == [2, 3]
        assert 0 <= report["outputs"][0]["max_abs_diff"] <= 1e-5


def test_check_with_a_fixed_shape_exports_own_shape(capsys):
    """A fixed-shape, time-major dynamo export (batch 2 on axis 1, found by the axis search): giving
    its own shape with --input-shape must not pin the batch to the guessed axis 0."""
    model = Path(__file__).resolve().parent / "fixtures" / "exports" / "dynamo_rnn_tanh_hn.onnx"
    shape = [d.dim_value for d in onnx.load(str(model)).graph.input[0].type.tensor_type.shape.dim]
    assert shape == [5, 2, 3]
    code, out, _ = run(capsys, "check", model, "--input-shape", "x=5,2,3", "--json")
    report = json.loads(out)
    assert code == 0 and report["ok"]
    code, out, _ = run(capsys, "inspect", model, "--input-shape", "x=5,2,3")
    assert code == 0 and "batch axis 1, frame axis 0 (5 frames)" in out


def test_check_tolerance_decides(capsys):
    code, out, _ = run(capsys, "check", KERAS / "lstm.onnx", "--tol", "0", "--rtol", "0", "--samples", "4", "--seed", "3")
    assert code == 1 and "check FAILED: output" in out  # float32 runtime vs float64 IR never agree exactly
    for option in ("--tol", "--rtol"):
        code, out, err = run(capsys, "check", KERAS / "lstm.onnx", option, "abc")
        assert code == InputError.exit_code and option in err


def test_relative_tolerance_accepts_float32_rounding_of_large_outputs():
    from verifier.commands.check import within_tolerance
    expected = np.array([42.348995, 1e-3])
    assert within_tolerance(expected, expected + [1.8e-5, 0.0], 1e-5, 1e-6)  # 4e-7 relative
    assert not within_tolerance(expected, expected + [1.8e-5, 0.0], 1e-5, 0.0)
    assert not within_tolerance(expected, expected + [0.0, 2e-5], 1e-5, 1e-6)  # small values: tol decides
    assert not within_tolerance(expected, expected[:1], 1.0, 1.0)


def test_max_difference_counts_nan_and_shape_mismatches():
    from verifier.commands.check import max_difference

    assert max_difference(np.array([1.0, 2.0]), np.array([1.0, 2.5])) == 0.5
    assert max_difference(np.array([1.0, np.nan]), np.array([1.0, np.nan])) == 0.0
    assert max_difference(np.array([1.0, 2.0]), np.array([1.0, np.nan])) == float("inf")
    assert max_difference(np.zeros((2, 3)), np.zeros((3, 2))) == float("inf")


def test_a_foreign_parsers_package_is_named(tmp_path, monkeypatch, capsys):
    """The design card's generic package name can collide: the CLI says so instead of failing oddly."""
    import sys
    import types

    from verifier.cli import main

    impostor = types.ModuleType("parsers")
    impostor.__file__ = str(tmp_path / "parsers" / "__init__.py")
    monkeypatch.setitem(sys.modules, "parsers", impostor)
    model = Path(__file__).resolve().parents[1] / "models_onnx" / "digits_lstm_t8_h16.onnx"
    code = main(["inspect", str(model)])
    err = capsys.readouterr().err
    assert code == 5 and "not popqorn's front end" in err and err.count("\n") == 1


def test_check_says_onnxruntime_cannot_run_layout_one(capsys, tmp_path):
    """onnxruntime's recurrent kernels implement layout 0 only: say so, and that certify still works,
    instead of quoting its C++ assertion."""
    from tests.parsers.test_recurrent import make_model
    model, _ = make_model("LSTM", layout=1, seed=1)
    onnx.save(model, tmp_path / "layout1.onnx")
    code, _, err = run(capsys, "check", tmp_path / "layout1.onnx", "--samples", "2")
    assert code == 3 and "layout=1, which onnxruntime does not implement" in err and "certify" in err
    assert "lstm_base" not in err


def test_check_feeds_an_integer_sequence_lens_input(capsys, tmp_path):
    """sequence_lens as an int32 graph input: read as a constant from --input, fed to onnxruntime as
    int32; random values cannot stand for it, and lengths differing between samples point to
    --batch-size 1."""
    rng = np.random.default_rng(0)
    hidden, features, steps = 3, 2, 4
    weights = [numpy_helper.from_array(rng.uniform(-1, 1, shape).astype(np.float32), name) for name, shape in
               (("W", (1, 4 * hidden, features)), ("R", (1, 4 * hidden, hidden)))]
    graph = helper.make_graph(
        [helper.make_node("LSTM", ["x", "W", "R", "", "lens"], ["", "h"], hidden_size=hidden)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [steps, "batch", features]),
         helper.make_tensor_value_info("lens", TensorProto.INT32, ["batch"])],
        [helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, "batch", hidden])], weights)
    path = tmp_path / "lens.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), path)
    x = rng.uniform(-1, 1, (steps, 3, features)).astype(np.float32)
    np.savez(tmp_path / "same.npz", x=x, lens=np.full(3, 2, dtype=np.int32))
    code, out, err = run(capsys, "check", path, "--input", tmp_path / "same.npz")
    assert code == 0 and "check passed" in out, err
    code, _, err = run(capsys, "check", path)
    assert code == InputError.exit_code and "'lens' is an integer input" in err and "--input" in err
    np.savez(tmp_path / "mixed.npz", x=x, lens=np.array([2, 4, 3], dtype=np.int32))
    code, _, err = run(capsys, "check", path, "--input", tmp_path / "mixed.npz")
    assert code == InputError.exit_code and "--batch-size 1" in err
