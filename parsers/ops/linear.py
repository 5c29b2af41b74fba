"""MatMul and Gemm with one constant operand: affine maps applied per block of the last axis."""

from __future__ import annotations

import numpy as np

from parsers.context import Context
from parsers.errors import Refusal
from parsers.ops.elementwise import collapse_fixed_batch
from parsers.registry import converter
from parsers.values import Sym
from verifier import ir


def _permute_last_two(ctx: Context, x: Sym, name: str) -> Sym:
    ids = np.arange(x.size, dtype=np.int64).reshape(x.shape)
    ids = np.swapaxes(ids, -1, -2)
    b = x.batch_axis
    if b is not None and b >= x.rank - 2:
        b = (2 * x.rank - 3) - b
    return Sym(ctx.builder.select(x.node, ids.reshape(-1), f"{ctx.prefix}/{name}"), ids.shape, b)


def sym_times_matrix(ctx: Context, x: Sym, matrix: np.ndarray, bias, name: str) -> Sym:
    """x[..., K] @ matrix[K, N] (+ bias broadcast to the result)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    if x.rank == 1:
        x = Sym(x.node, (1, x.shape[0]), None)
        squeeze = True
    else:
        squeeze = False
    if x.batch_axis is not None and x.batch_axis == x.rank - 1:
        raise Refusal("contracting over the batch axis mixes samples")
    if matrix.ndim != 2 or x.shape[-1] != matrix.shape[0]:
        raise Refusal(f"operands of shapes {x.shape} and {matrix.shape} do not multiply")
    out_shape = x.shape[:-1] + (matrix.shape[1],)
    full_bias = None if bias is None else np.broadcast_to(np.asarray(bias, dtype=np.float64), out_shape)
    node = ctx.builder.affine(x.node, matrix.T, None if full_bias is None else full_bias.reshape(-1),
                              f"{ctx.prefix}/{name}")
    if squeeze:
        return Sym(node, out_shape[1:], None)
    return Sym(node, out_shape, x.batch_axis)


def _constant_matrix(ctx, node, w) -> np.ndarray:
    w = np.asarray(w)
    if w.ndim > 2:
        if any(d != 1 for d in w.shape[:-2]):
            raise ctx.unsupported(node, "batched constant operand with leading dims > 1")
        w = w.reshape(w.shape[-2:])
    return w


@converter("MatMul", since=1)
def matmul(node, inputs, ctx):
    a, b = inputs
    if isinstance(a, Sym) and isinstance(b, Sym):
        if isinstance(ctx.builder.nodes.get(b.node), ir.Input):
            ctx.constant(node, b, "the right operand")  # weights fed as a graph input: bound from the feeds
        raise ctx.unsupported(node, "product of two input-dependent matrices")
    if isinstance(a, Sym):
        w = _constant_matrix(ctx, node, b)
        if w.ndim == 1:
            return [_drop_last(sym_times_matrix(ctx, a, w[:, None], None, "matmul"))]
        return [sym_times_matrix(ctx, a, w, None, "matmul")]
    # constant @ symbolic: (B^T A^T)^T
    w = _constant_matrix(ctx, node, a)
    if b.rank < 2 or w.ndim != 2:
        raise ctx.unsupported(node, "constant left operand needs a matrix and a symbolic tensor of rank >= 2")
    bt = _permute_last_two(ctx, b, "transpose_in")
    out = sym_times_matrix(ctx, bt, w.T, None, "matmul")
    return [_permute_last_two(ctx, out, "transpose_out")]


def _drop_last(x: Sym) -> Sym:
    return Sym(x.node, x.shape[:-1], x.batch_axis)


@converter("Gemm", since=1, attributes=("alpha", "beta", "transA", "transB", "broadcast"))
def gemm(node, inputs, ctx):
    attrs = ctx.attrs(node)
    a, b = inputs[0], inputs[1]
    c = inputs[2] if len(inputs) > 2 else None
    if isinstance(a, Sym):
        b, c = ctx.constant(node, b, "B"), ctx.constant(node, c, "C")
    if not isinstance(a, Sym) or isinstance(b, Sym) or isinstance(c, Sym):
        raise ctx.unsupported(node, "only input-dependent A with constant B and C is supported")
    if attrs.get("transA", 0):
        a = _permute_last_two(ctx, a, "transpose_a")
    w = np.asarray(b, dtype=np.float64)
    if attrs.get("transB", 0):
        w = w.T
    w = w * attrs.get("alpha", 1.0)
    bias = None if c is None else np.asarray(c, dtype=np.float64) * attrs.get("beta", 1.0)
    if bias is not None and bias.ndim == 2:
        bias = collapse_fixed_batch(bias, 2, a.batch_axis)
    return [sym_times_matrix(ctx, a, w, bias, "gemm")]
