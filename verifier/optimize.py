"""The optimised mode (`--method alpha`): relaxations tuned per margin row, as alpha-CROWN does.

CROWN fixes every relaxation before the backward pass; but the best line for a neuron depends on
what is being bounded. Here, for the final back-substitution (the margins f_label - f_j), every
nonlinear node gets free parameters per margin row and per neuron — the slopes of its activation
lines, the slopes of its factors' lines and the mixes of its McCormick planes
(verifier.relaxations.optimizable) — and projected gradient ascent (Adam) maximises the certified
lower bound. Every parameter value is a sound relaxation, so every iterate is a certificate; the
best bound seen per row is kept. The optimisation starts at CROWN's relaxation, so the result is
never below CROWN's bound. The intermediate passes are optimised too (shared, per-row or per-bound,
see OptimizeOptions). A radius search moves epsilon inside one optimisation (ascended_radii).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from verifier import ir
from verifier.activations import jointly_relaxable
from verifier.propagation import BackwardPass, LineForm, PlaneForm, Propagator
from verifier.relaxations.base import Lines, Planes
from verifier.relaxations.optimizable import (
    crown_slopes,
    factor_interval,
    identity_lines,
    lines_from_slopes,
    mixed_mccormick,
    slope_range,
)
from verifier.relaxations.product_planes import relax_product_planes
from verifier.rules import NONLINEAR

INTERMEDIATE = ("shared", "per-row", "per-bound", "none")
PER_ROW = ("per-row", "per-bound")  # the modes with parameters per row of every intermediate pass
# The mixes of McCormick planes take 10x larger steps than the slopes of lines: a slope change moves
# a line's touching point and, through the intermediate bounds, every later relaxation, while a mix
# only tilts one plane between two valid ones. Measured on the digits LSTM, 5 samples, 20 steps:
# radius 0.013807 -> 0.013905 (shared, ratio 1 -> 10; 5: 0.013900), 0.014410 (per-row, lr 0.05,
# ratio 1) -> 0.014715 (lr 0.02, ratio 10; lr 0.03 ratio 5: 0.014657); at fixed radii the per-row
# margins rose from +0.024/+0.016/+0.004/-0.032/+0.0007 to +0.354/+0.083/+0.012/+0.373/+0.0016.
MIX_RATIO = 10.0


@dataclass(frozen=True)
class OptimizeOptions:
    """How hard the optimised mode works: Adam steps per bound (or of a whole radius search, see
    ascended_radii), its step size on parameters normalised to [0, 1], and how the intermediate
    bounds are optimised:
      shared   one set of relaxation parameters per node for all intermediate passes (default:
               about 2x the final-only cost per step, most of the gain)
      per-row  every neuron of every intermediate pass gets its own parameters, its lower and upper
               rows sharing them (~3-4x the cost per step)
      per-bound  as per-row, but a neuron's lower and upper rows have parameters of their own, as in
               alpha-CROWN's full scheme (tightest: fixed-radius margins +3 % on the digits LSTM, +5 %
               on the digits GRU over per-row, at ~1.2x (GRU) to ~2x (LSTM) its cost)
      none     CROWN's intermediate bounds, only the final pass optimised (cheapest)"""

    steps: int = 20
    lr: float | None = None  # None: the step size measured best for the intermediate mode (step_size)
    intermediate: str = "shared"
    mix_ratio: float | None = None  # the McCormick mixes' step over the slopes' (None: MIX_RATIO)
    joint_planes: bool | None = None  # also mix in POPQORN's joint planes (None: with per-row and per-bound)

    @property
    def with_joint_planes(self) -> bool:
        """Whether products also mix in POPQORN's joint planes (see _Tuned): by default in per-row
        and per-bound modes, where it was measured worth its cost — digits LSTM radius 0.014715 -> 0.014781 (20
        steps), 0.014870 -> 0.014942 (40 steps) at ~1.2x the time; shared mode gains too (0.013905 ->
        0.014009) but at ~1.5x its time, past the 10 s the default is held to."""
        return self.intermediate in PER_ROW if self.joint_planes is None else self.joint_planes

    @property
    def step_size(self) -> float:
        """The slopes' step: `lr`, or by default 0.02, measured best on the digits LSTM over 20 steps
        (shared: radius 0.013807 vs 0.013723 at 0.05 and 0.013430 at 0.1; per-row with the mixes'
        larger steps: 0.014715 vs 0.014657 at 0.03 and 0.014410 at 0.05 with equal steps)."""
        return 0.02 if self.lr is None else self.lr

    @property
    def mix_step(self) -> float:
        """The McCormick mixes' step (see MIX_RATIO)."""
        return self.step_size * (MIX_RATIO if self.mix_ratio is None else self.mix_ratio)

    def __post_init__(self) -> None:
        if self.intermediate not in INTERMEDIATE:
            from verifier.errors import InputError
            raise InputError(f"intermediate must be one of {', '.join(INTERMEDIATE)}, not {self.intermediate!r}")
        if self.steps < 0 or (self.lr is not None and not self.lr > 0) or (
                self.mix_ratio is not None and not self.mix_ratio > 0):
            from verifier.errors import InputError
            raise InputError("optimisation steps must be >= 0, the step size and the mix ratio > 0")


