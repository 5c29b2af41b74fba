"""parsers/ops/elementwise.py: arithmetic and activations, one node each against onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import parsers
from tests.parsers.ops.node_check import check_node, sample, save_node
from verifier import ir
from verifier.errors import UnsupportedOperator

COVERED = {"Add", "Sub", "Mul", "Div", "Neg", "Abs", "Sum", "Sigmoid", "Tanh", "Relu", "Softplus", "Softsign", "LeakyRelu",
           "Elu", "ThresholdedRelu", "HardSigmoid", "Clip", "Max", "Min"}


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


def test_abs_and_the_softsign_pytorch_writes(tmp_path):
    """|x| converts exactly (relu(x) + relu(-x)); x / (1 + |x|) is one Softsign, and a quotient that
    only looks like it (another numerator, another constant) is still refused."""
    x = {"x": sample(3, 4, low=-3, high=3)}
    check_node(tmp_path, helper.make_node("Abs", ["x"], ["z"]), x)
    one = {"one": np.ones(1, np.float32)}
    spelled = (helper.make_node("Abs", ["x"], ["a"]), helper.make_node("Add", ["one", "a"], ["d"]))
    check_node(tmp_path, helper.make_node("Div", ["x", "d"], ["z"]), x, one, extra_nodes=spelled)
    graph = parsers.load_onnx(save_node(tmp_path, helper.make_node("Div", ["x", "d"], ["z"]), x, one,
                                        extra_nodes=spelled))
    assert [n.fn.kind for n in graph.nodes if isinstance(n, ir.Activation)] == [ir.Act.SOFTSIGN]
    two = {"one": np.full(1, 2.0, np.float32)}
    with pytest.raises(UnsupportedOperator, match="divisor must be a constant"):
        parsers.load_onnx(save_node(tmp_path, helper.make_node("Div", ["x", "d"], ["z"]), x, two, extra_nodes=spelled))
    other = (*spelled, helper.make_node("Neg", ["x"], ["n"]))
    with pytest.raises(UnsupportedOperator, match="divisor must be a constant"):
        parsers.load_onnx(save_node(tmp_path, helper.make_node("Div", ["n", "d"], ["z"]), x, one, extra_nodes=other))


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


@pytest.mark.parametrize("op", ["Max", "Min"])
@pytest.mark.parametrize("opset, constant", [(8, np.float32(0.2)), (13, np.full((1, 5), -0.3, np.float32)),
                                             (17, np.full((5,), 0.1, np.float32))])
def test_max_and_min_against_one_constant_are_clips(op, opset, constant, tmp_path):
    check_node(tmp_path, helper.make_node(op, ["x", "c"], ["z"]), {"x": sample(3, 5)}, {"c": constant}, opset=opset)
    assert [n.fn.kind for n in parsers.load_onnx(tmp_path / f"{op}.onnx").nodes
            if isinstance(n, ir.Activation)] == [ir.Act.CLIP]


def test_tf_keras_clip_by_value_becomes_one_clip(tmp_path):
    """tf.keras' hard_sigmoid: Min(Max(0.2 x + 0.5, 0), 1): one Clip(0, 1) after canonicalisation."""
    nodes = (helper.make_node("Mul", ["x", "a"], ["ax"]), helper.make_node("Add", ["ax", "b"], ["y"]),
             helper.make_node("Max", ["y", "zero"], ["low"]))
    constants = {"a": np.float32(0.2), "b": np.float32(0.5), "zero": np.float32(0.0), "one": np.float32(1.0)}
    check_node(tmp_path, helper.make_node("Min", ["low", "one"], ["z"]), {"x": sample(3, 5) * 8}, constants,
               extra_nodes=nodes)
    from verifier.canonical import canonicalize
    clips = [n.fn for n in canonicalize(parsers.load_onnx(tmp_path / "Min.onnx")).nodes if isinstance(n, ir.Activation)]
    assert clips == [ir.ActivationFn(ir.Act.CLIP, 0.0, 1.0)]


@pytest.mark.parametrize("case, message", [
    ("two_inputs", "2 computed inputs"), ("varying", "varies by element"), ("broadcast", "larger shape")])
def test_max_refusals_name_the_reason(case, message, tmp_path):
    x = {"x": sample(3, 5)}
    feeds, constants, names = x, {}, ["x", "c"]
    if case == "two_inputs":
        feeds, names = {**x, "y": sample(3, 5, seed=1)}, ["x", "y"]
    elif case == "varying":
        constants = {"c": np.linspace(-1, 1, 5).astype(np.float32)}
    else:
        constants = {"c": np.zeros((2, 1, 5), np.float32)}
    save_node(tmp_path, helper.make_node("Max", names, ["z"]), feeds, constants)
    with pytest.raises(UnsupportedOperator, match=f"Max.*{message}"):
        parsers.load_onnx(tmp_path / "Max.onnx")
