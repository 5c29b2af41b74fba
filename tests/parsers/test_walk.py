"""parsers/walk.py: how converter outcomes surface. Deliberate refusals name op and node as
UnsupportedOperator; a converter that crashes or breaks its contract is an internal error (a bug,
CLI exit 70) that names the node, never dressed up as "unsupported operator"."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import parsers
from parsers import registry
from parsers.errors import ConverterBug, Refusal
from parsers.values import Sym
from verifier.cli import main
from verifier.errors import UnsupportedOperator


@pytest.fixture
def relu_model(tmp_path):
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="the_relu")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])])
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def replace_relu(monkeypatch, fn) -> None:
    import parsers.loader  # noqa: F401  (registers the converters)

    (original,) = registry._REGISTRY["Relu"]
    monkeypatch.setitem(registry._REGISTRY, "Relu", [dataclasses.replace(original, fn=fn)])


@pytest.mark.parametrize("exception", [IndexError("tuple index out of range"), ValueError("bad"), KeyError("k")])
def test_a_crashing_converter_is_an_internal_error_naming_the_node(exception, relu_model, monkeypatch, capsys):
    def crash(node, inputs, ctx):
        raise exception

    replace_relu(monkeypatch, crash)
    with pytest.raises(ConverterBug, match="Relu failed at node 'the_relu'"):
        parsers.load_onnx(relu_model)
    assert main(["inspect", str(relu_model)]) == 70
    err = capsys.readouterr().err
    assert "internal error" in err and "the_relu" in err and "unsupported operator" not in err


def test_a_refusal_is_unsupported_operator_naming_the_node(relu_model, monkeypatch):
    def refuse(node, inputs, ctx):
        raise Refusal("this shape cannot be converted exactly")

    replace_relu(monkeypatch, refuse)
    with pytest.raises(UnsupportedOperator, match="Relu .*'the_relu': this shape cannot be converted exactly"):
        parsers.load_onnx(relu_model)


@pytest.mark.parametrize("result", [None, "a string", [1.5], [None, None]])
def test_a_result_breaking_the_contract_is_an_internal_error(result, relu_model, monkeypatch):
    replace_relu(monkeypatch, lambda node, inputs, ctx: result)
    with pytest.raises(ConverterBug, match="the_relu"):
        parsers.load_onnx(relu_model)


def test_a_result_that_mixes_samples_is_refused(relu_model, monkeypatch):
    """A symbolic value whose batch axis is not of size one would let samples leak into each other."""
    replace_relu(monkeypatch, lambda node, inputs, ctx: [Sym(inputs[0].node, (3, 1), 0)])
    with pytest.raises(UnsupportedOperator, match="'the_relu'.*mixes samples"):
        parsers.load_onnx(relu_model)


def test_constant_folding_failures_are_refusals(tmp_path):
    nodes = [helper.make_node("Constant", [], ["c"], value=onnx.numpy_helper.from_array(np.ones((2, 3), np.float32))),
             helper.make_node("Reshape", ["c", "shape"], ["r"], name="bad_reshape"),
             helper.make_node("Add", ["x", "r"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 5])],
                              [onnx.numpy_helper.from_array(np.array([5], np.int64), "shape")])
    path = tmp_path / "fold.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    with pytest.raises(UnsupportedOperator, match="Reshape .*'bad_reshape'.*constant folding failed"):
        parsers.load_onnx(path)
