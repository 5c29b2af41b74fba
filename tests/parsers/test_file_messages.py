"""Messages for files ONNX's checker rejects name the value at fault where onnx does not."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import parsers
from verifier.errors import ModelFileError


def test_an_output_declared_without_a_shape_is_named():
    """An intermediate exposed as an extra output with make_tensor_value_info(name, type, None),
    as debugging tools write it: onnx.checker's own message named no value."""
    weights = numpy_helper.from_array(np.ones((3, 2), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["hidden"], name="mm"),
                               helper.make_node("Relu", ["hidden"], ["y"], name="relu")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2]),
                               helper.make_tensor_value_info("hidden", TensorProto.FLOAT, None)], [weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ModelFileError, match=r"declared without a shape: 'hidden'\)"):
        parsers.load_onnx(model.SerializeToString())
