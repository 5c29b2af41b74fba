"""The activation table: every elementwise activation the IR knows, declared once.

Each entry says how ONNX spells the activation (operator names, and the names and defaults of its
alpha/beta attributes), how to compute it and its derivative, where f(x) - k*x can have interior
extremes (its *critical points*: stationary points in closed form, kinks, jumps), and the traits the
relaxations rely on (S-shaped, convex, concave, non-negative range, jointly relaxable in a product).
The parser, the exact forward pass and the relaxations all read this table; nothing else lists
activation kinds.

Why torch-free at import: the front end reads the ONNX names without torch. The functions below only
use Tensor methods on the tensors they are given, so the table itself needs no torch import.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from verifier.ir import Act, ActivationFn

if TYPE_CHECKING:
    from torch import Tensor


class Curvature(enum.Enum):
    """Which CROWN slope rule applies (verifier.relaxations.activation_lines)."""

    S_SHAPED = "s-shaped"  # convex below 0, concave above, odd-symmetric around (0, f(0))
    CONVEX = "convex"
    CONCAVE = "concave"
    GENERAL = "general"  # chords on both sides; exact intercepts keep them sound


Points = list[tuple["Tensor", "Tensor"]]


@dataclass(frozen=True)
class ActivationSpec:
    """What the whole code base knows about one activation kind.

    `critical(fn, k, lower, upper, at)` lists the interior points (x, f(x) or a one-sided limit)
    where f(x) - k*x may attain its min or max over [lower, upper]; the interval ends are always
    added by `critical_points`. `at(x)` clamps x into the interval and evaluates f there."""

    kind: Act
    onnx_names: tuple[str, ...]
    params: tuple[tuple[str, float | None], ...]  # (ONNX attribute, spec default) for alpha, beta
    forward: Callable[[Tensor, ActivationFn], Tensor]
    derivative: Callable[[Tensor, ActivationFn], Tensor]
    critical: Callable[[ActivationFn, Tensor, Tensor, Tensor, Callable], Points]
    curvature: Callable[[ActivationFn], Curvature]
    nonnegative: Callable[[ActivationFn], bool]  # f(x) >= 0 everywhere: a "gate" factor of a product
    joint_planes: bool = False  # products with this factor get POPQORN's 2-D planes


def _zeros_like(x: Tensor) -> Tensor:
    return x.new_zeros(x.shape)


def _full_like(x: Tensor, value: float) -> Tensor:
    return x.new_full(x.shape, value)


def _s_shaped_stationary(solve: Callable[[Tensor], Tensor], k_max: float):
    """Critical points of an odd-symmetric S-shaped f: x0 >= 0 with f'(±x0) = k. Slopes outside
    (0, max f') have no solution; they are clamped into the range, which only adds a point of the
    interval as a candidate (a candidate can never lower the minimum below the true one) and keeps
    every value and gradient finite for the optimised mode."""

    def critical(fn: ActivationFn, k: Tensor, lower: Tensor, upper: Tensor, at: Callable) -> Points:
        x0 = solve(k.clamp(min=1e-12, max=k_max * (1 - 1e-12)))
        return [at(x0), at(-x0)]

    return critical


def _sigmoid_derivative(x: Tensor, fn: ActivationFn) -> Tensor:
    s = x.sigmoid()
    return s * (1 - s)


def _sigmoid_stationary(k: Tensor) -> Tensor:  # s(1-s) = k  ->  s = (1 + sqrt(1 - 4k)) / 2
    root = (1 - 4 * k).clamp(min=1e-24).sqrt()
    return root.log1p() - (-root).log1p()


def _softplus(x: Tensor, fn: ActivationFn) -> Tensor:
    return x.clamp(min=0) + (-x.abs()).exp().log1p()


def _softplus_critical(fn: ActivationFn, k: Tensor, lower: Tensor, upper: Tensor, at: Callable) -> Points:
    return [at(k.clamp(1e-12, 1 - 1e-12).logit())]  # sigmoid(x) = k


def _kink_at_zero(fn: ActivationFn, k: Tensor, lower: Tensor, upper: Tensor, at: Callable) -> Points:
    return [at(_zeros_like(k))]


def _elu_critical(fn: ActivationFn, k: Tensor, lower: Tensor, upper: Tensor, at: Callable) -> Points:
    """alpha * e^x = k on x < 0, and the kink at 0."""
    ratio = k / fn.alpha if fn.alpha != 0 else _zeros_like(k)
    x0 = ratio.clamp(min=1e-300).log().where(ratio > 0, _zeros_like(k)).clamp(max=0)
    return [at(x0), at(_zeros_like(k))]


def _clip_critical(fn: ActivationFn, k: Tensor, lower: Tensor, upper: Tensor, at: Callable) -> Points:
    return [at(_full_like(k, edge)) for edge in (fn.alpha, fn.beta) if math.isfinite(edge)]


def _thresholded_relu_critical(fn: ActivationFn, k: Tensor, lower: Tensor, upper: Tensor, at: Callable) -> Points:
    """f jumps from 0 to alpha just right of alpha: both the value and the right limit count."""
    edge = _full_like(k, fn.alpha)
    clamped, value = at(edge)
    inside = (lower <= edge) & (edge < upper)
    return [(clamped, value), (clamped, edge.where(inside, value))]


def _fixed(curvature: Curvature) -> Callable[[ActivationFn], Curvature]:
    return lambda fn: curvature


def _always(value: bool) -> Callable[[ActivationFn], bool]:
    return lambda fn: value


def _leaky_relu_curvature(fn: ActivationFn) -> Curvature:
    return Curvature.CONVEX if fn.alpha <= 1 else Curvature.CONCAVE


def _elu_curvature(fn: ActivationFn) -> Curvature:
    return Curvature.CONVEX if 0 <= fn.alpha <= 1 else Curvature.GENERAL


_SPECS = (
    ActivationSpec(Act.SIGMOID, ("Sigmoid",), (), lambda x, f: x.sigmoid(), _sigmoid_derivative,
                   _s_shaped_stationary(_sigmoid_stationary, 0.25), _fixed(Curvature.S_SHAPED), _always(True),
                   joint_planes=True),
    ActivationSpec(Act.TANH, ("Tanh",), (), lambda x, f: x.tanh(), lambda x, f: 1 - x.tanh() ** 2,
                   _s_shaped_stationary(lambda k: (1 - k).clamp(min=1e-24).sqrt().atanh(), 1.0),
                   _fixed(Curvature.S_SHAPED),
                   _always(False), joint_planes=True),
    ActivationSpec(Act.SOFTSIGN, ("Softsign",), (), lambda x, f: x / (1 + x.abs()),
                   lambda x, f: 1 / (1 + x.abs()) ** 2, _s_shaped_stationary(lambda k: 1 / k.sqrt() - 1, 1.0),
                   _fixed(Curvature.S_SHAPED), _always(False)),
    ActivationSpec(Act.RELU, ("Relu",), (), lambda x, f: x.relu(), lambda x, f: (x > 0).to(x.dtype),
                   _kink_at_zero, _fixed(Curvature.CONVEX), _always(True)),
    ActivationSpec(Act.LEAKY_RELU, ("LeakyRelu",), (("alpha", 0.01),),
                   lambda x, f: x.where(x >= 0, f.alpha * x),
                   lambda x, f: _full_like(x, 1.0).where(x >= 0, _full_like(x, f.alpha)),
                   _kink_at_zero, _leaky_relu_curvature, lambda fn: fn.alpha == 0),
    ActivationSpec(Act.ELU, ("Elu",), (("alpha", 1.0),),
                   lambda x, f: x.where(x >= 0, f.alpha * x.clamp(max=0).expm1()),
                   lambda x, f: _full_like(x, 1.0).where(x >= 0, f.alpha * x.clamp(max=0).exp()),
                   _elu_critical, _elu_curvature, lambda fn: fn.alpha == 0),
    ActivationSpec(Act.SOFTPLUS, ("Softplus",), (), _softplus, lambda x, f: x.sigmoid(),
                   _softplus_critical, _fixed(Curvature.CONVEX), _always(True)),
    ActivationSpec(Act.CLIP, ("Clip",), (("min", -math.inf), ("max", math.inf)),
                   lambda x, f: x.clamp(min=f.alpha, max=f.beta),
                   lambda x, f: ((x >= f.alpha) & (x <= f.beta)).to(x.dtype),
                   _clip_critical, _fixed(Curvature.GENERAL), lambda fn: fn.alpha >= 0),
    ActivationSpec(Act.THRESHOLDED_RELU, ("ThresholdedRelu",), (("alpha", 1.0),),
                   lambda x, f: x.where(x > f.alpha, _zeros_like(x)), lambda x, f: (x > f.alpha).to(x.dtype),
                   _thresholded_relu_critical, _fixed(Curvature.GENERAL), lambda fn: fn.alpha >= 0),
)

TABLE: dict[Act, ActivationSpec] = {spec.kind: spec for spec in _SPECS}
BY_ONNX_NAME: dict[str, ActivationSpec] = {name: spec for spec in _SPECS for name in spec.onnx_names}
assert set(TABLE) == set(Act), "every IR activation kind needs a table entry"


def spec(fn: ActivationFn) -> ActivationSpec:
    return TABLE[fn.kind]


def apply(fn: ActivationFn | None, x: Tensor) -> Tensor:
    """f(x); None is the identity (an unwrapped product factor)."""
    return x if fn is None else TABLE[fn.kind].forward(x, fn)


def derivative(fn: ActivationFn, x: Tensor) -> Tensor:
    """f'(x) (a one-sided value at kinks); used to choose slopes, never for soundness."""
    return TABLE[fn.kind].derivative(x, fn)


def curvature(fn: ActivationFn) -> Curvature:
    return TABLE[fn.kind].curvature(fn)


def is_nonnegative(fn: ActivationFn | None) -> bool:
    return fn is not None and TABLE[fn.kind].nonnegative(fn)


def jointly_relaxable(left_fn: ActivationFn | None, right_fn: ActivationFn | None) -> bool:
    """Whether POPQORN's 2-D planes apply to left_fn(x) * right_fn(y): an S-shaped gate times an
    S-shaped or identity factor, in either order."""
    joint = lambda fn: fn is not None and TABLE[fn.kind].joint_planes
    return (joint(left_fn) and (right_fn is None or joint(right_fn))) or (joint(right_fn) and left_fn is None)


def critical_points(fn: ActivationFn, k: Tensor, lower: Tensor, upper: Tensor) -> Points:
    """Points (x, value) in [lower, upper] among which f(x) - k*x attains its min and max over the
    interval (values may be one-sided limits at jumps). Out-of-range candidates are clamped to the
    interval, which only repeats an end point."""

    def at(x: Tensor) -> tuple[Tensor, Tensor]:
        clamped = x.maximum(lower).minimum(upper)
        return clamped, apply(fn, clamped)

    points = [(lower, apply(fn, lower)), (upper, apply(fn, upper))]
    return points + TABLE[fn.kind].critical(fn, k, lower, upper, at)
