"""Bound propagation over the IR: interval arithmetic forward, CROWN back-substitution backward.

One walk serves every relaxation family: a `Relaxer` (verifier.relaxations) turns the bounds of a
nonlinear node's inputs into lines (activations) or planes (products), and the backward pass only
ever sees slopes and intercepts, through the node rules of verifier.rules.

Intermediate bounds follow POPQORN: every node whose value feeds a nonlinearity gets its bounds by a
full backward pass from that node to the inputs (O(T^2) node visits over a T-step unrolling),
intersected with its interval bounds. To keep the number of tensor operations (kernel launches) low:
  * nodes are grouped by *level* (the number of nonlinear nodes on the longest path from an input):
    all nodes of one level depend only on relaxations of lower levels, so one backward pass serves
    all of them at once, their rows stacked;
  * a pass with very many rows (an input projection over all T frames) runs in chunks of rows;
  * lower and upper bounds are one set of rows: the upper bound of a·v is minus the lower bound of
    (-a)·v, so every pull-back is done once, for "lower" rows only;
  * contiguous Selects pass their coefficients as slices, assembled by one concatenation, or not
    at all where they reach an input (a ball reads each frame's slice: regions.Slices);
  * nodes no perturbed input element reaches (a frame subset's earlier steps) are constants: no
    pass starts from them and every pass stops at them (_constant_nodes).
Bounds and relaxations live in dicts keyed by node name; the IR is never mutated.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from verifier import fused, ir
from verifier.errors import InputError
from verifier.regions import Region, Slices
from verifier.relaxations import Relaxer
from verifier.relaxations.base import Lines, Planes
from verifier.rules import NONLINEAR, ROUTING, rule

Bounds = tuple[Tensor, Tensor]


@dataclass(frozen=True)
class LineForm:
    """Lines in the form the pull-back uses: lower slope/intercept and upper - lower gaps, shaped
    (batch, 1, n) (shared by every row) or (batch, rows, n) (per row, optimised relaxations)."""

    slope: Tensor
    slope_gap: Tensor
    intercept: Tensor
    intercept_gap: Tensor

    @classmethod
    def of(cls, lines: Lines) -> LineForm:
        row = lambda t: t.unsqueeze(1) if t.dim() == 2 else t
        return cls(row(lines.lower_slope), row(lines.upper_slope - lines.lower_slope),
                   row(lines.lower_intercept), row(lines.upper_intercept - lines.lower_intercept))


@dataclass(frozen=True)
class PlaneForm:
    """Planes in pull-back form: lower coefficients and upper - lower gaps (see LineForm)."""

    x: Tensor
    x_gap: Tensor
    y: Tensor
    y_gap: Tensor
    const: Tensor
    const_gap: Tensor

    @classmethod
    def of(cls, planes: Planes) -> PlaneForm:
        row = lambda t: t.unsqueeze(1) if t.dim() == 2 else t
        return cls(row(planes.lower_x), row(planes.upper_x - planes.lower_x), row(planes.lower_y),
                   row(planes.upper_y - planes.lower_y), row(planes.lower_const),
                   row(planes.upper_const - planes.lower_const))


@dataclass(frozen=True)
class Plan:
    """What a graph's bound computation looks like, computed once per graph: node sizes and
    levels, which rows of which nodes some relaxation needs, and the nodes of each level."""

    sizes: dict[str, int]
    order: dict[str, int]
    level: dict[str, int]
    needed: dict[str, np.ndarray]  # tight node -> rows whose CROWN bounds are computed
    by_level: tuple[tuple[ir.Node, ...], ...]  # nodes of each level, in topological order
    exact: frozenset[str] = frozenset()  # tight nodes whose interval no pass can beat (_exact_given_inputs)

    visits: int = 0  # node visits of all intermediate backward passes: the quadratic part of the work

    @classmethod
    def of(cls, graph: ir.Graph) -> Plan:
        cached = _PLANS.get(graph)
        if cached is None:
            cached = _PLANS[graph] = cls._build(graph)
        return cached

    def check_budget(self) -> None:
        """Full back-substitution visits O(depth x nodes) nodes; refuse, before any work, a graph
        deep enough to take hours (the budget is POPQORN_MAX_VISITS, default 2,000,000)."""
        budget = int(os.environ.get("POPQORN_MAX_VISITS", MAX_VISITS))
        if self.visits > budget:
            raise InputError(f"bounding this model needs about {self.visits:,} node visits in its backward passes "
                             f"({len(self.by_level)} nonlinear levels); the budget POPQORN_MAX_VISITS is {budget:,}. "
                             f"Raise it to wait for the answer")

    @classmethod
    def _build(cls, graph: ir.Graph) -> Plan:
        sizes = graph.sizes()
        level: dict[str, int] = {}
        for node in graph.nodes:
            below = max((level[x] for x in ir.node_inputs(node)), default=0)
            level[node.name] = below + 1 if isinstance(node, NONLINEAR) else below
        tight: set[str] = set()  # inputs of nonlinear nodes, traced back through routing
        stack = [x for node in graph.nodes if isinstance(node, NONLINEAR) for x in ir.node_inputs(node)]
        while stack:
            name = stack.pop()
            if name not in tight:
                tight.add(name)
                if isinstance(graph[name], ROUTING):
                    stack.extend(ir.node_inputs(graph[name]))
        # every row of a tight node: interval bounds of later nodes are built from them, and where
        # intervals beat back-substitution they decide the bounds a relaxation reads
        needed = {name: np.arange(sizes[name]) for name in tight}
        exact = frozenset(name for name in tight if _exact_given_inputs(graph[name], tight))
        count = max(level.values(), default=0) + 1
        by_level: list[list[ir.Node]] = [[] for _ in range(count)]
        for node in graph.nodes:
            by_level[level[node.name]].append(node)
        order = {n.name: k for k, n in enumerate(graph.nodes)}
        visits = sum(max(order[n.name] for n in nodes if n.name in needed) + 1
                     for nodes in by_level if any(n.name in needed for n in nodes))
        return cls(sizes, order, level, needed, tuple(tuple(nodes) for nodes in by_level), exact, visits)


_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _exact_given_inputs(node: ir.Node, tight: set[str]) -> bool:
    """Whether a backward pass from `node` cannot beat its interval when every pass uses the same
    relaxations, so none is run for it (Propagator.passes_for_exact_nodes):
      * an activation: its interval is f's exact range on its input's bounds, and a backward pass
        through any valid line for f can only reach a value of that line over a range of the input
        that contains those bounds, never beyond f's own range there;
      * an elementwise affine map of a tight node: a backward pass from a*y + b is a times the pass
        from y, and y's bounds are already that pass intersected with y's interval.
    The GRU update z*h + (1 - z)*n feeds z, 1 - z and n = tanh(.) to products: three of its five
    inputs need no pass of their own (digits GRU: 944 -> 608 rows of intermediate passes, crown
    certification 1.5x faster, the same radii). With relaxations tuned per row of every pass
    (optimised per-row modes), a pass from z re-bounds z's input with parameters of its own and can
    beat that input's bounds, so there the passes are kept."""
    if isinstance(node, ir.Activation):
        return True
    return isinstance(node, ir.Affine) and node.weight.ndim == 1 and node.input in tight


