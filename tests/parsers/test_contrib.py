"""onnxruntime's fused nodes (what a session with graph optimisations on saves) load as the nodes
they fuse: the same function as onnxruntime's, sound bounds; attribute values the rewrite does not
cover are refused by op, domain and node."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import parsers
import verifier
from verifier.errors import UnsupportedOperator

RNG = np.random.default_rng(0)
MS = "com.microsoft"


def _fused_model(matmul_attrs=None, gemm_activation="LeakyRelu"):
    """x [N,3] -> FusedMatMul(alpha 0.5, transB) -> FusedGemm(+LeakyRelu, transB) -> QuickGelu(1.5)."""
    matmul_attrs = {"alpha": 0.5, "transB": 1, "transA": 0, "transBatchA": 0, "transBatchB": 0, **(matmul_attrs or {})}
    nodes = [helper.make_node("FusedMatMul", ["x", "w1"], ["h1"], name="fused_mm", domain=MS, **matmul_attrs),
             helper.make_node("FusedGemm", ["h1", "w2", "b2"], ["h2"], name="fused_gemm", domain=MS, transB=1,
                              activation=gemm_activation, activation_alpha=0.1),
             helper.make_node("QuickGelu", ["h2"], ["y"], name="quick_gelu", domain=MS, alpha=1.5)]
    weights = [numpy_helper.from_array(RNG.normal(size=(4, 3)).astype(np.float32), "w1"),
               numpy_helper.from_array(RNG.normal(size=(2, 4)).astype(np.float32), "w2"),
               numpy_helper.from_array(RNG.normal(size=(2,)).astype(np.float32), "b2")]
    graph = helper.make_graph(nodes, "fused", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)])


def test_fused_nodes_match_onnxruntime_and_bound_soundly():
    """Before: refused ("popqorn converts default-domain operators only") although every session
    with ORT_ENABLE_EXTENDED saves a Linear+ReLU head as FusedGemm."""
    model = _fused_model()
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    graph = parsers.load_onnx(model)
    x = RNG.normal(size=(6, 3)).astype(np.float32)
    got = np.asarray(verifier.evaluate(graph, {"x": x}))
    got = got[0] if got.ndim == 3 else got
    np.testing.assert_allclose(got, session.run(None, {"x": x})[0], atol=1e-5, rtol=1e-6)
    eps = 0.2
    lower, upper = (np.asarray(b) for b in verifier.bound_outputs(graph, x[:2], eps=eps, norm="inf"))
    points = x[:2, None] + RNG.uniform(-eps, eps, size=(2, 400, 3)).astype(np.float32)
    outputs = session.run(None, {"x": points.reshape(-1, 3)})[0].reshape(2, 400, 2)
    assert (outputs >= lower[:, None] - 1e-5).all() and (outputs <= upper[:, None] + 1e-5).all()


@pytest.mark.parametrize("matmul_attrs, activation, node, reason", [
    ({"transA": 1}, "Relu", "fused_mm", "transA=1"),
    ({"transBatchB": 1}, "Relu", "fused_mm", "transBatchB=1"),
    ({}, "Softsign", "fused_gemm", "activation 'Softsign'"),
])
def test_uncovered_attributes_are_refused_by_op_domain_and_node(matmul_attrs, activation, node, reason):
    with pytest.raises(UnsupportedOperator, match=rf"domain 'com.microsoft'.*at node '{node}': {reason}"):
        parsers.load_onnx(_fused_model(matmul_attrs, activation))
