"""Bound propagation over the IR: interval arithmetic forward, CROWN back-substitution backward.

One walk serves every relaxation family: a `Relaxer` (verifier.relaxations) turns the bounds of a
nonlinear node's inputs into lines (activations) or planes (products), and the backward pass only
ever sees slopes and intercepts. Which lines are used for a lower bound is decided once, by the sign
of the coefficient (positive coefficient -> lower line), in `_split`.

Intermediate bounds follow POPQORN: every node whose value feeds a nonlinearity gets its bounds by a
full backward pass from that node to the inputs (O(T^2) passes over a T-step unrolling), each pass
vectorised over all its neurons and all samples, and intersected with the interval estimate.
Bounds and relaxations live in dicts keyed by node name; the IR is never mutated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from verifier import ir
from verifier.relaxations import Relaxer, interval_activation, interval_product
from verifier.relaxations.base import Lines, Planes
from verifier.tensors import constant
from verifier.threat import Region

Bounds = tuple[Tensor, Tensor]

_ROUTING = (ir.Select, ir.Concat)  # nodes whose bounds are read off their inputs, never propagated to


@dataclass
class _Backward:
    """Coefficients of the linear bounds being pulled back: for each node, A_lower (for the lower
    bound) and A_upper (for the upper bound), each (batch, m, node size), plus the constants."""

    lower: dict[str, Tensor]
    upper: dict[str, Tensor]
    lower_const: Tensor
    upper_const: Tensor

    def push(self, name: str, lower: Tensor, upper: Tensor) -> None:
        """Add coefficients for `name`. Until the first nonlinearity the lower and upper
        coefficients are one tensor; keeping them shared halves the work there."""
        if name not in self.lower:
            self.lower[name], self.upper[name] = lower, upper
            return
        shared = self.lower[name] is self.upper[name] and lower is upper
        self.lower[name] = self.lower[name] + lower
        self.upper[name] = self.lower[name] if shared else self.upper[name] + upper


class Propagator:
    """Bounds of every node of `graph` over the input `regions` (one Region per IR input name).

    relaxer=None gives pure interval bound propagation (IBP)."""

    def __init__(self, graph: ir.Graph, regions: dict[str, Region], relaxer: Relaxer | None) -> None:
        self.graph = graph
        self.regions = regions
        self.relaxer = relaxer
        self.sizes = graph.sizes()
        self.order = {node.name: k for k, node in enumerate(graph.nodes)}
        self.bounds: dict[str, Bounds] = {}
        self.relaxations: dict[str, Lines | Planes] = {}
        self._needs_tight = self._nodes_feeding_nonlinearities()
        any_region = next(iter(regions.values()))
        self.batch = any_region.center.shape[0]
        self.like = any_region.center

    # ---- which nodes need bounds -------------------------------------------------------------
    def _nodes_feeding_nonlinearities(self) -> set[str]:
        """Nodes whose bounds some relaxation reads, traced back through Select/Concat routing."""
        wanted: set[str] = set()
        stack = [x for node in self.graph.nodes
                 if isinstance(node, (ir.Activation, ir.Product)) for x in ir.node_inputs(node)]
        while stack:
            name = stack.pop()
            if name in wanted:
                continue
            wanted.add(name)
            if isinstance(self.graph[name], _ROUTING):
                stack.extend(ir.node_inputs(self.graph[name]))
        return wanted

    # ---- forward: intervals, tightened by back-substitution where a relaxation needs them -------
    def run(self, until: str | None = None) -> None:
        """Bounds for every node up to `until` (inclusive) in topological order."""
        for node in self.graph.nodes:
            if node.name not in self.bounds:
                lower, upper = self._interval(node)
                if (self.relaxer is not None and node.name in self._needs_tight
                        and not isinstance(node, (ir.Input, *_ROUTING))):
                    crown_lower, crown_upper = self.backward(node.name, None)
                    lower, upper = torch.maximum(lower, crown_lower), torch.minimum(upper, crown_upper)
                    upper = torch.maximum(upper, lower)  # guard against rounding crossing
                self.bounds[node.name] = (lower, upper)
            if node.name == until:
                return

    def _interval(self, node: ir.Node) -> Bounds:
        b = self.bounds
        match node:
            case ir.Input():
                return self.regions[node.name].element_bounds()
            case ir.Affine():
                lower, upper = b[node.input]
                return _affine_interval(node, lower, upper)
            case ir.Add(inputs=xs):
                return (sum(b[x][0] for x in xs[1:]) + b[xs[0]][0], sum(b[x][1] for x in xs[1:]) + b[xs[0]][1])
            case ir.Activation():
                interval = interval_activation(node.fn, *b[node.input])
                return interval.lower, interval.upper
            case ir.Product():
                interval = interval_product(node.left_fn, node.right_fn, *b[node.left], *b[node.right])
                return interval.lower, interval.upper
            case ir.Concat(inputs=xs):
                return torch.cat([b[x][0] for x in xs], 1), torch.cat([b[x][1] for x in xs], 1)
            case ir.Select():
                index = constant(node.indices, self.like.new_empty(0, dtype=torch.long))
                lower, upper = b[node.input]
                return lower.index_select(1, index), upper.index_select(1, index)
        raise TypeError(f"not an IR node: {node!r}")

    # ---- backward: CROWN back-substitution -----------------------------------------------------
    def backward(self, start: str, spec: Tensor | None) -> Bounds:
        """Lower and upper bounds of spec·value(start), shape (batch, m); spec (batch, m, size) or
        None for the identity (bounds of every neuron of `start`)."""
        if spec is None:
            size = self.sizes[start]
            spec = torch.eye(size, dtype=self.like.dtype, device=self.like.device).expand(self.batch, size, size)
        zero = torch.zeros(spec.shape[:2], dtype=spec.dtype, device=spec.device)
        state = _Backward({start: spec}, {start: spec}, zero, zero.clone())
        for node in reversed(self.graph.nodes[:self.order[start] + 1]):
            if node.name not in state.lower:
                continue
            a_lower, a_upper = state.lower.pop(node.name), state.upper.pop(node.name)
            self._pull_back(node, a_lower, a_upper, state)
        return state.lower_const, state.upper_const

    def _pull_back(self, node: ir.Node, a_lower: Tensor, a_upper: Tensor, state: _Backward) -> None:
        match node:
            case ir.Input():
                region = self.regions[node.name]
                state.lower_const = state.lower_const + region.minimize(a_lower)
                state.upper_const = state.upper_const + region.maximize(a_upper)
            case ir.Affine():
                shared = a_lower is a_upper
                lower_in = _affine_transpose(node, a_lower)
                state.push(node.input, lower_in, lower_in if shared else _affine_transpose(node, a_upper))
                if node.bias is not None:
                    bias = constant(node.bias, a_lower)
                    lower_bias = a_lower @ bias
                    state.lower_const = state.lower_const + lower_bias
                    state.upper_const = state.upper_const + (lower_bias if shared else a_upper @ bias)
            case ir.Add(inputs=xs):
                for x in xs:
                    state.push(x, a_lower, a_upper)
            case ir.Concat(inputs=xs):
                start = 0
                for x in xs:
                    width = self.sizes[x]
                    part = a_lower[..., start:start + width]
                    state.push(x, part, part if a_lower is a_upper else a_upper[..., start:start + width])
                    start += width
            case ir.Select():
                index = constant(node.indices, a_lower.new_empty(0, dtype=torch.long))
                shape = (*a_lower.shape[:2], self.sizes[node.input])
                lower_in = a_lower.new_zeros(shape).index_add_(2, index, a_lower)
                state.push(node.input, lower_in, lower_in if a_lower is a_upper
                           else a_upper.new_zeros(shape).index_add_(2, index, a_upper))
            case ir.Activation():
                lines = self._relaxation(node)
                lower_in, lower_const = _split(a_lower, lines.lower_slope, lines.lower_intercept,
                                               lines.upper_slope, lines.upper_intercept)
                upper_in, upper_const = _split(a_upper, lines.upper_slope, lines.upper_intercept,
                                               lines.lower_slope, lines.lower_intercept)
                state.push(node.input, lower_in, upper_in)
                state.lower_const = state.lower_const + lower_const
                state.upper_const = state.upper_const + upper_const
            case ir.Product():
                planes = self._relaxation(node)
                lo_pos, lo_neg = a_lower.clamp(min=0), a_lower.clamp(max=0)
                up_pos, up_neg = a_upper.clamp(min=0), a_upper.clamp(max=0)
                lower_x, upper_x = planes.lower_x.unsqueeze(1), planes.upper_x.unsqueeze(1)
                lower_y, upper_y = planes.lower_y.unsqueeze(1), planes.upper_y.unsqueeze(1)
                state.push(node.left, lo_pos * lower_x + lo_neg * upper_x, up_pos * upper_x + up_neg * lower_x)
                state.push(node.right, lo_pos * lower_y + lo_neg * upper_y, up_pos * upper_y + up_neg * lower_y)
                state.lower_const = state.lower_const + _dot(lo_pos, planes.lower_const) + _dot(lo_neg, planes.upper_const)
                state.upper_const = state.upper_const + _dot(up_pos, planes.upper_const) + _dot(up_neg, planes.lower_const)

    def _relaxation(self, node: ir.Activation | ir.Product) -> Lines | Planes:
        """Lines/planes of a nonlinear node, computed once from its input bounds."""
        if node.name not in self.relaxations:
            assert self.relaxer is not None
            if isinstance(node, ir.Activation):
                self.relaxations[node.name] = self.relaxer.activation(node.fn, *self.bounds[node.input])
            else:
                self.relaxations[node.name] = self.relaxer.product(
                    node.left_fn, node.right_fn, *self.bounds[node.left], *self.bounds[node.right])
        return self.relaxations[node.name]

    # ---- the question asked --------------------------------------------------------------------
    def bound(self, node: str, spec: Tensor | None = None) -> Bounds:
        """Bounds of spec·value(node) (identity spec if None), (batch, m)."""
        self.run(until=node)
        if self.relaxer is None:
            lower, upper = self.bounds[node]
            if spec is None:
                return lower, upper
            return _linear_interval(spec, lower, upper)
        lower, upper = self.backward(node, spec)
        if spec is None:  # the interval estimate is also valid: keep the tighter of the two
            ibp_lower, ibp_upper = self.bounds[node]
            lower, upper = torch.maximum(lower, ibp_lower), torch.minimum(upper, ibp_upper)
        return lower, upper


def _split(a: Tensor, slope_pos: Tensor, intercept_pos: Tensor,
           slope_neg: Tensor, intercept_neg: Tensor) -> tuple[Tensor, Tensor]:
    """Pull coefficients a (batch, m, n) back through elementwise lines: positive coefficients take
    the first line, negative ones the second. Returns the input coefficients and the constant."""
    pos, neg = a.clamp(min=0), a.clamp(max=0)
    coefficients = pos * slope_pos.unsqueeze(1) + neg * slope_neg.unsqueeze(1)
    return coefficients, _dot(pos, intercept_pos) + _dot(neg, intercept_neg)


def _dot(a: Tensor, per_neuron: Tensor) -> Tensor:
    """sum_n a[b, m, n] * v[b, n] -> (batch, m)."""
    return torch.matmul(a, per_neuron.unsqueeze(-1)).squeeze(-1)


def _affine_transpose(node: ir.Affine, a: Tensor) -> Tensor:
    weight = constant(node.weight, a)
    if weight.ndim == 1:
        return a * weight
    batch, m, width = a.shape
    blocks = width // weight.shape[0]
    return (a.reshape(batch, m, blocks, weight.shape[0]) @ weight).reshape(batch, m, blocks * weight.shape[1])


def _affine_interval(node: ir.Affine, lower: Tensor, upper: Tensor) -> Bounds:
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


def _linear_interval(spec: Tensor, lower: Tensor, upper: Tensor) -> Bounds:
    mid, radius = (upper + lower) / 2, (upper - lower) / 2
    center = torch.einsum("bmn,bn->bm", spec, mid)
    spread = torch.einsum("bmn,bn->bm", spec.abs(), radius)
    return center - spread, center + spread
