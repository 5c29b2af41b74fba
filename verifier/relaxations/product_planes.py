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

import math

import torch
from torch import Tensor

from verifier import activations
from verifier.ir import Act, ActivationFn
from verifier.relaxations.activation_lines import critical_points, derivative
from verifier.relaxations.base import Planes
from verifier.relaxations.product_mccormick import mccormick_candidates, relax_product_mccormick, to_dtype

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


def _best_y_slope(minima: Tensor, ys: Tensor, yc: Tensor) -> tuple[Tensor, Tensor]:
    """max over B of min_j (minima_j - B*(y_j - yc)): a one-variable LP whose optimum is the
    lowest crossing of a line rising in B (y_j < yc) with a falling one (y_j > yc).
    Returns (value, B) at that optimum; minima and ys are (..., J)."""
    below = ys.unsqueeze(-1) < yc[..., None, None]  # (..., J, 1) line i rises
    above = ys.unsqueeze(-2) > yc[..., None, None]  # (..., 1, J) line k falls
    yi, yk = ys.unsqueeze(-1), ys.unsqueeze(-2)
    mi, mk = minima.unsqueeze(-1), minima.unsqueeze(-2)
    span = (yk - yi).clamp(min=1e-300)
    slope = (mk - mi) / span  # B where lines i and k cross
    value = mi - slope * (yi - yc[..., None, None])
    valid = below & above
    value = torch.where(valid, value, torch.full_like(value, math.inf)).flatten(-2)
    best, index = value.min(-1)
    slope = torch.gather(slope.flatten(-2), -1, index.unsqueeze(-1)).squeeze(-1)
    # no crossing (y box of zero width): B is free; take the flat plane on the single line
    flat = ~torch.isfinite(best)
    return torch.where(flat, minima.amin(-1), best), torch.where(flat, torch.zeros_like(best), slope)


def _searched_slopes(left_fn, right_fn, xl, xu, yl, yu, sign: Tensor, lines: int = 4, grid: int = 8,
                     rounds: int = 2) -> tuple[Tensor, Tensor]:
    """Slopes (A, B) of the plane with the best value at the box centre. The objective is concave in
    A, and for each A the best B is closed-form (_best_y_slope), so a vectorised grid over A,
    refined once around the winner, finds it. Uses a few y lines (exact when the y factor is
    linear); the caller makes the final constant rigorous. sign +1 asks for a lower plane, -1 for
    an upper one (an upper plane of f is minus a lower plane of -f); both sides run in one batch."""
    if right_fn is None:
        ys = torch.stack([yl, yu], -1)
    else:
        ys = yl.unsqueeze(-1) + (yu - yl).unsqueeze(-1) * torch.linspace(0, 1, lines, dtype=yl.dtype, device=yl.device)
    weights = sign.unsqueeze(-1) * _apply(right_fn, ys)
    xc, yc = (xl + xu) / 2, (yl + yu) / 2
    g_low, g_high = _derivative_range(left_fn, xl, xu)
    w_low, w_high = weights.amin(-1), weights.amax(-1)
    corners = torch.stack([g_low * w_low, g_low * w_high, g_high * w_low, g_high * w_high])
    low, high = corners.amin(0), corners.amax(0)
    steps = torch.linspace(0, 1, grid, dtype=xl.dtype, device=xl.device)
    # tensors laid out (grid, ..., lines)
    ys_g, weights_g = ys.unsqueeze(0), weights.unsqueeze(0)
    xl_g, xu_g, xc_g, yc_g = (t.unsqueeze(0) for t in (xl, xu, xc, yc))
    for _ in range(rounds):
        a = low.unsqueeze(0) + (high - low).unsqueeze(0) * steps.reshape(-1, *[1] * low.dim())
        shape = (*a.shape, ys.shape[-1])
        minima, _ = _edge_extremes(left_fn, weights_g.expand(shape), a.unsqueeze(-1).expand(shape),
                                   xl_g.unsqueeze(-1).expand(shape), xu_g.unsqueeze(-1).expand(shape))
        value, b = _best_y_slope(minima, ys_g.expand(shape), yc_g.expand(a.shape))
        best = (value + a * xc_g).argmax(0, keepdim=True)
        a_best, b_best = a.gather(0, best).squeeze(0), b.gather(0, best).squeeze(0)
        spacing = (high - low) / (grid - 1)
        low, high = a_best - spacing, a_best + spacing
    return sign * a_best, sign * b_best


