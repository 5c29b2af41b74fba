"""Points inside a threat model's set, for soundness tests: random interior points, boundary
points, corners/vertices, and points pushed toward the worst case by projected gradient steps on
the exact IR forward. Every point is then run through onnxruntime on the ONNX file."""

from __future__ import annotations

import math

import numpy as np
import torch

from verifier import forward, ir
from verifier.threat import ThreatModel, project


def _frame_blocks(node: ir.Input) -> np.ndarray:
    """(frames, elements per frame) indices into the flat per-sample vector."""
    frame_of = node.frame_of_element()
    return np.argsort(frame_of, kind="stable").reshape(node.num_frames, -1)


def random_deltas(node: ir.Input, eps: float, threat: ThreatModel, count: int,
                  rng: np.random.Generator) -> np.ndarray:
    """(count, size) perturbations inside the set: a mix of interior, boundary and extreme points."""
    blocks = _frame_blocks(node)
    frames = range(node.num_frames) if threat.frames is None else threat.frames
    chosen = blocks[list(frames)]  # (k, per_frame)
    groups = chosen if threat.ball == "frame" else chosen.reshape(1, -1)
    delta = np.zeros((count, node.size))
    for group in groups:
        d = group.size
        kind = rng.integers(0, 3, size=count)  # 0 interior, 1 boundary, 2 extreme point
        if math.isinf(threat.norm):
            values = rng.uniform(-1, 1, size=(count, d))
            values[kind == 2] = np.sign(values[kind == 2])
        elif threat.norm == 2.0:
            values = rng.normal(size=(count, d))
            values /= np.linalg.norm(values, axis=1, keepdims=True)
            values[kind == 0] *= rng.uniform(size=((kind == 0).sum(), 1)) ** (1 / d)
        else:
            values = rng.laplace(size=(count, d))
            values /= np.abs(values).sum(axis=1, keepdims=True)
            vertex = np.zeros(((kind == 2).sum(), d))
            vertex[np.arange(len(vertex)), rng.integers(0, d, size=len(vertex))] = rng.choice([-1, 1], size=len(vertex))
            values[kind == 2] = vertex
            values[kind == 0] *= rng.uniform(size=((kind == 0).sum(), 1))
        delta[:, group] = values * eps
    return delta


def gradient_deltas(graph: ir.Graph, node: ir.Input, center: np.ndarray, eps: float, threat: ThreatModel,
                    output_node: str, steps: int = 8, seed: int = 0) -> np.ndarray:
    """For every output coordinate and both directions, a few projected sign-gradient steps
    maximising/minimising it from a random start. Returns (2 * outputs, size) perturbations."""
    generator = torch.Generator().manual_seed(seed)
    center_t = torch.as_tensor(center, dtype=torch.float64)
    size = node.size
    outputs = graph.sizes()[output_node]
    direction = torch.cat([torch.eye(outputs), -torch.eye(outputs)]).double()
    count = direction.shape[0]
    eps_t = torch.full((count,), float(eps), dtype=torch.float64)
    delta = project(node, (torch.rand(count, size, generator=generator, dtype=torch.float64) - 0.5) * 2 * eps,
                    eps_t, threat)
    step = 0.25 * eps
    for _ in range(steps):
        delta.requires_grad_(True)
        values = forward.run(graph, {node.name: center_t + delta})[output_node]
        objective = (values * direction).sum()
        (gradient,) = torch.autograd.grad(objective, delta)
        with torch.no_grad():
            if threat.norm == 2.0:
                move = gradient / gradient.norm(dim=1, keepdim=True).clamp_min(1e-12)
                move = move * math.sqrt(size)
            else:
                move = gradient.sign()
            delta = project(node, delta + step * move, eps_t, threat)
    return delta.detach().numpy()
