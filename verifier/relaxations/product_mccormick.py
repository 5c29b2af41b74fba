"""McCormick planes for any product left_fn(x) * right_fn(y): the generic fallback and the
auto_LiRPA-style baseline.

Each factor a = left_fn(x), b = right_fn(y) is bounded by its interval and its lines; McCormick's
envelope bounds a*b by planes in (a, b); substituting each factor's lower or upper line, chosen by
the sign of its McCormick coefficient, gives planes in the pre-activations (x, y). Of the two
McCormick planes on each side, the one higher (lower) at the box centre is kept per neuron.
"""

from __future__ import annotations

import torch
from torch import Tensor

from verifier.ir import ActivationFn
from verifier.relaxations.activation_lines import interval_activation, relax_activation
from verifier.relaxations.base import Interval, Lines, Planes


def factor(fn: ActivationFn | None, lower: Tensor, upper: Tensor) -> tuple[Interval, Lines]:
    """Range and lines of one factor (the identity when fn is None)."""
    if fn is None:
        one, zero = torch.ones_like(lower), torch.zeros_like(lower)
        return Interval(lower, upper), Lines(one, zero, one, zero)
    return interval_activation(fn, lower, upper), relax_activation(fn, lower, upper)


def _substitute(coefficient: Tensor, lines: Lines, lower_side: bool) -> tuple[Tensor, Tensor]:
    """coefficient * factor bounded by a line in the factor's input: (slope, intercept)."""
    use_lower = (coefficient >= 0) == lower_side
    slope = torch.where(use_lower, lines.lower_slope, lines.upper_slope)
    intercept = torch.where(use_lower, lines.lower_intercept, lines.upper_intercept)
    return coefficient * slope, coefficient * intercept


def _plane(coef_a: Tensor, coef_b: Tensor, const: Tensor, a_lines: Lines, b_lines: Lines, lower_side: bool):
    x_slope, x_const = _substitute(coef_a, a_lines, lower_side)
    y_slope, y_const = _substitute(coef_b, b_lines, lower_side)
    return x_slope, y_slope, x_const + y_const + const


def mccormick_candidates(left_fn: ActivationFn | None, right_fn: ActivationFn | None,
                         xl: Tensor, xu: Tensor, yl: Tensor, yu: Tensor) -> tuple[list, list]:
    """The two lower and the two upper McCormick planes, each (x slope, y slope, constant)."""
    (a, a_lines), (b, b_lines) = factor(left_fn, xl, xu), factor(right_fn, yl, yu)
    # a*b >= al*b + bl*a - al*bl  and  a*b >= au*b + bu*a - au*bu
    lower_planes = [_plane(b.lower, a.lower, -a.lower * b.lower, a_lines, b_lines, True),
                    _plane(b.upper, a.upper, -a.upper * b.upper, a_lines, b_lines, True)]
    # a*b <= au*b + bl*a - au*bl  and  a*b <= al*b + bu*a - al*bu
    upper_planes = [_plane(b.lower, a.upper, -a.upper * b.lower, a_lines, b_lines, False),
                    _plane(b.upper, a.lower, -a.lower * b.upper, a_lines, b_lines, False)]
    return lower_planes, upper_planes


def relax_product_mccormick(left_fn: ActivationFn | None, right_fn: ActivationFn | None,
                            x_lower: Tensor, x_upper: Tensor, y_lower: Tensor, y_upper: Tensor) -> Planes:
    dtype = x_lower.dtype
    xl, xu, yl, yu = (t.double() for t in (x_lower, x_upper, y_lower, y_upper))
    lower_planes, upper_planes = mccormick_candidates(left_fn, right_fn, xl, xu, yl, yu)
    xc, yc = (xl + xu) / 2, (yl + yu) / 2
    lower = _best(lower_planes, xc, yc, prefer_high=True)
    upper = _best(upper_planes, xc, yc, prefer_high=False)
    return to_dtype(Planes(*lower, *upper), xl, xu, yl, yu, dtype)


def to_dtype(planes: Planes, xl: Tensor, xu: Tensor, yl: Tensor, yu: Tensor, dtype: torch.dtype) -> Planes:
    """float64 planes -> `dtype`, constants widened by what rounding the slopes can cost on the box."""
    if dtype == torch.float64:
        return planes
    reach_x, reach_y = torch.maximum(xl.abs(), xu.abs()), torch.maximum(yl.abs(), yu.abs())
    margin = lambda px, py, c: 4 * torch.finfo(dtype).eps * (1 + c.abs() + px.abs() * reach_x + py.abs() * reach_y)
    lower_const = planes.lower_const - margin(planes.lower_x, planes.lower_y, planes.lower_const)
    upper_const = planes.upper_const + margin(planes.upper_x, planes.upper_y, planes.upper_const)
    return Planes(planes.lower_x.to(dtype), planes.lower_y.to(dtype), lower_const.to(dtype),
                  planes.upper_x.to(dtype), planes.upper_y.to(dtype), upper_const.to(dtype))


def _best(planes, xc: Tensor, yc: Tensor, prefer_high: bool):
    first, second = planes
    value = lambda p: p[0] * xc + p[1] * yc + p[2]
    take_first = value(first) >= value(second) if prefer_high else value(first) <= value(second)
    return tuple(torch.where(take_first, f, s) for f, s in zip(first, second))


def interval_product(left_fn: ActivationFn | None, right_fn: ActivationFn | None, x_lower: Tensor, x_upper: Tensor,
                     y_lower: Tensor, y_upper: Tensor) -> Interval:
    """Range of left_fn(x) * right_fn(y) from the factors' ranges (exact for monotone factors)."""
    a = Interval(x_lower, x_upper) if left_fn is None else interval_activation(left_fn, x_lower, x_upper)
    b = Interval(y_lower, y_upper) if right_fn is None else interval_activation(right_fn, y_lower, y_upper)
    corners = torch.stack([a.lower * b.lower, a.lower * b.upper, a.upper * b.lower, a.upper * b.upper])
    return Interval(corners.amin(0), corners.amax(0))
