"""parsers/ops/elementwise.py: arithmetic and activations, one node each against onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import parsers
from tests.parsers.ops.node_check import check_node, sample, save_node
from verifier.errors import UnsupportedOperator

COVERED = {"Add", "Sub", "Mul", "Div", "Neg", "Sum", "Sigmoid", "Tanh", "Relu", "Softplus", "Softsign", "LeakyRelu",
           "Elu", "ThresholdedRelu", "HardSigmoid", "Clip"}


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul"])
@pytest.mark.parametrize("operands", ["both_inputs", "input_and_constant", "constant_and_input", "broadcast"])
def test_binary_arithmetic(op, operands, tmp_path):
    x, y = sample(3, 4, 5), sample(3, 4, 5, seed=1)
    c = sample(4, 5, seed=2) if operands != "broadcast" else sample(1, 5, seed=2)
    if operands == "both_inputs":
        check_node(tmp_path, helper.make_node(op, ["x", "y"], ["z"]), {"x": x, "y": y})
    elif operands == "input_and_constant" or operands == "broadcast":
        check_node(tmp_path, helper.make_node(op, ["x", "c"], ["z"]), {"x": x}, {"c": c})
    else:
        check_node(tmp_path, helper.make_node(op, ["c", "x"], ["z"]), {"x": x}, {"c": c})


def test_div_by_a_constant(tmp_path):
    check_node(tmp_path, helper.make_node("Div", ["x", "c"], ["z"]), {"x": sample(3, 4)},
               {"c": sample(4, seed=1, low=0.5, high=2.0)})


def test_div_by_an_input_dependent_value_is_refused(tmp_path):
    path = save_node(tmp_path, helper.make_node("Div", ["x", "t"], ["z"], name="divide"), {"x": sample(3, 4)},
                     extra_nodes=(helper.make_node("Tanh", ["x"], ["t"]),))
    with pytest.raises(UnsupportedOperator, match="Div .*'divide'.*divisor must be a constant"):
        parsers.load_onnx(path)


def test_neg(tmp_path):
    check_node(tmp_path, helper.make_node("Neg", ["x"], ["z"]), {"x": sample(3, 4)})


def test_sum_of_inputs_and_constants(tmp_path):
    check_node(tmp_path, helper.make_node("Sum", ["x", "c", "y"], ["z"]), {"x": sample(3, 4), "y": sample(3, 4, seed=1)},
               {"c": sample(4, seed=2)})


@pytest.mark.parametrize("op, attributes", [("Sigmoid", {}), ("Tanh", {}), ("Relu", {}), ("Softplus", {}),
                                            ("Softsign", {}), ("LeakyRelu", {}), ("LeakyRelu", {"alpha": 0.3}),
                                            ("Elu", {}), ("Elu", {"alpha": 0.6}), ("ThresholdedRelu", {}),
                                            ("ThresholdedRelu", {"alpha": 0.4}), ("HardSigmoid", {}),
                                            ("HardSigmoid", {"alpha": 0.3, "beta": 0.4})])
def test_activations_with_and_without_parameters(op, attributes, tmp_path):
    """Omitted alpha/beta take the operator's defaults (LeakyRelu 0.01, Elu 1, ThresholdedRelu 1,
    HardSigmoid 0.2/0.5); inputs span both sides of every kink."""
    check_node(tmp_path, helper.make_node(op, ["x"], ["z"], **attributes), {"x": sample(4, 6, low=-4, high=4)})


@pytest.mark.parametrize("opset, bounds", [(6, {"min": -0.5, "max": 0.7}), (6, {"max": 0.2}), (13, (-0.5, 0.7)),
                                           (13, (None, 0.2)), (13, (-0.3, None))])
def test_clip(opset, bounds, tmp_path):
    x = {"x": sample(3, 5)}
    if opset < 11:
        check_node(tmp_path, helper.make_node("Clip", ["x"], ["z"], **bounds), x, opset=opset)
        return
    names = ["x", "" if bounds[0] is None else "low", "" if bounds[1] is None else "high"]
    constants = {n: np.array(v, np.float32) for n, v in zip(["low", "high"], bounds) if v is not None}
    while names[-1] == "":
        names.pop()
    check_node(tmp_path, helper.make_node("Clip", names, ["z"]), x, constants, opset=opset)
