"""Loop and Scan unrolled into IR: the onnx wheel's backend node cases, and small hand-made RNNs
written as Loop/Scan with random weights, against onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import parsers
import verifier
from tests.parsers import control_util as cu
from verifier import ir
from verifier.errors import UnsupportedOperator

CASES = [case for module in ("loop", "scan") for case in cu.backend_cases(module)]
TENSOR_CASES = [c for c in CASES if not c.has_sequences and c.opset_imports[0].version >= 9]
REFUSED_CASES = [c for c in CASES if c.has_sequences or c.node.op_type == "Scan" and c.opset_imports[0].version < 9]


def _save(model: onnx.ModelProto, path) -> str:
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return str(path)


def test_the_backend_cases_were_found():
    names = {c.name for c in CASES}
    assert {"test_loop11", "test_loop13_seq", "test_loop16_seq_none", "test_scan_sum", "test_scan9_sum"} <= names
    assert TENSOR_CASES and REFUSED_CASES


@pytest.mark.parametrize("case", TENSOR_CASES, ids=lambda c: c.name)
def test_backend_tensor_cases_match_the_spec(case, tmp_path):
    """Float inputs stay model inputs (no batch axis); trip count and condition become constants."""
    floats = cu.float_inputs(case)
    path = _save(cu.case_model(case, set(floats)), tmp_path / "case.onnx")
    graph = parsers.load_onnx(path, input_shapes={k: np.shape(v) for k, v in floats.items()},
                              batch_axes={k: None for k in floats})
    assert [c.kind for c in graph.cells] == [case.node.op_type]
    got = verifier.evaluate(graph, floats)
    assert len(got) == len(case.outputs)
    for expected, value in zip(case.outputs, got):
        assert value.shape == np.shape(expected)
        np.testing.assert_allclose(value, np.asarray(expected, dtype=np.float64), rtol=0, atol=1e-5)


@pytest.mark.parametrize("case", REFUSED_CASES, ids=lambda c: c.name)
def test_backend_sequence_and_scan8_cases_are_refused(case, tmp_path):
    floats = cu.float_inputs(case)
    model = cu.case_model(case, set(floats))
    onnx.save(model, tmp_path / "case.onnx")
    with pytest.raises(UnsupportedOperator) as info:
        parsers.load_onnx(tmp_path / "case.onnx", input_shapes={k: np.shape(v) for k, v in floats.items()},
                          batch_axes={k: None for k in floats})
    message = str(info.value)
    assert case.node.op_type in message and f"opset {case.opset_imports[0].version}" in message
    assert "sequence" in message or "Scan-8" in message


def test_loop_with_an_input_trip_count_is_refused(tmp_path):
    case = next(c for c in CASES if c.name == "test_loop11")
    keep = {"trip_count", *cu.float_inputs(case)}
    path = _save(cu.case_model(case, keep), tmp_path / "loop.onnx")
    with pytest.raises(UnsupportedOperator, match="trip count depends on the input") as info:
        parsers.load_onnx(path, batch_axes={k: None for k in keep})
    assert "Loop" in str(info.value)


def test_loop_whose_trip_count_is_computed_from_input_values_is_refused(tmp_path):
    rng = np.random.default_rng(4)
    model = cu.loop_rnn(cu.rnn_weights(rng, 3, 2), 4, 2, weights_as_state=False, trip_from_input=True)
    path = _save(model, tmp_path / "loop.onnx")
    with pytest.raises(UnsupportedOperator, match="non-float type|trip count depends on the input"):
        parsers.load_onnx(path, batch_axes={"x": 1})


def test_loop_with_an_input_condition_is_refused(tmp_path):
    case = next(c for c in CASES if c.name == "test_loop11")
    keep = {"cond", *cu.float_inputs(case)}
    path = _save(cu.case_model(case, keep), tmp_path / "loop.onnx")
    with pytest.raises(UnsupportedOperator, match="condition depends on the input"):
        parsers.load_onnx(path, batch_axes={k: None for k in keep})


def _against_onnxruntime(model: onnx.ModelProto, x: np.ndarray, tmp_path, batch_axis: int) -> ir.Graph:
    path = _save(model, tmp_path / "model.onnx")
    graph = parsers.load_onnx(path, batch_axes={"x": batch_axis})
    expected = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x})
    got = verifier.evaluate(graph, {"x": x})
    for e, g in zip(expected, got):
        assert g.shape == e.shape
        assert np.abs(g - e).max() <= 1e-5
    return graph


@pytest.mark.parametrize("weights_as_state", [False, True], ids=["captured", "carried"])
@pytest.mark.parametrize("with_condition", [True, False], ids=["cond", "no-cond"])
def test_loop_rnn_matches_onnxruntime(weights_as_state, with_condition, tmp_path):
    rng = np.random.default_rng(1)
    steps, batch = 5, 3
    weights = cu.rnn_weights(rng, 4, 6)
    x = rng.uniform(-1, 1, (steps, batch, 4)).astype(np.float32)
    model = cu.loop_rnn(weights, steps, batch, weights_as_state, with_condition)
    graph = _against_onnxruntime(model, x, tmp_path, batch_axis=1)
    cell = graph.cells[0]
    assert (cell.kind, cell.steps, cell.hidden_size) == ("Loop", steps, 6)
    names = [n.name for n in graph.nodes]
    assert any(n.startswith("rnn_loop/iter4/") for n in names) and not any("/iter5/" in n for n in names)
    # the carried weights fold into affine maps: one tanh per step, nothing multiplies two bounded values
    kinds = [type(n).__name__ for n in graph.nodes]
    assert kinds.count("Activation") == steps and "Product" not in kinds


@pytest.mark.parametrize("input_axis, input_direction, output_axis, output_direction",
                         [(0, 0, 0, 0), (0, 1, 0, 0), (0, 0, 0, 1), (-1, 0, 2, 0), (2, 1, -1, 1), (0, 1, 1, 0), (1, 0, 1, 1)])
def test_scan_rnn_matches_onnxruntime(input_axis, input_direction, output_axis, output_direction, tmp_path):
    rng = np.random.default_rng(2)
    steps, batch, features = 4, 2, 3
    weights = cu.rnn_weights(rng, features, 5)
    shape = [batch, features]
    shape.insert(input_axis % 3, steps)
    x = rng.uniform(-1, 1, shape).astype(np.float32)
    model = cu.scan_rnn(weights, steps, batch, input_axis, input_direction, output_axis, output_direction)
    batch_axis = 1 if input_axis % 3 == 0 else 0
    graph = _against_onnxruntime(model, x, tmp_path, batch_axis=batch_axis)
    assert graph.cells[0].kind == "Scan" and graph.cells[0].steps == steps
    # sigmoid(pre) * tanh(pre) is fused into one Product per step, which POPQORN bounds jointly
    assert sum(isinstance(n, ir.Product) for n in graph.nodes) == steps
    assert any(n.name.startswith("rnn_scan/t3/") for n in graph.nodes)


def test_scan_over_the_batch_axis_is_refused(tmp_path):
    rng = np.random.default_rng(3)
    model = cu.scan_rnn(cu.rnn_weights(rng, 3, 2), 4, 2, input_axis=0)
    path = _save(model, tmp_path / "scan.onnx")
    with pytest.raises(UnsupportedOperator, match="batch axis"):
        parsers.load_onnx(path, batch_axes={"x": 0})


@pytest.mark.parametrize("input_axis", [0, 1, 2])
def test_scanned_input_axes_are_inferred(input_axis, tmp_path):
    """Without overrides, the scanned input's frame axis is its scan axis and the batch another."""
    rng = np.random.default_rng(5)
    shape = [2, 3]
    shape.insert(input_axis, 4)
    model = cu.scan_rnn(cu.rnn_weights(rng, 3, 2), 4, 2, input_axis=input_axis)
    path = _save(model, tmp_path / "scan.onnx")
    graph = parsers.load_onnx(path)
    (node,) = graph.inputs
    assert node.frame_axis == input_axis and node.batch_axis != input_axis


