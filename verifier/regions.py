"""The engine's view of a perturbation set: element bounds (for interval arithmetic) and the exact
minimum of a linear function A·x over the set (CROWN's last step).

Ball without a domain: per-frame, min A·x = A·x0 - eps * sum_t ||A_t||_q (q the dual norm);
whole-sequence, min = A·x0 - eps * ||A_perturbed||_q. For p = inf both are eps * ||A||_1 summed the
same way, so an l_inf frame ball and an l_inf sequence ball (the same set) give bit-identical bounds;
a single perturbed frame likewise takes the per-frame path whatever the ball.

Ball ∩ domain box: per group of coordinates (a frame, or all perturbed frames) the minimum of
a·delta over {||delta||_p <= eps, lo <= delta <= hi} (lo <= 0 <= hi since x0 is in the domain) is
computed exactly: it is minus the maximum of sum |a_i| t_i over 0 <= t_i <= c_i (c_i the room in
the descent direction) under ||t||_p <= eps — for p = inf, t_i = min(c_i, eps); for p = 1 the
fractional knapsack (largest |a_i| first); for p = 2, t_i = min(c_i, s |a_i|) with s found exactly
from the sorted breakpoints, and the value taken from the Lagrangian dual at that s, which bounds
the maximum from above for any s (weak duality), so rounding can only make the bound looser.

Box (VNN-LIB): min = A·mid - |A|·radius. Point: the input is held at its value.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from verifier import ir
from verifier.errors import InputError
from verifier.threat import Ball, ThreatModel, dual_norm

Dot = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Slices:
    """Coefficients A (batch, m, size) given as non-overlapping column slices (start, A[..., start:
    start + width]), zero elsewhere: what a sequence's per-frame Selects pull back to the input.

    Why not one tensor: assembling it is a concatenation as large as the whole input in every
    backward pass, and a ball only needs each frame's norm and centre term, which the slices give
    directly (a vanilla RNN's l_inf certification spent a third of its time assembling and reducing
    the dense form)."""

    parts: tuple[tuple[int, Tensor], ...]  # sorted by start
    size: int

    def dense(self) -> Tensor:
        pieces, position = [], 0
        first = self.parts[0][1]
        for start, a in self.parts:
            if start > position:
                pieces.append(first.new_zeros((*a.shape[:2], start - position)))
            pieces.append(a)
            position = start + a.shape[-1]
        if position < self.size:
            pieces.append(first.new_zeros((*first.shape[:2], self.size - position)))
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=-1)


Coefficients = Tensor | Slices


def dense(coefficients: Coefficients) -> Tensor:
    return coefficients.dense() if isinstance(coefficients, Slices) else coefficients


class Region:
    """The perturbation set of one input for a batch of samples, as the engine consumes it.

    Subclasses give element bounds and the minimum of linear functions A·x over the set, for
    coefficients A of shape (batch, m, size), dense or as Slices."""

    center: Tensor  # (batch, size)

    def element_bounds(self) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def minimize(self, coefficients: Coefficients, dot: Dot | None = None) -> Tensor:
        """min over the set of coefficients·x, shape (batch, m). `dot` computes the centre terms
        sum_n a[b, m, n] v[b, n] (the backward pass's kernel: fused on a GPU, see verifier.fused)."""
        raise NotImplementedError

    def maximize(self, coefficients: Tensor) -> Tensor:
        return -self.minimize(-coefficients)

    def varying(self) -> np.ndarray | None:
        """Which elements some sample's set does not pin to one value (host-side booleans, read
        when the region was built), or None: any may vary."""
        return None


class BallRegion(Region):
    """Per-frame or whole-sequence lp balls of per-sample radius eps around `center`, intersected
    with the threat model's domain.

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
        # frame-major layouts (the usual one) group by a free reshape instead of a gather
        self.contiguous = bool(np.array_equal(order, np.arange(order.size)))
        element_frame = torch.as_tensor(frame_of, device=center.device)
        self.element_mask = self.frame_mask[:, element_frame]  # (batch, size)
        # one perturbed frame, or p = inf: the per-frame formula is exact for either ball
        self.per_frame_rows = (self.frame_mask.sum(1) <= 1) | (self.ball is Ball.FRAME) | math.isinf(self.norm)
        # host-side flags, read once here: the bound computation itself never waits on the device
        # (so a CUDA graph can capture it, see verifier.cuda_graphs)
        self.all_frames = bool(self.frame_mask.all())
        self.all_per_frame = bool(self.per_frame_rows.all())
        # frames no sample perturbs: held at the centre, so the steps before the first perturbed
        # frame are constants the propagator need not bound (Propagator.constant)
        self.varying_elements = None if self.all_frames else self.element_mask.any(0).cpu().numpy()
        self.room = None if threat.domain is None else _domain_room(node, center, threat)

    def varying(self) -> np.ndarray | None:
        return self.varying_elements

    def element_bounds(self) -> tuple[Tensor, Tensor]:
        radius = self.eps[:, None] * self.element_mask.to(self.center)
        lower, upper = self.center - radius, self.center + radius
        if self.room is not None:  # the domain box, relative to the centre
            lower, upper = torch.maximum(lower, self.center + self.room[0]), torch.minimum(upper, self.center + self.room[1])
        return lower, upper

    def minimize(self, coefficients: Coefficients, dot: Dot | None = None) -> Tensor:
        dot = dot or _dot
        if self.room is None and isinstance(coefficients, Slices) and self._frame_aligned(coefficients):
            # contiguous centre slices: the same strides as a whole centre for a compiled `dot`
            value = sum(dot(a, self.center[:, start:start + a.shape[-1]].contiguous()) for start, a in coefficients.parts)
            return value - self.eps[:, None] * self._spread(self._slice_frame_norms(coefficients))
        coefficients = dense(coefficients)
        value = dot(coefficients, self.center)
        if self.contiguous:
            grouped = coefficients.reshape(*coefficients.shape[:2], *self.groups.shape)
        else:
            grouped = coefficients[:, :, self.groups]  # (batch, m, frames, per_frame)
        if self.room is None:
            return value - self.eps[:, None] * self._spread(_frame_norms(grouped, dual_norm(self.norm)))
        if not self.all_frames:
            grouped = grouped * self.frame_mask[:, None, :, None].to(coefficients)
        return value - self._domain_gain(grouped)

    def _spread(self, norms: Tensor) -> Tensor:
        """max over the ball (radius 1) of -A·delta from the dual norms of A's frames (batch, m,
        frames): their sum for per-frame balls, their joint norm for a sequence ball."""
        if not self.all_frames:
            norms = norms * self.frame_mask[:, None, :].to(norms)
        by_frame = norms.sum(dim=2)
        if self.all_per_frame:
            return by_frame
        q = dual_norm(self.norm)  # p = inf rows are per-frame: here q is 2 (l2) or inf (l1)
        jointly = norms.amax(dim=2) if math.isinf(q) else torch.linalg.vector_norm(norms, ord=2, dim=2)
        return torch.where(self.per_frame_rows[:, None], by_frame, jointly)

    def _frame_aligned(self, slices: Slices) -> bool:
        per_frame = self.groups.shape[1]
        return self.contiguous and all(start % per_frame == 0 and a.shape[-1] % per_frame == 0
                                       for start, a in slices.parts)

    def _slice_frame_norms(self, slices: Slices) -> Tensor:
        """(batch, m, frames) dual norms of each frame's coefficients, frames no slice covers 0."""
        frames, per_frame = self.groups.shape
        q = dual_norm(self.norm)
        pieces, frame = [], 0
        first = slices.parts[0][1]
        for start, a in slices.parts:
            if start // per_frame > frame:
                pieces.append(first.new_zeros((*a.shape[:2], start // per_frame - frame)))
            pieces.append(_frame_norms(a.reshape(*a.shape[:2], -1, per_frame), q))
            frame = (start + a.shape[-1]) // per_frame
        if frame < frames:
            pieces.append(first.new_zeros((*first.shape[:2], frames - frame)))
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=2)

    def _domain_gain(self, grouped: Tensor) -> Tensor:
        """max over delta in ball ∩ domain of -A·delta, (batch, m)."""
        low, high = (r[:, self.groups].unsqueeze(1) for r in self.room)  # (batch, 1, frames, per_frame)
        room = torch.where(grouped < 0, high, -low)  # how far each coordinate can move downhill
        weight = grouped.abs()
        by_frame = _max_weighted_sum(weight, room, self.eps[:, None, None], self.norm).sum(2)
        if self.all_per_frame:
            return by_frame
        jointly = _max_weighted_sum(weight.flatten(2), room.flatten(2), self.eps[:, None], self.norm)
        return torch.where(self.per_frame_rows[:, None], by_frame, jointly)


def _frame_norms(grouped: Tensor, q: float) -> Tensor:
    """q-norms over the last dimension. Not torch.linalg.vector_norm for q = 1 or inf: on a CPU it
    ran ~15x slower than the abs-and-reduce it stands for."""
    if q == 1.0:
        return grouped.abs().sum(-1)
    if math.isinf(q):
        return grouped.abs().amax(-1)
    return torch.linalg.vector_norm(grouped, ord=q, dim=-1)


def _domain_room(node: ir.Input, center: Tensor, threat: ThreatModel) -> tuple[Tensor, Tensor]:
    """(domain low - centre, domain high - centre): <= 0 and >= 0; a centre outside is refused."""
    low_np, high_np = threat.domain.flat(node)
    low = torch.tensor(low_np, dtype=center.dtype, device=center.device)
    high = torch.tensor(high_np, dtype=center.dtype, device=center.device)
    outside = (center < low) | (center > high)
    if outside.any():
        sample, element = (int(v) for v in torch.nonzero(outside)[0])
        raise InputError(f"sample {sample} lies outside the domain {threat.domain.label} at element {element} "
                         f"(value {float(center[sample, element]):g}); the clean input must be a valid input")
    return low - center, high - center


def _max_weighted_sum(weight: Tensor, room: Tensor, eps: Tensor, p: float) -> Tensor:
    """max of sum_i weight_i * t_i over 0 <= t_i <= room_i, ||t||_p <= eps, for each row of the
    last dimension (weight, room >= 0; eps broadcast over the rows). An upper bound, exact up to
    rounding (see the module docstring)."""
    eps = eps.unsqueeze(-1)
    if math.isinf(p):
        return (weight * torch.minimum(room, eps)).sum(-1)
    if p == 1.0:  # fractional knapsack: spend the budget on the largest weights first
        order = weight.argsort(-1, descending=True)
        w, c = weight.gather(-1, order), room.gather(-1, order)
        spent_before = _exclusive_cumsum(c)
        take = torch.minimum(c, (eps - spent_before).clamp(min=0))
        return (w * take).sum(-1)
    # p = 2: t_i = min(c_i, s * w_i); breakpoints s_i = c_i / w_i
    breakpoint = torch.where(weight > 0, room / weight.clamp(min=1e-300), torch.full_like(weight, math.inf))
    order = breakpoint.argsort(-1)
    s_sorted, w_sorted, c_sorted = breakpoint.gather(-1, order), weight.gather(-1, order), room.gather(-1, order)
    clipped_before = _exclusive_cumsum(c_sorted ** 2)  # sum of c^2 over smaller breakpoints
    free_from = (w_sorted ** 2).flip(-1).cumsum(-1).flip(-1)  # sum of w^2 from this breakpoint on
    finite_s = torch.where(torch.isfinite(s_sorted), s_sorted, torch.zeros_like(s_sorted))
    length_at = clipped_before + finite_s ** 2 * free_from  # ||t(s_k)||^2 just before clipping k
    reached = (length_at <= eps ** 2) & torch.isfinite(s_sorted)
    count = reached.sum(-1, keepdim=True)  # breakpoints passed before the ball binds
    index = count.clamp(max=weight.shape[-1] - 1)
    clipped = torch.where(count < weight.shape[-1], clipped_before.gather(-1, index),
                          (c_sorted ** 2).sum(-1, keepdim=True))
    free = torch.where(count < weight.shape[-1], free_from.gather(-1, index), torch.zeros_like(clipped))
    budget = (eps ** 2 - clipped).clamp(min=0)
    s = torch.where(free > 0, torch.sqrt(budget / free.clamp(min=1e-300)), torch.full_like(free, math.inf))
    t = torch.where(weight > 0, torch.minimum(room, weight * s), torch.zeros_like(weight))
    multiplier = torch.where(torch.isfinite(s) & (s > 0), 1 / (2 * s), torch.zeros_like(s))  # lambda = 1/(2s)
    value = (weight * t - multiplier * t ** 2).sum(-1, keepdim=True) + multiplier * eps ** 2
    return value.squeeze(-1)


def _exclusive_cumsum(values: Tensor) -> Tensor:
    """sum of the entries before each one (inf-safe, unlike cumsum - values)."""
    return torch.cat([torch.zeros_like(values[..., :1]), values[..., :-1].cumsum(-1)], -1)


class BoxRegion(Region):
    """An explicit per-element box (what a VNN-LIB property gives)."""

    def __init__(self, lower: Tensor, upper: Tensor) -> None:
        if (lower > upper).any():
            raise InputError("box lower bound exceeds upper bound")
        self.lower, self.upper = lower, upper
        self.center = (lower + upper) / 2

    def element_bounds(self) -> tuple[Tensor, Tensor]:
        return self.lower, self.upper

    def minimize(self, coefficients: Coefficients, dot: Dot | None = None) -> Tensor:
        coefficients = dense(coefficients)
        radius = (self.upper - self.lower) / 2
        dot = dot or _dot
        return dot(coefficients, self.center) - dot(coefficients.abs(), radius)


class PointRegion(Region):
    """An input held fixed at its given value (e.g. an initial state fed as a graph input)."""

    def __init__(self, value: Tensor) -> None:
        self.center = value

    def varying(self) -> np.ndarray | None:
        return np.zeros(self.center.shape[1], dtype=bool)

    def element_bounds(self) -> tuple[Tensor, Tensor]:
        return self.center, self.center

    def minimize(self, coefficients: Coefficients, dot: Dot | None = None) -> Tensor:
        return (dot or _dot)(dense(coefficients), self.center)


def _dot(coefficients: Tensor, vector: Tensor) -> Tensor:
    """sum_n coefficients[b, m, n] * vector[b, n] -> (batch, m)."""
    return torch.matmul(coefficients, vector.unsqueeze(-1)).squeeze(-1)


def project(node: ir.Input, delta: Tensor, eps: Tensor, threat: ThreatModel,
            frame_mask: Tensor | None = None, center: Tensor | None = None) -> Tensor:
    """Euclidean projection of perturbations `delta` (batch, size) onto the threat model's set
    around `center` (per-sample radius eps; `center` is needed only with a domain), used by attacks.
    Unperturbed frames are zeroed. Ball ∩ domain box: clip(shrink(delta, mu)) with the ball's
    multiplier mu found by bisection, so the result is always inside both."""
    if threat.domain is not None and center is None:
        raise ValueError("projecting onto a ball ∩ domain needs the centre")
    region = BallRegion(node, delta.detach() * 0 if center is None else center, eps, threat, frame_mask)
    delta = delta * region.element_mask.to(delta)
    room = region.room
    groups = region.groups
    if region.per_frame_rows.all():
        blocks = delta[:, groups]  # (batch, frames, per_frame)
        radius = eps.repeat_interleave(groups.shape[0])
        bounds = None if room is None else tuple(r[:, groups].flatten(0, 1) for r in room)
        projected = _project_rows(blocks.flatten(0, 1), radius, threat.norm, bounds)
        out = torch.empty_like(delta)
        out[:, groups] = projected.reshape(blocks.shape)
        return out
    return _project_rows(delta, eps, threat.norm, room)


def _project_rows(rows: Tensor, radius: Tensor, p: float, bounds: tuple[Tensor, Tensor] | None = None) -> Tensor:
    radius = radius[:, None].to(rows)
    if bounds is None:
        return _project_ball(rows, radius, p)
    low, high = bounds
    if math.isinf(p):
        return torch.minimum(torch.maximum(_project_ball(rows, radius, p), low), high)
    # onto ball ∩ box: delta(mu) = clip(shrink(rows, mu), low, high), smallest mu >= 0 inside the ball
    shrink = (lambda mu: rows / (1 + mu)) if p == 2.0 else (
        lambda mu: torch.sign(rows) * (rows.abs() - mu).clamp(min=0))
    inside = lambda d: torch.linalg.vector_norm(d, ord=p, dim=1, keepdim=True) <= radius
    clipped = lambda mu: torch.minimum(torch.maximum(shrink(mu), low), high)
    lo = torch.zeros_like(radius)
    hi = torch.ones_like(radius)
    for _ in range(60):  # grow hi until inside
        grow = ~inside(clipped(hi))
        if not grow.any():
            break
        hi = torch.where(grow, hi * 2 + (rows.abs().amax(1, keepdim=True) if p == 1.0 else 0), hi)
    for _ in range(50):
        mid = (lo + hi) / 2
        ok = inside(clipped(mid))
        hi, lo = torch.where(ok, mid, hi), torch.where(ok, lo, mid)
    result = clipped(hi)
    done = inside(clipped(torch.zeros_like(radius)))
    return torch.where(done, clipped(torch.zeros_like(radius)), result)


def _project_ball(rows: Tensor, radius: Tensor, p: float) -> Tensor:
    if math.isinf(p):
        return torch.maximum(torch.minimum(rows, radius), -radius)
    if p == 2.0:
        length = torch.linalg.vector_norm(rows, dim=1, keepdim=True)
        return rows * torch.clamp(radius / length.clamp_min(1e-30), max=1.0)
    # l1: soft-threshold by the tau that puts the row on the sphere (sort-based, Duchi et al.)
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
