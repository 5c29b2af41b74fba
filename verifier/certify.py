"""Certified radius: the largest ε at which every margin f_label - f_j has a positive lower bound.

Doubling then bisection on ε, batched: every sample (and every per-frame variant of a sample) keeps
its own bracket [certified, refuted) and leaves the batch once the bracket is within the relative
tolerance, so one bound call per step serves all undecided samples. The result is a certified lower
bound on the minimum adversarial distortion under the threat model.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from verifier import cuda_graphs, forward, ir
from verifier.bounds import Batch, ball_regions, check_threat, make_batch, output_node, relaxer_for, resolve_dtype
from verifier.canonical import optimised_forms
from verifier.errors import InputError
from verifier.methods import DEFAULT_METHOD, Method, parse_method
from verifier.optimize import OptimizeOptions, ascended_radii, jointly_optimized_lower_bounds, optimized_lower_bounds
from verifier.propagation import Propagator
from verifier.threat import Default, Domain, ThreatModel

FLOAT32_MAX = float(torch.finfo(torch.float32).max)
MAX_RADIUS = 1e4  # a radius this large means the margin does not depend on the input at all


@dataclass(frozen=True)
class SearchOptions:
    """How the radius search runs; passed explicitly, never global."""

    method: Method = DEFAULT_METHOD
    tol: float = 1e-3  # relative width of the final bracket
    start: float = 0.01  # first ε tried
    max_steps: int = 60
    optimize: OptimizeOptions = OptimizeOptions()  # the optimised mode's effort (method alpha)

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", parse_method(self.method))
        if not 0 < self.tol < 1:
            raise InputError(f"tol must be in (0, 1), not {self.tol!r}")


@dataclass
class SampleResult:
    """One sample's certificate. `radius` is certified for the threat model's frames;
    `per_frame_radius[t]` when only frame t is perturbed. Field names are the JSON contract."""

    index: int
    label: int
    predicted: int
    radius: float
    time_s: float
    misclassified: bool = False
    target: int | None = None
    per_frame_radius: list[float] | None = None
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        data = {"index": self.index, "label": self.label, "predicted": self.predicted,
                "radius": self.radius, "misclassified": self.misclassified, "time_s": self.time_s}
        if self.target is not None:
            data["target"] = self.target
        if self.per_frame_radius is not None:
            data["per_frame_radius"] = self.per_frame_radius
        data.update(self.extra)
        return data


def margin_spec(labels: Tensor, num_classes: int, target: int | None) -> Tensor:
    """Rows e_label - e_j for every j != label (untargeted) or the single row for j = target."""
    eye = torch.eye(num_classes, dtype=torch.float64, device=labels.device)
    if target is not None:
        return (eye[labels] - eye[target])[:, None, :]
    others = torch.stack([torch.cat([torch.arange(0, c), torch.arange(c + 1, num_classes)])
                          for c in labels.tolist()]).to(labels.device)
    return eye[labels][:, None, :] - eye[others]  # (batch, classes - 1, classes)


def margin_lower_bounds(graph: ir.Graph, batch: Batch, eps: Tensor, threat: ThreatModel, spec: Tensor,
                        relaxer, out_node: str, frame_mask: Tensor | None = None, *,
                        optimize: OptimizeOptions | None = None) -> Tensor:
    """Lower bounds of the margins, (batch, rows). With `optimize`, the relaxations are tuned per
    margin row (verifier.optimize)."""
    regions = ball_regions(batch, eps, threat, frame_mask)
    if optimize is not None:
        spec = spec.to(batch.center.dtype)
        if optimize.intermediate == "none":
            return optimized_lower_bounds(Propagator(graph, regions, relaxer), out_node, spec, optimize)
        return jointly_optimized_lower_bounds(lambda: Propagator(graph, regions, relaxer), out_node, spec, optimize)
    propagator = Propagator(graph, regions, relaxer)
    with torch.no_grad():
        lower, _ = propagator.bound(out_node, spec.to(batch.center.dtype), need_upper=False)
    return lower


def search_radius(margin: Callable[[Tensor, Tensor], Tensor], clean: Tensor, options: SearchOptions,
                  device: torch.device, dtype: torch.dtype) -> Tensor:
    """Largest certified ε per row, to the relative tolerance. `margin(rows, eps)` returns, for the
    active rows, the certified lower bound of the worst margin at each row's ε (certified iff > 0);
    `clean` is the exact margin at ε = 0.

    Why not plain doubling + bisection (~14 bound calls): the margin falls smoothly with ε, so a model
    of it through the points probed so far predicts where it crosses zero (_predicted_crossing).
    Until a refuted ε is found the search aims just past the predicted crossing (at most x8 per step);
    inside a bracket it aims just below, then just above it (by 0.45 of the tolerance), so that two
    good predictions end the search — or, when the crossing is predicted within the tolerance of an
    end, makes the one probe that ends it. A probe that lands on the side it did not aim for aims at
    that side again, 4x further each time (before a bracket, after three such probes, at least as far
    as the margin's own secant reaches; a drop that stopped growing far below the clean margin
    — a saturated margin that may never cross — takes the x8 step); three steps in a row that do
    not halve the bracket bisect it. Probes are rounded to 20 significant bits, so last-bit noise in a margin cannot change the
    sequence of probes: a row's radius does not depend on the other rows in its batch. Only
    certified ε are ever reported. Margins are computed on `device`; the search's own arithmetic (a
    few vectors per step) runs on the CPU, where it launches no GPU kernels."""
    count = clean.shape[0]
    bound_device, device = device, torch.device("cpu")  # the search's own arithmetic: a few vectors, no GPU kernels
    zeros = lambda: torch.zeros(count, dtype=torch.float64, device=device)
    flags = lambda value: torch.full((count,), value, dtype=torch.bool, device=device)
    clean = clean.to(device=device, dtype=torch.float64)
    lower, at_lower = zeros(), clean.clone()
    upper, at_upper = torch.full((count,), math.inf, dtype=torch.float64, device=device), zeros()
    third, at_third = zeros(), at_lower.clone()  # the last end point replaced: a third point for the curve
    older, at_older = zeros(), at_lower.clone()  # before a bracket: the certified point before `third`
    width_before = torch.full_like(lower, math.inf)
    stalls = torch.zeros(count, dtype=torch.long, device=device)  # bracketed steps in a row that did not halve it
    surprises = torch.zeros(count, dtype=torch.long, device=device)  # probes in a row that landed on the other side
    aimed, above = flags(False), flags(True)  # the last probe aimed at a predicted crossing, from above
    bisected = flags(False)
    eps = torch.full((count,), options.start, dtype=torch.float64, device=device)
    active = torch.arange(count, device=device)
    for _ in range(options.max_steps):
        if active.numel() == 0:
            break
        value = margin(active.to(bound_device), eps[active].to(device=bound_device, dtype=dtype))
        value = value.to(device=device, dtype=torch.float64)
        ok = value > 0
        surprised = aimed[active] & (ok == above[active])
        surprises[active] = torch.where(surprised, surprises[active] + 1, torch.zeros_like(surprises[active]))
        rows_ok, rows_bad = active[ok], active[~ok]
        older[rows_ok], at_older[rows_ok] = third[rows_ok], at_third[rows_ok]
        third[rows_ok], at_third[rows_ok] = lower[rows_ok], at_lower[rows_ok]
        had_upper = torch.isfinite(upper[rows_bad])
        third[rows_bad[had_upper]], at_third[rows_bad[had_upper]] = upper[rows_bad[had_upper]], at_upper[rows_bad[had_upper]]
        lower[rows_ok], at_lower[rows_ok] = eps[rows_ok], value[ok]
        upper[rows_bad], at_upper[rows_bad] = eps[rows_bad], value[~ok]
        lo, hi = lower[active], upper[active]
        bracketed = torch.isfinite(hi)
        done = (bracketed & (hi - lo <= options.tol * hi)) | (lo >= MAX_RADIUS) | (hi <= 1e-12)
        # a bisection halves the bracket by construction (up to the probe's rounding): not a stall
        stalled = bracketed & (hi - lo > 0.5 * width_before[active]) & ~bisected[active]
        stalls[active] = torch.where(stalled, stalls[active] + 1, torch.zeros_like(stalls[active]))
        bisect = bracketed & (stalls[active] >= 3)
        # the side to aim at: the other one after an expected outcome, the same one after a surprise
        side = torch.where(aimed[active] & ~surprised, ~above[active], above[active]) | ~bracketed
        eps[active], aimed[active], above[active] = _next_probe(
            lo, hi, at_lower[active], at_upper[active], third[active], at_third[active], older[active],
            at_older[active], clean[active], side, surprises[active], bisect, options.tol)
        bisected[active] = bisect
        width_before[active] = torch.where(bracketed, hi - lo, width_before[active])
        active = active[~done]
    return lower.to(bound_device)


def _next_probe(lo: Tensor, hi: Tensor, at_lo: Tensor, at_hi: Tensor, third: Tensor, at_third: Tensor,
                older: Tensor, at_older: Tensor, clean: Tensor, above: Tensor, surprises: Tensor, bisect: Tensor, tol: float
                ) -> tuple[Tensor, Tensor, Tensor]:
    """The next ε of every row (see search_radius); whether it aims at a predicted crossing, and
    from which side."""
    bracketed = torch.isfinite(hi)
    cross, modelled = _predicted_crossing(lo, hi, at_lo, at_hi, third, at_third, older, at_older, clean)
    # (0.45 and 0.98 of the tolerance: a bracket closed by two such probes stays within the tolerance
    # when the prediction moves a little between them, and after rounding the probes to 20 bits)
    offset = 0.45 * tol * 4.0 ** surprises.clamp(max=8)
    aim = torch.where(above, cross * (1 + offset), cross * (1 - offset))
    # before a bracket: at least a little, at most x8 past the last certified ε; after three probes
    # in a row fell short, at least as far as the margin's own secant reaches (a drop that went flat
    # and crosses later, e.g. a saturated stretch, leaves the drop's model creeping)
    falling = at_third - at_lo
    secant = torch.where(falling > 0, lo + at_lo * (lo - third) / falling.clamp(min=1e-300), lo * 8)
    aim = torch.where(~bracketed & (surprises >= 3), torch.maximum(aim, secant), aim)
    grow = torch.minimum(torch.maximum(aim, lo * (1 + tol)), lo * 8)
    grow_aimed = modelled & (aim > lo * (1 + tol)) & (aim < lo * 8)
    # inside a bracket: away from its ends; a crossing predicted within the tolerance of an end gets
    # the probe that ends the search if right
    width = hi - lo
    inside = torch.minimum(torch.maximum(aim, lo + 0.05 * width), hi - 0.05 * width)
    finish_low, finish_high = hi * (1 - 0.98 * tol), lo * (1 + 0.98 * tol)
    ends_low, ends_high = cross >= finish_low, cross <= finish_high
    inside = torch.where(ends_low, torch.maximum(finish_low, lo + 0.05 * width), inside)
    inside = torch.where(ends_high, torch.minimum(finish_high, hi - 0.05 * width), inside)
    side = torch.where(ends_low, False, torch.where(ends_high, True, above))
    probe = torch.where(bracketed, torch.where(bisect, (lo + hi) / 2, inside), grow)
    aimed = torch.where(bracketed, ~bisect, grow_aimed)
    return _round_probe(probe), aimed, torch.where(bracketed, side, True)


def _predicted_crossing(lo: Tensor, hi: Tensor, at_lo: Tensor, at_hi: Tensor, third: Tensor, at_third: Tensor,
                        older: Tensor, at_older: Tensor, clean: Tensor) -> tuple[Tensor, Tensor]:
    """Where the margin is predicted to cross zero, and whether a model of its drop made the
    prediction.

    The drop d(ε) = clean - m(ε) is modelled as A ε^b e^(cε): b = 1, c = 0 is a margin linear in
    ε; c > 0 the steepening of relaxations that loosen as ε grows (CROWN's margins on recurrent
    networks fall ever faster); b = 2 a margin flat at ε = 0. log d is linear in (1, log ε, ε), so
    three points (lo, hi and the third; before a bracket, the last three certified) fit A, b and c;
    two fit A and c with b = 1 (CROWN's drop is linear near ε = 0); the first certified point alone
    fits A with b = 2 (over the range a search spans, the drop grows faster than ε: measured fewer
    calls than b = 1 on the shipped models, benchmarks/search_calls.py). Extrapolating, the nearer
    of the three- and two-point predictions is taken (three points on a kinked curve can predict
    wildly). The crossing d = clean is solved on the model. Where lo or hi has no logarithm (ε = 0,
    a drop lost to rounding), the margin's own secant or parabola predicts it."""
    bracketed = torch.isfinite(hi)
    log_clean = torch.log(clean.clamp(min=1e-300))
    usable = lambda e, at: (e > 0) & (clean - at > 0) & (clean > 0) & torch.isfinite(e)
    log_drop = lambda at: torch.log((clean - at).clamp(min=1e-300))
    ones = torch.ones_like(lo)
    has_lo, has_hi = usable(lo, at_lo), usable(hi, at_hi)
    top = torch.where(bracketed & has_hi, hi, lo * 8)  # the far end of the model's range
    # the points with lo: hi and the third (bracketed), or the two certified before lo
    near, at_near = torch.where(bracketed, hi, third), torch.where(bracketed, at_hi, at_third)
    other, at_other = torch.where(bracketed, third, older), torch.where(bracketed, at_third, at_older)
    has_near = torch.where(bracketed, has_hi, usable(third, at_third) & (third < lo))
    has_other = usable(other, at_other) & (bracketed | (has_near & (older < third)))
    e_l, e_n, e_o = lo, torch.where(has_near, near, lo * 2), torch.where(has_other, other, lo * 3)
    x_l, x_n, x_o = (torch.log(e.clamp(min=1e-300)) for e in (e_l, e_n, e_o))
    y_l, y_n, y_o = log_drop(at_lo), log_drop(at_near), log_drop(at_other)
    # one point: b = 2, c = 0; two: b = 1 and c through both (extrapolating, c at least 0)
    c_two = torch.where(has_near, ((y_n - x_n) - (y_l - x_l)) / torch.where(has_near, e_n - e_l, ones), 0 * ones)
    c_two = torch.where(bracketed, c_two, c_two.clamp(min=0))
    b = torch.where(has_near | bracketed, ones, 2 * ones)
    # three points: b and c from the 2x2 system of the differences, where it is well conditioned
    dx_n, dx_o, de_n, de_o, dy_n, dy_o = x_n - x_l, x_o - x_l, e_n - e_l, e_o - e_l, y_n - y_l, y_o - y_l
    det = dx_n * de_o - dx_o * de_n
    scale = (dx_n * de_o).abs() + (dx_o * de_n).abs()
    three = has_near & has_other & (scale > 0) & (det.abs() > 1e-6 * scale)
    safe = torch.where(three, det, ones)
    b3, c3 = (dy_n * de_o - dy_o * de_n) / safe, (dx_n * dy_o - dx_o * dy_n) / safe
    three = three & (b3 > 0) & torch.isfinite(b3) & torch.isfinite(c3)
    b, c = torch.where(three, b3, b), torch.where(three, c3, c_two)
    model = lambda e: y_l + b * (torch.log(e) - x_l) + c * (e - e_l) - log_clean
    modelled = has_lo & (has_hi | ~bracketed)
    solved = _solve_increasing(model, torch.where(modelled, lo, top / 2), top)
    two_point = lambda e: y_l + (torch.log(e) - x_l) + c_two * (e - e_l) - log_clean
    solved = torch.where(~bracketed & three, torch.minimum(solved, _solve_increasing(two_point, lo, top)), solved)
    # a drop that has nearly stopped growing (less than ε^0.3 between the last two certified points)
    # while still under half the clean margin (a saturated or input-independent margin, which may
    # never cross; nearer the crossing a flat stretch is more likely a kink): the largest step
    flat = ~bracketed & has_near & ((y_l - y_n) < 0.3 * (x_l - x_n)) & (y_l < log_clean - math.log(2))
    solved = torch.where(flat, top, solved)
    secant = lo + (hi - lo) * at_lo / (at_lo - at_hi).clamp(min=1e-300)
    fallback = torch.where(bracketed, _parabola_zero(lo, hi, third, at_lo, at_hi, at_third, secant), lo * 8)
    return torch.where(modelled, solved, fallback), modelled


def _solve_increasing(f: Callable[[Tensor], Tensor], a: Tensor, b: Tensor, steps: int = 40) -> Tensor:
    """A zero of the model f in [a, b] by bisection (b where f(b) < 0, a where f(a) > 0)."""
    a, b = a.clone(), b.clone()
    for _ in range(steps):
        mid = (a + b) / 2
        below = f(mid) < 0
        a, b = torch.where(below, mid, a), torch.where(below, b, mid)
    return (a + b) / 2


def _parabola_zero(a: Tensor, b: Tensor, c: Tensor, fa: Tensor, fb: Tensor, fc: Tensor, fallback: Tensor) -> Tensor:
    """The zero in [a, b] of the parabola through (a, fa), (b, fb), (c, fc); `fallback` where the
    three points do not define one (c coincides with an end) or it has no zero in [a, b]."""
    ab, ac, bc = b - a, c - a, c - b
    distinct = (ac.abs() > 1e-12 * b.abs()) & (bc.abs() > 1e-12 * b.abs())
    safe = lambda t: torch.where(distinct, t, torch.ones_like(t))
    # Newton form: f(x) = fa + d1 (x - a) + d2 (x - a)(x - b)
    d1 = (fb - fa) / ab.clamp(min=1e-300)
    d2 = ((fc - fa) / safe(ac) - d1) / safe(bc)
    # d2 t^2 + (d1 - d2 ab) t + fa = 0 with t = x - a
    q1 = d1 - d2 * ab
    disc = q1 * q1 - 4 * d2 * fa
    root = torch.sqrt(disc.clamp(min=0))
    # the numerically stable root formula picks the zero in the bracket for a falling curve
    t = torch.where(q1 < 0, 2 * fa / (-q1 + root).clamp(min=1e-300), -2 * fa / (q1 + root).clamp(max=-1e-300))
    zero = a + t
    good = distinct & (disc >= 0) & (zero > a) & (zero < b) & torch.isfinite(zero)
    return torch.where(good, zero, fallback)


def _round_probe(eps: Tensor) -> Tensor:
    """ε rounded to 20 significant bits (see search_radius: batch-independent probes)."""
    mantissa, exponent = torch.frexp(eps)
    return torch.ldexp(torch.round(mantissa * 2.0 ** 20) / 2.0 ** 20, exponent)


def certify(graph: ir.Graph, x: np.ndarray | dict[str, np.ndarray], norm: float | str = Default(2.0), *,
            labels: np.ndarray | None = None, target: int | None = None, ball: str = Default("frame"),
            frames: tuple[int, ...] | str | None = None, domain: Domain | tuple | None = None,
            threat: ThreatModel | None = None, per_frame: bool = False,
            options: SearchOptions = SearchOptions(), output: int | str = 0, input_name: str | None = None,
            device=None, dtype: torch.dtype = torch.float64, first_index: int = 0) -> list[SampleResult]:
    """Certified radius of every sample in `x` (stacked on the model input's batch axis), over the
    threat model given as `threat` or spelled out by norm (default 2), ball (default "frame"), frames
    and domain.

    Labels default to the model's own prediction; a sample the model misclassifies gets radius 0 and
    `misclassified=True`. With `per_frame`, also the radius when only frame t is perturbed, for all t,
    computed in the same batched search."""
    started = time.perf_counter()
    ir.require_graph(graph, "certify")
    threat = ThreatModel.of(threat, norm=norm, ball=ball, frames=frames, domain=domain)
    options = _search_options(options)
    if target is not None and (isinstance(target, bool) or not isinstance(target, (int, np.integer))):
        raise InputError(f"target must be a class index (an integer), not {target!r}")
    dtype = resolve_dtype(dtype)
    if options.method is Method.ALPHA:
        dtype = torch.float64  # the optimised relaxations are computed (and differentiated) in float64
    batch = make_batch(graph, x, input_name=input_name, device=device, dtype=dtype)
    graph = batch.graph
    check_threat(batch, threat)
    mask = torch.as_tensor(threat.frame_mask(batch.node), device=batch.center.device)
    out = output_node(graph, output)
    relaxer = relaxer_for(options.method)
    with torch.inference_mode():
        values = forward.run(graph, {k: v.double() for k, v in batch.feeds().items()})
        logits = values[out.node]
        # where the exact values leave float32's range, a float32 file computes inf or NaN instead
        largest = torch.stack([v.abs().reshape(v.shape[0], -1).amax(1) for v in values.values()
                               if v.dim() and v.shape[0] == batch.size and v[0].numel()]).amax(0)
    num_classes = logits.shape[1]
    predicted = logits.argmax(1)
    label_t = predicted.clone() if labels is None else _check_labels(labels, batch.size, num_classes, batch)
    if target is not None and not 0 <= target < num_classes:
        raise InputError(f"target {target} out of range: the model has {num_classes} classes")
    correct = (predicted == label_t) & (label_t != target if target is not None else True)

    frames_count = batch.node.num_frames
    variants = 1 + (frames_count if per_frame else 0)  # row 0: the threat's frames; row t+1: frame t only
    variant_masks = torch.cat([mask[None], torch.eye(frames_count, dtype=torch.bool, device=mask.device)])[:variants]
    rows_batch = batch.repeat(variants)
    rows_mask = variant_masks.repeat(batch.size, 1)
    rows_spec = margin_spec(label_t, num_classes, target).repeat_interleave(variants, 0)
    rows_correct = correct.repeat_interleave(variants, 0)

    def worst_margin(rows: Tensor, eps: Tensor) -> Tensor:
        lower = margin_lower_bounds(graph, rows_batch.select(rows), eps, threat, rows_spec[rows], relaxer, out.node,
                                    rows_mask[rows])
        return lower.amin(dim=1)

    clean = torch.einsum("bmc,bc->bm", rows_spec.to(logits), logits.repeat_interleave(variants, 0)).amin(1)
    radii = torch.zeros(rows_batch.size, dtype=torch.float64, device=batch.center.device)
    todo = torch.nonzero(rows_correct).flatten()
    if todo.numel():
        device = batch.center.device
        margin = lambda r, e: worst_margin(todo[r], e)
        if (options.method is not Method.ALPHA and threat.domain is None
                and cuda_graphs.usable(device, todo.numel(), max(graph.sizes().values()))):
            margin = _replayed_margin(graph, rows_batch.select(todo), threat, rows_spec[todo].to(dtype), relaxer,
                                      out.node, rows_mask[todo], options.start)
        found = search_radius(margin, clean[todo], options, device, dtype)
        if options.method is Method.ALPHA:  # CROWN's radii (certified), then raised by the optimisation
            active = rows_batch.select(todo)
            start = found
            for form in optimised_forms(graph):  # the same function written two ways (GRUs): the larger radius
                found = torch.maximum(found, ascended_radii(
                    lambda e, g=form: Propagator(g, ball_regions(active, e, threat, rows_mask[todo]), relaxer),
                    out.node, rows_spec[todo].to(dtype), start, options.optimize))
            # a radius at the cap ended CROWN's search without a margin's zero: reported as CROWN's, so
            # both methods say the same "capped" number (the ascent has no cap and ran to 1e6)
            found = torch.where(start >= MAX_RADIUS, start, found)
        radii[todo] = found
    radii = radii.reshape(batch.size, variants).cpu().numpy()
    elapsed = (time.perf_counter() - started) / batch.size
    # a radius past MAX_RADIUS ended the search, not a margin's zero: said so ("capped"), since the
    # number is then a bound on the search, not the sample's largest certified radius
    return [SampleResult(index=first_index + k, label=int(label_t[k]), predicted=int(predicted[k]),
                         radius=float(radii[k, 0]), time_s=elapsed, misclassified=not bool(correct[k]),
                         target=target,
                         per_frame_radius=[float(r) for r in radii[k, 1:]] if per_frame else None,
                         extra={**({"capped": True} if radii[k, 0] >= MAX_RADIUS else {}),
                                **({"beyond_float32": float(largest[k])} if largest[k] > FLOAT32_MAX else {})})
            for k in range(batch.size)]


def _replayed_margin(graph: ir.Graph, batch: Batch, threat: ThreatModel, spec: Tensor, relaxer, out_node: str,
                     frame_mask: Tensor, start: float) -> Callable[[Tensor, Tensor], Tensor]:
    """search_radius's margin function on a CUDA device: every call bounds all rows of the batch
    (fixed shapes) from one captured CUDA graph, rows not asked for keeping their last radius."""
    radii = torch.full((batch.size,), start, dtype=batch.center.dtype, device=batch.center.device)

    def build(eps: Tensor) -> Callable[[], Tensor]:
        regions = ball_regions(batch, eps, threat, frame_mask)

        def compute() -> Tensor:
            lower, _ = Propagator(graph, regions, relaxer).bound(out_node, spec, need_upper=False)
            return lower.amin(1)
        return compute

    replayed = cuda_graphs.ReplayedBounds(build, radii)

    def margin(rows: Tensor, eps: Tensor) -> Tensor:
        radii[rows] = eps.to(radii)
        return replayed(radii)[rows]
    return margin


def _search_options(options) -> SearchOptions:
    """SearchOptions, or a dict of its fields (the spelling a JSON config gives)."""
    if isinstance(options, SearchOptions):
        return options
    if isinstance(options, dict):
        try:
            return SearchOptions(**options)
        except TypeError as exc:
            raise InputError(f"options: {exc}") from None
    raise InputError(f"options must be a verifier.SearchOptions (or a dict of its fields), not {type(options).__name__}")


def _check_labels(labels: np.ndarray, count: int, num_classes: int, batch: Batch) -> Tensor:
    array = np.asarray(labels).reshape(-1)
    if array.shape[0] != count:
        raise InputError(f"{array.shape[0]} labels for {count} samples")
    if not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.equal(np.mod(array, 1), 0)):
            raise InputError("labels must be integers")
    array = array.astype(np.int64)
    bad = array[(array < 0) | (array >= num_classes)]
    if bad.size:
        raise InputError(f"label {int(bad[0])} out of range: the model has {num_classes} classes (0..{num_classes - 1})")
    return torch.as_tensor(array, device=batch.center.device)
