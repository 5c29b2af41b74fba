"""POPQORN's joint 2-D planes for the LSTM/GRU gate products g(x)*y and g(x)*h(y), with g, h in
{sigmoid, tanh}, made provably sound on their box.

For a plane p = A*x + B*y + C, soundness is a statement about the extremes of f - A*x - B*y:
- f = g(x)*y is linear in y, so the extremes lie on the edges y = y_l and y = y_u, where
  e*g(x) - A*x has its extremes at x_l, x_u or where g'(x) = A/e, known in closed form
  (activation_lines.critical_points). The constant C is therefore exact.
- f = g(x)*h(y): on each of N grid lines y = y_j the x-direction is exact in the same way; between
  lines the value changes by at most L*spacing/2 with L >= |g(x)*h'(y) - B| over the box, so
  subtracting that margin makes C a rigorous bound (a grid maximum plus a Lipschitz margin).
Slopes come from cheap candidates — the least-squares plane on a small grid and the tangent plane
at the box centre — and the McCormick planes; per neuron the candidate enclosing the least volume
(for a plane: the best value at the box centre) wins. Everything is batched tensor code.
"""

from __future__ import annotations

import torch
from torch import Tensor

from verifier import activations
from verifier.ir import Act, ActivationFn
from verifier.relaxations.activation_lines import critical_points, derivative
from verifier.relaxations.base import Planes
from verifier.relaxations.product_mccormick import relax_product_mccormick, to_dtype

S_SHAPED = (Act.SIGMOID, Act.TANH)
FIT_POINTS = 6  # least-squares grid per axis
LINES = 24
TIE = 1e-7  # y grid lines for the Lipschitz bound when the y factor is nonlinear


def handles(left_fn: ActivationFn | None, right_fn: ActivationFn | None) -> bool:
    return (left_fn is not None and left_fn.kind in S_SHAPED
            and (right_fn is None or right_fn.kind in S_SHAPED))


def _apply(fn: ActivationFn | None, x: Tensor) -> Tensor:
    return activations.apply(fn, x)


def _edge_extremes(fn: ActivationFn, weight: Tensor, slope: Tensor, xl: Tensor, xu: Tensor) -> tuple[Tensor, Tensor]:
    """min and max over x in [xl, xu] of weight*g(x) - slope*x (weight may have either sign)."""
    # stationary points solve g'(x) = slope / weight
    ratio = torch.where(weight != 0, slope / torch.where(weight != 0, weight, torch.ones_like(weight)),
                        torch.zeros_like(slope))
    values = torch.stack([weight * v - slope * x for x, v in critical_points(fn, ratio, xl, xu)])
    return values.amin(0), values.amax(0)


