"""Linear bounds for every elementwise activation, with exactly computed intercepts.

Slopes are chosen by the usual CROWN heuristics (chord / tangent / adaptive), but soundness never
depends on that choice: for a slope k the tightest sound intercepts are the min and max of
f(x) - k*x over [l, u], and for every activation here those extremes lie in a small set of
*critical points* known in closed form — the interval ends, the kinks (with one-sided limits where
f jumps), and the points where f'(x) = k (e.g. sigmoid: s(1-s) = k). Evaluating f - k*x there gives
the exact intercepts, vectorised over all neurons.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from verifier import activations
from verifier.ir import Act, ActivationFn
from verifier.relaxations.base import Interval, Lines

WIDTH_EPS = 1e-12  # below this width a chord is replaced by a derivative


def derivative(fn: ActivationFn, x: Tensor) -> Tensor:
    """f'(x) (a one-sided value at kinks); used for tangent slopes only, never for soundness."""
    match fn.kind:
        case Act.SIGMOID:
            s = torch.sigmoid(x)
            return s * (1 - s)
        case Act.TANH:
            return 1 - torch.tanh(x) ** 2
        case Act.SOFTSIGN:
            return 1 / (1 + x.abs()) ** 2
        case Act.SOFTPLUS:
            return torch.sigmoid(x)
        case Act.RELU:
            return (x > 0).to(x)
        case Act.LEAKY_RELU:
            return torch.where(x >= 0, torch.ones_like(x), torch.full_like(x, fn.alpha))
        case Act.ELU:
            return torch.where(x >= 0, torch.ones_like(x), fn.alpha * torch.exp(x.clamp(max=0)))
        case Act.CLIP:
            return ((x >= fn.alpha) & (x <= fn.beta)).to(x)
        case Act.THRESHOLDED_RELU:
            return (x > fn.alpha).to(x)
    raise TypeError(f"no derivative for {fn}")


def _s_shaped_stationary(fn: ActivationFn, k: Tensor) -> Tensor:
    """x0 >= 0 with f'(±x0) = k for the symmetric S-shaped functions (NaN when no solution)."""
    k = k.clamp(min=1e-300)
    match fn.kind:
        case Act.SIGMOID:  # s(1-s) = k  ->  s = (1 + sqrt(1 - 4k)) / 2
            root = torch.sqrt(1 - 4 * k)
            return torch.log1p(root) - torch.log1p(-root)
        case Act.TANH:  # 1 - t^2 = k
            return torch.atanh(torch.sqrt(1 - k))
        case Act.SOFTSIGN:  # 1 / (1 + |x|)^2 = k
            return 1 / torch.sqrt(k) - 1
    raise TypeError(fn)


def critical_points(fn: ActivationFn, k: Tensor, lower: Tensor, upper: Tensor) -> list[tuple[Tensor, Tensor]]:
    """Points (x, value) in [lower, upper] among which f(x) - k*x attains its min and max (values
    may be one-sided limits at jumps). Out-of-range candidates are clamped to the interval, which
    only repeats an end point."""
    clamp = lambda x: torch.minimum(torch.maximum(x, lower), upper)
    at = lambda x: (clamp(x), activations.apply(fn, clamp(x)))
    points = [(lower, activations.apply(fn, lower)), (upper, activations.apply(fn, upper))]
    match fn.kind:
        case Act.SIGMOID | Act.TANH | Act.SOFTSIGN:
            x0 = torch.nan_to_num(_s_shaped_stationary(fn, k), nan=0.0, posinf=0.0)
            points += [at(x0), at(-x0)]
        case Act.SOFTPLUS:  # sigmoid(x) = k
            x0 = torch.logit(k.clamp(1e-300, 1 - 1e-16))
            points.append(at(x0))
        case Act.ELU:  # alpha * e^x = k on x < 0, kink at 0
            ratio = k / fn.alpha if fn.alpha != 0 else torch.zeros_like(k)
            x0 = torch.where(ratio > 0, torch.log(ratio.clamp(min=1e-300)), torch.zeros_like(k)).clamp(max=0)
            points += [at(x0), at(torch.zeros_like(k))]
        case Act.RELU | Act.LEAKY_RELU:
            points.append(at(torch.zeros_like(k)))
        case Act.CLIP:
            for edge in (fn.alpha, fn.beta):
                if math.isfinite(edge):
                    points.append(at(torch.full_like(k, edge)))
        case Act.THRESHOLDED_RELU:  # f jumps from 0 to alpha just right of alpha
            edge = torch.full_like(k, fn.alpha)
            points.append(at(edge))
            inside = (lower <= edge) & (edge < upper)
            points.append((clamp(edge), torch.where(inside, edge, activations.apply(fn, clamp(edge)))))
    return points