class BackwardPass:
    """Coefficients being pulled back from some start rows toward the inputs. Every row is a
    lower-bound row: the pass returns, per row, a lower bound of row · value(start) over the
    regions. Node rules call `push`/`push_slice`/`add_constant`; relaxations come from the
    propagator."""

    def __init__(self, propagator: Propagator, relaxations: Callable[[ir.Node], LineForm | PlaneForm] | None = None) -> None:
        self.propagator = propagator
        self.relaxations = relaxations or propagator.relaxation  # per-row forms for optimised passes
        # the pull-back arithmetic: fused kernels only where no gradient flows (verifier.fused)
        self.kernels = fused.EAGER if torch.is_grad_enabled() else propagator.kernels
        self.sizes = propagator.plan.sizes
        # constant nodes (no perturbed element upstream) end the walk: their coefficients are
        # concretised over their interval, which is a point, instead of pulled back to the inputs
        self.constant = propagator.constant if relaxations is None and propagator.tuner is None else frozenset()
        self.coefficients: dict[str, Tensor] = {}
        self.pieces: dict[str, list[tuple[int, Tensor]]] = {}
        self.constants: list[Tensor] = []

    # -- used by the node rules ------------------------------------------------------------------
    def push(self, name: str, a: Tensor) -> None:
        held = self.coefficients.get(name)
        self.coefficients[name] = a if held is None else held + a

    def push_slice(self, name: str, start: int, a: Tensor) -> None:
        self.pieces.setdefault(name, []).append((start, a))

    def add_constant(self, value: Tensor) -> None:
        self.constants.append(value)

    def region(self, name: str) -> Region:
        return self.propagator.regions[name]

    def lines(self, node: ir.Activation) -> LineForm:
        return self.relaxations(node)

    def planes(self, node: ir.Product) -> PlaneForm:
        return self.relaxations(node)

    # -- the walk --------------------------------------------------------------------------------
    def run(self, nodes: tuple[ir.Node, ...]) -> Tensor:
        """Walk `nodes` (a prefix of the graph, topological order) backward; returns (batch, rows)."""
        bounds = self.propagator.bounds
        for node in reversed(nodes):
            folded = node.name in self.constant and node.name in bounds
            # an input's region reads slices itself (regions.Slices); other nodes get one tensor
            a = self._take(node.name, as_slices=isinstance(node, ir.Input) and not folded)
            if a is None:
                continue
            if folded:  # min of a·v over the node's interval: exact for a point, sound for any
                lower, upper = bounds[node.name]
                self.add_constant(self.kernels.dot(a, (upper + lower) / 2) - self.kernels.dot(a.abs(), (upper - lower) / 2))
            else:
                rule(node).pull_back(node, a, self)
        return torch.stack(self.constants).sum(0)

    def _take(self, name: str, as_slices: bool = False) -> Tensor | Slices | None:
        held = self.coefficients.pop(name, None)
        pieces = self.pieces.pop(name, None)
        if pieces:
            merged = _merge(pieces)
            if _overlapping(merged):
                assembled = _accumulate(merged, self.sizes[name])
            elif as_slices and held is None:
                return Slices(tuple(merged), self.sizes[name])
            else:
                assembled = Slices(tuple(merged), self.sizes[name]).dense()
            held = assembled if held is None else held + assembled
        return held


