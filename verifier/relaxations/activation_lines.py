"""Linear bounds for every elementwise activation, with exactly computed intercepts.

Slopes follow CROWN's rules (chord / tangent / adaptive; for S-shaped functions whose interval
crosses 0, the tangent at min(d_l, midpoint) below and max(d_u, midpoint) above, where d_l, d_u are
the tangent points whose lines pass through the opposite end point), but soundness never depends on
that choice: for a slope k the tightest sound intercepts are the min and max of f(x) - k*x over
[l, u], and for every activation those extremes lie among its critical points, declared in closed
form in the activation table (verifier.activations). Evaluating f - k*x there gives the exact
intercepts, vectorised over all neurons.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from verifier import activations
from verifier.activations import Curvature, critical_points, derivative
from verifier.ir import Act, ActivationFn
from verifier.relaxations.base import Interval, Lines

WIDTH_EPS = 1e-12  # below this width a chord is replaced by a derivative


def exact_intercepts(fn: ActivationFn, lower_slope: Tensor, upper_slope: Tensor,
                     lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
    """min of f(x) - lower_slope*x and max of f(x) - upper_slope*x over [lower, upper]."""
    if not (torch.is_grad_enabled() and any(t.requires_grad for t in (lower_slope, upper_slope, lower, upper))):
        return _extreme(fn, lower_slope, lower, upper, -1.0)[0], _extreme(fn, upper_slope, lower, upper, 1.0)[0]
    with torch.no_grad():
        (low, low_at, low_end), (high, high_at, high_end) = (
            _extreme(fn, lower_slope, lower, upper, -1.0, picked=True),
            _extreme(fn, upper_slope, lower, upper, 1.0, picked=True))
        slope_at = {end: derivative(fn, x) for end, x in ((0, lower), (1, upper))}
    return (_with_gradient(low, lower_slope, low_at, low_end, lower, upper, slope_at),
            _with_gradient(high, upper_slope, high_at, high_end, lower, upper, slope_at))


def _extreme(fn: ActivationFn, slope: Tensor, lower: Tensor, upper: Tensor, sign: float, picked: bool = False):
    """The min (sign -1) or max (+1) of f(x) - slope*x over the critical points; with `picked`, also
    the point that attains it and which candidate that is (0: lower end, 1: upper end, else an
    interior point), chosen by a rule rounding cannot flip: values compared on a grid 2^-36 of
    their scale, the first in table order on ties. CROWN's tangent lines touch f at two points, so
    the extreme is a tie at the optimisation's start, and a pick by last-bit noise made a sample's
    optimisation depend on the other samples in its batch (different kernels, different rounding).
    The value is the exact extreme whatever the pick, so soundness does not depend on it."""
    points = critical_points(fn, slope, lower, upper)
    values = torch.stack([v - slope * x for x, v in points])
    extreme = values.amax(0) if sign > 0 else values.amin(0)
    if not picked:
        return extreme, None, None
    grid = torch.round(sign * values / (values.abs().amax(0) + 1) * 2.0 ** 36)
    index = grid.max(0, keepdim=True).indices  # the first maximum (documented); argmax is slower here
    xs = torch.stack(torch.broadcast_tensors(*(x for x, _ in points)))
    return extreme, xs.gather(0, index).squeeze(0), index.squeeze(0)


def _with_gradient(value: Tensor, slope: Tensor, at: Tensor, which: Tensor, lower: Tensor, upper: Tensor,
                   slope_at: dict[int, Tensor]) -> Tensor:
    """The intercept `value` = f(x*) - k*x* with its gradient attached by the envelope theorem: d/dk
    = -x*, and d/dl = f'(l) - k (d/du = f'(u) - k) when x* is that end of the interval; an interior
    x* is stationary in x. The same gradient autograd gives through the candidates (up to the
    rounding of f'(x*) = k), without recording their computation: the optimised mode's backward
    pass was about a third slower with it."""
    # zero-valued carriers of each input's gradient; an infinite bound gives inf - inf: never let
    # that (or inf * 0) reach the value, which must stay the exact extreme
    moved = lambda t: (t - t.detach()).nan_to_num(0.0, 0.0, 0.0)
    gradient = -at.nan_to_num(0.0, 0.0, 0.0) * moved(slope)
    for end, bound in ((0, lower), (1, upper)):
        if bound.requires_grad:
            gradient = gradient + torch.where(which == end, slope_at[end] - slope.detach(), 0.0) * moved(bound)
    return value + gradient


def _chord(fn: ActivationFn, lower: Tensor, upper: Tensor) -> Tensor:
    width = upper - lower
    chord = (activations.apply(fn, upper) - activations.apply(fn, lower)) / width.clamp(min=WIDTH_EPS)
    return torch.where(width > WIDTH_EPS, chord, derivative(fn, lower))


def _bisect_tangent(fn: ActivationFn, anchor: Tensor, lower: Tensor, upper: Tensor, steps: int) -> Tensor:
    """Point d in [lower, upper] whose tangent passes through (anchor, f(anchor)), by bisection."""
    f_anchor = activations.apply(fn, anchor)
    gap = lambda d: activations.apply(fn, d) + derivative(fn, d) * (anchor - d) - f_anchor
    lo, hi = lower.clone(), upper.clone()
    sign_lo = torch.sign(gap(lo))
    for _ in range(steps):
        mid = (lo + hi) / 2
        same = torch.sign(gap(mid)) == sign_lo
        lo = torch.where(same, mid, lo)
        hi = torch.where(same, hi, mid)
    return (lo + hi) / 2


_TANGENT_TABLES: dict[tuple, tuple[Tensor, Tensor]] = {}
TABLE_REACH, TABLE_SIZE = 40.0, 4001


def _tangent_table(fn: ActivationFn, like: Tensor) -> tuple[Tensor, Tensor]:
    """For anchors a <= 0 on a grid, the tangent point d(a) >= 0 (odd-symmetric S-shaped functions
    have d(-a) = -d(a) for the mirrored case). Computed once per function, dtype and device."""
    key = (fn.kind, like.dtype, like.device)
    if key not in _TANGENT_TABLES:
        with torch.inference_mode(False):
            _TANGENT_TABLES[key] = _build_tangent_table(fn, like)
    return _TANGENT_TABLES[key]


def _build_tangent_table(fn: ActivationFn, like: Tensor) -> tuple[Tensor, Tensor]:
    anchors = torch.linspace(-TABLE_REACH, 0, TABLE_SIZE, dtype=torch.float64)
    points = _bisect_tangent(fn, anchors, torch.zeros_like(anchors), torch.full_like(anchors, TABLE_REACH), 80)
    return anchors.to(like), points.to(like)


def _tangent_point(fn: ActivationFn, anchor: Tensor, lower: Tensor, upper: Tensor) -> Tensor:
    """The point d in [lower, upper] whose tangent passes through (anchor, f(anchor)), read from a
    precomputed table (interpolated; only tightness depends on its accuracy, the intercepts are
    exact). NaN where d falls outside [lower, upper] or beyond the table."""
    anchors, points = _tangent_table(fn, anchor)
    mirrored = anchor > 0  # lower-line case: use the odd symmetry f(-x) = 2 f(0) - f(x)
    a = torch.where(mirrored, -anchor, anchor).clamp(min=-TABLE_REACH, max=0)
    position = (a + TABLE_REACH) / TABLE_REACH * (TABLE_SIZE - 1)
    index = position.floor().long().clamp(min=0, max=TABLE_SIZE - 2)
    weight = position - index
    point = points[index] * (1 - weight) + points[index + 1] * weight
    point = torch.where(mirrored, -point, point)
    inside = (point >= lower) & (point <= upper) & (anchor.abs() < TABLE_REACH)
    return torch.where(inside, point, torch.full_like(point, math.nan))


def _s_shaped_slopes(fn: ActivationFn, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
    """CROWN's rule for sigmoid-like functions. Entirely convex (u <= 0): tangent at the midpoint
    below, chord above; entirely concave: the mirror. Crossing 0: below, the tangent at
    min(d_l, midpoint), where d_l <= 0 is the tangent point whose line passes through (u, f(u));
    above, the tangent at max(d_u, midpoint), d_u >= 0 passing through (l, f(l)); the chord where
    that tangent point falls outside the interval (the chord is then the tighter line)."""
    chord = _chord(fn, lower, upper)
    middle = (lower + upper) / 2
    tangent_mid = derivative(fn, middle)
    zero = torch.zeros_like(lower)
    d_upper = _tangent_point(fn, lower, torch.maximum(zero, lower), torch.maximum(upper, zero))
    d_lower = _tangent_point(fn, upper, torch.minimum(lower, zero), torch.minimum(upper, zero))
    crossing_upper = torch.where(torch.isnan(d_upper), chord, derivative(fn, torch.maximum(d_upper.nan_to_num(0.0), middle)))
    crossing_lower = torch.where(torch.isnan(d_lower), chord, derivative(fn, torch.minimum(d_lower.nan_to_num(0.0), middle)))
    convex, concave = upper <= 0, lower >= 0
    lower_slope = torch.where(convex, tangent_mid, torch.where(concave, chord, crossing_lower))
    upper_slope = torch.where(convex, chord, torch.where(concave, tangent_mid, crossing_upper))
    return lower_slope, upper_slope


def _convex_slopes(fn: ActivationFn, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
    """Chord above; below, a tangent (smooth) or the adaptive CROWN slope (piecewise linear)."""
    chord = _chord(fn, lower, upper)
    if fn.kind in (Act.RELU, Act.LEAKY_RELU):
        negative = fn.alpha if fn.kind is Act.LEAKY_RELU else 0.0
        adaptive = torch.where(upper >= -lower, torch.ones_like(lower), torch.full_like(lower, negative))
        straight = (lower >= 0) | (upper <= 0)
        return torch.where(straight, chord, adaptive), chord
    return derivative(fn, (lower + upper) / 2), chord


def _slopes(fn: ActivationFn, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
    match activations.curvature(fn):
        case Curvature.S_SHAPED:
            return _s_shaped_slopes(fn, lower, upper)
        case Curvature.CONVEX:
            return _convex_slopes(fn, lower, upper)
        case Curvature.CONCAVE:  # mirror of the convex rule: f(x) = -g(-x) with g convex
            mirrored = _convex_slopes(_mirror(fn), -upper, -lower)
            return mirrored[1], mirrored[0]
        case Curvature.GENERAL:
            chord = _chord(fn, lower, upper)
            return chord, chord
    raise AssertionError(fn)


def _mirror(fn: ActivationFn) -> ActivationFn:
    """The convex g with f(x) = -g(-x) for a concave f (leaky ReLU with slope > 1 below zero)."""
    if fn.kind is Act.LEAKY_RELU:
        return ActivationFn(Act.LEAKY_RELU, 1 / fn.alpha)
    raise TypeError(f"no convex mirror for {fn}")


def relax_activation(fn: ActivationFn, lower: Tensor, upper: Tensor) -> Lines:
    """Sound lines for fn on [lower, upper], computed in float64 and rounded outward."""
    dtype = lower.dtype
    lower64, upper64 = lower.double(), torch.maximum(upper.double(), lower.double())
    lower_slope, upper_slope = _slopes(fn, lower64, upper64)
    lower_slope, upper_slope = torch.nan_to_num(lower_slope), torch.nan_to_num(upper_slope)
    if dtype != torch.float64:  # the slopes the engine will use, so the intercepts are exact for them
        lower_slope, upper_slope = lower_slope.to(dtype).double(), upper_slope.to(dtype).double()
    lower_intercept, upper_intercept = exact_intercepts(fn, lower_slope, upper_slope, lower64, upper64)
    lower_intercept, upper_intercept = outward(lower_intercept, upper_intercept, lower64, upper64, dtype,
                                               lower_slope, upper_slope)
    return Lines(lower_slope.to(dtype), lower_intercept.to(dtype), upper_slope.to(dtype), upper_intercept.to(dtype))


def outward(low: Tensor, high: Tensor, lower: Tensor, upper: Tensor, dtype: torch.dtype,
            *slopes: Tensor) -> tuple[Tensor, Tensor]:
    """Widen intercepts computed in float64 by the rounding error that computing them and
    evaluating the line in `dtype` can make, so the lines stay sound in floating point."""
    scale = 1 + low.abs() + high.abs() + sum(s.abs() for s in slopes) * torch.maximum(lower.abs(), upper.abs())
    margin = 4 * torch.finfo(dtype).eps * scale
    return low - margin, high + margin


def interval_activation(fn: ActivationFn, lower: Tensor, upper: Tensor) -> Interval:
    """Range of fn on [lower, upper] (min/max over its critical points with slope 0), evaluated in
    float64 and rounded outward into the bounds' dtype."""
    dtype = lower.dtype
    lower64, upper64 = lower.double(), torch.maximum(upper.double(), lower.double())
    zero = torch.zeros_like(lower64)
    values = torch.stack([v for _, v in critical_points(fn, zero, lower64, upper64)])
    low, high = values.amin(0), values.amax(0)
    margin = 2 * torch.finfo(dtype).eps * torch.maximum(low.abs(), high.abs())
    return Interval(round_toward(low - margin, dtype, down=True), round_toward(high + margin, dtype, down=False))


def round_toward(values: Tensor, dtype: torch.dtype, down: bool) -> Tensor:
    """float64 -> dtype, rounding toward -inf (down) or +inf, so a sound bound stays sound."""
    if dtype == torch.float64:
        return values
    rounded = values.to(dtype)
    wrong = rounded.double() > values if down else rounded.double() < values
    step = torch.full_like(rounded, -math.inf if down else math.inf)
    return torch.where(wrong, torch.nextafter(rounded, step), rounded)

