"""Threat models: the set of inputs a certificate covers, and the two things the engine needs from
it — element-wise bounds (for interval arithmetic) and the exact minimum of a linear function
over the set (for CROWN's last step).

Per-frame balls (POPQORN's model): every perturbed frame t satisfies ||x_t - x0_t||_p <= eps on its
own, so min of A·x over the set is A·x0 - eps * sum_t ||A_t||_q (q the dual norm). Whole-sequence
ball: one ball over all perturbed elements jointly, min = A·x0 - eps * ||A_perturbed||_q. Box:
min = A·mid - |A|·radius. Frames outside the chosen subset stay at x0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from verifier import ir
from verifier.errors import InputError

BALLS = ("frame", "sequence")


def parse_norm(value: str | float | int) -> float:
    """'1', '2', 'inf' (or numbers) -> 1.0, 2.0, math.inf; anything else is refused."""
    text = str(value).strip().lower()
    table = {"1": 1.0, "1.0": 1.0, "2": 2.0, "2.0": 2.0, "inf": math.inf, "linf": math.inf, "infinity": math.inf}
    if text not in table:
        raise InputError(f"norm must be 1, 2 or inf, not {value!r}")
    return table[text]


def dual_norm(p: float) -> float:
    return {1.0: math.inf, 2.0: 2.0, math.inf: 1.0}[p]


def norm_label(p: float) -> str:
    return "inf" if math.isinf(p) else str(int(p))


@dataclass(frozen=True)
class ThreatModel:
    """What is perturbed and how: the ℓp norm, the ball kind, and the perturbed frames of one input
    (None = all frames). Radii are per sample and passed separately."""

    norm: float = math.inf
    ball: str = "frame"
    frames: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.norm not in (1.0, 2.0, math.inf):
            raise InputError(f"norm must be 1, 2 or inf, not {self.norm!r}")
        if self.ball not in BALLS:
            raise InputError(f"ball must be one of {', '.join(BALLS)}, not {self.ball!r}")

    def frame_mask(self, node: ir.Input) -> np.ndarray:
        """Which frames of `node` are perturbed, as a bool vector over its frames."""
        count = node.num_frames
        mask = np.zeros(count, dtype=bool)
        if self.frames is None:
            mask[:] = True
            return mask
        bad = [t for t in self.frames if not 0 <= t < count]
        if bad:
            raise InputError(f"frames {bad} out of range: input {node.onnx_name!r} has {count} frames (0..{count - 1})")
        mask[list(self.frames)] = True
        return mask


def parse_frames(text: str | Sequence[int] | None) -> tuple[int, ...] | None:
    """'0,3' -> (0, 3); None/'all' -> None (every frame)."""
    if text is None:
        return None
    if isinstance(text, str):
        if text.strip().lower() in ("", "all"):
            return None
        try:
            values = [int(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise InputError(f"frames must be comma-separated integers, not {text!r}") from None
    else:
        values = [int(v) for v in text]
    if not values:
        raise InputError("frames must name at least one frame")
    if len(set(values)) != len(values):
        raise InputError(f"frames {values} repeat a frame")
    return tuple(values)


class Region:
    """The perturbation set of one input for a batch of samples, as the engine consumes it.

    Subclasses give element bounds and the minimum of linear functions A·x over the set, for
    coefficients A of shape (batch, m, size)."""

    center: Tensor  # (batch, size)

    def element_bounds(self) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def minimize(self, coefficients: Tensor) -> Tensor:
        """min over the set of coefficients·x, shape (batch, m)."""
        raise NotImplementedError

    def maximize(self, coefficients: Tensor) -> Tensor:
        return -self.minimize(-coefficients)


class BallRegion(Region):
    """Per-frame or whole-sequence ℓp balls of per-sample radius eps around `center`.

    `frame_mask` (batch, frames) says which frames each sample perturbs; making it per sample lets
    one call bound every "only frame t perturbed" variant of a sample at once."""

    def __init__(self, node: ir.Input, center: Tensor, eps: Tensor, threat: ThreatModel,
                 frame_mask: Tensor | None = None) -> None:
        if (eps < 0).any() or not torch.isfinite(eps).all():
            raise InputError("eps must be finite and >= 0")
        self.center = center
        self.eps = eps.to(center)
        self.norm = threat.norm
        self.ball = threat.ball
        if frame_mask is None:
            frame_mask = torch.as_tensor(threat.frame_mask(node), device=center.device).expand(center.shape[0], -1)
        self.frame_mask = frame_mask.to(device=center.device, dtype=torch.bool)
        # elements grouped by frame: (frames, elements per frame) index matrix
        frame_of = node.frame_of_element()
        order = np.argsort(frame_of, kind="stable")
        self.groups = torch.as_tensor(order.reshape(node.num_frames, -1), device=center.device)
        element_frame = torch.as_tensor(frame_of, device=center.device)
        self.element_mask = self.frame_mask[:, element_frame]  # (batch, size)

    def element_bounds(self) -> tuple[Tensor, Tensor]:
        radius = self.eps[:, None] * self.element_mask.to(self.center)
        return self.center - radius, self.center + radius

    def minimize(self, coefficients: Tensor) -> Tensor:
        value = _dot(coefficients, self.center)
        grouped = coefficients[:, :, self.groups]  # (batch, m, frames, per_frame)
        grouped = grouped * self.frame_mask[:, None, :, None].to(grouped)
        q = dual_norm(self.norm)
        if self.ball == "frame":
            spread = torch.linalg.vector_norm(grouped, ord=q, dim=3).sum(dim=2)
        else:
            spread = torch.linalg.vector_norm(grouped.flatten(2), ord=q, dim=2)
        return value - self.eps[:, None] * spread


class BoxRegion(Region):
    """An explicit per-element box (what a VNN-LIB property gives)."""

    def __init__(self, lower: Tensor, upper: Tensor) -> None:
        if (lower > upper).any():
            raise InputError("box lower bound exceeds upper bound")
        self.lower, self.upper = lower, upper
        self.center = (lower + upper) / 2

    def element_bounds(self) -> tuple[Tensor, Tensor]:
        return self.lower, self.upper

    def minimize(self, coefficients: Tensor) -> Tensor:
        radius = (self.upper - self.lower) / 2
        return (_dot(coefficients, self.center)
                - torch.einsum("bmn,bn->bm", coefficients.abs(), radius))


class PointRegion(Region):
    """An input held fixed at its given value (e.g. an initial state fed as a graph input)."""

    def __init__(self, value: Tensor) -> None:
        self.center = value

    def element_bounds(self) -> tuple[Tensor, Tensor]:
        return self.center, self.center

    def minimize(self, coefficients: Tensor) -> Tensor:
        return _dot(coefficients, self.center)


def _dot(coefficients: Tensor, vector: Tensor) -> Tensor:
    """sum_n coefficients[b, m, n] * vector[b, n] -> (batch, m)."""
    return torch.matmul(coefficients, vector.unsqueeze(-1)).squeeze(-1)


def project(node: ir.Input, delta: Tensor, eps: Tensor, threat: ThreatModel,
            frame_mask: Tensor | None = None) -> Tensor:
    """Euclidean projection of perturbations `delta` (batch, size) onto the threat model's set
    (per sample radius eps), used by attacks. Unperturbed frames are zeroed."""
    region = BallRegion(node, torch.zeros_like(delta), eps, threat, frame_mask)
    delta = delta * region.element_mask.to(delta)
    groups = region.groups
    if threat.ball == "frame":
        blocks = delta[:, groups]  # (batch, frames, per_frame)
        projected = _project_rows(blocks.flatten(0, 1), eps.repeat_interleave(groups.shape[0]), threat.norm)
        out = torch.empty_like(delta)
        out[:, groups] = projected.reshape(blocks.shape)
        return out
    return _project_rows(delta, eps, threat.norm)


def _project_rows(rows: Tensor, radius: Tensor, p: float) -> Tensor:
    radius = radius[:, None].to(rows)
    if math.isinf(p):
        return torch.maximum(torch.minimum(rows, radius), -radius)
    if p == 2.0:
        length = torch.linalg.vector_norm(rows, dim=1, keepdim=True)
        return rows * torch.clamp(radius / length.clamp_min(1e-30), max=1.0)
    # ℓ1: soft-threshold by the tau that puts the row on the sphere (sort-based, Duchi et al.)
    magnitude = rows.abs()
    inside = magnitude.sum(dim=1, keepdim=True) <= radius
    sorted_desc, _ = torch.sort(magnitude, dim=1, descending=True)
    cumulative = sorted_desc.cumsum(dim=1) - radius
    ranks = torch.arange(1, rows.shape[1] + 1, device=rows.device, dtype=rows.dtype)
    active = sorted_desc - cumulative / ranks > 0
    count = active.sum(dim=1, keepdim=True).clamp_min(1)
    tau = cumulative.gather(1, count - 1) / count.to(rows)
    shrunk = torch.sign(rows) * torch.clamp(magnitude - tau, min=0)
    return torch.where(inside, rows, shrunk)