class _Line:
    """An activation's line pair with slopes k_min + theta * (k_max - k_min) over the range of f'
    on the interval (where CROWN's chord and tangent slopes lie too, by the mean value theorem)."""

    def __init__(self, fn: ir.ActivationFn, lower: Tensor, upper: Tensor) -> None:
        self.fn, self.lower, self.upper = fn, lower, upper
        self.k_min, self.k_max = slope_range(fn, lower, upper)

    def start(self) -> tuple[Tensor, Tensor]:
        """theta of CROWN's lines, where the optimisation starts."""
        low_slope, up_slope = crown_slopes(self.fn, self.lower.detach(), self.upper.detach())
        span = (self.k_max - self.k_min).detach().clamp(min=1e-300)
        k_min = self.k_min.detach()
        return ((low_slope - k_min) / span).clamp(0, 1), ((up_slope - k_min) / span).clamp(0, 1)

    def lines(self, theta_lower: Tensor, theta_upper: Tensor) -> Lines:
        span = self.k_max - self.k_min
        return lines_from_slopes(self.fn, self.lower, self.upper, self.k_min + theta_lower * span,
                                 self.k_min + theta_upper * span)


class _Tuned:
    """One nonlinear node's tunable relaxation for the current bounds of its inputs: its
    parameters' starting values and its per-row pull-back form for given parameters."""

    def __init__(self, node: ir.Activation | ir.Product, propagator: Propagator, joint: bool = False) -> None:
        self.node = node
        bounds = lambda name: tuple(t.double().unsqueeze(1) for t in propagator.bounds[name])  # (batch, 1, n)
        if isinstance(node, ir.Activation):
            self.line = _Line(node.fn, *bounds(node.input))
            return
        (xl, xu), (yl, yu) = bounds(node.left), bounds(node.right)
        self.left = factor_interval(node.left_fn, xl, xu)
        self.right = factor_interval(node.right_fn, yl, yu)
        self.left_line = None if node.left_fn is None else _Line(node.left_fn, xl, xu)
        self.right_line = None if node.right_fn is None else _Line(node.right_fn, yl, yu)
        self.like = xl
        self.joint: Planes | None = None
        if joint and jointly_relaxable(node.left_fn, node.right_fn):
            # POPQORN's planes for this box: valid for any value of the bounds' gradient, so they are
            # computed without one (their plane search is not differentiated)
            with torch.no_grad():
                planes = relax_product_planes(node.left_fn, node.right_fn, xl.squeeze(1), xu.squeeze(1),
                                              yl.squeeze(1), yu.squeeze(1))
            self.joint = Planes(*(t.double().unsqueeze(1) for t in (
                planes.lower_x, planes.lower_y, planes.lower_const, planes.upper_x, planes.upper_y, planes.upper_const)))

    def starts(self) -> dict[str, Tensor]:
        """CROWN's relaxation in parameter form (computed only when parameters are created)."""
        if isinstance(self.node, ir.Activation):
            lower, upper = self.line.start()
            return {"lower": lower, "upper": upper}
        starts: dict[str, Tensor] = {}
        for side, line in (("left", self.left_line), ("right", self.right_line)):
            if line is not None:
                starts[f"{side}_lower"], starts[f"{side}_upper"] = line.start()
        one = torch.ones_like(self.like.detach())
        starts["lower_mix"], starts["upper_mix"] = one, one
        if self.joint is not None:  # weight of the joint planes: 0 is CROWN's planes
            starts["lower_joint"], starts["upper_joint"] = 0 * one, 0 * one
        return starts

    def form(self, theta: dict[str, Tensor]) -> LineForm | PlaneForm:
        if isinstance(self.node, ir.Activation):
            return LineForm.of(self.line.lines(theta["lower"], theta["upper"]))
        factor = lambda side, line, like: (identity_lines(like) if line is None
                                           else line.lines(theta[f"{side}_lower"], theta[f"{side}_upper"]))
        like = theta["lower_mix"]
        planes = mixed_mccormick(self.node.left_fn, self.node.right_fn, self.left, self.right,
                                 factor("left", self.left_line, like), factor("right", self.right_line, like),
                                 theta["lower_mix"], theta["upper_mix"])
        if self.joint is not None:
            planes = _blend(planes, self.joint, theta["lower_joint"], theta["upper_joint"])
        return PlaneForm.of(planes)


