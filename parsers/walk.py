"""Converts a list of ONNX nodes (a graph or a loop body) into IR, node by node.

Constant nodes are folded with the reference evaluator (sizes checked first); the others go to
their registered converter. Deliberate refusals (`UnsupportedOperator`, `Refusal`) name the op
and node; any other exception from a converter is a bug and surfaces as `ConverterBug`, never as
"unsupported operator". Every symbolic result is checked to keep its batch axis at size one.
"""

from __future__ import annotations

import numpy as np
import onnx

from parsers import registry
from parsers.context import Context, clean_name, node_label
from parsers.errors import BatchLayoutError, ConstantRequired, ConverterBug, Refusal
from parsers.files import tensor_value
from parsers.values import Sym, is_const
from verifier.errors import ModelFileError, PopqornError, UnsupportedOperator

_NEVER_FOLD = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
               "Multinomial", "Bernoulli"}
_RECURRENT = {"LSTM", "GRU", "RNN"}


def convert_nodes(ctx: Context, nodes: list[onnx.NodeProto], skip: set[str] = frozenset()) -> None:
    for position, node in enumerate(nodes):
        if node.name in skip and node.name:
            continue
        convert_node(ctx, node, position)


def _lookup(ctx: Context, node: onnx.NodeProto, name: str):
    try:
        return ctx.lookup(name)
    except KeyError:
        raise ModelFileError(f"node {node_label(node)!r} ({node.op_type}) reads {name!r}, which nothing defines") from None


def convert_node(ctx: Context, node: onnx.NodeProto, position: int = 0) -> None:
    label = node_label(node)
    if node.domain not in ("", "ai.onnx"):
        raise UnsupportedOperator(node.op_type, ctx.domains.get(node.domain), label,
                                  "popqorn converts default-domain (ai.onnx) operators only", domain=node.domain)
    ctx.meter.check_nodes(len(ctx.builder.nodes), 0, f"node {label!r}")
    inputs = [_lookup(ctx, node, name) if name else None for name in node.input]
    ctx.prefix = ctx.scope_prefix + clean_name(node.name or f"{node.op_type}_{position}")
    has_subgraph = any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)
    if node.op_type in _NEVER_FOLD:
        raise ctx.unsupported(node, "random operators make the model non-deterministic")
    if all(x is None or is_const(x) for x in inputs) and not has_subgraph:
        outputs = _fold(ctx, node, inputs)
    else:
        outputs = _convert(ctx, node, inputs)
    for name, value in zip(node.output, outputs):
        ctx.bind(name, value)


def _constant_node(ctx: Context, node: onnx.NodeProto) -> list | None:
    """A Constant's tensor, read like an initializer (sized first, finite); None for the
    attribute forms (value_float, value_ints, ...), which the reference evaluator folds."""
    for attr in node.attribute:
        if attr.name in ("value", "sparse_value"):
            tensor = attr.t if attr.name == "value" else attr.sparse_tensor
            return [tensor_value(tensor, ctx.meter.budget.max_elements, f"Constant node {node_label(node)!r} tensor")]
    return None


def _fold(ctx: Context, node: onnx.NodeProto, inputs: list) -> list:
    if node.op_type == "Constant":
        found = _constant_node(ctx, node)
        if found is not None:
            return found
    if node.op_type in _RECURRENT:
        return _fold_recurrent(ctx, node, inputs)
    try:
        outputs = ctx.run(node, _common_float_type(inputs))
    except Refusal as exc:
        raise ctx.unsupported(node, f"constant folding failed: {exc}") from exc
    if node.op_type == "Constant":
        for name, value in zip(node.output, outputs):
            if value is not None and np.issubdtype(value.dtype, np.inexact) and not np.isfinite(value).all():
                raise ModelFileError(f"Constant node {node_label(node)!r} (tensor {name!r}) contains NaN or "
                                     "infinite values")
    return outputs


