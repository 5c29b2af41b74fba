"""Falsification: projected gradient attacks on the IR (torch autograd), inside the exact threat
model, batched over samples and restarts. A certified radius is a lower bound on the minimum
adversarial distortion; the smallest radius at which an attack succeeds is an upper bound, and
the gap between the two is the honest measure of tightness.

Every counterexample is re-run through onnxruntime on the original ONNX file
(verifier.onnx_runtime) before it counts as found.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from verifier import forward, ir
from verifier.bounds import Batch
from verifier.threat import BallRegion, ThreatModel, project

# objective(outputs (batch, out_size)) -> (batch,) value to push below zero
Objective = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class AttackResult:
    """Per sample: whether a (validated) counterexample was found, the best point (flat, per-sample
    vector of the perturbed input) and the objective value there (negative = counterexample)."""

    found: np.ndarray
    adversarial: np.ndarray
    objective: np.ndarray


def margin_objective(labels: Tensor, target: int | None = None) -> Objective:
    """f_label - max_{j != label} f_j (untargeted) or f_label - f_target: <= 0 is a counterexample."""
    def objective(outputs: Tensor) -> Tensor:
        true = outputs.gather(1, labels[:, None]).squeeze(1)
        if target is not None:
            return true - outputs[:, target]
        others = outputs.scatter(1, labels[:, None], -math.inf)
        return true - others.max(1).values
    return objective


def _step_direction(gradient: Tensor, norm: float, node: ir.Input, region: BallRegion, ball: str) -> Tensor:
    """Steepest-descent direction of unit size in the threat model's norm (per group)."""
    if math.isinf(norm):
        return gradient.sign()
    groups = region.groups  # (frames, per_frame)
    if ball == "frame":
        blocks = gradient[:, groups]
        scale = torch.linalg.vector_norm(blocks, ord=2, dim=2, keepdim=True).clamp_min(1e-12)
        direction = torch.zeros_like(gradient)
        direction[:, groups] = blocks / scale
        return direction
    return gradient / torch.linalg.vector_norm(gradient, dim=1, keepdim=True).clamp_min(1e-12)