def test_while_loop_stops_on_a_constant_foldable_condition(tmp_path):
    x = np.random.default_rng(6).uniform(-1, 1, (2, 3)).astype(np.float32)
    graph = _against_onnxruntime(cu.while_loop(stop=3), x, tmp_path, batch_axis=0)
    assert graph.cells[0].steps == 3 and sum(isinstance(n, ir.Activation) for n in graph.nodes) == 3


def test_while_loop_with_an_input_dependent_condition_is_refused(tmp_path):
    path = _save(cu.while_loop(stop=None, input_dependent_stop=True), tmp_path / "while.onnx")
    with pytest.raises(UnsupportedOperator, match="depend"):
        parsers.load_onnx(path)


def test_nested_loops_capture_from_two_scopes_out(tmp_path):
    x = np.random.default_rng(8).uniform(-1, 1, (2, 3)).astype(np.float32)
    graph = _against_onnxruntime(cu.nested_loops(2, 3), x, tmp_path, batch_axis=0)
    names = [n.name for n in graph.nodes]
    assert any(n.startswith("outer/iter1/inner/iter2/cell") for n in names)
    assert sum(isinstance(n, ir.Activation) for n in graph.nodes) == 6
    assert sorted(c.steps for c in graph.cells) == [2, 3, 3]
