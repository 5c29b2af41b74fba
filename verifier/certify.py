"""Certified radius: the largest ε at which every margin f_label - f_j has a positive lower bound.

Doubling then bisection on ε, batched: every sample (and every per-frame variant of a sample) keeps
its own bracket [certified, refuted) and leaves the batch once the bracket is within the relative
tolerance, so one bound call per step serves all undecided samples. The result is a certified lower
bound on the minimum adversarial distortion under the threat model.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from verifier import forward, ir
from verifier.bounds import Batch, ball_regions, check_threat, make_batch, output_node, relaxer_for
from verifier.errors import InputError
from verifier.methods import DEFAULT_METHOD, Method, parse_method
from verifier.propagation import Propagator
from verifier.threat import Domain, ThreatModel

MAX_RADIUS = 1e4  # a radius this large means the margin does not depend on the input at all


@dataclass(frozen=True)
class SearchOptions:
    """How the radius search runs; passed explicitly, never global."""

    method: Method = DEFAULT_METHOD
    tol: float = 1e-3  # relative width of the final bracket
    start: float = 0.01  # first ε tried
    max_steps: int = 60

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", parse_method(self.method))
        if not 0 < self.tol < 1:
            raise InputError(f"tol must be in (0, 1), not {self.tol!r}")


@dataclass
class SampleResult:
    """One sample's certificate. `radius` is certified for the threat model's frames;
    `per_frame_radius[t]` when only frame t is perturbed. Field names are the JSON contract."""

    index: int
    label: int
    predicted: int
    radius: float
    time_s: float
    misclassified: bool = False
    target: int | None = None
    per_frame_radius: list[float] | None = None
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        data = {"index": self.index, "label": self.label, "predicted": self.predicted,
                "radius": self.radius, "misclassified": self.misclassified, "time_s": self.time_s}
        if self.target is not None:
            data["target"] = self.target
        if self.per_frame_radius is not None:
            data["per_frame_radius"] = self.per_frame_radius
        data.update(self.extra)
        return data


def margin_spec(labels: Tensor, num_classes: int, target: int | None) -> Tensor:
    """Rows e_label - e_j for every j != label (untargeted) or the single row for j = target."""
    batch = labels.shape[0]
    eye = torch.eye(num_classes, dtype=torch.float64, device=labels.device)
    if target is not None:
        return (eye[labels] - eye[target])[:, None, :]
    others = torch.stack([torch.cat([torch.arange(0, c), torch.arange(c + 1, num_classes)])
                          for c in labels.tolist()]).to(labels.device)
    return eye[labels][:, None, :] - eye[others]  # (batch, classes - 1, classes)


def margin_lower_bounds(graph: ir.Graph, batch: Batch, eps: Tensor, threat: ThreatModel, spec: Tensor,
                        relaxer, out_node: str, frame_mask: Tensor | None = None) -> Tensor:
    """Lower bounds of the margins, (batch, rows)."""
    propagator = Propagator(graph, ball_regions(batch, eps, threat, frame_mask), relaxer)
    lower, _ = propagator.bound(out_node, spec.to(batch.center.dtype))
    return lower


def search_radius(is_certified: Callable[[Tensor, Tensor], Tensor], count: int, options: SearchOptions,
                  device: torch.device, dtype: torch.dtype) -> Tensor:
    """Batched doubling + bisection. `is_certified(rows, eps)` says, for the active rows, whether
    each is certified at its ε. Returns the largest certified ε found per row (0 if none)."""
    lower = torch.zeros(count, dtype=torch.float64, device=device)
    upper = torch.full((count,), math.inf, dtype=torch.float64, device=device)
    eps = torch.full((count,), options.start, dtype=torch.float64, device=device)
    active = torch.arange(count, device=device)
    for _ in range(options.max_steps):
        if active.numel() == 0:
            break
        ok = is_certified(active, eps[active].to(dtype)).to(device)
        rows_ok, rows_bad = active[ok], active[~ok]
        lower[rows_ok] = eps[rows_ok]
        upper[rows_bad] = eps[rows_bad]
        bracketed = torch.isfinite(upper[active])
        eps[active] = torch.where(bracketed, (lower[active] + upper[active]) / 2, eps[active] * 2)
        done = (bracketed & (upper[active] - lower[active] <= options.tol * upper[active])) \
            | (lower[active] >= MAX_RADIUS) | (upper[active] <= 1e-12)
        active = active[~done]
    return lower


def certify(graph: ir.Graph, x: np.ndarray | dict[str, np.ndarray], norm: float | str = 2.0, *,
            labels: np.ndarray | None = None, target: int | None = None, ball: str = "frame",
            frames: tuple[int, ...] | str | None = None, domain: Domain | tuple | None = None,
            threat: ThreatModel | None = None, per_frame: bool = False,
            options: SearchOptions = SearchOptions(), output: int | str = 0, input_name: str | None = None,
            device=None, dtype: torch.dtype = torch.float64, first_index: int = 0) -> list[SampleResult]:
    """Certified radius of every sample in `x` (stacked on the model input's batch axis), over the
    threat model given as `threat` or spelled out by norm, ball, frames and domain.

    Labels default to the model's own prediction; a sample the model misclassifies gets radius 0 and
    `misclassified=True`. With `per_frame`, also the radius when only frame t is perturbed, for all t,
    computed in the same batched search."""
    started = time.perf_counter()
    threat = ThreatModel.of(threat, norm=norm, ball=ball, frames=frames, domain=domain)
    batch = make_batch(graph, x, input_name=input_name, device=device, dtype=dtype)
    graph = batch.graph
    check_threat(batch, threat)
    mask = torch.as_tensor(threat.frame_mask(batch.node), device=batch.center.device)
    out = output_node(graph, output)
    relaxer = relaxer_for(options.method)
    with torch.inference_mode():
        logits = forward.run(graph, {k: v.double() for k, v in batch.feeds().items()})[out.node]
    num_classes = logits.shape[1]
    predicted = logits.argmax(1)
    label_t = predicted.clone() if labels is None else _check_labels(labels, batch.size, num_classes, batch)
    if target is not None and not 0 <= target < num_classes:
        raise InputError(f"target {target} out of range: the model has {num_classes} classes")
    correct = (predicted == label_t) & (label_t != target if target is not None else True)

    frames_count = batch.node.num_frames
    variants = 1 + (frames_count if per_frame else 0)  # row 0: the threat's frames; row t+1: frame t only
    variant_masks = torch.cat([mask[None], torch.eye(frames_count, dtype=torch.bool, device=mask.device)])[:variants]
    rows_batch = batch.repeat(variants)
    rows_mask = variant_masks.repeat(batch.size, 1)
    rows_spec = margin_spec(label_t, num_classes, target).repeat_interleave(variants, 0)
    rows_correct = correct.repeat_interleave(variants, 0)

    def is_certified(rows: Tensor, eps: Tensor) -> Tensor:
        with torch.inference_mode():
            lower = margin_lower_bounds(graph, rows_batch.select(rows), eps, threat, rows_spec[rows],
                                        relaxer, out.node, rows_mask[rows])
        return (lower > 0).all(dim=1)

    radii = torch.zeros(rows_batch.size, dtype=torch.float64, device=batch.center.device)
    todo = torch.nonzero(rows_correct).flatten()
    if todo.numel():
        found = search_radius(lambda r, e: is_certified(todo[r], e), todo.numel(), options,
                              batch.center.device, dtype)
        radii[todo] = found
    radii = radii.reshape(batch.size, variants).cpu().numpy()
    elapsed = (time.perf_counter() - started) / batch.size
    return [SampleResult(index=first_index + k, label=int(label_t[k]), predicted=int(predicted[k]),
                         radius=float(radii[k, 0]), time_s=elapsed, misclassified=not bool(correct[k]),
                         target=target,
                         per_frame_radius=[float(r) for r in radii[k, 1:]] if per_frame else None)
            for k in range(batch.size)]


def _check_labels(labels: np.ndarray, count: int, num_classes: int, batch: Batch) -> Tensor:
    array = np.asarray(labels).reshape(-1)
    if array.shape[0] != count:
        raise InputError(f"{array.shape[0]} labels for {count} samples")
    if not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.equal(np.mod(array, 1), 0)):
            raise InputError("labels must be integers")
    array = array.astype(np.int64)
    bad = array[(array < 0) | (array >= num_classes)]
    if bad.size:
        raise InputError(f"label {int(bad[0])} out of range: the model has {num_classes} classes (0..{num_classes - 1})")
    return torch.as_tensor(array, device=batch.center.device)
