"""Converts a list of ONNX nodes (a graph or a loop body) into IR, node by node."""

from __future__ import annotations

import numpy as np
import onnx

from parsers import registry
from parsers.context import Context, clean_name
from parsers.reference import run_node
from parsers.values import Sym, is_const
from verifier.errors import PopqornError, UnsupportedOperator

_NEVER_FOLD = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
               "Multinomial", "Bernoulli"}


def convert_nodes(ctx: Context, nodes: list[onnx.NodeProto], skip: set[str] = frozenset()) -> None:
    for position, node in enumerate(nodes):
        if node.name in skip and node.name:
            continue
        convert_node(ctx, node, position)


def convert_node(ctx: Context, node: onnx.NodeProto, position: int = 0) -> None:
    if node.domain not in ("", "ai.onnx"):
        raise UnsupportedOperator(node.op_type, ctx.opset, node.name or node.output[0],
                                  f"operators of domain {node.domain!r} are not supported")
    inputs = [ctx.lookup(name) if name else None for name in node.input]
    ctx.prefix = ctx.scope_prefix + clean_name(node.name or f"{node.op_type}_{position}")
    has_subgraph = any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)
    if node.op_type in _NEVER_FOLD:
        raise ctx.unsupported(node, "random operators make the model non-deterministic")
    if all(x is None or is_const(x) for x in inputs) and not has_subgraph:
        try:
            outputs = run_node(node, _common_float_type(inputs), ctx.opset)
        except Exception as exc:  # the reference evaluator's own message is the best we have
            raise ctx.unsupported(node, f"constant folding failed: {exc}") from exc
    else:
        conv = registry.lookup(node.op_type, ctx.opset)
        if conv is None:
            raise ctx.unsupported(node)
        unknown = sorted(a.name for a in node.attribute if a.name not in conv.attributes)
        if unknown:
            raise ctx.unsupported(node, f"attribute {', '.join(unknown)} is not supported")
        try:
            outputs = conv.fn(node, inputs, ctx)
        except PopqornError:
            raise
        except (ValueError, IndexError) as exc:
            raise ctx.unsupported(node, str(exc)) from exc
    for name, value in zip(node.output, outputs):
        ctx.bind(name, value)


def _common_float_type(inputs: list) -> list:
    """Constants popqorn derived itself (e.g. x*0 folded to zeros) are float64; where they meet the
    model's float32 constants, use float32 as the model does."""
    floats = {x.dtype for x in inputs if x is not None and np.issubdtype(np.asarray(x).dtype, np.floating)}
    if np.dtype(np.float32) in floats and np.dtype(np.float64) in floats:
        return [x.astype(np.float32) if x is not None and np.asarray(x).dtype == np.float64 else x for x in inputs]
    return inputs


def sym_inputs(inputs: list) -> list[Sym]:
    return [x for x in inputs if isinstance(x, Sym)]
