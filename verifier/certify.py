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

    Why not plain doubling + bisection (~14 bound calls): the margin is a smooth, roughly concave
    function of ε, so the curve through the last three points predicts where it crosses zero. Until a
    refuted ε is found the search extrapolates (at least x1.2, at most x8 per step); inside a bracket
    it probes just below and just above the predicted crossing (by half the tolerance) — or, when the
    crossing is predicted within the tolerance of an end, the one probe that ends the search — and
    falls back to bisection when two steps in a row do not halve the bracket. Probes are rounded to 20 significant bits,
    so last-bit noise in a margin cannot change the sequence of probes: a row's radius does not
    depend on the other rows in its batch. Only certified ε are ever reported."""
    count = clean.shape[0]
    zeros = lambda: torch.zeros(count, dtype=torch.float64, device=device)
    lower, at_lower = zeros(), clean.to(device=device, dtype=torch.float64).clone()
    upper, at_upper = torch.full((count,), math.inf, dtype=torch.float64, device=device), zeros()
    third, at_third = zeros(), at_lower.clone()  # the last end point replaced: a third point for the curve
    first = torch.full((count,), options.start, dtype=torch.float64, device=device)
    width_before = torch.full_like(lower, math.inf)
    stalls = torch.zeros(count, dtype=torch.long, device=device)  # bracketed steps in a row that did not halve it
    eps = first
    low_side = torch.ones(count, dtype=torch.bool, device=device)  # probe below the crossing next
    active = torch.arange(count, device=device)
    for _ in range(options.max_steps):
        if active.numel() == 0:
            break
        value = margin(active, eps[active].to(dtype)).to(device=device, dtype=torch.float64)
        ok = value > 0
        rows_ok, rows_bad = active[ok], active[~ok]
        third[rows_ok], at_third[rows_ok] = lower[rows_ok], at_lower[rows_ok]
        had_upper = torch.isfinite(upper[rows_bad])
        third[rows_bad[had_upper]], at_third[rows_bad[had_upper]] = upper[rows_bad[had_upper]], at_upper[rows_bad[had_upper]]
        lower[rows_ok], at_lower[rows_ok] = eps[rows_ok], value[ok]
        upper[rows_bad], at_upper[rows_bad] = eps[rows_bad], value[~ok]
        lo, hi = lower[active], upper[active]
        bracketed = torch.isfinite(hi)
        done = (bracketed & (hi - lo <= options.tol * hi)) | (lo >= MAX_RADIUS) | (hi <= 1e-12)
        stalled = bracketed & (hi - lo > 0.5 * width_before[active])
        stalls[active] = torch.where(stalled, stalls[active] + 1, torch.zeros_like(stalls[active]))
        eps[active] = _next_probe(lo, hi, at_lower[active], at_upper[active], third[active], at_third[active],
                                  stalls[active] >= 2, low_side[active], options.tol)
        width_before[active] = torch.where(bracketed, hi - lo, width_before[active])
        low_side[active] = ~low_side[active]
        active = active[~done]
    return lower


def _next_probe(lo: Tensor, hi: Tensor, at_lo: Tensor, at_hi: Tensor, third: Tensor, at_third: Tensor,
                slow: Tensor, low_side: Tensor, tol: float) -> Tensor:
    """The next ε of every row (see search_radius)."""
    bracketed = torch.isfinite(hi)
    # no refuted ε yet: extrapolate the secant through (third, at_third) and (lo, at_lo)
    falling = at_third - at_lo
    reach = torch.where(falling > 0, lo + at_lo * (lo - third) / falling.clamp(min=1e-300), lo * 8)
    grow = torch.minimum(torch.maximum(reach, lo * 1.2), lo * 8)
    # bracketed: the zero of the parabola through the three points (the secant's when degenerate),
    # nudged by half the tolerance to one side, kept inside the bracket
    width = hi - lo
    secant = lo + width * at_lo / (at_lo - at_hi).clamp(min=1e-300)
    cross = torch.where(torch.isfinite(hi), _parabola_zero(lo, hi, third, at_lo, at_hi, at_third, secant), secant)
    aim = torch.where(low_side, cross * (1 - tol / 2), cross * (1 + tol / 2))
    aim = torch.minimum(torch.maximum(aim, lo + 0.05 * width), hi - 0.05 * width)
    # a crossing predicted within the tolerance of an end: the probe that ends the search if right
    finish_low, finish_high = hi * (1 - tol), lo * (1 + tol)
    aim = torch.where(cross >= finish_low, torch.maximum(finish_low, lo + 0.05 * width), aim)
    aim = torch.where(cross <= finish_high, torch.minimum(finish_high, hi - 0.05 * width), aim)
    probe = torch.where(bracketed, torch.where(slow, (lo + hi) / 2, aim), grow)
    return _round_probe(probe)


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
