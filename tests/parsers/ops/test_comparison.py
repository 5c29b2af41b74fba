"""parsers/ops/comparison.py: comparisons and logic fold on constants (as onnxruntime computes them)
and are refused, naming op and node, on values that depend on the input."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from parsers import registry
from parsers.builder import GraphBuilder
from parsers.context import Context
from parsers.values import Sym
from tests.parsers.ops.node_check import check_node, sample
from verifier.errors import UnsupportedOperator

COVERED = {"Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Not", "And", "Or", "Xor"}
COMPARE = ["Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual"]
LOGIC = ["And", "Or", "Xor"]


@pytest.mark.parametrize("op", sorted(COVERED))
def test_constant_operands_fold_like_onnxruntime(op, tmp_path):
    """y = x * float(op(a, b)) with a, b constants: the mask is folded and matches onnxruntime."""
    a, b = np.array([1.0, 2.0, 3.0, 4.0], np.float32), np.array([1.0, 3.0, 2.0, 4.0], np.float32)
    if op in COMPARE:
        extra = [helper.make_node(op, ["a", "b"], ["mask"])]
    else:
        extra = [helper.make_node("Less", ["a", "b"], ["p"]), helper.make_node("LessOrEqual", ["a", "b"], ["q"]),
                 helper.make_node(op, ["p"] if op == "Not" else ["p", "q"], ["mask"])]
    extra.append(helper.make_node("Cast", ["mask"], ["scale"], to=TensorProto.FLOAT))
    (got,) = check_node(tmp_path, helper.make_node("Mul", ["x", "scale"], ["y"]), {"x": sample(3, 4)}, {"a": a, "b": b},
                        extra_nodes=tuple(extra))
    assert 0 < np.count_nonzero(got[0]) < 4  # the mask is mixed: a wrong fold would show


@pytest.mark.parametrize("op", sorted(COVERED))
def test_input_dependent_operands_are_refused_naming_the_node(op):
    builder = GraphBuilder()
    ctx = Context(builder, 17)
    x = Sym(builder.input("x", (1, 4), 0, None, "x"), (1, 4), 0)
    node = helper.make_node(op, ["x"] if op == "Not" else ["x", "c"], ["y"], name="masking_step")
    inputs = [x] if op == "Not" else [x, np.zeros(4, np.float32)]
    with pytest.raises(UnsupportedOperator, match=f"{op} .*'masking_step'.*depend on the model input"):
        registry.lookup(op, 17).fn(node, inputs, ctx)
