"""parsers/ops/control_flow.py: Loop and Scan unrolled, one node each against onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import parsers
from tests.parsers.ops.node_check import check_node, sample, save_node
from verifier.errors import UnsupportedOperator

COVERED = {"Loop", "Scan"}
F = 3


def _value(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def rnn_step_body(with_counter: bool) -> onnx.GraphProto:
    """h' = tanh(h W + x_t U), written as a Loop body (iteration, condition, h) or a Scan body (h, x_t)."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.uniform(-1, 1, (F, F)).astype(np.float32), n) for n in ("W", "U")]
    nodes = [helper.make_node("MatMul", ["h_in", "W"], ["hw"]), helper.make_node("MatMul", ["x_t", "U"], ["xu"]),
             helper.make_node("Add", ["hw", "xu"], ["pre"]), helper.make_node("Tanh", ["pre"], ["h_out"]),
             helper.make_node("Identity", ["h_out"], ["y_t"])]
    inputs = [_value("h_in", ["N", F]), _value("x_t", ["N", F])]
    outputs = [_value("h_out", ["N", F]), _value("y_t", ["N", F])]
    if with_counter:  # x_t read from the outer scope by the iteration number
        nodes = [helper.make_node("Gather", ["x", "i"], ["x_t"], axis=1), helper.make_node("Identity", ["c_in"], ["c_out"]),
                 *nodes]
        inputs = [_value("i", [], TensorProto.INT64), _value("c_in", [], TensorProto.BOOL), inputs[0]]
        outputs = [_value("c_out", [], TensorProto.BOOL), *outputs]
    return helper.make_graph(nodes, "body", inputs, outputs, weights)


def test_loop_with_a_constant_trip_count(tmp_path):
    x, h0 = sample(2, 5, F), sample(2, F, seed=1)
    node = helper.make_node("Loop", ["M", "", "h0"], ["h", "ys"], body=rnn_step_body(True))
    check_node(tmp_path, node, {"x": x, "h0": h0}, {"M": np.array(5, np.int64)})


@pytest.mark.parametrize("attributes", [{}, {"scan_input_directions": [1], "scan_output_directions": [1]},
                                        {"scan_input_axes": [1], "scan_output_axes": [1]}])
def test_scan(attributes, tmp_path):
    x = sample(2, 5, F) if attributes.get("scan_input_axes") else sample(5, 2, F)
    node = helper.make_node("Scan", ["h0", "x"], ["h", "ys"], num_scan_inputs=1, body=rnn_step_body(False), **attributes)
    batch = 0 if attributes.get("scan_input_axes") else 1
    check_node(tmp_path, node, {"h0": sample(2, F, seed=1), "x": x}, opset=11, batch_axes={"h0": 0, "x": batch})


def test_scan_8_is_refused(tmp_path):
    body = helper.make_graph([helper.make_node("Add", ["s_in", "x_t"], ["s_out"])], "body",
                             [_value("s_in", [F]), _value("x_t", [F])], [_value("s_out", [F])])
    node = helper.make_node("Scan", ["", "s0", "x"], ["s"], num_scan_inputs=1, body=body, name="old_scan")
    path = save_node(tmp_path, node, {"s0": sample(2, F), "x": sample(2, 5, F)}, opset=8)
    with pytest.raises(UnsupportedOperator, match="Scan .*opset 8.*'old_scan'.*Scan-8"):
        parsers.load_onnx(path)
