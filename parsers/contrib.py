"""onnxruntime's fused operators (domain com.microsoft) rewritten as the default-domain nodes they fuse.

A model saved by onnxruntime with graph optimisations on (SessionOptions.optimized_model_filepath
at ORT_ENABLE_EXTENDED or ALL) carries FusedGemm (a Gemm and its activation), FusedMatMul (a MatMul
scaled by alpha, operands maybe transposed) and QuickGelu (x * sigmoid(alpha x)) in place of the
exporter's nodes. Each is the same function as the nodes it replaced, so it is written back as
those nodes (named after the fused node, so messages still point at it); attribute values the
rewrite does not cover are refused by op, domain and node. Any other com.microsoft node is left
for the walk, which refuses it by name.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import helper, numpy_helper

from parsers.context import node_label
from verifier.errors import UnsupportedOperator

DOMAIN = "com.microsoft"
# FusedGemm's activation -> the default-domain op and how its activation_* attributes map
_ACTIVATIONS = {"Relu": ("Relu", {}), "Tanh": ("Tanh", {}), "Sigmoid": ("Sigmoid", {}),
                "LeakyRelu": ("LeakyRelu", {"activation_alpha": "alpha"}),
                "HardSigmoid": ("HardSigmoid", {"activation_alpha": "alpha", "activation_beta": "beta"})}


def expand_contrib_ops(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with FusedGemm/FusedMatMul/QuickGelu written as default-domain nodes (a copy;
    the model itself when it has none)."""
    if not _has_fused(model.graph):
        return model
    model = copy.deepcopy(model)
    domains = {entry.domain: entry.version for entry in model.opset_import}
    _rewrite_graph(model.graph, domains, model.graph.initializer)
    return model


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    return [attr.g for attr in node.attribute if attr.HasField("g")] + [g for attr in node.attribute for g in attr.graphs]


def _has_fused(graph: onnx.GraphProto) -> bool:
    return any((node.domain == DOMAIN and node.op_type in _REWRITES) or any(map(_has_fused, _subgraphs(node)))
               for node in graph.node)


def _rewrite_graph(graph: onnx.GraphProto, domains: dict[str, int], initializers) -> None:
    known = {t.name: t for t in initializers} | {t.name: t for t in graph.initializer}
    nodes = []
    for node in graph.node:
        for body in _subgraphs(node):
            _rewrite_graph(body, domains, list(known.values()))
        rewrite = _REWRITES.get(node.op_type) if node.domain == DOMAIN else None
        nodes.extend(rewrite(node, domains, known) if rewrite else [node])
    del graph.node[:]
    graph.node.extend(nodes)


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _refuse(node: onnx.NodeProto, domains: dict[str, int], reason: str) -> UnsupportedOperator:
    return UnsupportedOperator(node.op_type, domains.get(node.domain), node_label(node), reason, domain=node.domain)


def _constant(name: str, value: float) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], name=name,
                            value=numpy_helper.from_array(np.array(value, np.float32), name))


def _check_attributes(node, domains, allowed) -> dict:
    attrs = _attrs(node)
    unknown = sorted(set(attrs) - set(allowed))
    if unknown:
        raise _refuse(node, domains, f"attribute {', '.join(unknown)} is not supported")
    return attrs


def _fused_gemm(node, domains, known) -> list[onnx.NodeProto]:
    attrs = _check_attributes(node, domains, {"alpha", "beta", "transA", "transB", "activation", "activation_alpha",
                                              "activation_beta", "activation_gamma"})
    activation = attrs.pop("activation", b"")
    activation = activation.decode() if isinstance(activation, bytes) else activation
    label = node_label(node)
    gemm_attrs = {k: attrs[k] for k in ("alpha", "beta", "transA", "transB") if k in attrs}
    if activation not in _ACTIVATIONS:  # onnxruntime itself refuses an unknown one ("Identity" among them)
        raise _refuse(node, domains, f"activation {activation!r} is not supported "
                                     f"(supported: {', '.join(sorted(_ACTIVATIONS))})")
    op, mapping = _ACTIVATIONS[activation]
    extra = sorted(k for k in attrs if k.startswith("activation_") and k not in mapping)
    if extra:
        raise _refuse(node, domains, f"attribute {', '.join(extra)} does not apply to activation {activation}")
    linear = f"{label}/gemm_output"
    return [helper.make_node("Gemm", list(node.input), [linear], name=f"{label}/gemm", **gemm_attrs),
            helper.make_node(op, [linear], list(node.output), name=f"{label}/{op.lower()}",
                             **{mapping[k]: attrs[k] for k in mapping if k in attrs})]


def _fused_matmul(node, domains, known) -> list[onnx.NodeProto]:
    attrs = _check_attributes(node, domains, {"alpha", "transA", "transB", "transBatchA", "transBatchB"})
    label = node_label(node)
    for name in ("transA", "transBatchA", "transBatchB"):
        if attrs.get(name, 0):
            raise _refuse(node, domains, f"{name}={attrs[name]} is not supported (only transB, on a weight "
                                         "initializer, and alpha are)")
    a, b = node.input[0], node.input[1]
    nodes = []
    if attrs.get("transB", 0):
        weight = known.get(b)
        if weight is None or len(weight.dims) < 2:
            raise _refuse(node, domains, "transB=1 is supported on a weight initializer of rank >= 2 only")
        rank = len(weight.dims)
        perm = [*range(rank - 2), rank - 1, rank - 2]
        nodes.append(helper.make_node("Transpose", [b], [f"{label}/b_transposed"], name=f"{label}/transpose_b", perm=perm))
        b = f"{label}/b_transposed"
    alpha = float(attrs.get("alpha", 1.0))
    if alpha == 1.0:
        return [*nodes, helper.make_node("MatMul", [a, b], list(node.output), name=label)]
    product = f"{label}/matmul_output"
    return [*nodes, helper.make_node("MatMul", [a, b], [product], name=f"{label}/matmul"),
            _constant(f"{label}/alpha", alpha),
            helper.make_node("Mul", [product, f"{label}/alpha"], list(node.output), name=f"{label}/scale")]


def _quick_gelu(node, domains, known) -> list[onnx.NodeProto]:
    attrs = _check_attributes(node, domains, {"alpha"})
    label, x = node_label(node), node.input[0]
    return [_constant(f"{label}/alpha", float(attrs.get("alpha", 1.702))),
            helper.make_node("Mul", [x, f"{label}/alpha"], [f"{label}/scaled"], name=f"{label}/scale"),
            helper.make_node("Sigmoid", [f"{label}/scaled"], [f"{label}/gate"], name=f"{label}/sigmoid"),
            helper.make_node("Mul", [x, f"{label}/gate"], list(node.output), name=f"{label}/gate_product")]


_REWRITES = {"FusedGemm": _fused_gemm, "FusedMatMul": _fused_matmul, "QuickGelu": _quick_gelu}
