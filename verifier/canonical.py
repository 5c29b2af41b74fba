"""One canonical gate algebra: algebraically equal cells get the same IR whatever the exporter wrote.

Why: the engine relaxes what the graph says. One set of GRU weights exported as a native GRU node
(sigmoid(-u)*n + sigmoid(u)*h), as a torch GRUCell loop ((h - n)*z + n) or by Keras 3
(z*h + (1 - z)*n) gave certified radii up to 5.7 % apart, only because (1 - sigmoid(u)) is an affine
value and not a fusable gate, (h - n) couples n into a second product, and so on; a converter that
applies one sigmoid to all gates and slices afterwards hides the sigmoid from the products.
`canonicalize` rewrites every such spelling into one form before anything is bounded:

- 1 - sigmoid(u) (an elementwise Affine -1, +1 of a sigmoid)       -> sigmoid(-u)
- Select/Concat routing between an activation and its consumer    -> the activation applied after
  the routing (Select(f(z)) = f(Select(z)); a product of a Concat of activations is split per part);
  selections sink through elementwise maps and take rows of blockwise affine maps, so a gate's
  pre-activation is computed the same way whether the exporter sliced before or after the matmul
- the GRU update n + z*(h - n), z*h + (1 - z)*n, sigmoid(-u)*n + sigmoid(u)*h -> GRU_UPDATE_FORM
  (the form that certified larger radii with both linear methods: benchmarks/exporters.py); its
  1 - z stays an affine map of the one z on purpose (see GRU_UPDATE_FORM)
- products: the non-negative (gate) factor on the left; producers fused into the product exactly
  when the activation table says the pair is jointly relaxable (`activations.jointly_relaxable`)
- hard sigmoids (relu6(x + 3)/6, clip(a*x + b, 0, 1), HardSigmoid, Relu followed by a Clip, positive
  scales after a clip)                                             -> Clip(lo, hi)(Affine(x))
- elementwise affine maps composed, identical nodes shared, dead nodes removed.

Every rule is an exact identity of real functions (float64 results agree to rounding), so any sound
bound on the canonical graph is a sound bound on the model. The pass runs once, in topological
order, with "smart constructors": each node is rebuilt from already canonical inputs, so the result
is a fixed point (canonicalize is idempotent). Rewritten values keep their node's name; helper nodes
get that name plus a suffix (`…/update_not/arg`).
"""

from __future__ import annotations

import dataclasses
import math
import weakref
from collections import Counter

import numpy as np

from verifier import activations, ir
from verifier.ir import Act, ActivationFn

# How the GRU update h' = z*h + (1 - z)*n, z = sigmoid(u), is written for the bounds:
#   "complement"  z one sigmoid node, z*h + (1 - z)*n with 1 - z an affine map of that node, products of
#                 node values (McCormick): z is relaxed once, and its line follows the sign of its summed
#                 coefficient, in which the two products' contributions partly cancel (alpha-CROWN bounds
#                 this form);
#   "gates"       sigmoid(-u)*n + sigmoid(u)*h: two fused products whose two gates are relaxed apart;
#   "difference"  n + sigmoid(u)*(h - n): one sigmoid*y product, n also relaxed on its own.
# "complement" certified the largest mean radii on all four GRUs measured, with crown and popqorn:
# +1.4 to +8.8 % over "gates", which beat "difference" by 1.5-6 % on the trained GRUs and 28-33 % on a
# random one (l2 per frame, 5 samples; python -m benchmarks.exporters).
GRU_UPDATE_FORMS = ("complement", "gates", "difference")
GRU_UPDATE_FORM = "complement"


# The optimised mode (method alpha) also bounds the "difference" form and keeps the better bound. With
# "gates" canonical it won +2 to +13 % per sample on the digits GRU (l_inf sequence, 20 steps). Since
# "complement" is canonical it adds nothing in the default (shared) mode there (equal radii at 1.17x
# the time) but still wins single samples with per-row parameters: digits GRU sample 3, margin -0.099
# vs -0.41 at eps 0.016694 after 100 steps, which is where popqorn certifies beyond alpha-CROWN.
OPTIMISED_GRU_UPDATE = "difference"