def _blend(mccormick: Planes, joint: Planes, lower_weight: Tensor, upper_weight: Tensor) -> Planes:
    """(1 - w) * one plane + w * the other, per side: both bound the product from that side on the
    same box, so every convex combination does too."""
    mix = lambda a, b, w: a + w * (b - a)
    return Planes(mix(mccormick.lower_x, joint.lower_x, lower_weight), mix(mccormick.lower_y, joint.lower_y, lower_weight),
                  mix(mccormick.lower_const, joint.lower_const, lower_weight),
                  mix(mccormick.upper_x, joint.upper_x, upper_weight), mix(mccormick.upper_y, joint.upper_y, upper_weight),
                  mix(mccormick.upper_const, joint.upper_const, upper_weight))


def optimized_lower_bounds(propagator: Propagator, node: str, spec: Tensor, options: OptimizeOptions) -> Tensor:
    """Certified lower bounds of spec·value(node), (batch, m), with the final back-substitution's
    relaxations optimised per row."""
    with torch.no_grad():
        propagator.run(until=node)
    graph = propagator.graph
    prefix = graph.nodes[:propagator.plan.order[node] + 1]
    tuned = {n.name: _Tuned(n, propagator, options.with_joint_planes)
             for n in _ancestors(graph, node) if isinstance(n, NONLINEAR)}
    m = spec.shape[1]
    theta: dict[str, dict[str, Tensor]] = {}
    for name, entry in tuned.items():
        theta[name] = {}
        for key, start in entry.starts().items():
            theta[name][key] = start.expand(-1, m, -1).clone().clamp(0, 1).detach().requires_grad_(True)
    parameters = [t for group in theta.values() for t in group.values()]
    optimizer = _Adam(parameters, _rates(theta.values(), options)) if parameters else None
    best = None
    steps = options.steps
    for step in range(steps + 1):
        with torch.enable_grad():
            forms = {name: entry.form(theta[name]) for name, entry in tuned.items()}
            backward = BackwardPass(propagator, relaxations=lambda n: forms[n.name])
            backward.push(node, spec.to(propagator.like))
            lower = backward.run(prefix)
        best = _best(best, lower)
        if step == steps or optimizer is None or not lower.requires_grad:  # nothing relaxed reaches it
            break
        _ascend(optimizer, parameters, lower)
    return best


