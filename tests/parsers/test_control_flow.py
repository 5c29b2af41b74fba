"""Hand-written Loop and Scan recurrences with random weights, against onnxruntime; loops whose
length or condition depends on the input are refused."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import parsers
import verifier
from verifier.errors import UnsupportedOperator

T, B, F, H = 4, 2, 3, 5
rng = np.random.default_rng(0)
W = numpy_helper.from_array(rng.uniform(-1, 1, (F, H)).astype(np.float32), "W")
R = numpy_helper.from_array(rng.uniform(-1, 1, (H, H)).astype(np.float32), "R")
BIAS = numpy_helper.from_array(rng.uniform(-1, 1, (H,)).astype(np.float32), "bias")
FLOAT = TensorProto.FLOAT


def _cell(x: str, h: str, out: str) -> list[onnx.NodeProto]:
    """out = tanh(x W + h R + bias), reading W, R, bias from the outer scope."""
    return [helper.make_node("MatMul", [x, "W"], [f"{out}_xw"]), helper.make_node("MatMul", [h, "R"], [f"{out}_hr"]),
            helper.make_node("Add", [f"{out}_xw", f"{out}_hr"], [f"{out}_s"]),
            helper.make_node("Add", [f"{out}_s", "bias"], [f"{out}_pre"]), helper.make_node("Tanh", [f"{out}_pre"], [out])]


def scan_model(reverse: int = 0, output_axis: int = 0) -> onnx.ModelProto:
    body = helper.make_graph(
        _cell("x_t", "h", "h_new") + [helper.make_node("Identity", ["h_new"], ["y_t"])], "body",
        [helper.make_tensor_value_info("h", FLOAT, [B, H]), helper.make_tensor_value_info("x_t", FLOAT, [B, F])],
        [helper.make_tensor_value_info("h_new", FLOAT, [B, H]), helper.make_tensor_value_info("y_t", FLOAT, [B, H])])
    nodes = [helper.make_node("Scan", ["h0", "x"], ["h_last", "ys"], body=body, num_scan_inputs=1,
                              scan_input_directions=[reverse], scan_output_axes=[output_axis])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", FLOAT, [T, B, F])],
                              [helper.make_tensor_value_info("h_last", FLOAT, [B, H]),
                               helper.make_tensor_value_info("ys", FLOAT, [None, None, None])],
                              [W, R, BIAS, numpy_helper.from_array(np.zeros((B, H), np.float32), "h0")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def loop_model(trip_from_input: bool = False) -> onnx.ModelProto:
    body_nodes = [helper.make_node("Gather", ["x", "i"], ["x_t"], axis=1)] + _cell("x_t", "h", "h_new") + [
        helper.make_node("Identity", ["cond"], ["cond_out"]), helper.make_node("Identity", ["h_new"], ["y_t"])]
    body = helper.make_graph(body_nodes, "body",
                             [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                              helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
                              helper.make_tensor_value_info("h", FLOAT, [B, H])],
                             [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
                              helper.make_tensor_value_info("h_new", FLOAT, [B, H]),
                              helper.make_tensor_value_info("y_t", FLOAT, [B, H])])
    nodes = []
    if trip_from_input:  # trip count = int(x[0, 0, 0]): depends on the input values
        nodes += [helper.make_node("Gather", ["x", "zero"], ["plane"], axis=1),
                  helper.make_node("Gather", ["plane", "zero"], ["row"], axis=1),
                  helper.make_node("Gather", ["row", "zero"], ["first"], axis=0),
                  helper.make_node("Cast", ["first"], ["trips"], to=TensorProto.INT64)]
    nodes.append(helper.make_node("Loop", ["trips" if trip_from_input else "M", "", "h0"], ["h_last", "ys"], body=body,
                                  name="the_loop"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", FLOAT, [B, T, F])],
                              [helper.make_tensor_value_info("h_last", FLOAT, [B, H]),
                               helper.make_tensor_value_info("ys", FLOAT, [None, None, None])],
                              [W, R, BIAS, numpy_helper.from_array(np.zeros((B, H), np.float32), "h0"),
                               numpy_helper.from_array(np.array(T, np.int64), "M"),
                               numpy_helper.from_array(np.array(0, np.int64), "zero")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _compare(model: onnx.ModelProto, x: np.ndarray, tmp_path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    expected = ort.InferenceSession(str(path)).run(None, {"x": x})
    got = verifier.evaluate(parsers.load_onnx(path), {"x": x})
    for e, g in zip(expected, got):
        assert e.shape == g.shape and np.abs(e - g).max() <= 1e-5


@pytest.mark.parametrize("reverse, axis", [(0, 0), (1, 0), (0, 1)])
def test_scan_rnn(reverse, axis, tmp_path):
    x = rng.uniform(-1, 1, (T, B, F)).astype(np.float32)
    _compare(scan_model(reverse, axis), x, tmp_path)


def test_loop_rnn_reading_the_input_through_the_outer_scope(tmp_path):
    x = rng.uniform(-1, 1, (B, T, F)).astype(np.float32)
    _compare(loop_model(), x, tmp_path)
    graph = parsers.load_onnx(tmp_path / "m.onnx")
    assert graph.cells[0].kind == "Loop" and graph.cells[0].steps == T
    assert any("iter3/" in node.name for node in graph.nodes)  # names say where they came from


def test_input_dependent_trip_count_is_refused(tmp_path):
    onnx.save(loop_model(trip_from_input=True), tmp_path / "m.onnx")
    with pytest.raises(UnsupportedOperator, match="perturbed value to a non-float type|trip count"):
        parsers.load_onnx(tmp_path / "m.onnx")