_OPTIMISED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def canonicalize(graph: ir.Graph, *, gru_update: str = GRU_UPDATE_FORM) -> ir.Graph:
    """The same function as `graph`, written in the canonical gate algebra (see the module doc).
    `gru_update` picks the GRU update form (GRU_UPDATE_FORMS); the default is the tightest measured."""
    return _Rewriter(graph, gru_update).run()


def optimised_forms(graph: ir.Graph) -> tuple[ir.Graph, ...]:
    """The forms of `graph` (canonical) the optimised mode bounds, keeping the better bound: the graph
    itself and, where it has a GRU update, the graph with OPTIMISED_GRU_UPDATE — the same function,
    inputs and output names. Computed once per graph."""
    cached = _OPTIMISED.get(graph)
    if cached is None:
        other = canonicalize(graph, gru_update=OPTIMISED_GRU_UPDATE)
        signature = lambda g: [(type(n).__name__, n.name, ir.node_inputs(n)) for n in g.nodes]
        cached = _OPTIMISED[graph] = (graph,) if signature(other) == signature(graph) else (graph, other)
    return cached


def describe_products(graph: ir.Graph) -> dict[str, int]:
    """Elementwise products (neurons) per relaxation kind, e.g. {"σ·tanh": 64, "σ·y": 32, "McCormick": 0}:
    joint 2-D planes for the fused pairs the activation table marks jointly relaxable, McCormick for
    every other product."""
    counts: Counter[str] = Counter({"σ·tanh": 0, "σ·y": 0, "McCormick": 0})
    sizes = graph.sizes()
    for node in graph.nodes:
        if isinstance(node, ir.Product):
            counts[product_kind(node)] += sizes[node.name]
    return dict(counts)


def product_kind(node: ir.Product) -> str:
    """"σ·tanh", "σ·y", ... for a jointly relaxable product (gate first), else "McCormick"."""
    if not activations.jointly_relaxable(node.left_fn, node.right_fn):
        return "McCormick"
    symbol = lambda fn: "y" if fn is None else {Act.SIGMOID: "σ"}.get(fn.kind, str(fn))
    first, second = node.left_fn, node.right_fn
    if first is None or (activations.is_nonnegative(second) and not activations.is_nonnegative(first)):
        first, second = second, first
    return f"{symbol(first)}·{symbol(second)}"


# ---- small predicates -----------------------------------------------------------------------------

def _uniform(values: np.ndarray | None, equal_to: float | None = None) -> bool:
    if values is None:
        return equal_to == 0.0
    flat = np.asarray(values).reshape(-1)
    if flat.size == 0 or not np.all(flat == flat[0]):
        return False
    return equal_to is None or flat[0] == equal_to


def _clip_range(fn: ActivationFn) -> tuple[float, float] | None:
    """(lo, hi) of a clamp-like activation (Relu is Clip(0, inf)), else None."""
    if fn.kind is Act.CLIP:
        return fn.alpha, fn.beta
    if fn.kind is Act.RELU:
        return 0.0, math.inf
    return None


def _normal_fn(fn: ActivationFn) -> ActivationFn | None:
    """One spelling per function: Clip(0, inf) and LeakyRelu(0) are Relu; Clip(-inf, inf) is the
    identity (None)."""
    if fn.kind is Act.LEAKY_RELU and fn.alpha == 0:
        return ir.RELU
    if fn.kind is Act.CLIP:
        if fn.alpha == -math.inf and fn.beta == math.inf:
            return None
        if fn.alpha == 0 and fn.beta == math.inf:
            return ir.RELU
    return fn


def _clamp(value: float, lo: float, hi: float) -> float:
    return min(max(value, lo), hi)


# ---- the rewriter ---------------------------------------------------------------------------------