def _merge(pieces: list[tuple[int, Tensor]]) -> list[tuple[int, Tensor]]:
    """Slices sorted by start, equal slices from several consumers added first."""
    merged: list[tuple[int, Tensor]] = []
    for start, a in sorted(pieces, key=lambda p: p[0]):
        if merged and merged[-1][0] == start and merged[-1][1].shape[-1] == a.shape[-1]:
            merged[-1] = (start, merged[-1][1] + a)
        else:
            merged.append((start, a))
    return merged


def _overlapping(pieces: list[tuple[int, Tensor]]) -> bool:
    return any(start < before + a.shape[-1] for (before, a), (start, _) in zip(pieces, pieces[1:]))


def _accumulate(pieces: list[tuple[int, Tensor]], size: int) -> Tensor:
    """Overlapping slices added into one dense tensor."""
    first = pieces[0][1]
    total = first.new_zeros((*first.shape[:2], size))
    for start, a in pieces:
        total[..., start:start + a.shape[-1]] += a
    return total


class Propagator:
    """Bounds of every node of `graph` over the input `regions` (one Region per IR input name).

    relaxer=None gives pure interval bound propagation (IBP)."""

    def __init__(self, graph: ir.Graph, regions: dict[str, Region], relaxer: Relaxer | None) -> None:
        self.graph = graph
        self.regions = regions
        self.relaxer = relaxer
        self.plan = Plan.of(graph)
        if relaxer is not None:
            self.plan.check_budget()
        self.sizes = self.plan.sizes
        self.bounds: dict[str, Bounds] = {}
        self.forms: dict[str, LineForm | PlaneForm] = {}
        # optimised mode: (pass key, rows) -> per-row relaxations for that pass (verifier.optimize)
        self.tuner: Callable[[tuple, int], Callable[[ir.Node], LineForm | PlaneForm]] | None = None
        self.passes_for_exact_nodes = False  # True with per-row tuned passes (see _exact_given_inputs)
        self.done_level = -1
        any_region = next(iter(regions.values()))
        self.batch = any_region.center.shape[0]
        self.like = any_region.center
        self.kernels = fused.pull_backs_for(self.like.device, self.batch, max(self.sizes.values()))
        self.constant = _constant_nodes(graph, regions)

    # ---- forward: levels in order ----------------------------------------------------------------
    def run(self, until: str | None = None) -> None:
        """Bounds of every node up to the level of `until` (all levels when None)."""
        last = len(self.plan.by_level) - 1 if until is None else self.plan.level[until]
        while self.done_level < last:
            self._level(self.done_level + 1)
            self.done_level += 1

    def _level(self, level: int) -> None:
        """CROWN bounds of the level's tight nodes in one backward pass, then intervals of all
        its nodes in topological order (tight ones intersected with their CROWN bounds)."""
        nodes = self.plan.by_level[level]
        constant = self.constant if self.tuner is None else frozenset()  # their intervals are points
        starts = [n for n in nodes if n.name in self.plan.needed and not isinstance(n, (ir.Input, *ROUTING))
                  and (self.passes_for_exact_nodes or n.name not in self.plan.exact) and n.name not in constant]
        crown: dict[str, Bounds] = {}
        if self.relaxer is not None and starts:
            for chunk, rows in enumerate(_chunks([(n.name, self.plan.needed[n.name]) for n in starts], MAX_PASS_ROWS)):
                lower, upper = self._backward(rows, need_upper=True, key=(level, chunk))
                offset = 0
                for name, index in rows:
                    part = (lower[:, offset:offset + len(index)], upper[:, offset:offset + len(index)])
                    held = crown.get(name)
                    crown[name] = part if held is None else (torch.cat([held[0], part[0]], 1),
                                                             torch.cat([held[1], part[1]], 1))
                    offset += len(index)
        for node in nodes:
            lower, upper = rule(node).interval(node, self.bounds, self)
            if node.name in crown:
                lower, upper = _intersect(lower, upper, self.plan.needed[node.name], *crown[node.name])
            self.bounds[node.name] = (lower, upper)

    # ---- backward ------------------------------------------------------------------------------
    def _backward(self, rows: list[tuple[str, np.ndarray]], need_upper: bool,
                  key: tuple | None = None) -> tuple[Tensor, Tensor | None]:
        """Lower (and upper) bounds of the selected rows of the start nodes, stacked, (batch, rows).
        `key` names the pass for the optimised mode's per-row relaxations."""
        total = sum(len(index) for _, index in rows)
        signs = (1.0, -1.0) if need_upper else (1.0,)
        width = total * len(signs)
        tuned = None if self.tuner is None or key is None else self.tuner(key, width)
        backward = BackwardPass(self, relaxations=tuned)
        offset = 0
        for name, index in rows:
            spec = self.like.new_zeros((width, self.sizes[name]))
            run = _is_run(index)
            for k, sign in enumerate(signs):
                block = spec[k * total + offset:k * total + offset + len(index)]
                if run:  # the usual case: a unit matrix written in place, no index copied to the device
                    block[:, int(index[0]):int(index[0]) + len(index)].diagonal().fill_(sign)
                else:
                    block[np.arange(len(index)), torch.as_tensor(index)] = sign
            backward.push(name, spec.expand(self.batch, -1, -1))
            offset += len(index)
        last = max(self.plan.order[name] for name, _ in rows)
        result = backward.run(self.graph.nodes[:last + 1])
        return result[:, :total], (-result[:, total:] if need_upper else None)

    def backward(self, start: str, spec: Tensor | None, need_upper: bool = True) -> tuple[Tensor, Tensor | None]:
        """Bounds of spec·value(start), (batch, m); spec (batch, m, size), or None for every neuron."""
        self.run(until=start)
        if spec is None:
            return self._backward([(start, np.arange(self.sizes[start]))], need_upper)
        rows = torch.cat([spec, -spec], dim=1) if need_upper else spec
        backward = BackwardPass(self)
        backward.push(start, rows)
        result = backward.run(self.graph.nodes[:self.plan.order[start] + 1])
        m = spec.shape[1]
        return result[:, :m], (-result[:, m:] if need_upper else None)

    def relaxation(self, node: ir.Activation | ir.Product) -> LineForm | PlaneForm:
        """Lines/planes of a nonlinear node in pull-back form, computed once from its input bounds."""
        form = self.forms.get(node.name)
        if form is None:
            assert self.relaxer is not None
            if isinstance(node, ir.Activation):
                form = LineForm.of(self.relaxer.activation(node.fn, *self.bounds[node.input]))
            else:
                form = PlaneForm.of(self.relaxer.product(node.left_fn, node.right_fn, *self.bounds[node.left],
                                                         *self.bounds[node.right]))
            self.forms[node.name] = form
        return form

    def region(self, name: str) -> Region:
        return self.regions[name]

    # ---- the question asked --------------------------------------------------------------------
    def bound(self, node: str, spec: Tensor | None = None, need_upper: bool = True) -> tuple[Tensor, Tensor | None]:
        """Bounds of spec·value(node) (identity spec if None), (batch, m); the upper bound is None
        when not needed (e.g. certification margins)."""
        self.run(until=node)
        if self.relaxer is None:
            lower, upper = self.bounds[node]
            return (lower, upper) if spec is None else _linear_interval(spec, lower, upper)
        lower, upper = self.backward(node, spec, need_upper=need_upper or spec is None)
        if spec is None:  # the interval estimate is also valid: keep the tighter of the two
            ibp_lower, ibp_upper = self.bounds[node]
            lower, upper = torch.maximum(lower, ibp_lower), torch.minimum(upper, ibp_upper)
        return lower, upper


