"""Data-movement ops. The element permutation comes from running the op on id arrays
(Context.move); each converter only has to say where the batch axis ends up."""

from __future__ import annotations

import numpy as np
from onnx import helper

from parsers.context import Context
from parsers.ops.elementwise import collapse_fixed_batch
from parsers.registry import converter
from parsers.values import Sym


def _norm(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _const_ints(ctx: Context, node, value, what: str) -> list[int]:
    return [int(v) for v in np.asarray(ctx.constant(node, value, what)).reshape(-1)]


def _move_first(node, inputs, ctx: Context, batch_axis):
    return ctx.move(node, inputs, (0,), [batch_axis] * len(node.output))


@converter("Identity", since=1)
def identity(node, inputs, ctx):
    return [inputs[0]]


@converter("Dropout", since=7, attributes=("ratio", "seed"))
def dropout(node, inputs, ctx):
    """Inference: the identity (and a mask of ones). Training mode would make the model random."""
    training = inputs[2] if len(inputs) > 2 else None
    if training is not None and np.asarray(ctx.constant(node, training, "training_mode")).any():
        raise ctx.unsupported(node, "training_mode is true: dropout would make the model random")
    x = inputs[0]
    return [x, np.ones(x.shape, dtype=bool)][:max(len(node.output), 1)]


@converter("Cast", since=1, attributes=("to", "saturate", "round_mode"))
def cast(node, inputs, ctx):
    to = ctx.attrs(node)["to"]
    if to not in (1, 10, 11, 16):  # float, float16, double, bfloat16
        raise ctx.unsupported(node, "casting a perturbed value to a non-float type")
    return [inputs[0]]


@converter("Shape", since=1, attributes=("start", "end"))
def shape(node, inputs, ctx):
    """The shape of a symbolic value is known (batch axis 1): a constant."""
    dims = inputs[0].shape
    attrs = ctx.attrs(node) if ctx.opset >= 15 else {}
    start, end = int(attrs.get("start", 0)), attrs.get("end")
    end = len(dims) if end is None else int(end)
    start, end = [min(max(k + len(dims) if k < 0 else k, 0), len(dims)) for k in (start, end)]
    return [np.array(dims[start:end], dtype=np.int64)]


@converter("Size", since=1)
def size(node, inputs, ctx):
    """Known for one sample; with a batch axis the ONNX value would count the whole batch."""
    if inputs[0].batch_axis is not None:
        raise ctx.unsupported(node, "the element count of a batched value depends on the batch size")
    return [np.array(inputs[0].size, dtype=np.int64)]


@converter("Transpose", since=1, attributes=("perm",))
def transpose(node, inputs, ctx):
    x = inputs[0]
    perm = ctx.attrs(node).get("perm") or list(range(x.rank))[::-1]
    b = None if x.batch_axis is None else list(perm).index(x.batch_axis)
    return _move_first(node, inputs, ctx, b)


def reshape_batch_axis(old: tuple[int, ...], new: tuple[int, ...], b: int | None) -> int | None:
    """Where a size-1 batch axis lands after a reshape: the first size-1 axis whose prefix
    product equals the product of the dims before the old batch axis."""
    if b is None:
        return None
    before = int(np.prod(old[:b], dtype=np.int64))
    for j, d in enumerate(new):
        if d == 1 and int(np.prod(new[:j], dtype=np.int64)) == before:
            return j
    return None


def _one_sample_shape(x: Sym, target: np.ndarray) -> np.ndarray:
    """A constant target shape written for a fixed export batch B (dynamo bakes it in) holds B
    where the batch goes; for one sample that dim is 1. Found as the only dim equal to B whose
    prefix product matches the elements before the batch axis; otherwise left alone."""
    target = np.asarray(target, dtype=np.int64)
    if x.batch_axis is None or (target <= 0).any():
        return target
    total = int(np.prod(target, dtype=np.int64))
    if total == x.size or total % x.size:
        return target
    batch = total // x.size
    before = int(np.prod(x.shape[:x.batch_axis], dtype=np.int64))
    spots = [j for j, d in enumerate(target) if d == batch and int(np.prod(target[:j], dtype=np.int64)) == before]
    if len(spots) != 1:
        return target
    fixed = target.copy()
    fixed[spots[0]] = 1
    return fixed


@converter("Reshape", since=5, attributes=("allowzero",))
def reshape(node, inputs, ctx):
    x = inputs[0]
    if len(inputs) > 1:
        inputs = [x, _one_sample_shape(x, ctx.constant(node, inputs[1], "shape")), *inputs[2:]]
    out = ctx.move(node, inputs, (0,), [None])[0]
    return [Sym(out.node, out.shape, reshape_batch_axis(x.shape, out.shape, x.batch_axis))]


@converter("Flatten", since=1, attributes=("axis",))
def flatten(node, inputs, ctx):
    x = inputs[0]
    axis = _norm(ctx.attrs(node).get("axis", 1), x.rank)
    out = ctx.move(node, inputs, (0,), [None])[0]
    b = None if x.batch_axis is None else (0 if x.batch_axis < axis else 1)
    return [Sym(out.node, out.shape, b)]


def _squeeze_axes(node, inputs, ctx) -> list[int] | None:
    if ctx.opset >= 13:
        return None if len(inputs) < 2 or inputs[1] is None else _const_ints(ctx, node, inputs[1], "axes")
    return ctx.attrs(node).get("axes")


@converter("Squeeze", since=1, attributes=("axes",))
def squeeze(node, inputs, ctx):
    x = inputs[0]
    axes = _squeeze_axes(node, inputs, ctx)
    if axes is None:  # squeeze all size-1 axes -- but never the batch axis, which is only 1 here
        axes = [k for k, d in enumerate(x.shape) if d == 1 and k != x.batch_axis]
        node = helper.make_node("Squeeze", ["x", "axes"], list(node.output), name=node.name)
        inputs = [x, np.array(axes, dtype=np.int64)]
    return squeeze_with_axes(node, inputs, ctx, axes)


def squeeze_with_axes(node, inputs, ctx, axes):
    x = inputs[0]
    axes = [_norm(a, x.rank) for a in axes]
    b = x.batch_axis
    if b is not None:
        b = None if b in axes else b - sum(a < b for a in axes)
    opset = max(ctx.opset, 13) if len(node.input) == 2 else ctx.opset
    return ctx.move(node, inputs, (0,), [b], opset=opset)


@converter("Unsqueeze", since=1, attributes=("axes",))
def unsqueeze(node, inputs, ctx):
    x = inputs[0]
    axes = _const_ints(ctx, node, inputs[1], "axes") if ctx.opset >= 13 else ctx.attrs(node)["axes"]
    rank = x.rank + len(axes)
    axes = sorted(_norm(a, rank) for a in axes)
    b = x.batch_axis
    if b is not None:
        kept = [k for k in range(rank) if k not in axes]
        b = kept[b]
    return _move_first(node, inputs, ctx, b)


@converter("Gather", since=1, attributes=("axis",))
def gather(node, inputs, ctx):
    x, indices = inputs
    indices = ctx.constant(node, indices, "indices")
    axis = _norm(ctx.attrs(node).get("axis", 0), x.rank)
    b = x.batch_axis
    if b is not None:
        b = None if b == axis else (b if b < axis else b + np.ndim(indices) - 1)
    return _move_first(node, inputs, ctx, b)


@converter("Slice", since=1, attributes=("starts", "ends", "axes"))
def slice_(node, inputs, ctx):
    inputs = [inputs[0], *(ctx.constant(node, v, "slice bounds") for v in inputs[1:])]
    return _move_first(node, inputs, ctx, inputs[0].batch_axis)


@converter("Split", since=1, attributes=("axis", "split", "num_outputs"))
def split(node, inputs, ctx):
    return _move_first(node, inputs, ctx, inputs[0].batch_axis)


@converter("Concat", since=1, attributes=("axis",))
def concat(node, inputs, ctx):
    syms = [x for x in inputs if isinstance(x, Sym)]
    b = next((x.batch_axis for x in syms if x.batch_axis is not None), None)
    if b is not None and (int(ctx.attrs(node)["axis"]) - b) % syms[0].rank != 0:
        # a fixed-batch export's constants (a zero state joined to x_t) are sized for its batch
        inputs = [x if isinstance(x, Sym) else collapse_fixed_batch(x, syms[0].rank, b) for x in inputs]
    return ctx.move(node, inputs, tuple(range(len(inputs))), [b])


@converter("Expand", since=8)
def expand(node, inputs, ctx):
    x = inputs[0]
    inputs = [x, ctx.constant(node, inputs[1], "shape")]
    out_rank = max(x.rank, int(np.asarray(inputs[1]).size))
    b = None if x.batch_axis is None else x.batch_axis + out_rank - x.rank
    return _move_first(node, inputs, ctx, b)


@converter("Tile", since=6)
def tile(node, inputs, ctx):
    x = inputs[0]
    repeats = _const_ints(ctx, node, inputs[1], "repeats")
    if x.batch_axis is not None and repeats[x.batch_axis] != 1:
        raise ctx.unsupported(node, "tiling along the batch axis")
    return _move_first(node, inputs, ctx, x.batch_axis)


@converter("ReverseSequence", since=10, attributes=("batch_axis", "time_axis"))
def reverse_sequence(node, inputs, ctx):
    x, lens = inputs
    lens = np.asarray(ctx.constant(node, lens, "sequence_lens")).reshape(-1)
    if len(set(lens.tolist())) != 1:
        raise ctx.unsupported(node, "sequence_lens must be one constant shared by the whole batch")
    return ctx.move(node, [x, lens[:1]], (0,), [x.batch_axis])
