"""Half-precision arithmetic on input-dependent values is refused by name (its rounding, ~1e-3,
leaves the bounds of the real-valued function); exact half-precision steps and float16 weights
cast up to float32 still load."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import parsers
import verifier
from verifier.errors import UnsupportedOperator

RNG = np.random.default_rng(0)
W = RNG.normal(size=(3, 4)).astype(np.float32)


def _model(nodes, inputs, output, initializers=()) -> onnx.ModelProto:
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, [output], list(initializers)),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _x(elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info("x", elem, ["N", 3])


def test_output_cast_to_float16_is_refused_naming_the_node():
    """Before: loaded as the identity; at eps = 0 onnxruntime's output left the bounds by 1.8e-3 on
    the digits LSTM with a trailing Cast to float16."""
    model = _model([helper.make_node("MatMul", ["x", "w"], ["y32"], name="mm"),
                    helper.make_node("Cast", ["y32"], ["y"], to=TensorProto.FLOAT16, name="to_half")],
                   [_x()], helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["N", 4]),
                   [numpy_helper.from_array(W, "w")])
    with pytest.raises(UnsupportedOperator, match=r"Cast .*'to_half'.*float16"):
        parsers.load_onnx(model)


@pytest.mark.parametrize("elem, name", [(TensorProto.FLOAT16, "float16"), (TensorProto.BFLOAT16, "bfloat16")])
def test_half_precision_matmul_on_the_input_is_refused(elem, name):
    weights = helper.make_tensor("w", elem, W.shape, W.flatten().tolist()) if elem == TensorProto.BFLOAT16 \
        else numpy_helper.from_array(W.astype(np.float16), "w")
    model = _model([helper.make_node("MatMul", ["x", "w"], ["y"], name="half_mm")],
                   [_x(elem)], helper.make_tensor_value_info("y", elem, ["N", 4]), [weights])
    with pytest.raises(UnsupportedOperator, match=rf"MatMul .*'half_mm'.*{name}"):
        parsers.load_onnx(model)


def test_float16_input_and_weights_cast_up_load_and_match_onnxruntime():
    """Exact steps stay allowed: a float16 input cast up, float16 weights cast up, a float16
    copy of the input used only for its shape."""
    w16 = W.astype(np.float16)
    nodes = [helper.make_node("Cast", ["x"], ["x32"], to=TensorProto.FLOAT, name="up"),
             helper.make_node("Cast", ["w16"], ["w"], to=TensorProto.FLOAT, name="w_up"),
             helper.make_node("Cast", ["x32"], ["x_half"], to=TensorProto.FLOAT16, name="for_shape"),
             helper.make_node("Shape", ["x_half"], ["shape"], name="shape"),
             helper.make_node("MatMul", ["x32", "w"], ["y"], name="mm")]
    model = _model(nodes, [_x(TensorProto.FLOAT16)], helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4]),
                   [numpy_helper.from_array(w16, "w16")])
    graph = parsers.load_onnx(model)
    x = RNG.normal(size=(5, 3)).astype(np.float16)
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = verifier.evaluate(graph, {"x": x.astype(np.float32)})
    got = got[0] if isinstance(got, (list, tuple)) else got
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), expected, atol=1e-5, rtol=1e-6)