def exact_intercepts(fn: ActivationFn, lower_slope: Tensor, upper_slope: Tensor,
                     lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
    """min of f(x) - lower_slope*x and max of f(x) - upper_slope*x over [lower, upper]."""
    low = torch.stack([v - lower_slope * x for x, v in critical_points(fn, lower_slope, lower, upper)]).amin(0)
    high = torch.stack([v - upper_slope * x for x, v in critical_points(fn, upper_slope, lower, upper)]).amax(0)
    return low, high


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


def _tangent_through(fn: ActivationFn, anchor: Tensor, lower: Tensor, upper: Tensor) -> Tensor:
    """Slope of the tangent at some d in [lower, upper] whose line passes through (anchor, f(anchor))
    — the CROWN choice for S-shaped functions crossing zero — read from a precomputed table of
    tangent points (interpolated; only tightness depends on its accuracy, the intercepts are exact).
    NaN where the tangent point falls outside [lower, upper]."""
    anchors, points = _tangent_table(fn, anchor)
    mirrored = anchor > 0  # lower-line case: use symmetry f(-x) = c - f(x) of sigmoid/tanh/softsign
    a = torch.where(mirrored, -anchor, anchor).clamp(min=-TABLE_REACH, max=0)
    position = (a + TABLE_REACH) / TABLE_REACH * (TABLE_SIZE - 1)
    index = position.floor().long().clamp(max=TABLE_SIZE - 2)
    weight = position - index
    point = points[index] * (1 - weight) + points[index + 1] * weight
    point = torch.where(mirrored, -point, point)
    inside = (point >= lower) & (point <= upper) & (anchor.abs() < TABLE_REACH)  # beyond the table: chord
    return torch.where(inside, derivative(fn, point), torch.full_like(point, math.nan))


def _s_shaped_slopes(fn: ActivationFn, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
    chord = _chord(fn, lower, upper)
    tangent_mid = derivative(fn, (lower + upper) / 2)
    zero = torch.zeros_like(lower)
    upper_tangent = _tangent_through(fn, lower, torch.maximum(zero, lower), torch.maximum(upper, zero))
    lower_tangent = _tangent_through(fn, upper, torch.minimum(lower, zero), torch.minimum(upper, zero))
    crossing_upper = torch.where(torch.isnan(upper_tangent), chord, upper_tangent)
    crossing_lower = torch.where(torch.isnan(lower_tangent), chord, lower_tangent)
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
    kind = fn.kind
    if kind in (Act.SIGMOID, Act.TANH, Act.SOFTSIGN):
        return _s_shaped_slopes(fn, lower, upper)
    convex = (kind in (Act.RELU, Act.SOFTPLUS) or (kind is Act.LEAKY_RELU and fn.alpha <= 1)
              or (kind is Act.ELU and 0 <= fn.alpha <= 1))
    if convex:
        return _convex_slopes(fn, lower, upper)
    if kind is Act.LEAKY_RELU:  # alpha > 1: concave, mirror of the convex rule
        flipped_lower, flipped_upper = _convex_slopes(ActivationFn(Act.LEAKY_RELU, 1 / fn.alpha), -upper, -lower)
        return flipped_upper, flipped_lower
    chord = _chord(fn, lower, upper)
    return chord, chord


def relax_activation(fn: ActivationFn, lower: Tensor, upper: Tensor) -> Lines:
    """Sound lines for fn on [lower, upper], computed in float64 and rounded outward."""
    dtype = lower.dtype
    lower64, upper64 = lower.double(), torch.maximum(upper.double(), lower.double())
    lower_slope, upper_slope = _slopes(fn, lower64, upper64)
    lower_slope, upper_slope = torch.nan_to_num(lower_slope), torch.nan_to_num(upper_slope)
    lower_intercept, upper_intercept = exact_intercepts(fn, lower_slope, upper_slope, lower64, upper64)
    if dtype != torch.float64:
        lower_slope, upper_slope = lower_slope.to(dtype).double(), upper_slope.to(dtype).double()
        lower_intercept, upper_intercept = exact_intercepts(fn, lower_slope, upper_slope, lower64, upper64)
        lower_intercept, upper_intercept = outward(lower_intercept, upper_intercept, lower64, upper64, lower_slope, upper_slope)
    return Lines(lower_slope.to(dtype), lower_intercept.to(dtype), upper_slope.to(dtype), upper_intercept.to(dtype))


def outward(low: Tensor, high: Tensor, lower: Tensor, upper: Tensor, *slopes: Tensor) -> tuple[Tensor, Tensor]:
    """Widen float64 intercepts by the rounding error a float32 evaluation of the line can make."""
    scale = 1 + low.abs() + high.abs() + sum(s.abs() for s in slopes) * torch.maximum(lower.abs(), upper.abs())
    margin = 4 * torch.finfo(torch.float32).eps * scale
    return low - margin, high + margin


def interval_activation(fn: ActivationFn, lower: Tensor, upper: Tensor) -> Interval:
    """Exact range of fn on [lower, upper] (min/max over its critical points with slope 0)."""
    zero = torch.zeros_like(lower)
    values = torch.stack([v for _, v in critical_points(fn, zero, lower, torch.maximum(upper, lower))])
    return Interval(values.amin(0), values.amax(0))


SLOPE_RULES: dict[str, Callable] = {"s_shaped": _s_shaped_slopes, "convex": _convex_slopes}
