"""ReduceSum and ReduceMean: linear pooling heads (mean over time, Keras GlobalAveragePooling1D).

Both are exact affine maps, so bounds pass through them without loss: the reduced axes are moved
last by a Select (a permutation of element ids), then one Affine with a 1 x K row of ones (sum) or
1/K (mean) is applied to every block of K consecutive elements. The flat order of the kept axes is
unchanged, which is also ONNX's output order with or without `keepdims`.

Axes come as an attribute before ReduceSum-13 / ReduceMean-18 and as an optional second input from
then on, where `noop_with_empty_axes` says whether no axes mean "all axes" or "none".
"""

from __future__ import annotations

import numpy as np

from parsers.context import Context, node_label
from parsers.errors import BatchLayoutError, Refusal
from parsers.registry import converter
from parsers.values import Sym
from verifier.ir import Act, ActivationFn


def _axes(node, inputs, ctx: Context, axes_as_input: bool) -> tuple[list[int] | None, bool]:
    """(axes as written, noop_with_empty_axes); None when no axes are given."""
    attrs = ctx.attrs(node)
    if not axes_as_input:
        axes = attrs.get("axes")
        return (None if axes is None else [int(a) for a in axes]), False
    noop = bool(attrs.get("noop_with_empty_axes", 0))
    value = inputs[1] if len(inputs) > 1 else None
    if value is None:
        return None, noop
    value = ctx.constant(node, value, "axes")
    array = np.asarray(value)
    if not np.issubdtype(array.dtype, np.integer) or array.ndim > 1:
        raise Refusal(f"axes must be a 1-D integer tensor, got {array.dtype} of shape {array.shape}")
    return [int(a) for a in array.reshape(-1)], noop


def _normalised(axes: list[int], rank: int) -> list[int]:
    out = []
    for axis in axes:
        if not -rank <= axis < rank:
            raise Refusal(f"axis {axis} is out of range for an input of rank {rank}")
        out.append(axis + rank if axis < 0 else axis)
    if len(set(out)) != len(out):
        raise Refusal(f"axes {axes} name the same axis twice")
    return sorted(out)


def _grouped(node, inputs, ctx: Context, axes_as_input: bool):
    """(x, element ids with the reduced axes last: each output element's group is a block of
    `count` consecutive ids, count, output shape, output batch axis); None for a no-op."""
    x = inputs[0]
    written, noop = _axes(node, inputs, ctx, axes_as_input)
    if not written:
        if noop:
            return [x]
        written = list(range(x.rank))
    axes = _normalised(written, x.rank)
    if x.batch_axis is not None and x.batch_axis in axes:
        raise BatchLayoutError(node.op_type, ctx.opset, node_label(node),
                               f"it reduces over axes {axes}, which include the batch axis {x.batch_axis} as popqorn "
                               "tracks it: that mixes samples, unless an earlier Reshape put the batch on another "
                               "size-1 axis, which popqorn cannot tell apart and will not guess")
    kept = [k for k in range(x.rank) if k not in axes]
    count = int(np.prod([x.shape[k] for k in axes], dtype=np.int64))
    if count == 0:
        raise Refusal("reducing over an empty axis")
    ids = np.arange(x.size, dtype=np.int64).reshape(x.shape).transpose(kept + axes).reshape(-1, count)
    if ctx.attrs(node).get("keepdims", 1):
        shape = tuple(1 if k in axes else d for k, d in enumerate(x.shape))
        batch = x.batch_axis
    else:
        shape = tuple(x.shape[k] for k in kept)
        batch = None if x.batch_axis is None else kept.index(x.batch_axis)
    return x, ids, count, shape, batch


def reduce_linear(node, inputs, ctx: Context, mean: bool, axes_as_input: bool) -> list:
    """Sum (or mean) of `inputs[0]` over the node's axes, as a Select then one Affine."""
    grouped = _grouped(node, inputs, ctx, axes_as_input)
    if not isinstance(grouped, tuple):
        return grouped
    x, ids, count, shape, batch = grouped
    source = ctx.builder.select(x.node, ids.reshape(-1), f"{ctx.prefix}/reduced_last")
    scale = 1.0 / count if mean else 1.0
    row = np.full((1, count), scale) if count > 1 else np.ones(1)  # one element: the identity, skipped
    out = ctx.builder.affine(source, row, None, f"{ctx.prefix}/{'mean' if mean else 'sum'}")
    return [Sym(out, shape, batch)]


def reduce_extreme(node, inputs, ctx: Context, largest: bool, axes_as_input: bool) -> list:
    """Max (or min) over the node's axes, exactly, one group member at a time:
    max(m, c) = m + relu(c - m) and min(m, c) = m - relu(m - c). The ReLUs are relaxed like any
    other (Keras GlobalMaxPooling1D is a max over time)."""
    grouped = _grouped(node, inputs, ctx, axes_as_input)
    if not isinstance(grouped, tuple):
        return grouped
    x, ids, count, shape, batch = grouped
    b, name = ctx.builder, f"{ctx.prefix}/{'max' if largest else 'min'}"
    ones = np.ones(ids.shape[0])
    best = b.select(x.node, ids[:, 0], f"{name}/0")
    for j in range(1, count):
        candidate = b.select(x.node, ids[:, j], f"{name}/{j}/candidate")
        ahead, behind = (candidate, best) if largest else (best, candidate)
        gap = b.add([ahead, b.affine(behind, -ones, None, f"{name}/{j}/negated")], f"{name}/{j}/gap")
        step = b.activation(gap, ActivationFn(Act.RELU), f"{name}/{j}/step")
        best = b.add([best, step if largest else b.affine(step, -ones, None, f"{name}/{j}/down")], f"{name}/{j}")
    return [Sym(best, shape, batch)]


def _register(op: str, reduce, axes_input_since: int, **how) -> None:
    """`op` with its axes as an attribute, and as an optional second input from `axes_input_since`."""
    @converter(op, since=1, attributes=("axes", "keepdims"))
    def axes_attribute(node, inputs, ctx):
        return reduce(node, inputs, ctx, axes_as_input=False, **how)

    @converter(op, since=axes_input_since, attributes=("keepdims", "noop_with_empty_axes"))
    def axes_input(node, inputs, ctx):
        return reduce(node, inputs, ctx, axes_as_input=True, **how)


_register("ReduceSum", reduce_linear, 13, mean=False)
_register("ReduceMean", reduce_linear, 18, mean=True)
_register("ReduceMax", reduce_extreme, 18, largest=True)
_register("ReduceMin", reduce_extreme, 18, largest=False)