def _fold_recurrent(ctx: Context, node: onnx.NodeProto, inputs: list) -> list:
    """A recurrent node over constants, computed by its own converter one batch entry at a time
    (its constant path), not by the reference evaluator: onnx.reference ignores clip, activations,
    input_forget and sequence_lens, and a wrong constant here would be certified as the model."""
    x = inputs[0] if inputs else None
    if x is None or np.ndim(x) != 3:
        return _convert(ctx, node, inputs)  # the converter refuses it by name
    layout = int(ctx.attrs(node).get("layout", 0))
    batch = np.shape(x)[0 if layout else 1]
    # the batch axis of X, sequence_lens, initial_h, initial_c (W, R, B and P have none)
    axes = {0: 0 if layout else 1, 4: 0, 5: 0 if layout else 1, 6: 0 if layout else 1}
    cells = len(ctx.cells)
    rows = []
    for b in range(batch):
        row = [value[(slice(None),) * axes[k] + (slice(b, b + 1),)]
               if k in axes and value is not None and np.ndim(value) > axes[k] and np.shape(value)[axes[k]] == batch
               else value for k, value in enumerate(inputs)]
        rows.append(_convert(ctx, node, row))
    del ctx.cells[cells:]  # computed once at load, not a cell of the model
    ctx.notes.append(f"{node.op_type} node {node_label(node)!r} reads only constants: computed at load")
    out_axes = [2 if not layout else 0] + [1 if not layout else 0] * 2  # Y, Y_h, Y_c
    dtype = np.result_type(*(np.asarray(v).dtype for v in inputs if v is not None and np.issubdtype(
        np.asarray(v).dtype, np.floating)))
    return [None if parts[0] is None else np.concatenate(parts, axis=out_axes[k]).astype(dtype)
            for k, parts in enumerate(zip(*rows))]


def _convert(ctx: Context, node: onnx.NodeProto, inputs: list) -> list:
    label = node_label(node)
    conv = registry.lookup(node.op_type, ctx.opset)
    if conv is None:
        raise ctx.unsupported(node)
    unknown = sorted(a.name for a in node.attribute if a.name not in conv.attributes)
    if unknown:
        raise ctx.unsupported(node, f"attribute {', '.join(unknown)} is not supported")
    for name, value in zip(node.input, inputs):
        if isinstance(value, np.ndarray) and value.dtype.kind in "OSUc":  # a STRING or complex tensor
            element = "STRING" if value.dtype.kind in "OSU" else value.dtype.name.upper()
            raise ctx.unsupported(node, f"input {name!r} has element type {element}; popqorn computes with "
                                        "real numbers only")
    try:
        outputs = conv.fn(node, inputs, ctx)
    except (PopqornError, ConstantRequired, ConverterBug):
        raise
    except Refusal as exc:
        raise ctx.unsupported(node, str(exc)) from exc
    except Exception as exc:  # a converter bug: an internal error naming the node, not "unsupported"
        raise ConverterBug(node.op_type, label, exc) from exc
    if not isinstance(outputs, list) or len(outputs) > len(node.output) or not all(
            x is None or isinstance(x, (Sym, np.ndarray)) for x in outputs):
        raise ConverterBug(node.op_type, label, TypeError(f"converter returned {type(outputs).__name__} "
                                                          f"for {len(node.output)} outputs"))
    for value in outputs:
        if isinstance(value, Sym) and value.batch_axis is not None and not (
                0 <= value.batch_axis < value.rank and value.shape[value.batch_axis] == 1):
            raise BatchLayoutError(node.op_type, ctx.opset, label,
                                   f"its result {value.shape} has "
                                   f"{value.shape[value.batch_axis] if value.batch_axis < value.rank else '?'} "
                                   f"entries on the batch axis {value.batch_axis}: it mixes samples (or the input's batch "
                                   "axis is not where popqorn assumed: the Python API's "
                                   "parsers.load_onnx(path, batch_axes={input: axis}) sets it)")
    return outputs


def _common_float_type(inputs: list) -> list:
    """Constants popqorn derived itself (e.g. x*0 folded to zeros) are float64; where they meet the
    model's float32 constants, use float32 as the model does."""
    floats = {x.dtype for x in inputs if x is not None and np.issubdtype(np.asarray(x).dtype, np.floating)}
    if np.dtype(np.float32) in floats and np.dtype(np.float64) in floats:
        return [x.astype(np.float32) if x is not None and np.asarray(x).dtype == np.float64 else x for x in inputs]
    return inputs


def sym_inputs(inputs: list) -> list[Sym]:
    return [x for x in inputs if isinstance(x, Sym)]
