"""parsers/ops/linear.py: MatMul and Gemm with one constant operand, against onnxruntime."""

from __future__ import annotations

import pytest
from onnx import helper

import parsers
import verifier
from tests.parsers.ops.node_check import check_node, sample, save_node
from verifier.errors import UnsupportedOperator

COVERED = {"MatMul", "Gemm"}


@pytest.mark.parametrize("x_shape, w_shape", [((3, 4), (4, 5)), ((3, 6, 4), (4, 5)), ((3, 4), (4,)),
                                               ((3, 6, 4), (1, 4, 5))])
def test_matmul_input_times_constant(x_shape, w_shape, tmp_path):
    check_node(tmp_path, helper.make_node("MatMul", ["x", "w"], ["y"]), {"x": sample(*x_shape)},
               {"w": sample(*w_shape, seed=1)})


def test_matmul_constant_times_input(tmp_path):
    """W @ x with x [N, 4, 6]: the contraction runs over x's second-to-last axis."""
    check_node(tmp_path, helper.make_node("MatMul", ["w", "x"], ["y"]), {"x": sample(3, 4, 6)}, {"w": sample(5, 4, seed=1)})


def test_matmul_of_two_input_dependent_values_is_refused(tmp_path):
    path = save_node(tmp_path, helper.make_node("MatMul", ["x", "t"], ["y"], name="mm"), {"x": sample(3, 4, 4)},
                     extra_nodes=(helper.make_node("Tanh", ["x"], ["t"]),))
    with pytest.raises(UnsupportedOperator, match="MatMul .*'mm'.*two input-dependent"):
        parsers.load_onnx(path)


def test_matmul_weight_fed_as_an_input_is_held_at_its_value(tmp_path):
    x, w = sample(3, 4), sample(4, 5, seed=1)
    graph = parsers.load_onnx(save_node(tmp_path, helper.make_node("MatMul", ["x", "w"], ["y"]), {"x": x, "w": w}),
                              batch_axes={"w": None})
    (y,) = verifier.evaluate(graph, {"x": x, "w": w})
    assert abs(y - x.astype(float) @ w.astype(float)).max() <= 1e-5
    assert [n.onnx_name for n in graph.specialize({"x": x, "w": w})[0].inputs] == ["x"]


@pytest.mark.parametrize("attributes, c_shape", [({}, (5,)), ({"transB": 1}, (5,)), ({"alpha": 0.5, "beta": 2.0}, (1, 5)),
                                                 ({"transA": 1}, None), ({"transB": 1, "beta": 0.3}, (1, 5))])
def test_gemm(attributes, c_shape, tmp_path):
    x = sample(4, 3) if attributes.get("transA") else sample(3, 4)
    w = sample(5, 4, seed=1) if attributes.get("transB") else sample(4, 5, seed=1)
    constants = {"w": w}
    names = ["x", "w"]
    if c_shape:
        constants["c"] = sample(*c_shape, seed=2)
        names.append("c")
    batch_axes = {"x": 1} if attributes.get("transA") else None
    check_node(tmp_path, helper.make_node("Gemm", names, ["y"], **attributes), {"x": x}, constants, batch_axes=batch_axes)
