"""Refuses arithmetic in float16/bfloat16 on values that depend on a model input.

popqorn bounds the model's real-valued function. A float32 runtime rounds by ~1e-7 relative, which
the README's caveat covers; float16 and bfloat16 round by ~1e-3 and ~1e-2, so onnxruntime's output
of a half-precision model leaves popqorn's bounds by that much even at eps = 0 (measured 1.8e-3 on
the digits LSTM converted to float16). Such a node is refused by name instead of being bounded as
if it computed exactly. Moving, selecting and comparing values (Reshape, Gather, Max, Relu, a Cast
up to float32...) is exact in any format and stays allowed, and so is half-precision arithmetic on
constants alone (weights stored in float16 and cast up: the model computes with those values).
"""

from __future__ import annotations

import onnx

from parsers.context import node_label
from verifier.errors import UnsupportedOperator

LOW_PRECISION = {onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.BFLOAT16: "bfloat16"}

# exact in every float format: they move, select or compare values, or only flip a sign
_EXACT = {"Identity", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Slice", "Gather", "GatherElements",
          "GatherND", "Concat", "Split", "Flatten", "Expand", "Tile", "Shape", "Size", "Dropout", "Neg", "Abs",
          "Relu", "Max", "Min", "ReduceMax", "ReduceMin", "ReverseSequence", "Equal", "Greater", "GreaterOrEqual",
          "Less", "LessOrEqual", "Not", "And", "Or", "Xor", "Sign"}


def check_precision(model: onnx.ModelProto, opset: int) -> None:
    """Raise UnsupportedOperator at the first node that rounds an input-dependent value to float16
    or bfloat16 where the result reaches an output (types from ONNX's shape inference; a file it
    rejects is left to check_types)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - check_types names the file's fault later
        return
    initializers = {t.name for t in inferred.graph.initializer}
    _check_graph(inferred.graph, {i.name for i in inferred.graph.input if i.name not in initializers}, opset)


def _types(graph: onnx.GraphProto) -> dict[str, int]:
    infos = [*graph.input, *graph.output, *graph.value_info]
    return {info.name: info.type.tensor_type.elem_type for info in infos if info.type.HasField("tensor_type")}


def _bodies(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    return [attr.g for attr in node.attribute if attr.HasField("g")] + [g for attr in node.attribute for g in attr.graphs]


def _read_names(graph: onnx.GraphProto) -> set[str]:
    """Every name a graph's nodes read, nested bodies included (outer-scope captures among them)."""
    names = set()
    for node in graph.node:
        names.update(node.input)
        for body in _bodies(node):
            names |= _read_names(body)
    return names


def _check_graph(graph: onnx.GraphProto, tainted: set[str], opset: int) -> None:
    """tainted: names whose values depend on a model input. Shape and Size read only a shape, so
    their results (and a ConstantOfShape built from them) are not; a value read only by them
    (a cast made just to take a shape) reaches no output."""
    types, tainted = _types(graph), set(tainted)
    used = {o.name for o in graph.output}
    for node in reversed(graph.node):
        if node.op_type not in ("Shape", "Size") and any(name in used for name in node.output):
            used.update(node.input)
            for body in _bodies(node):
                used |= _read_names(body)
    for node in graph.node:
        bodies = _bodies(node)
        depends = any(name in tainted for name in node.input) or any(
            name in tainted for body in bodies for name in _read_names(body))
        if not depends or node.op_type in ("Shape", "Size"):
            continue
        tainted.update(node.output)
        for body in bodies:  # a loop body computes what its node outputs; its inputs count as input-dependent
            _check_graph(body, tainted | {i.name for i in body.input}, opset)
        if not bodies and any(name in used for name in node.output):
            _refuse_rounding(node, types, opset)


def _refuse_rounding(node: onnx.NodeProto, types: dict[str, int], opset: int) -> None:
    if node.op_type in _EXACT or node.domain not in ("", "ai.onnx"):  # other domains: refused by the walk
        return
    low = next((LOW_PRECISION[types[name]] for name in node.output if types.get(name) in LOW_PRECISION), None)
    if low is None:
        return
    if node.op_type in ("Cast", "CastLike") and node.input and types.get(node.input[0]) in LOW_PRECISION \
            and LOW_PRECISION[types[node.input[0]]] == low:
        return  # a cast to the type it already has
    raise UnsupportedOperator(node.op_type, opset, node_label(node),
                              f"it computes in {low} on values that depend on the model's input; popqorn bounds "
                              f"the real-valued function, and {low} rounding (~{_ROUNDING[low]} relative) would "
                              "leave those bounds: convert the model to float32")


_ROUNDING = {"float16": "5e-4", "bfloat16": "4e-3"}
