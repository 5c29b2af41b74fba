"""Relaxations: pure functions from input bounds to linear bounds, collected in Relaxer strategies.

The engine takes a Relaxer as a parameter, so POPQORN's joint planes and the McCormick baseline
are a switch, not a fork: both share the activation lines and differ only in how products of two
bounded values are bounded."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from verifier.ir import ActivationFn
from verifier.relaxations.activation_lines import interval_activation, relax_activation
from verifier.relaxations.base import Interval, Lines, Planes
from verifier.relaxations.product_mccormick import interval_product, relax_product_mccormick
from verifier.relaxations.product_planes import relax_product_planes

ProductRelaxation = Callable[[ActivationFn | None, ActivationFn | None, Tensor, Tensor, Tensor, Tensor], Planes]


@dataclass(frozen=True)
class Relaxer:
    """Which relaxation family the engine uses: lines for activations, planes for products
    left_fn(x) * right_fn(y), linear in the pre-activations x and y."""

    name: str
    activation: Callable[[ActivationFn, Tensor, Tensor], Lines]
    product: ProductRelaxation


POPQORN = Relaxer("popqorn", relax_activation, relax_product_planes)
MCCORMICK = Relaxer("crown", relax_activation, relax_product_mccormick)
RELAXERS: dict[str, Relaxer] = {relaxer.name: relaxer for relaxer in (POPQORN, MCCORMICK)}

__all__ = ["Relaxer", "POPQORN", "MCCORMICK", "RELAXERS", "relax_activation", "interval_activation",
           "interval_product", "relax_product_planes", "relax_product_mccormick", "Lines", "Planes", "Interval"]