def _derivative_range(fn: ActivationFn, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
    """Range of g' on [lower, upper] for S-shaped g: peak at the point nearest 0."""
    nearest_zero = torch.minimum(torch.maximum(torch.zeros_like(lower), lower), upper)
    return torch.minimum(derivative(fn, lower), derivative(fn, upper)), derivative(fn, nearest_zero)


def sound_constants(left_fn: ActivationFn, right_fn: ActivationFn | None, a: Tensor, b: Tensor,
                    xl: Tensor, xu: Tensor, yl: Tensor, yu: Tensor) -> tuple[Tensor, Tensor]:
    """(min, max) over the box of f(x, y) - a*x - b*y, rigorously (lower, upper bound of them)."""
    if right_fn is None:
        lows, highs = [], []
        for edge in (yl, yu):
            low, high = _edge_extremes(left_fn, edge, a, xl, xu)
            lows.append(low - b * edge)
            highs.append(high - b * edge)
        return torch.minimum(*lows), torch.maximum(*highs)
    steps = torch.linspace(0, 1, LINES, dtype=xl.dtype, device=xl.device)
    ys = yl.unsqueeze(-1) + (yu - yl).unsqueeze(-1) * steps  # (..., LINES)
    expand = lambda t: t.unsqueeze(-1).expand_as(ys)
    low, high = _edge_extremes(left_fn, _apply(right_fn, ys), expand(a), expand(xl), expand(xu))
    low, high = (low - expand(b) * ys).amin(-1), (high - expand(b) * ys).amax(-1)
    # Lipschitz margin in y between grid lines: |g(x) h'(y) - b| <= lipschitz
    g_low, g_high = _apply(left_fn, xl), _apply(left_fn, xu)
    d_low, d_high = _derivative_range(right_fn, yl, yu)
    corners = torch.stack([g_low * d_low, g_low * d_high, g_high * d_low, g_high * d_high])
    lipschitz = torch.maximum((corners.amax(0) - b).abs(), (corners.amin(0) - b).abs())
    margin = lipschitz * (yu - yl) / (LINES - 1) / 2
    return low - margin, high + margin


def _least_squares_slopes(left_fn, right_fn, xl, xu, yl, yu) -> tuple[Tensor, Tensor]:
    t = torch.linspace(-1, 1, FIT_POINTS, dtype=xl.dtype, device=xl.device)
    xc, yc, rx, ry = (xl + xu) / 2, (yl + yu) / 2, (xu - xl) / 2, (yu - yl) / 2
    xs = xc.unsqueeze(-1) + rx.unsqueeze(-1) * t
    ys = yc.unsqueeze(-1) + ry.unsqueeze(-1) * t
    surface = _apply(left_fn, xs).unsqueeze(-1) * _apply(right_fn, ys).unsqueeze(-2)  # (..., i, j)
    norm = FIT_POINTS * (t ** 2).sum()
    slope_x = (surface * t[:, None]).sum((-1, -2)) / (norm * rx.clamp(min=1e-30))
    slope_y = (surface * t[None, :]).sum((-1, -2)) / (norm * ry.clamp(min=1e-30))
    grad_x, grad_y = _gradient(left_fn, right_fn, xc, yc)
    return torch.where(rx > 0, slope_x, grad_x), torch.where(ry > 0, slope_y, grad_y)


def _gradient(left_fn, right_fn, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    right = _apply(right_fn, y)
    right_slope = torch.ones_like(y) if right_fn is None else derivative(right_fn, y)
    return derivative(left_fn, x) * right, _apply(left_fn, x) * right_slope


def relax_product_planes(left_fn: ActivationFn | None, right_fn: ActivationFn | None,
                         x_lower: Tensor, x_upper: Tensor, y_lower: Tensor, y_upper: Tensor) -> Planes:
    """Tightest of the candidate planes per neuron; McCormick for products this module does not handle."""
    if not handles(left_fn, right_fn):
        return relax_product_mccormick(left_fn, right_fn, x_lower, x_upper, y_lower, y_upper)
    dtype = x_lower.dtype
    xl, xu, yl, yu = (t.double() for t in (x_lower, x_upper, y_lower, y_upper))
    xu, yu = torch.maximum(xu, xl), torch.maximum(yu, yl)
    xc, yc = (xl + xu) / 2, (yl + yu) / 2
    candidates = [_least_squares_slopes(left_fn, right_fn, xl, xu, yl, yu), _gradient(left_fn, right_fn, xc, yc)]
    mccormick = relax_product_mccormick(left_fn, right_fn, xl, xu, yl, yu)
    best_lower = (mccormick.lower_x, mccormick.lower_y, mccormick.lower_const)
    best_upper = (mccormick.upper_x, mccormick.upper_y, mccormick.upper_const)
    at_centre = lambda p: p[0] * xc + p[1] * yc + p[2]
    for a, b in candidates:
        low, high = sound_constants(left_fn, right_fn, a, b, xl, xu, yl, yu)
        lower, upper = (a, b, low), (a, b, high)
        # switch only on a clear win, so last-bit noise in the bounds does not flip choices
        better_lower = at_centre(lower) > at_centre(best_lower) + TIE * (1 + at_centre(best_lower).abs())
        better_upper = at_centre(upper) < at_centre(best_upper) - TIE * (1 + at_centre(best_upper).abs())
        best_lower = tuple(torch.where(better_lower, n, o) for n, o in zip(lower, best_lower))
        best_upper = tuple(torch.where(better_upper, n, o) for n, o in zip(upper, best_upper))
    return to_dtype(Planes(*best_lower, *best_upper), xl, xu, yl, yu, dtype)
