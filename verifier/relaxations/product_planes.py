"""POPQORN's joint 2-D planes for the LSTM/GRU gate products g(x)*y and g(x)*h(y), with g, h in
{sigmoid, tanh}, made provably sound on their box.

For a plane p = A*x + B*y + C, soundness is a statement about the extremes of f - A*x - B*y:
- f = g(x)*y is linear in y, so the extremes lie on the edges y = y_l and y = y_u, where
  e*g(x) - A*x has its extremes at x_l, x_u or where g'(x) = A/e, known in closed form
  (activation_lines.critical_points). The constant C is therefore exact.
- f = g(x)*h(y): on each of N grid lines y = y_j the x-direction is exact in the same way; between
  lines the value changes by at most L*spacing/2 with L >= |g(x)*h'(y) - B| over the box, so
  subtracting that margin makes C a rigorous bound (a grid maximum plus a Lipschitz margin).
Slopes come from cheap candidates — the plane with the best value at the box centre (searched) and
the least-squares plane on a small grid — compared with CROWN's fixed McCormick plane by POPQORN's
criterion (value at the box centre); the choice is a deterministic function of the neuron's own box,
and McCormick keeps near-ties. Everything is batched tensor code.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from verifier import activations
from verifier.activations import critical_points, derivative
from verifier.ir import ActivationFn
from verifier.relaxations.base import Planes
from verifier.relaxations.product_mccormick import mccormick_planes, relax_product_mccormick, to_dtype

FIT_POINTS = 6  # least-squares grid per axis
LINES = 24  # y grid lines for the Lipschitz bound when the y factor is nonlinear
PREFERENCE = 1e-6  # a joint plane must beat McCormick at the box centre by this (relative)


def handles(left_fn: ActivationFn | None, right_fn: ActivationFn | None) -> bool:
    """g(x) * y or g(x) * h(y) with g, h S-shaped and jointly relaxable (sigmoid, tanh)."""
    joint = lambda fn: fn is not None and activations.spec(fn).joint_planes
    return joint(left_fn) and (right_fn is None or joint(right_fn))


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


def _stable(scores: Tensor) -> Tensor:
    """Scores for an argmin/argmax whose winner must not depend on last-bit noise: rounded to
    float32, so candidates within rounding tie exactly and the first one wins (torch's argmax and
    min return the first extreme). The same neuron then picks the same plane in any batch."""
    return scores.float()


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
    _, index = _stable(value).min(-1)
    best = torch.gather(value, -1, index.unsqueeze(-1)).squeeze(-1)
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
        best = _stable(value + a * xc_g).argmax(0, keepdim=True)
        a_best, b_best = a.gather(0, best).squeeze(0), b.gather(0, best).squeeze(0)
        spacing = (high - low) / (grid - 1)
        low, high = a_best - spacing, a_best + spacing
    return sign * a_best, sign * b_best


def relax_product_planes(left_fn: ActivationFn | None, right_fn: ActivationFn | None,
                         x_lower: Tensor, x_upper: Tensor, y_lower: Tensor, y_upper: Tensor) -> Planes:
    """Per neuron and side, POPQORN's criterion: the plane closest to the surface on average over
    the box (for a plane: the best value at the box centre) among the joint candidates and CROWN's
    McCormick plane. McCormick keeps the neuron unless a joint plane is better by a clear margin,
    so rounding noise cannot flip the choice. Products this module does not handle get McCormick."""
    if not handles(left_fn, right_fn) and handles(right_fn, left_fn):  # y * sigmoid(x): swap roles
        swapped = relax_product_planes(right_fn, left_fn, y_lower, y_upper, x_lower, x_upper)
        return Planes(swapped.lower_y, swapped.lower_x, swapped.lower_const,
                      swapped.upper_y, swapped.upper_x, swapped.upper_const)
    if not handles(left_fn, right_fn):
        return relax_product_mccormick(left_fn, right_fn, x_lower, x_upper, y_lower, y_upper)
    dtype = x_lower.dtype
    xl, xu, yl, yu = (t.double() for t in (x_lower, x_upper, y_lower, y_upper))
    xu, yu = torch.maximum(xu, xl), torch.maximum(yu, yl)
    mccormick = mccormick_planes(left_fn, right_fn, xl, xu, yl, yu)
    both = lambda t: torch.stack([t, t])
    one = torch.ones(1, dtype=xl.dtype, device=xl.device)  # made on the device: no host copy
    sign = torch.cat([one, -one]).reshape(2, *[1] * xl.dim())
    searched_a, searched_b = _searched_slopes(left_fn, right_fn, both(xl), both(xu), both(yl), both(yu), sign)
    fitted_a, fitted_b = _least_squares_slopes(left_fn, right_fn, xl, xu, yl, yu)
    a = torch.stack([searched_a[0], searched_a[1], fitted_a])
    b = torch.stack([searched_b[0], searched_b[1], fitted_b])
    box = [t.unsqueeze(0).expand_as(a) for t in (xl, xu, yl, yu)]
    low, high = sound_constants(left_fn, right_fn, a, b, *box)
    xc, yc = (xl + xu) / 2, (yl + yu) / 2
    lower = _closest(a, b, low, (mccormick.lower_x, mccormick.lower_y, mccormick.lower_const), xc, yc, 1.0)
    upper = _closest(a, b, high, (mccormick.upper_x, mccormick.upper_y, mccormick.upper_const), xc, yc, -1.0)
    return to_dtype(Planes(*lower, *upper), xl, xu, yl, yu, dtype)


def _closest(a: Tensor, b: Tensor, c: Tensor, mccormick: tuple[Tensor, Tensor, Tensor],
             xc: Tensor, yc: Tensor, side: float) -> tuple[Tensor, Tensor, Tensor]:
    """The candidate (rows of a, b, c) with the best value at the box centre (side +1: highest,
    for lower planes; -1: lowest, for upper planes) if it beats the McCormick plane there by more
    than PREFERENCE, else the McCormick plane."""
    mx, my, mc = mccormick
    score = side * (a * xc + b * yc + c)
    _, index = _stable(score).max(0)
    best = score.gather(0, index.unsqueeze(0)).squeeze(0)
    reference = side * (mx * xc + my * yc + mc)
    take = lambda t: t.gather(0, index.unsqueeze(0)).squeeze(0)
    use = best > reference + PREFERENCE * (1 + reference.abs())
    return (torch.where(use, take(a), mx), torch.where(use, take(b), my), torch.where(use, take(c), mc))
