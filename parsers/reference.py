"""Runs one ONNX node on numpy arrays with onnx's reference evaluator.

Used for constant folding (shape subgraphs, weights computed from initializers) and to move
index arrays through data-movement ops, so their exact spec semantics (negative axes, steps,
opset differences) come from the spec's executable definition, not a re-implementation.

Before running, the size of every output is predicted by onnx shape inference (small inputs,
such as target shapes and repeat counts, are given by value), so a ConstantOfShape or Expand of
10^12 elements is refused before numpy allocates it.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper
from onnx.reference import ReferenceEvaluator

from parsers.errors import Refusal

_BY_VALUE = 64  # inputs up to this many elements are given to shape inference by value
# ops whose outputs are never much larger than their inputs: safe to run when inference cannot size them
_BOUNDED = {"Identity", "Cast", "CastLike", "Shape", "Size", "Slice", "Squeeze", "Unsqueeze", "Reshape", "Flatten",
            "Transpose", "Concat", "Split", "NonZero", "Unique", "Compress", "TopK", "ArgMax", "ArgMin", "Not",
            "Neg", "Abs", "Relu", "Sigmoid", "Tanh", "Exp", "Log", "Sqrt", "Floor", "Ceil", "Round", "Sign",
            "IsNaN", "IsInf", "Reciprocal", "ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd",
            "GatherElements", "ScatterElements", "ScatterND", "ReverseSequence", "Softmax", "LogSoftmax",
            "SequenceEmpty", "SequenceConstruct", "SequenceInsert", "SequenceAt", "SequenceErase", "SequenceLength",
            "SplitToSequence", "ConcatFromSequence", "Optional", "OptionalGetElement", "OptionalHasElement"}


def _model(node: onnx.NodeProto, inputs: list[np.ndarray | None], opset: int,
           by_value: bool) -> tuple[onnx.ModelProto, list[str], list[str]]:
    names = [f"in{k}" if x is not None else "" for k, x in enumerate(inputs)]
    outputs = [f"out{k}" if name else "" for k, name in enumerate(node.output)]
    clone = helper.make_node(node.op_type, names, outputs, domain=node.domain)
    clone.attribute.extend(node.attribute)
    given = [(n, np.asarray(x)) for n, x in zip(names, inputs) if x is not None]
    small = {n for n, x in given if by_value and x.size <= _BY_VALUE}
    graph = helper.make_graph(
        [clone], "fold",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(x.dtype), x.shape) for n, x in given
         if n not in small],
        [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in outputs if o],
        [onnx.numpy_helper.from_array(x, n) for n, x in given if n in small],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), names, outputs


def output_sizes(node: onnx.NodeProto, inputs: list[np.ndarray | None], opset: int) -> list[int | None]:
    """Predicted element count of every output (None: shape inference could not tell)."""
    try:
        model, _, outputs = _model(node, inputs, opset, by_value=True)
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001  (no prediction: the caller refuses ops that can grow)
        return [None for o in node.output if o]
    shapes = {v.name: v.type.tensor_type for v in inferred.graph.output}
    sizes: list[int | None] = []
    for name in (o for o in outputs if o):
        tensor = shapes.get(name)
        dims = list(tensor.shape.dim) if tensor is not None and tensor.HasField("shape") else None
        if dims is None or not all(d.HasField("dim_value") for d in dims):
            sizes.append(None)
        else:
            sizes.append(int(np.prod([d.dim_value for d in dims], dtype=np.float64)))
    return sizes


def check_output_sizes(node: onnx.NodeProto, inputs: list[np.ndarray | None], opset: int, max_elements: int) -> None:
    """Refuse (before computing) outputs over `max_elements`, or of unknowable size for ops that can grow."""
    for size in output_sizes(node, inputs, opset):
        if size is None and node.op_type not in _BOUNDED:
            raise Refusal("the size of its output cannot be determined before computing it")
        if size is not None and size > max_elements:
            raise Refusal(f"its output would have {size:,} elements, over the limit max_elements={max_elements:,} "
                          "(raise it with load_onnx(..., max_elements=...))")


def run_node(node: onnx.NodeProto, inputs: list[np.ndarray | None], opset: int,
             max_elements: int | None = None) -> list[np.ndarray]:
    if max_elements is not None:
        check_output_sizes(node, inputs, opset, max_elements)
    model, names, outputs = _model(node, inputs, opset, by_value=False)
    feeds = {n: x for n, x in zip(names, inputs) if x is not None}
    results = ReferenceEvaluator(model).run(None, feeds)
    it = iter(results)
    return [np.asarray(next(it)) if o else None for o in outputs]