class _PassTuner:
    """Per-row parameters of every backward pass of a propagation (the level passes and the final
    one), created on first use from CROWN's relaxations and kept across iterations."""

    def __init__(self, propagator: Propagator, shared: bool, joint: bool = False, paired: bool = True) -> None:
        self.propagator = propagator
        self.shared = shared  # intermediate passes share one relaxation per node (not per row)
        self.paired = paired  # a neuron's lower and upper rows in an intermediate pass share parameters
        self.joint = joint  # products also mix in POPQORN's joint planes
        self.theta: dict[tuple, dict[str, Tensor]] = {}
        self.keys: dict[str, list[tuple]] = {}  # node -> the passes with parameters for it, in order
        self.boxes: dict[str, _Tuned] = {}  # per node, for the current propagator's bounds
        self.caches: dict[tuple, dict[str, LineForm | PlaneForm]] = {}

    def use(self, propagator: Propagator) -> None:
        """A new iteration: fresh bounds, so the nodes' boxes are rebuilt on demand."""
        self.propagator, self.boxes, self.caches = propagator, {}, {}

    def __call__(self, key: tuple, width: int):
        """The relaxation provider of pass `key` with `width` rows, for the current bounds."""
        paired = False
        if self.shared and key != ("final",):
            key, width = ("shared",), 1
        elif key != ("final",) and self.paired:
            # an intermediate pass's rows are [lower rows | upper rows] of the same neurons
            # (Propagator._backward): a neuron's two rows share parameters. They mostly use different
            # ones anyway (a predecessor's lower line in one row is its upper line in the other), and
            # the relaxations are computed for half the rows: on the digits LSTM radius 0.0144095 vs
            # 0.0144104, 17.5 vs 20.6 s
            assert width % 2 == 0, "intermediate passes bound lower and upper rows together"
            paired, width = True, width // 2
        cache = self.caches.setdefault(key, {})

        def provide(node: ir.Node) -> LineForm | PlaneForm:
            form = cache.get(node.name)
            if form is None:
                entry = self.boxes.get(node.name)
                if entry is None:
                    entry = self.boxes[node.name] = _Tuned(node, self.propagator, self.joint)
                if (key, node.name) in self.theta:
                    self._all_forms(node.name, entry)  # every pass's form of this node in one computation
                    form = cache[node.name]
                else:
                    form = cache[node.name] = entry.form(self._parameters(key, node.name, entry, width))
            return _twice(form) if paired else form

        return provide

    def _all_forms(self, node: str, entry: _Tuned) -> None:
        """The node's relaxation for every pass that has parameters for it, computed once on the
        parameters concatenated along the rows (a node's box is the same for all passes of an
        iteration), then split back: one relaxation computation per node instead of per pass."""
        keys = self.keys[node]
        groups = [self.theta[(k, node)] for k in keys]
        widths = [next(iter(g.values())).shape[1] for g in groups]
        joined = {name: torch.cat([g[name] for g in groups], dim=1) for name in groups[0]}
        form = entry.form(joined)
        kind = type(form)
        fields = {f: getattr(form, f) for f in form.__dataclass_fields__}
        offset = 0
        for k, width in zip(keys, widths):
            part = {f: (t if t.shape[1] == 1 else t[:, offset:offset + width]) for f, t in fields.items()}
            self.caches.setdefault(k, {})[node] = kind(**part)
            offset += width

    def _parameters(self, key: tuple, node: str, entry: _Tuned, width: int) -> dict[str, Tensor]:
        held = self.theta.get((key, node))
        if held is None:
            held = {}
            for name, start in entry.starts().items():
                held[name] = start.detach().expand(-1, width, -1).clone().clamp(0, 1).requires_grad_(True)
            self.theta[(key, node)] = held
            self.keys.setdefault(node, []).append(key)
        return held

    def parameters(self) -> list[Tensor]:
        return [t for group in self.theta.values() for t in group.values()]


def _twice(form: LineForm | PlaneForm) -> LineForm | PlaneForm:
    """A per-row form for the lower rows, repeated for the upper rows of the same neurons."""
    fields = {name: getattr(form, name) for name in form.__dataclass_fields__}
    return type(form)(**{name: (t if t.shape[1] == 1 else torch.cat([t, t], dim=1)) for name, t in fields.items()})


def jointly_optimized_lower_bounds(make_propagator: Callable[[], Propagator], node: str, spec: Tensor,
                                   options: OptimizeOptions) -> Tensor:
    """Like optimized_lower_bounds, but every intermediate backward pass gets its own per-row
    parameters too (alpha-CROWN's full scheme): each iteration recomputes all intermediate bounds
    with the current relaxations, and the gradient of the final bound reaches every pass.
    `make_propagator()` builds a fresh CROWN propagator over the same regions."""
    tuner = None
    optimizer = None
    best = None
    steps = options.steps
    for step in range(steps + 1):
        with torch.enable_grad():
            propagator = make_propagator()
            if tuner is None:
                tuner = _PassTuner(propagator, options.intermediate == "shared", options.with_joint_planes,
                                   paired=options.intermediate != "per-bound")
            tuner.use(propagator)
            propagator.tuner = tuner
            propagator.passes_for_exact_nodes = not tuner.shared
            propagator.run(until=node)
            prefix = propagator.graph.nodes[:propagator.plan.order[node] + 1]
            backward = BackwardPass(propagator, relaxations=tuner(("final",), spec.shape[1]))
            backward.push(node, spec.to(propagator.like))
            lower = backward.run(prefix)
        best = _best(best, lower)
        parameters = tuner.parameters()
        if step == steps or not parameters or not lower.requires_grad:  # no relaxation reaches the bound
            break
        if optimizer is None:
            optimizer = _Adam(parameters, _rates(tuner.theta.values(), options))
        _ascend(optimizer, parameters, lower)
    return best