class _Rewriter:
    def __init__(self, graph: ir.Graph, update_form: str) -> None:
        if update_form not in GRU_UPDATE_FORMS:
            raise ValueError(f"unknown GRU update form {update_form!r}")
        self.graph = graph
        self.update_form = update_form
        self.nodes: dict[str, ir.Node] = {}  # the canonical graph, in emission (= topological) order
        self.sizes: dict[str, int] = {}
        self.reserved = {node.name for node in graph.nodes}  # helper names never take an old name
        self.shared: dict[tuple, str] = {}  # structural key -> node (identical nodes are shared)
        self.suffixed: dict[str, str] = {}  # helper name -> the name it wanted (see _unsuffixed)

    def run(self) -> ir.Graph:
        rename: dict[str, str] = {}
        for node in self.graph.nodes:
            if isinstance(node, ir.Input):
                rename[node.name] = self._keep(node)
                continue
            inputs = {field: rename[getattr(node, field)] for field in ("input", "left", "right") if hasattr(node, field)}
            if hasattr(node, "inputs"):
                inputs["inputs"] = tuple(rename[x] for x in node.inputs)
            rename[node.name] = self._emit(dataclasses.replace(node, **inputs))
        outputs = tuple(dataclasses.replace(out, node=rename[out.node]) for out in self.graph.outputs)
        live = {out.node for out in outputs}
        for node in reversed(list(self.nodes.values())):
            if node.name in live:
                live.update(ir.node_inputs(node))
        kept = tuple(node for node in self.nodes.values() if node.name in live or isinstance(node, ir.Input))
        kept, outputs = self._unsuffixed(kept, outputs)
        return dataclasses.replace(self.graph, nodes=kept, outputs=outputs, _index={})

    def _unsuffixed(self, nodes: tuple[ir.Node, ...], outputs: tuple[ir.Output, ...]) -> tuple[tuple, tuple]:
        """Helpers whose name got a suffix only because a node that is now dead held the plain name
        take the plain name back. Canonicalizing a canonical graph rewrites some of its nodes before
        emitting them again (1 - sigmoid(u) of the "complement" GRU update is first read as
        sigmoid(-u)); without this their helpers would come back renamed and the pass would not be a
        fixed point."""
        taken = {node.name for node in nodes}
        names: dict[str, str] = {}
        for node in nodes:
            base = None if isinstance(node, ir.Input) else self.suffixed.get(node.name)
            if base is not None and base not in taken:
                names[node.name] = base
                taken.add(base)
        if not names:
            return nodes, outputs
        new = lambda name: names.get(name, name)
        renamed = []
        for node in nodes:
            fields = {field: new(getattr(node, field)) for field in ("input", "left", "right") if hasattr(node, field)}
            if hasattr(node, "inputs"):
                fields["inputs"] = tuple(new(x) for x in node.inputs)
            renamed.append(dataclasses.replace(node, name=new(node.name), **fields))
        return tuple(renamed), tuple(dataclasses.replace(out, node=new(out.node)) for out in outputs)

    # -- registration --------------------------------------------------------------------------
    def _fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self.nodes or name in self.reserved:
            name, k = f"{base}_{k}", k + 1
        if name != base:
            self.suffixed[name] = base
        return name

    def _keep(self, node: ir.Node) -> str:
        """Register `node` as it is (sharing an identical existing node); returns its name."""
        key = _key(node)
        if key is not None and key in self.shared:
            return self.shared[key]
        if node.name in self.nodes:
            node = dataclasses.replace(node, name=self._fresh(node.name))
        self.nodes[node.name] = node
        self.sizes[node.name] = _size(node, self.sizes)
        if key is not None:
            self.shared[key] = node.name
        return node.name

    def _emit(self, node: ir.Node) -> str:
        match node:
            case ir.Affine():
                return self._affine(node)
            case ir.Activation():
                return self._activation(node)
            case ir.Select():
                return self._select(node)
            case ir.Concat():
                return self._concat(node)
            case ir.Add():
                return self._add(node)
            case ir.Product():
                return self._product(node)
        return self._keep(node)

    def _activated(self, name: str) -> tuple[str, ActivationFn] | None:
        """(input, fn) when `name` is an Activation node."""
        node = self.nodes[name]
        return (node.input, node.fn) if isinstance(node, ir.Activation) else None

    def _negated(self, name: str) -> str | None:
        """x when `name` is the node -x (an elementwise Affine with weight -1 and no bias)."""
        node = self.nodes[name]
        if isinstance(node, ir.Affine) and node.weight.ndim == 1 and _uniform(node.weight, -1.0) \
                and (node.bias is None or not node.bias.any()):
            return node.input
        return None

    def _opposite(self, a: str, b: str) -> bool:
        """a = -b, written as a negation or as two affine maps of one input with opposite weights and
        biases (a gate's pre-activation sliced out of one fused matrix product, and 1 - sigmoid(u)
        whose -u was folded into that product: both then read the input directly)."""
        if self._negated(a) == b or self._negated(b) == a:
            return True
        p, q = self.nodes[a], self.nodes[b]
        if not (isinstance(p, ir.Affine) and isinstance(q, ir.Affine) and p.input == q.input):
            return False
        if p.weight.shape != q.weight.shape or not np.array_equal(p.weight, -q.weight):
            return False
        return np.array_equal(np.broadcast_to(_or0(p.bias), self.sizes[a]), -np.broadcast_to(_or0(q.bias), self.sizes[b]))

    def _negate(self, x: str, name: str) -> str:
        return self._emit(ir.Affine(self._fresh(name), x, -np.ones(self.sizes[x]), None))

    # -- affine maps ---------------------------------------------------------------------------
    def _affine(self, node: ir.Affine) -> str:
        weight, bias, source = node.weight, node.bias, self.nodes[node.input]
        if bias is not None and not bias.any():
            node = dataclasses.replace(node, bias=None)
            bias = None
        if weight.ndim == 2:
            return self._keep(node)
        if bias is None and _uniform(weight, 1.0):
            return node.input
        match source:
            case ir.Affine(weight=inner) if inner.ndim == 1:  # s*(a*x + c) + b
                inner_bias = 0.0 if source.bias is None else source.bias
                merged = np.broadcast_to(weight * inner_bias + _or0(bias), weight.shape)
                return self._emit(ir.Affine(node.name, source.input, weight * inner, merged if merged.any() else None))
            case ir.Affine(weight=inner) if _periodic(weight, inner.shape[0]):  # diag(s) (W x + c) + b
                scale = weight[:inner.shape[0]]
                inner_bias = 0.0 if source.bias is None else source.bias
                merged = weight * inner_bias + _or0(bias)
                return self._keep(ir.Affine(node.name, source.input, scale[:, None] * inner,
                                            merged if np.any(merged) else None))
            case ir.Activation(fn=fn):
                rewritten = self._affine_of_activation(node, source, fn)
                if rewritten is not None:
                    return rewritten
        return self._keep(node)

    def _affine_of_activation(self, node: ir.Affine, source: ir.Activation, fn: ActivationFn) -> str | None:
        """1 - sigmoid(u) -> sigmoid(-u); s*clip(y, lo, hi) + t (s > 0) -> clip(s*y + t, s*lo + t, s*hi + t)."""
        weight, bias = node.weight, node.bias
        if fn.kind is Act.SIGMOID and _uniform(weight, -1.0) and _uniform(bias, 1.0):
            argument = self._negate(source.input, f"{node.name}/arg")
            return self._emit(ir.Activation(node.name, argument, ir.SIGMOID))
        clip = _clip_range(fn)
        if clip is not None and _uniform(weight) and weight[0] > 0 and (bias is None or _uniform(bias)):
            scale, shift = float(weight[0]), 0.0 if bias is None else float(bias[0])
            inner = self._emit(ir.Affine(self._fresh(f"{node.name}/arg"), source.input, weight,
                                         None if bias is None else bias))
            lo, hi = (scale * edge + shift for edge in clip)
            return self._emit(ir.Activation(node.name, inner, ActivationFn(Act.CLIP, lo, hi)))
        return None

    # -- activations and routing ---------------------------------------------------------------
    def _activation(self, node: ir.Activation) -> str:
        fn = _normal_fn(node.fn)
        if fn is None:
            return node.input
        inner = self._activated(node.input)
        outer_clip = _clip_range(fn)
        if inner is not None and outer_clip is not None and _clip_range(inner[1]) is not None \
                and Act.CLIP in (fn.kind, inner[1].kind):
            (lo, hi), (a, b) = _clip_range(inner[1]), outer_clip  # clamp(clamp(y, lo, hi), a, b)
            merged = _normal_fn(ActivationFn(Act.CLIP, _clamp(lo, a, b), _clamp(hi, a, b)))
            return self._emit(ir.Activation(node.name, inner[0], merged)) if merged is not None else inner[0]
        return self._keep(dataclasses.replace(node, fn=fn))

    def _select(self, node: ir.Select) -> str:
        """Selections sink toward the inputs through elementwise and blockwise-linear nodes, so that
        every exporter's gate slicing ends in the same place: right above the weights."""
        indices, source = node.indices, self.nodes[node.input]
        if indices.size == self.sizes[node.input] and np.array_equal(indices, np.arange(indices.size)):
            return node.input
        if isinstance(source, ir.Select):
            return self._emit(ir.Select(node.name, source.input, source.indices[indices]))
        if np.unique(indices).size != indices.size:  # a broadcast: pushing it down would copy work
            return self._keep(node)
        pick = lambda x, suffix: self._emit(ir.Select(self._fresh(f"{node.name}/{suffix}"), x, indices))
        match source:
            case ir.Activation():  # Select(f(z)) = f(Select(z)): the activation meets its consumer
                return self._emit(ir.Activation(node.name, pick(source.input, "pre"), source.fn))
            case ir.Affine(weight=weight) if weight.ndim == 1:
                bias = None if source.bias is None else source.bias[indices]
                return self._emit(ir.Affine(node.name, pick(source.input, "pre"), weight[indices], bias))
            case ir.Affine(weight=weight):
                return self._select_rows(node, source) or self._keep(node)
            case ir.Concat():
                return self._select_parts(node, source) or self._keep(node)
        return self._keep(node)

    def _select_rows(self, node: ir.Select, source: ir.Affine) -> str | None:
        """Rows R of blocks B of a blockwise affine map: the map with weight rows R on the blocks B of
        its input (absent when the selection cuts across blocks differently)."""
        out_features, in_features = source.weight.shape
        indices = node.indices
        blocks = np.unique(indices // out_features)
        if indices.size % blocks.size:
            return None
        grid = indices.reshape(blocks.size, -1)
        rows = grid[0] % out_features
        if not (np.all(grid % out_features == rows) and np.all(grid // out_features == grid[:, :1] // out_features)):
            return None
        taken = ((grid[:, 0] // out_features)[:, None] * in_features + np.arange(in_features)).reshape(-1)
        inner = self._emit(ir.Select(self._fresh(f"{node.name}/in"), source.input, taken))
        bias = None if source.bias is None else source.bias[indices]
        return self._emit(ir.Affine(node.name, inner, source.weight[rows], bias))

    def _select_parts(self, node: ir.Select, source: ir.Concat) -> str | None:
        """A selection from a concatenation: the selected parts (one run of indices per part at most)."""
        sizes = [self.sizes[x] for x in source.inputs]
        starts = np.cumsum([0] + sizes)
        part_of = np.searchsorted(starts, node.indices, side="right") - 1
        cuts = np.flatnonzero(np.diff(part_of)) + 1
        if cuts.size + 1 > len(sizes):
            return None
        runs = [(int(parts[0]), run) for parts, run in zip(np.split(part_of, cuts), np.split(node.indices, cuts))]
        if len(runs) == 1:
            k, run = runs[0]
            return self._emit(ir.Select(node.name, source.inputs[k], run - starts[k]))
        pieces = tuple(self._emit(ir.Select(self._fresh(f"{node.name}/part{k}"), source.inputs[k], run - starts[k]))
                       for k, run in runs)
        return self._emit(ir.Concat(node.name, pieces))

    def _concat(self, node: ir.Concat) -> str:
        parts: list[str] = []
        for x in node.inputs:  # nested concatenations are flattened
            inner = self.nodes[x]
            parts.extend(inner.inputs if isinstance(inner, ir.Concat) else (x,))
        if len(parts) == 1:
            return parts[0]
        selections = [self.nodes[x] for x in parts]
        if all(isinstance(x, ir.Select) and x.input == selections[0].input for x in selections):
            indices = np.concatenate([x.indices for x in selections])  # a split undone
            return self._emit(ir.Select(node.name, selections[0].input, indices))
        return self._keep(ir.Concat(node.name, tuple(parts)))

    # -- sums: the GRU update ------------------------------------------------------------------
    def _add(self, node: ir.Add) -> str:
        if len(node.inputs) == 1:
            return node.inputs[0]
        if len(node.inputs) == 2:
            update = self._gru_update(*node.inputs) or self._gru_update(*reversed(node.inputs))
            if update is not None:
                return self._emit_update(node.name, *update)
        return self._keep(node)

    def _gate(self, name: str) -> tuple[str, tuple[str, ActivationFn | None]] | None:
        """(u, (v, g)) when `name` is the product sigmoid(u) * g(v) (canonical products: gate left)."""
        node = self.nodes[name]
        if isinstance(node, ir.Product) and node.left_fn == ir.SIGMOID:
            return node.left, (node.right, node.right_fn)
        return None

    def _gru_update(self, first: str, second: str) -> tuple[str, str | None, tuple[str, ActivationFn | None]] | None:
        """(u, h, n) when first + second is a GRU update z*h + (1 - z)*n with z = sigmoid(u); h is None
        when the state term is absent (a zero initial state). n is (node, fn) as a product factor."""
        gate = self._gate(first)
        if gate is None:
            return None
        u, (partner, partner_fn) = gate
        other = self._gate(second)
        if other is not None and self._opposite(other[0], u):  # sigmoid(u)*h + sigmoid(-u)*n
            if partner_fn is not None:
                return None  # h must be the state, not an activation
            return u, partner, other[1]
        if partner_fn is not None:
            return None
        n = self._as_factor(second)
        if self._negated(partner) == second:  # n + sigmoid(u)*(-n)
            return u, None, n
        difference = self.nodes[partner]
        if isinstance(difference, ir.Add) and len(difference.inputs) == 2:  # n + sigmoid(u)*(h - n)
            a, b = difference.inputs
            for h, minus_n in ((a, b), (b, a)):
                if self._negated(minus_n) == second:
                    return u, h, n
        return None

    def _as_factor(self, name: str) -> tuple[str, ActivationFn | None]:
        activated = self._activated(name)
        return activated if activated is not None else (name, None)

    def _value(self, factor: tuple[str, ActivationFn | None], name: str) -> str:
        x, fn = factor
        return x if fn is None else self._emit(ir.Activation(self._fresh(name), x, fn))

    def _emit_update(self, name: str, u: str, h: str | None, n: tuple[str, ActivationFn | None]) -> str:
        z = self._emit(ir.Activation(self._fresh(f"{name}/update"), u, ir.SIGMOID))
        n_value = self._value(n, f"{name}/candidate")
        if h is not None and self.update_form == "complement":
            # registered as they are: the smart constructors would turn 1 - z into sigmoid(-u) and fuse
            # the gates into the products, i.e. the "gates" form
            size = self.sizes[z]
            not_z = self._keep(ir.Affine(self._fresh(f"{name}/update_not"), z, -np.ones(size), np.ones(size)))
            new = self._keep(ir.Product(self._fresh(f"{name}/new"), not_z, n_value))
            keep = self._keep(ir.Product(self._fresh(f"{name}/keep"), z, h))
            return self._keep(ir.Add(name, (new, keep)))
        if h is None or self.update_form == "gates":
            not_z = self._emit(ir.Activation(self._fresh(f"{name}/update_not"),
                                              self._negate(u, f"{name}/update_not/arg"), ir.SIGMOID))
            new = self._emit(ir.Product(self._fresh(f"{name}/new") if h is not None else name, not_z, n_value))
            if h is None:
                return new
            keep = self._emit(ir.Product(self._fresh(f"{name}/keep"), z, h))
            return self._keep(ir.Add(name, (new, keep)))
        difference = self._keep(ir.Add(self._fresh(f"{name}/difference"), (h, self._negate(n_value, f"{name}/minus_candidate"))))
        step = self._emit(ir.Product(self._fresh(f"{name}/step"), z, difference))
        return self._keep(ir.Add(name, (n_value, step)))

    # -- products ------------------------------------------------------------------------------
    def _product(self, node: ir.Product) -> str:
        left = self._value((node.left, node.left_fn), f"{node.name}/left")
        right = self._value((node.right, node.right_fn), f"{node.name}/right")
        for this, other, swap in ((left, right, False), (right, left, True)):
            split = self._split_over_concat(node.name, this, other, swap)
            if split is not None:
                return split
        (a, f), (b, g) = self._as_factor(left), self._as_factor(right)
        if activations.is_nonnegative(g) and not activations.is_nonnegative(f):  # the gate goes left
            (a, f, left), (b, g, right) = (b, g, right), (a, f, left)
        if activations.jointly_relaxable(f, g):
            return self._keep(ir.Product(node.name, a, b, f, g))
        if f is not None and activations.jointly_relaxable(f, None):
            return self._keep(ir.Product(node.name, a, right, f, None))
        if g is not None and activations.jointly_relaxable(None, g):
            return self._keep(ir.Product(node.name, left, b, None, g))
        return self._keep(ir.Product(node.name, left, right))

    def _split_over_concat(self, name: str, this: str, other: str, swap: bool) -> str | None:
        """concat(f(a), g(b)) * y -> concat(f(a) * y[:|a|], g(b) * y[|a|:]), so that every part can fuse
        with its own activation; concat(f(a), f(b)) is first written f(concat(a, b))."""
        node = self.nodes[this]
        if not isinstance(node, ir.Concat):
            return None
        activated = [self._activated(x) for x in node.inputs]
        if not any(a is not None and activations.spec(a[1]).joint_planes for a in activated):
            return None
        if all(a is not None for a in activated) and len({a[1] for a in activated}) == 1:
            inner = self._keep(ir.Concat(self._fresh(f"{name}/pre"), tuple(a[0] for a in activated)))
            hoisted = self._emit(ir.Activation(self._fresh(f"{name}/gate"), inner, activated[0][1]))
            pair = (other, hoisted) if swap else (hoisted, other)
            return self._emit(ir.Product(name, *pair))
        parts, offset = [], 0
        for k, part in enumerate(node.inputs):
            size = self.sizes[part]
            piece = self._emit(ir.Select(self._fresh(f"{name}/part{k}/other"), other, np.arange(offset, offset + size)))
            pair = (piece, part) if swap else (part, piece)
            parts.append(self._emit(ir.Product(self._fresh(f"{name}/part{k}"), *pair)))
            offset += size
        return self._keep(ir.Concat(name, tuple(parts)))


def _or0(bias: np.ndarray | None) -> np.ndarray | float:
    return 0.0 if bias is None else bias


def _periodic(weight: np.ndarray, period: int) -> bool:
    """An elementwise scale that repeats with the blocks of a blockwise affine map."""
    return weight.size % period == 0 and bool(np.all(weight.reshape(-1, period) == weight[:period]))


def _key(node: ir.Node) -> tuple | None:
    """What makes two nodes the same computation (None: never shared)."""
    array = lambda a: None if a is None else (a.shape, a.tobytes())
    match node:
        case ir.Affine():
            return ("affine", node.input, array(node.weight), array(node.bias))
        case ir.Activation():
            return ("activation", node.input, node.fn)
        case ir.Select():
            return ("select", node.input, array(node.indices))
        case ir.Concat():
            return ("concat", node.inputs)
        case ir.Add():
            return ("add", tuple(sorted(node.inputs)))
        case ir.Product():
            return ("product",) + tuple(sorted([(node.left, str(node.left_fn)), (node.right, str(node.right_fn))]))
    return None


def _size(node: ir.Node, sizes: dict[str, int]) -> int:
    match node:
        case ir.Input():
            return node.size
        case ir.Affine():
            return node.output_size(sizes[node.input])
        case ir.Concat(inputs=xs):
            return sum(sizes[x] for x in xs)
        case ir.Select(indices=idx):
            return len(idx)
        case ir.Add(inputs=xs):
            return sizes[xs[0]]
        case ir.Activation(input=x) | ir.Product(left=x):
            return sizes[x]
    raise TypeError(f"not an IR node: {node!r}")
