"""Runs one ONNX node on numpy arrays with onnx's reference evaluator.

Used for constant folding (shape subgraphs, weights computed from initializers) and to move
index arrays through data-movement ops, so their exact spec semantics (negative axes, steps,
opset differences) come from the spec's executable definition, not a re-implementation.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper
from onnx.reference import ReferenceEvaluator


def run_node(node: onnx.NodeProto, inputs: list[np.ndarray | None], opset: int) -> list[np.ndarray]:
    names = [f"in{k}" if x is not None else "" for k, x in enumerate(inputs)]
    outputs = [f"out{k}" if name else "" for k, name in enumerate(node.output)]
    clone = helper.make_node(node.op_type, names, outputs, domain=node.domain)
    clone.attribute.extend(node.attribute)
    graph = helper.make_graph(
        [clone],
        "fold",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(x.dtype), x.shape)
         for n, x in zip(names, inputs) if x is not None],
        [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in outputs if o],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    feeds = {n: x for n, x in zip(names, inputs) if x is not None}
    results = ReferenceEvaluator(model).run(None, feeds)
    it = iter(results)
    return [np.asarray(next(it)) if o else None for o in outputs]
