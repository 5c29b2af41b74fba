"""One rule object per IR node kind: its size, exact forward, interval (IBP) and CROWN pull-back.

Why a table: every engine walk over the IR (sizes, `verifier.forward`, interval bounds, the
backward pass in `verifier.propagation`) dispatches through `rule(node)`, so a new node kind is one
entry here; forgetting a rule is a KeyError naming the kind, never silently dropped coefficients
(a test checks that every kind of `ir.Node` has every rule).

Torch-free at import like the IR (`Graph.sizes` uses the size rules): the tensor rules only use
methods of the tensors they receive, plus a function-level torch import where an operation has no
tensor method. Bounds are (lower, upper) tensors shaped (batch, size); pull-back coefficients are
(batch, rows, size) and are *lower-bound* rows: the engine asks for the minimum of every row, and
upper bounds are minima of negated rows (see `BackwardPass` in verifier.propagation).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from verifier import activations, ir

if TYPE_CHECKING:
    from torch import Tensor

    from verifier.propagation import BackwardPass

Bounds = tuple["Tensor", "Tensor"]


@dataclass(frozen=True)
class NodeRule:
    """What the engine knows about one node kind."""

    kind: type
    size: Callable[[Any, Mapping[str, int]], int]
    forward: Callable[[Any, Mapping[str, Tensor]], Tensor]
    interval: Callable[[Any, Mapping[str, Bounds], BackwardPass | None], Bounds]
    pull_back: Callable[[Any, Tensor, BackwardPass], None]


def rule(node: ir.Node) -> NodeRule:
    try:
        return RULES[type(node)]
    except KeyError:
        raise TypeError(f"no engine rule for IR node kind {type(node).__name__}") from None


def constant(array, like: Tensor) -> Tensor:
    from verifier.tensors import constant as convert

    return convert(array, like)


def _index(indices, like: Tensor) -> Tensor:
    import torch

    return constant(indices, like.new_empty(0, dtype=torch.long))


# ---- Input ------------------------------------------------------------------------------------
def _input_interval(node: ir.Input, bounds: Mapping[str, Bounds], context: BackwardPass | None) -> Bounds:
    return context.region(node.name).element_bounds()


def _input_pull_back(node: ir.Input, a: Tensor, context: BackwardPass) -> None:
    context.add_constant(context.region(node.name).minimize(a, context.kernels.dot))


def _no_forward(node: ir.Input, values: Mapping[str, Tensor]) -> Tensor:
    return values[node.name]


# ---- Affine -----------------------------------------------------------------------------------
def _affine_forward(node: ir.Affine, values: Mapping[str, Tensor]) -> Tensor:
    x = values[node.input]
    weight = constant(node.weight, x)
    if weight.ndim == 1:
        y = x * weight
    else:
        batch = x.shape[0]
        y = (x.reshape(batch, -1, weight.shape[1]) @ weight.T).reshape(batch, -1)
    return y if node.bias is None else y + constant(node.bias, x)


def _affine_interval(node: ir.Affine, bounds: Mapping[str, Bounds], context: BackwardPass | None) -> Bounds:
    lower, upper = bounds[node.input]
    weight = constant(node.weight, lower)
    mid, radius = (upper + lower) / 2, (upper - lower) / 2
    if weight.ndim == 1:
        out_mid, out_radius = mid * weight, radius * weight.abs()
    else:
        batch = mid.shape[0]
        out_mid = (mid.reshape(batch, -1, weight.shape[1]) @ weight.T).reshape(batch, -1)
        out_radius = (radius.reshape(batch, -1, weight.shape[1]) @ weight.abs().T).reshape(batch, -1)
    if node.bias is not None:
        out_mid = out_mid + constant(node.bias, lower)
    return out_mid - out_radius, out_mid + out_radius


def _affine_pull_back(node: ir.Affine, a: Tensor, context: BackwardPass) -> None:
    batch = a.shape[0]
    shared = batch > 1 and a.stride(0) == 0
    if shared:
        # the same rows for every sample (a backward pass's unit-matrix start, expanded over the
        # batch): pulled back once and expanded again, not once per sample (a strided batched
        # matrix-vector product of this shape ran at ~5 % of an H200's bandwidth)
        a = a[:1]
    weight = constant(node.weight, a)
    if node.bias is not None:
        offset = a @ constant(node.bias, a)
        context.add_constant(offset.expand(batch, -1) if shared else offset)
    if weight.ndim == 1:
        pulled = a * weight
    else:
        rows, width = a.shape[1:]
        blocks = width // weight.shape[0]
        pulled = (a.reshape(a.shape[0], rows, blocks, weight.shape[0]) @ weight).reshape(a.shape[0], rows, -1)
    context.push(node.input, pulled.expand(batch, -1, -1) if shared else pulled)


# ---- Add --------------------------------------------------------------------------------------
def _add_forward(node: ir.Add, values: Mapping[str, Tensor]) -> Tensor:
    return sum(values[x] for x in node.inputs[1:]) + values[node.inputs[0]]


def _add_interval(node: ir.Add, bounds: Mapping[str, Bounds], context: BackwardPass | None) -> Bounds:
    xs = node.inputs
    return (sum(bounds[x][0] for x in xs[1:]) + bounds[xs[0]][0], sum(bounds[x][1] for x in xs[1:]) + bounds[xs[0]][1])


def _add_pull_back(node: ir.Add, a: Tensor, context: BackwardPass) -> None:
    for x in node.inputs:
        context.push(x, a)


# ---- Activation -------------------------------------------------------------------------------
def _activation_forward(node: ir.Activation, values: Mapping[str, Tensor]) -> Tensor:
    return activations.apply(node.fn, values[node.input])


def _activation_interval(node: ir.Activation, bounds: Mapping[str, Bounds], context: BackwardPass | None) -> Bounds:
    from verifier.relaxations import interval_activation

    interval = interval_activation(node.fn, *bounds[node.input])
    return interval.lower, interval.upper


def _activation_pull_back(node: ir.Activation, a: Tensor, context: BackwardPass) -> None:
    # lower slope/intercept and the upper - lower differences, taken where a coefficient is negative
    coefficients, constant = context.kernels.line(a, context.lines(node))
    context.push(node.input, coefficients)
    context.add_constant(constant)


# ---- Product ----------------------------------------------------------------------------------
def _product_forward(node: ir.Product, values: Mapping[str, Tensor]) -> Tensor:
    return activations.apply(node.left_fn, values[node.left]) * activations.apply(node.right_fn, values[node.right])


def _product_interval(node: ir.Product, bounds: Mapping[str, Bounds], context: BackwardPass | None) -> Bounds:
    from verifier.relaxations import interval_product

    interval = interval_product(node.left_fn, node.right_fn, *bounds[node.left], *bounds[node.right])
    return interval.lower, interval.upper


def _product_pull_back(node: ir.Product, a: Tensor, context: BackwardPass) -> None:
    left, right, constant = context.kernels.plane(a, context.planes(node))
    context.push(node.left, left)
    context.push(node.right, right)
    context.add_constant(constant)


# ---- Concat / Select: routing -----------------------------------------------------------------
def _concat_forward(node: ir.Concat, values: Mapping[str, Tensor]) -> Tensor:
    import torch

    return torch.cat([values[x] for x in node.inputs], dim=1)


def _concat_interval(node: ir.Concat, bounds: Mapping[str, Bounds], context: BackwardPass | None) -> Bounds:
    import torch

    return torch.cat([bounds[x][0] for x in node.inputs], 1), torch.cat([bounds[x][1] for x in node.inputs], 1)


def _concat_pull_back(node: ir.Concat, a: Tensor, context: BackwardPass) -> None:
    start = 0
    for x in node.inputs:
        width = context.sizes[x]
        context.push(x, a[..., start:start + width])
        start += width


def _select_forward(node: ir.Select, values: Mapping[str, Tensor]) -> Tensor:
    x = values[node.input]
    span = contiguous_span(node.indices)
    return x[:, span[0]:span[1]] if span else x.index_select(1, _index(node.indices, x))


def _select_interval(node: ir.Select, bounds: Mapping[str, Bounds], context: BackwardPass | None) -> Bounds:
    lower, upper = bounds[node.input]
    span = contiguous_span(node.indices)
    if span:
        return lower[:, span[0]:span[1]], upper[:, span[0]:span[1]]
    index = _index(node.indices, lower)
    return lower.index_select(1, index), upper.index_select(1, index)


def _select_pull_back(node: ir.Select, a: Tensor, context: BackwardPass) -> None:
    span = contiguous_span(node.indices)
    if span:  # a slice: kept as a piece, assembled with its siblings in one concatenation
        context.push_slice(node.input, span[0], a)
        return
    index = _index(node.indices, a)
    shape = (*a.shape[:2], context.sizes[node.input])
    context.push(node.input, a.new_zeros(shape).index_add_(2, index, a))


_SPANS: dict[int, tuple] = {}


def contiguous_span(indices) -> tuple[int, int] | None:
    """(start, stop) when the indices are one increasing run, else None; cached per array."""
    key = id(indices)
    cached = _SPANS.get(key)
    if cached is None or cached[0] is not indices:
        if len(_SPANS) > 50000:
            _SPANS.clear()
        n = len(indices)
        start = int(indices[0]) if n else 0
        run = n > 0 and int(indices[-1]) == start + n - 1 and bool((indices[1:] - indices[:-1] == 1).all())
        cached = (indices, (start, start + n) if run else None)
        _SPANS[key] = cached
    return cached[1]


# ---- sizes ------------------------------------------------------------------------------------
RULES: dict[type, NodeRule] = {
    ir.Input: NodeRule(ir.Input, lambda n, s: n.size, _no_forward, _input_interval, _input_pull_back),
    ir.Affine: NodeRule(ir.Affine, lambda n, s: n.output_size(s[n.input]), _affine_forward, _affine_interval,
                        _affine_pull_back),
    ir.Add: NodeRule(ir.Add, lambda n, s: s[n.inputs[0]], _add_forward, _add_interval, _add_pull_back),
    ir.Activation: NodeRule(ir.Activation, lambda n, s: s[n.input], _activation_forward, _activation_interval,
                            _activation_pull_back),
    ir.Product: NodeRule(ir.Product, lambda n, s: s[n.left], _product_forward, _product_interval, _product_pull_back),
    ir.Concat: NodeRule(ir.Concat, lambda n, s: sum(s[x] for x in n.inputs), _concat_forward, _concat_interval,
                        _concat_pull_back),
    ir.Select: NodeRule(ir.Select, lambda n, s: len(n.indices), _select_forward, _select_interval, _select_pull_back),
}

ROUTING = (ir.Select, ir.Concat)  # bounds are read off the inputs; never a start of a backward pass
NONLINEAR = (ir.Activation, ir.Product)
