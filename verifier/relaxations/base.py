"""Types every relaxation returns. Relaxations are pure functions: bounds in, lines/planes out.

All tensors are elementwise over neurons (any shape, broadcast together), on any device/dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Lines:
    """lower_slope*x + lower_intercept <= f(x) <= upper_slope*x + upper_intercept on [lower, upper]."""

    lower_slope: Tensor
    lower_intercept: Tensor
    upper_slope: Tensor
    upper_intercept: Tensor


@dataclass(frozen=True)
class Planes:
    """lower_x*x + lower_y*y + lower_const <= f(x, y) <= upper_x*x + upper_y*y + upper_const
    on the box [x_lower, x_upper] x [y_lower, y_upper]."""

    lower_x: Tensor
    lower_y: Tensor
    lower_const: Tensor
    upper_x: Tensor
    upper_y: Tensor
    upper_const: Tensor


@dataclass(frozen=True)
class Interval:
    lower: Tensor
    upper: Tensor


def constant_lines(lower_value: Tensor, upper_value: Tensor) -> Lines:
    zero = torch.zeros_like(lower_value)
    return Lines(zero, lower_value, zero.clone(), upper_value)