def _constant_nodes(graph: ir.Graph, regions: dict[str, Region]) -> frozenset[str]:
    """Nodes no perturbed input element reaches (with `--frames` a subset: the steps before the
    first perturbed frame; states fed as fixed inputs). Their intervals are points, so a CROWN
    pass from them or through them cannot tighten anything: none is started, and a backward pass
    stops there. Decided from the regions' host-side flags (no device read: CUDA-graph capture)."""
    varying = {name: region.varying() for name, region in regions.items()}
    if all(v is None for v in varying.values()):
        return frozenset()
    depends: dict[str, bool] = {}
    for node in graph.nodes:
        if isinstance(node, ir.Input):
            flags = varying.get(node.name)
            depends[node.name] = flags is None or bool(flags.any())
        elif isinstance(node, ir.Select) and varying.get(node.input) is not None:
            depends[node.name] = bool(varying[node.input][np.asarray(node.indices)].any())
        else:
            depends[node.name] = any(depends[x] for x in ir.node_inputs(node))
    return frozenset(n.name for n in graph.nodes if not depends[n.name] and not isinstance(n, ir.Input))


MAX_VISITS = 2_000_000  # default budget of node visits in intermediate backward passes (see Plan.check_budget)
MAX_PASS_ROWS = 4096  # rows per backward pass; more (an input projection over all frames) run in chunks


