"""Relaxations with free parameters, for the optimised mode (verifier.optimize).

Every value of the parameters gives a sound relaxation, so every iterate of the optimisation is a
valid certificate:
  * a line for an activation is given by its slope only; its intercept is the exact min (max) of
    f(x) - k*x over [l, u] (activation_lines.exact_intercepts), so any slope is sound. Slopes are
    kept in the range of f' over [l, u], where the best lines lie.
  * a product a*b (a = the gate factor, see product_mccormick) is bounded below by any convex
    combination of the two lower McCormick planes and above by any combination of the two upper
    ones; each factor is then replaced by its own optimisable lines. Mix 1 and CROWN's slopes give
    back CROWN's planes exactly, which is where the optimisation starts.
All functions are differentiable in the parameters (torch autograd) and computed in float64.
"""

from __future__ import annotations

import torch
from torch import Tensor

from verifier.activations import derivative
from verifier.ir import ActivationFn
from verifier.relaxations.activation_lines import exact_intercepts, relax_activation
from verifier.relaxations.base import Interval, Lines, Planes
from verifier.relaxations.product_mccormick import gate_is_right, interval_activation


def slope_range(fn: ActivationFn, lower: Tensor, upper: Tensor, *known: Tensor) -> tuple[Tensor, Tensor]:
    """[min, max] of f' over [lower, upper] for the activations of the table (their derivative is
    extreme at an end or at 0), widened to include `known` slopes (e.g. CROWN's chord)."""
    nearest_zero = torch.minimum(torch.maximum(torch.zeros_like(lower), lower), upper)
    candidates = [derivative(fn, lower), derivative(fn, upper), derivative(fn, nearest_zero), *known]
    stacked = torch.stack(torch.broadcast_tensors(*candidates))
    return stacked.amin(0), stacked.amax(0)


def lines_from_slopes(fn: ActivationFn, lower: Tensor, upper: Tensor, lower_slope: Tensor, upper_slope: Tensor) -> Lines:
    """Sound lines with the given slopes (any shape broadcasting with the interval), float64."""
    # the interval is not broadcast to the slopes' rows: f at its ends is then computed once per
    # neuron, not once per row (the values are the same)
    low, high = exact_intercepts(fn, lower_slope, upper_slope, lower, upper)
    with torch.no_grad():  # a rounding allowance: its gradient (~1e-16) only cost backward time
        scale = 1 + low.abs() + high.abs() + (lower_slope.abs() + upper_slope.abs()) * torch.maximum(lower.abs(), upper.abs())
        margin = 4 * torch.finfo(torch.float64).eps * scale
    return Lines(lower_slope, low - margin, upper_slope, high + margin)


def identity_lines(like: Tensor) -> Lines:
    one, zero = torch.ones_like(like), torch.zeros_like(like)
    return Lines(one, zero, one, zero)


def crown_slopes(fn: ActivationFn | None, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor] | None:
    """CROWN's slopes, where the optimisation of a line starts (None for the identity)."""
    if fn is None:
        return None
    lines = relax_activation(fn, lower.double(), upper.double())
    return lines.lower_slope, lines.upper_slope


def factor_interval(fn: ActivationFn | None, lower: Tensor, upper: Tensor) -> Interval:
    return Interval(lower, upper) if fn is None else interval_activation(fn, lower, upper)


def mixed_mccormick(left_fn: ActivationFn | None, right_fn: ActivationFn | None,
                    left: Interval, right: Interval, left_lines: Lines, right_lines: Lines,
                    lower_mix: Tensor, upper_mix: Tensor) -> Planes:
    """Planes in the pre-activations (x, y) from McCormick planes mixed by `lower_mix`,
    `upper_mix` in [0, 1] (1: CROWN's pair) and the factors' lines (left factor in x)."""
    swap = gate_is_right(left_fn, right_fn)
    a, b = (right, left) if swap else (left, right)
    a_lines, b_lines = (right_lines, left_lines) if swap else (left_lines, right_lines)
    # lower: mix * (b_l a + a_l b - a_l b_l) + (1 - mix) * (b_u a + a_u b - a_u b_u)
    m = lower_mix
    lower_a = m * b.lower + (1 - m) * b.upper
    lower_b = m * a.lower + (1 - m) * a.upper
    lower_c = -(m * a.lower * b.lower + (1 - m) * a.upper * b.upper)
    # upper: mix * (b_u a + a_l b - a_l b_u) + (1 - mix) * (b_l a + a_u b - a_u b_l)
    m = upper_mix
    upper_a = m * b.upper + (1 - m) * b.lower
    upper_b = m * a.lower + (1 - m) * a.upper
    upper_c = -(m * a.lower * b.upper + (1 - m) * a.upper * b.lower)
    lower = _substituted(lower_a, lower_b, lower_c, a_lines, b_lines, lower_side=True)
    upper = _substituted(upper_a, upper_b, upper_c, a_lines, b_lines, lower_side=False)
    if swap:
        lower, upper = (lower[1], lower[0], lower[2]), (upper[1], upper[0], upper[2])
    return Planes(*lower, *upper)


def _substituted(coef_a: Tensor, coef_b: Tensor, const: Tensor, a_lines: Lines, b_lines: Lines, lower_side: bool):
    """coef_a * a + coef_b * b + const with each factor replaced by its line on the side the sign
    of its coefficient calls for: (a's input slope, b's input slope, constant)."""
    a_slope, a_const = _one_factor(coef_a, a_lines, lower_side)
    b_slope, b_const = _one_factor(coef_b, b_lines, lower_side)
    return a_slope, b_slope, a_const + b_const + const


def _one_factor(coefficient: Tensor, lines: Lines, lower_side: bool) -> tuple[Tensor, Tensor]:
    use_lower = (coefficient >= 0) == lower_side
    slope = torch.where(use_lower, lines.lower_slope, lines.upper_slope)
    intercept = torch.where(use_lower, lines.lower_intercept, lines.upper_intercept)
    return coefficient * slope, coefficient * intercept