class _Adam:
    """Adam (Kingma & Ba), elementwise, for the relaxation parameters. Not torch.optim.Adam: creating
    a torch optimizer imports torch._dynamo, 1.7 s of a ~7 s `certify --method alpha` run."""

    def __init__(self, parameters: list[Tensor], rates: list[float], betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.parameters, self.rates, self.betas, self.eps = parameters, rates, betas, eps
        self.moments = [(torch.zeros_like(t), torch.zeros_like(t)) for t in parameters]
        self.steps = 0

    def zero_grad(self) -> None:
        for t in self.parameters:
            t.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """One step on every parameter with a gradient, as list-wide (foreach) kernels: the per-row
        modes hold thousands of small parameter tensors, and one op per tensor cost ~1 s in 20 steps."""
        self.steps += 1
        first, second = self.betas
        correct_first, correct_second = 1 - first ** self.steps, 1 - second ** self.steps
        live = [k for k, t in enumerate(self.parameters) if t.grad is not None]
        if not live:
            return
        params = [self.parameters[k] for k in live]
        grads = [t.grad for t in params]
        means = [self.moments[k][0] for k in live]
        squares = [self.moments[k][1] for k in live]
        torch._foreach_mul_(means, first)
        torch._foreach_add_(means, grads, alpha=1 - first)
        torch._foreach_mul_(squares, second)
        torch._foreach_addcmul_(squares, grads, grads, value=1 - second)
        denominators = torch._foreach_div(squares, correct_second)
        torch._foreach_sqrt_(denominators)
        torch._foreach_add_(denominators, self.eps)
        torch._foreach_addcdiv_(params, means, denominators, [-self.rates[k] / correct_first for k in live])


def _rates(groups, options: OptimizeOptions) -> list[float]:
    """The step of every parameter, in the order the groups list them: mixes of McCormick planes
    take `mix_step`, slopes `step_size`."""
    return [options.mix_step if name.endswith("_mix") else options.step_size
            for group in groups for name in group]


def _best(best: Tensor | None, lower: Tensor) -> Tensor:
    """The best certified bound per row so far (every iterate is sound; NaN certifies nothing)."""
    value = torch.where(torch.isnan(lower.detach()), -torch.inf, lower.detach())
    return value if best is None else torch.maximum(best, value)


def _ascend(optimizer: _Adam, parameters: list[Tensor], lower: Tensor) -> None:
    """One projected gradient-ascent step on the sum of the finite lower bounds (rows are
    independent, so the sum ascends each); parameters stay in [0, 1]."""
    optimizer.zero_grad()
    torch.where(torch.isfinite(lower), -lower, torch.zeros_like(lower)).sum().backward()
    for t in parameters:
        if t.grad is not None:
            t.grad.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
    optimizer.step()
    _project(parameters)


def _project(parameters: list[Tensor]) -> None:
    """Parameters back into [0, 1], where every value is a sound relaxation."""
    with torch.no_grad():
        torch._foreach_clamp_min_(parameters, 0.0)
        torch._foreach_clamp_max_(parameters, 1.0)


def _ancestors(graph: ir.Graph, node: str) -> list[ir.Node]:
    """The nodes `node` depends on (itself included), in topological order."""
    wanted, stack = {node}, [node]
    while stack:
        for x in ir.node_inputs(graph[stack.pop()]):
            if x not in wanted:
                wanted.add(x)
                stack.append(x)
    return [n for n in graph.nodes if n.name in wanted]


REACH = 0.25  # the largest relative change of eps in one step of ascended_radii


def ascended_radii(make_propagator: Callable[[Tensor], Propagator], node: str, spec: Tensor, start: Tensor,
                   options: OptimizeOptions, trace: list | None = None) -> Tensor:
    """Largest ε per row (sample) certified by the optimised bounds, found in one optimisation:
    each step bounds the margins at the row's current ε with the current relaxation parameters,
    takes one Adam step on the parameters and one Newton step on ε towards the margin's zero.

    Why not a radius search over optimised bounds: every probe re-optimises from a warm start,
    8-20 steps per probe and ~8 probes, while the parameters hardly change between nearby ε. Here
    parameters and ε converge together, with the slope dm/dε from the same backward pass.

    Soundness: a step's bound is computed in full at that step's ε (intermediate bounds included)
    with valid relaxations, so every step whose worst margin is > 0 certifies its ε; the largest
    such ε is returned (never below `start`, a radius certified already, e.g. by CROWN).
    The objective is a soft minimum over the margin rows (weights detached), so the shared
    intermediate relaxations serve the binding margin; its ε-gradient is that margin's slope.
    `make_propagator(eps)` builds a fresh CROWN propagator over the balls of radius eps; `trace`
    receives (eps, worst margin) of every step."""
    best = start.detach().clone()
    eps = torch.where(start > 0, start, torch.full_like(start, 1e-6)).detach().clone()
    reach = torch.full_like(eps, REACH)
    last_certified: Tensor | None = None
    tuner = None
    optimizer = None
    shared = options.intermediate not in PER_ROW
    for _ in range(options.steps):
        with torch.enable_grad():
            radius = eps.clone().requires_grad_(True)
            propagator = make_propagator(radius)
            if tuner is None:
                tuner = _PassTuner(propagator, shared, options.with_joint_planes,
                                   paired=options.intermediate != "per-bound")
            tuner.use(propagator)
            propagator.tuner = tuner if options.intermediate != "none" else None
            propagator.passes_for_exact_nodes = not shared
            propagator.run(until=node)
            prefix = propagator.graph.nodes[:propagator.plan.order[node] + 1]
            backward = BackwardPass(propagator, relaxations=tuner(("final",), spec.shape[1]))
            backward.push(node, spec.to(propagator.like))
            lower = backward.run(prefix)
            finite = torch.isfinite(lower)
            held = torch.where(finite, lower, torch.full_like(lower, -torch.inf)).detach()
            worst = held.amin(1)
            scale = (held.clamp(min=0).amax(1, keepdim=True) * 0.05).clamp(min=1e-9)
            weights = torch.where(finite, torch.softmax(-(held - worst[:, None]).nan_to_num(posinf=1e30) / scale, 1),
                                  torch.zeros_like(held))
            objective = (weights * torch.where(finite, lower, torch.zeros_like(lower))).sum()
            parameters = tuner.parameters()
            if optimizer is None and parameters:
                optimizer = _Adam(parameters, _rates(tuner.theta.values(), options))
            if optimizer is not None:
                optimizer.zero_grad()
            (-objective).backward()
        # radius.grad = d(-objective)/d eps = how fast the binding margin falls as eps grows
        slope = radius.grad.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0) if radius.grad is not None else torch.zeros_like(eps)
        certified = worst > 0
        best = torch.where(certified & (eps > best), eps, best)
        if trace is not None:
            trace.append((eps.tolist(), worst.tolist()))
        if optimizer is not None:
            for t in parameters:
                if t.grad is not None:
                    t.grad.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
            optimizer.step()
            _project(parameters)
        # a trust region on eps per row: a step may change it by a factor up to 1 + reach; reach
        # halves whenever the margin changes sign (the last step overshot) and regrows otherwise.
        # Without it, a row whose Newton slope went stale swung between eps * 0.8 and eps * 1.25
        # for good (digits LSTM, per-row: samples 0 and 3 stuck from step ~30 of 80)
        if last_certified is not None:
            flipped = certified != last_certified
            reach = torch.where(flipped, reach * 0.5, torch.clamp(reach * 1.5, max=REACH))
        last_certified = certified
        newton = eps + worst.clamp(min=-1e300) / slope.clamp(min=1e-300)
        guess = torch.where(slope > 0, newton, torch.where(certified, eps * (1 + reach), eps / (1 + reach)))
        eps = torch.minimum(torch.maximum(guess, eps / (1 + reach)), eps * (1 + reach)).detach()
    return best