def pgd(graph: ir.Graph, batch: Batch, eps: Tensor, threat: ThreatModel, objective: Objective, *,
        output_node: str, steps: int = 60, restarts: int = 4, seed: int = 0,
        box: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """Minimise `objective` over the threat model's set (and inside `box` if given, e.g. a valid
    pixel range). Returns the best perturbed inputs (batch, size) and their objective values."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    node = batch.node
    count = batch.size
    center = batch.center.detach().double().repeat(restarts, 1)
    fixed = {k: v.detach().double().repeat(restarts, 1) for k, v in batch.fixed.items()}
    radius = eps.detach().double().repeat(restarts)
    region = BallRegion(node, center, radius, threat)
    noise = (torch.rand(center.shape, generator=generator, dtype=torch.float64) * 2 - 1).to(center.device)
    delta = project(node, noise * radius[:, None], radius, threat, center=center)
    delta[:count] = 0  # the first restart starts at the clean input

    def clamp(delta: Tensor) -> Tensor:
        delta = project(node, delta, radius, threat, center=center)  # onto ball ∩ domain
        if box is not None:
            low, high = (b.double().repeat(restarts, 1) for b in box)
            delta = torch.minimum(torch.maximum(center + delta, low), high) - center
        return delta

    delta = clamp(delta)
    best = center + delta
    best_value = torch.full((center.shape[0],), math.inf, dtype=torch.float64, device=center.device)
    with torch.enable_grad():
        for step in range(steps):
            delta = delta.detach().requires_grad_(True)
            outputs = forward.run(graph, {node.name: center + delta, **fixed})[output_node]
            value = objective_tiled(objective, outputs, restarts)
            improved = value.detach() < best_value
            best = torch.where(improved[:, None], (center + delta).detach(), best)
            best_value = torch.where(improved, value.detach(), best_value)
            if (best_value.reshape(restarts, count) <= 0).any(0).all():
                break
            (gradient,) = torch.autograd.grad(value.sum(), delta)
            size = radius[:, None] * (0.5 * (1 + math.cos(math.pi * step / steps)) * 0.25 + 0.01)
            delta = clamp(delta.detach() - size * _step_direction(gradient, threat.norm, node, region, threat.ball))
    with torch.no_grad():
        outputs = forward.run(graph, {node.name: center + delta, **fixed})[output_node]
        value = objective_tiled(objective, outputs, restarts)
        improved = value < best_value
        best = torch.where(improved[:, None], center + delta, best)
        best_value = torch.where(improved, value, best_value)
    per_restart = best_value.reshape(restarts, count)
    pick = per_restart.argmin(0)
    rows = pick * count + torch.arange(count, device=pick.device)
    return best[rows], best_value[rows]


def objective_tiled(objective: Objective, outputs: Tensor, restarts: int) -> Tensor:
    """Apply a per-sample objective to outputs of `restarts` stacked copies of the batch."""
    count = outputs.shape[0] // restarts
    return torch.cat([objective(outputs[k * count:(k + 1) * count]) for k in range(restarts)])


def inside_set(node: ir.Input, delta: np.ndarray, eps: np.ndarray, threat: ThreatModel, slack: float = 1e-6,
               center: np.ndarray | None = None) -> np.ndarray:
    """Whether each perturbation (batch, size) lies in the threat model's set (float slack); with a
    domain, `center` (batch, size) is needed and center + delta must lie in it."""
    in_domain = np.ones(len(delta), dtype=bool)
    if threat.domain is not None:
        if center is None:
            raise ValueError("checking a point against a domain needs the centre")
        low, high = threat.domain.flat(node)
        point = center + delta
        in_domain = ((point >= low - 1e-7) & (point <= high + 1e-7)).all(axis=1)
    frame_of = node.frame_of_element()
    perturbed = np.ones(node.num_frames, dtype=bool) if threat.frames is None else np.isin(np.arange(node.num_frames), threat.frames)
    fixed_ok = np.abs(delta[:, ~perturbed[frame_of]]).max(axis=1, initial=0.0) <= 1e-7
    limit = eps * (1 + slack) + 1e-7
    if threat.ball == "frame":
        norms = np.stack([np.linalg.norm(delta[:, frame_of == t], ord=threat.norm, axis=1)
                          for t in range(node.num_frames) if perturbed[t]], axis=1)
        return in_domain & fixed_ok & (norms <= limit[:, None]).all(axis=1)
    chosen = delta[:, perturbed[frame_of]]
    return in_domain & fixed_ok & (np.linalg.norm(chosen, ord=threat.norm, axis=1) <= limit)


def margins(outputs: np.ndarray, labels: np.ndarray, target: int | None) -> np.ndarray:
    true = outputs[np.arange(len(labels)), labels]
    if target is not None:
        return true - outputs[:, target]
    others = outputs.copy()
    others[np.arange(len(labels)), labels] = -np.inf
    return true - others.max(axis=1)


def find_counterexamples(graph: ir.Graph, model, batch: Batch, labels: np.ndarray, eps: np.ndarray,
                         threat: ThreatModel, *, output: ir.Output, target: int | None = None,
                         steps: int = 60, restarts: int = 4, seed: int = 0) -> AttackResult:
    """PGD on the margin, then validation: a point counts only if, rounded to the file's input
    precision, it lies in the set and onnxruntime on the ONNX file (`model`, a
    verifier.onnx_runtime.OnnxModel) confirms the prediction changes (margin < 0)."""
    device = batch.center.device
    labels_t = torch.as_tensor(labels, device=device)
    eps_t = torch.as_tensor(np.asarray(eps, dtype=np.float64), device=device)
    adversarial, value = pgd(graph, batch, eps_t, threat, margin_objective(labels_t, target),
                             output_node=output.node, steps=steps, restarts=restarts, seed=seed)
    # validated (and reported) at the point the file sees: rounded to its input precision, e.g. float16
    adversarial = model.rounded(batch.node, adversarial.cpu().numpy())
    flat = {batch.node.name: adversarial, **{k: v.double().cpu().numpy() for k, v in batch.fixed.items()}}
    confirmed = margins(model.outputs(graph, flat, output), np.asarray(labels), target) < 0
    center = batch.center.double().cpu().numpy()
    inside = inside_set(batch.node, adversarial - center, np.asarray(eps, dtype=np.float64), threat, center=center)
    return AttackResult(found=confirmed & inside, adversarial=adversarial, objective=value.cpu().numpy())


def attack_radius(graph: ir.Graph, model, batch: Batch, labels: np.ndarray, threat: ThreatModel, *,
                  output: ir.Output, target: int | None = None, lower: np.ndarray | None = None,
                  start: float = 0.05, tol: float = 0.02, max_radius: float = 1e3, steps: int = 40,
                  restarts: int = 3) -> np.ndarray:
    """Smallest ε (within relative `tol`) at which a validated counterexample was found, per
    sample; inf where none was found up to max_radius. `lower` (e.g. certified radii) seeds the
    bracket: no counterexample can exist below it."""
    count = batch.size
    low = np.zeros(count) if lower is None else np.asarray(lower, dtype=np.float64).copy()
    high = np.full(count, np.inf)
    eps = np.maximum(low * 1.5, start)
    active = np.arange(count)
    for round_ in range(40):
        if active.size == 0:
            break
        rows = torch.as_tensor(active, device=batch.center.device)
        result = find_counterexamples(graph, model, batch.select(rows), labels[active], eps[active], threat,
                                      output=output, target=target, steps=steps, restarts=restarts, seed=round_)
        found = result.found
        high[active[found]] = eps[active[found]]
        low[active[~found]] = np.maximum(low[active[~found]], eps[active[~found]])
        bracketed = np.isfinite(high[active])
        eps[active] = np.where(bracketed, (low[active] + high[active]) / 2, eps[active] * 2)
        done = (bracketed & (high[active] - low[active] <= tol * high[active])) | (low[active] >= max_radius)
        active = active[~done]
    return high
