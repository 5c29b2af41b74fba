"""McCormick planes for any product left_fn(x) * right_fn(y): CROWN's rule for products, the
generic fallback and the baseline the joint planes must beat.

Why one fixed pair and not "the better of the two envelopes": the two McCormick planes on each side
are often nearly equal at the box centre, and a per-neuron pick between them is decided by
rounding, so one sample's bound changed with the other samples in its batch. CROWN uses one fixed
pair; so do we. With a = the gate factor (the one with non-negative range, e.g. a sigmoid, or the
left factor when both or neither are) in [a_l, a_u] and b the other factor in [b_l, b_u]:

    lower:  a*b >= b_l*a + a_l*b - a_l*b_l      ((a - a_l)(b - b_l) >= 0)
    upper:  a*b <= b_u*a + a_l*b - a_l*b_u      ((a - a_l)(b - b_u) <= 0)

Both use a's lower end, which for a gate in [0, 1] is the anchor that keeps the state factor's
coefficient small. Each factor is then replaced by its lower or upper line (in its pre-activation),
chosen by the sign of its coefficient, giving planes in (x, y). This reproduces CROWN on the
unfused graph exactly whenever each activation output feeds this product only.
"""

from __future__ import annotations

import torch
from torch import Tensor

from verifier.activations import is_nonnegative
from verifier.ir import ActivationFn
from verifier.relaxations.activation_lines import interval_activation, relax_activation, round_toward
from verifier.relaxations.base import Interval, Lines, Planes


def factor(fn: ActivationFn | None, lower: Tensor, upper: Tensor) -> tuple[Interval, Lines]:
    """Range and lines of one factor (the identity when fn is None)."""
    if fn is None:
        one, zero = torch.ones_like(lower), torch.zeros_like(lower)
        return Interval(lower, upper), Lines(one, zero, one, zero)
    return interval_activation(fn, lower, upper), relax_activation(fn, lower, upper)


def gate_is_right(left_fn: ActivationFn | None, right_fn: ActivationFn | None) -> bool:
    """Whether the right factor plays the gate role a (see the module docstring)."""
    return is_nonnegative(right_fn) and not is_nonnegative(left_fn)


def _substitute(coefficient: Tensor, lines: Lines, lower_side: bool) -> tuple[Tensor, Tensor]:
    """coefficient * factor bounded by a line in the factor's input: (slope, intercept)."""
    use_lower = (coefficient >= 0) == lower_side
    slope = torch.where(use_lower, lines.lower_slope, lines.upper_slope)
    intercept = torch.where(use_lower, lines.lower_intercept, lines.upper_intercept)
    return coefficient * slope, coefficient * intercept


def _plane(coef_a: Tensor, coef_b: Tensor, const: Tensor, a_lines: Lines, b_lines: Lines, lower_side: bool):
    """coef_a*a + coef_b*b + const with both factors replaced by lines: (a slope, b slope, const)."""
    a_slope, a_const = _substitute(coef_a, a_lines, lower_side)
    b_slope, b_const = _substitute(coef_b, b_lines, lower_side)
    return a_slope, b_slope, a_const + b_const + const


def mccormick_planes(left_fn: ActivationFn | None, right_fn: ActivationFn | None,
                     xl: Tensor, xu: Tensor, yl: Tensor, yu: Tensor) -> Planes:
    """CROWN's fixed McCormick pair in the pre-activations (x, y), in the dtype of the bounds."""
    swap = gate_is_right(left_fn, right_fn)
    a_fn, b_fn = (right_fn, left_fn) if swap else (left_fn, right_fn)
    a_box, b_box = ((yl, yu), (xl, xu)) if swap else ((xl, xu), (yl, yu))
    (a, a_lines), (b, b_lines) = factor(a_fn, *a_box), factor(b_fn, *b_box)
    lower = _plane(b.lower, a.lower, -a.lower * b.lower, a_lines, b_lines, True)
    upper = _plane(b.upper, a.lower, -a.lower * b.upper, a_lines, b_lines, False)
    if swap:  # back to (x, y) order: a is y
        lower, upper = (lower[1], lower[0], lower[2]), (upper[1], upper[0], upper[2])
    return Planes(*lower, *upper)


def relax_product_mccormick(left_fn: ActivationFn | None, right_fn: ActivationFn | None,
                            x_lower: Tensor, x_upper: Tensor, y_lower: Tensor, y_upper: Tensor) -> Planes:
    dtype = x_lower.dtype
    xl, xu, yl, yu = (t.double() for t in (x_lower, x_upper, y_lower, y_upper))
    xu, yu = torch.maximum(xu, xl), torch.maximum(yu, yl)
    return to_dtype(mccormick_planes(left_fn, right_fn, xl, xu, yl, yu), xl, xu, yl, yu, dtype)


def to_dtype(planes: Planes, xl: Tensor, xu: Tensor, yl: Tensor, yu: Tensor, dtype: torch.dtype) -> Planes:
    """float64 planes -> `dtype`, constants widened by what computing them in float64 and rounding the
    slopes to `dtype` can cost on the box."""
    reach_x, reach_y = torch.maximum(xl.abs(), xu.abs()), torch.maximum(yl.abs(), yu.abs())
    margin = lambda px, py, c: 4 * torch.finfo(dtype).eps * (1 + c.abs() + px.abs() * reach_x + py.abs() * reach_y)
    lower_const = planes.lower_const - margin(planes.lower_x, planes.lower_y, planes.lower_const)
    upper_const = planes.upper_const + margin(planes.upper_x, planes.upper_y, planes.upper_const)
    return Planes(planes.lower_x.to(dtype), planes.lower_y.to(dtype), lower_const.to(dtype),
                  planes.upper_x.to(dtype), planes.upper_y.to(dtype), upper_const.to(dtype))


def interval_product(left_fn: ActivationFn | None, right_fn: ActivationFn | None, x_lower: Tensor, x_upper: Tensor,
                     y_lower: Tensor, y_upper: Tensor) -> Interval:
    """Range of left_fn(x) * right_fn(y) from the factors' ranges (exact for monotone factors),
    computed in float64 and rounded outward into the bounds' dtype."""
    dtype = x_lower.dtype
    xl, xu, yl, yu = (t.double() for t in (x_lower, x_upper, y_lower, y_upper))
    a = Interval(xl, xu) if left_fn is None else interval_activation(left_fn, xl, xu)
    b = Interval(yl, yu) if right_fn is None else interval_activation(right_fn, yl, yu)
    corners = torch.stack([a.lower * b.lower, a.lower * b.upper, a.upper * b.lower, a.upper * b.upper])
    low, high = corners.amin(0), corners.amax(0)
    margin = 2 * torch.finfo(dtype).eps * torch.maximum(low.abs(), high.abs())
    return Interval(round_toward(low - margin, dtype, down=True), round_toward(high + margin, dtype, down=False))