def _chunks(rows: list[tuple[str, np.ndarray]], limit: int) -> list[list[tuple[str, np.ndarray]]]:
    """Split start rows into passes of at most `limit` rows (a node's rows may span passes, in order)."""
    chunks: list[list[tuple[str, np.ndarray]]] = [[]]
    room = limit
    for name, index in rows:
        while len(index):
            if room == 0:
                chunks.append([])
                room = limit
            part, index = index[:room], index[room:]
            chunks[-1].append((name, part))
            room -= len(part)
    return chunks


def _is_run(index: np.ndarray) -> bool:
    """Whether the row indices are one increasing run (rows of a tight node always are)."""
    return len(index) > 0 and int(index[-1]) - int(index[0]) + 1 == len(index) and bool((np.diff(index) == 1).all())


def _intersect(lower: Tensor, upper: Tensor, index: np.ndarray, crown_lower: Tensor, crown_upper: Tensor) -> Bounds:
    """Interval bounds tightened by CROWN bounds on the rows `index`."""
    if len(index) == lower.shape[1]:
        new_lower, new_upper = torch.maximum(lower, crown_lower), torch.minimum(upper, crown_upper)
    else:
        at = torch.as_tensor(index, device=lower.device)
        new_lower, new_upper = lower.clone(), upper.clone()
        new_lower[:, at] = torch.maximum(lower[:, at], crown_lower)
        new_upper[:, at] = torch.minimum(upper[:, at], crown_upper)
    return new_lower, torch.maximum(new_upper, new_lower)  # guard against rounding crossing


def _linear_interval(spec: Tensor, lower: Tensor, upper: Tensor) -> Bounds:
    mid, radius = (upper + lower) / 2, (upper - lower) / 2
    center = torch.matmul(spec, mid.unsqueeze(-1)).squeeze(-1)
    spread = torch.matmul(spec.abs(), radius.unsqueeze(-1)).squeeze(-1)
    return center - spread, center + spread