def relax_product_planes(left_fn: ActivationFn | None, right_fn: ActivationFn | None,
                         x_lower: Tensor, x_upper: Tensor, y_lower: Tensor, y_upper: Tensor) -> Planes:
    """Tightest of the candidate planes per neuron; McCormick for products this module does not handle."""
    if not handles(left_fn, right_fn) and handles(right_fn, left_fn):  # y * sigmoid(x): swap roles
        swapped = relax_product_planes(right_fn, left_fn, y_lower, y_upper, x_lower, x_upper)
        return Planes(swapped.lower_y, swapped.lower_x, swapped.lower_const,
                      swapped.upper_y, swapped.upper_x, swapped.upper_const)
    if not handles(left_fn, right_fn):
        return relax_product_mccormick(left_fn, right_fn, x_lower, x_upper, y_lower, y_upper)
    dtype = x_lower.dtype
    xl, xu, yl, yu = (t.double() for t in (x_lower, x_upper, y_lower, y_upper))
    xu, yu = torch.maximum(xu, xl), torch.maximum(yu, yl)
    xc, yc = (xl + xu) / 2, (yl + yu) / 2
    lower_mccormick, upper_mccormick = mccormick_candidates(left_fn, right_fn, xl, xu, yl, yu)
    # every candidate's slopes serve both sides once its constants are recomputed exactly
    both = lambda t: torch.stack([t, t])
    sign = torch.tensor([1.0, -1.0], dtype=xl.dtype, device=xl.device).reshape(2, *[1] * xl.dim())
    searched_a, searched_b = _searched_slopes(left_fn, right_fn, both(xl), both(xu), both(yl), both(yu), sign)
    candidates = [*((p[0], p[1]) for p in (*lower_mccormick, *upper_mccormick)),
                  (searched_a[0], searched_b[0]), (searched_a[1], searched_b[1]),
                  _least_squares_slopes(left_fn, right_fn, xl, xu, yl, yu)]
    # all candidates at once: (candidates, ...) tensors; constants made rigorous for each
    a = torch.stack([c[0] for c in candidates])
    b = torch.stack([c[1] for c in candidates])
    box = [t.unsqueeze(0).expand_as(a) for t in (xl, xu, yl, yu)]
    low, high = sound_constants(left_fn, right_fn, a, b, *box)
    # the McCormick planes come with constants sound by construction: keep whichever is tighter
    inf = torch.full_like(xl, math.inf)
    low = torch.maximum(low, torch.stack([p[2] for p in lower_mccormick] + [-inf] * (len(candidates) - 2)))
    high = torch.minimum(high, torch.stack([inf, inf] + [p[2] for p in upper_mccormick] + [inf] * (len(candidates) - 4)))
    centre_lower = a * xc + b * yc + low
    centre_upper = a * xc + b * yc + high
    # prefer the first candidate on near-ties, so last-bit noise in the bounds does not flip choices
    tie = TIE * (1 + centre_lower.abs())
    pick_lower = (centre_lower - tie * torch.arange(len(candidates), device=a.device).reshape(-1, *[1] * xl.dim())).argmax(0, keepdim=True)
    pick_upper = (centre_upper + tie * torch.arange(len(candidates), device=a.device).reshape(-1, *[1] * xl.dim())).argmin(0, keepdim=True)
    take = lambda t, index: t.gather(0, index).squeeze(0)
    planes = Planes(take(a, pick_lower), take(b, pick_lower), take(low, pick_lower),
                    take(a, pick_upper), take(b, pick_upper), take(high, pick_upper))
    return to_dtype(planes, xl, xu, yl, yu, dtype)
