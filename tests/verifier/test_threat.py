"""Threat models: the minimum of a linear function over the set must be exact (attained by some
point of the set and never beaten by sampled points), and projection must land inside the set."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.verifier.sampling import random_deltas
from verifier import ir
from verifier.errors import InputError
from verifier.threat import BallRegion, BoxRegion, ThreatModel, parse_frames, parse_norm, project

# [batch=1, T=3, F=4] input: frame axis 1, so frames are contiguous blocks of 4 elements
NODE = ir.Input("x", (1, 3, 4), 0, 1, "x")
# [T=3, batch=1, F=2]: frames are still blocks; [batch, F=2, T=3]: frames interleaved
NODE_INTERLEAVED = ir.Input("x", (1, 2, 3), 0, 2, "x")

THREATS = [ThreatModel(p, ball, frames) for p in (1.0, 2.0, math.inf)
           for ball in ("frame", "sequence") for frames in (None, (0, 2))]


def _norms_per_frame(node: ir.Input, delta: np.ndarray, p: float) -> np.ndarray:
    frame = node.frame_of_element()
    return np.stack([np.linalg.norm(delta[:, frame == t], ord=p, axis=1) for t in range(node.num_frames)], axis=1)


def _minimiser(node: ir.Input, a: np.ndarray, eps: float, threat: ThreatModel) -> np.ndarray:
    frame = node.frame_of_element()
    frames = range(node.num_frames) if threat.frames is None else threat.frames
    groups = [frame == t for t in frames] if threat.ball == "frame" else [np.isin(frame, list(frames))]
    delta = np.zeros_like(a)
    for group in groups:
        g = a[group]
        if math.isinf(threat.norm):
            step = -np.sign(g)
        elif threat.norm == 2.0:
            step = -g / np.linalg.norm(g)
        else:
            step = np.zeros_like(g)
            k = np.argmax(np.abs(g))
            step[k] = -np.sign(g[k])
        delta[group] = eps * step
    return delta


@pytest.mark.parametrize("node", [NODE, NODE_INTERLEAVED])
@pytest.mark.parametrize("threat", THREATS, ids=str)
def test_minimum_is_a_lower_bound_and_nearly_attained(node, threat):
    rng = np.random.default_rng(0)
    center = torch.as_tensor(rng.normal(size=(2, node.size)))
    eps = torch.tensor([0.3, 0.7], dtype=torch.float64)
    region = BallRegion(node, center, eps, threat)
    coefficients = torch.as_tensor(rng.normal(size=(2, 3, node.size)))
    minimum = region.minimize(coefficients).numpy()
    maximum = region.maximize(coefficients).numpy()
    for sample in range(2):
        deltas = random_deltas(node, float(eps[sample]), threat, 20000, rng)
        values = (center[sample].numpy() + deltas) @ coefficients[sample].numpy().T
        assert (values.min(0) >= minimum[sample] - 1e-9).all()
        assert (values.max(0) <= maximum[sample] + 1e-9).all()
        # the minimum is attained: build the minimiser from the dual norm, group by group
        for row in range(3):
            a = coefficients[sample, row].numpy()
            best = _minimiser(node, a, float(eps[sample]), threat)
            assert (center[sample].numpy() + best) @ a == pytest.approx(minimum[sample, row], abs=1e-9)


@pytest.mark.parametrize("threat", THREATS, ids=str)
def test_projection_lands_in_the_set_and_fixes_points_inside(threat):
    rng = np.random.default_rng(1)
    eps = torch.tensor([0.5, 0.2], dtype=torch.float64)
    delta = torch.as_tensor(rng.normal(size=(2, NODE.size)) * 2)
    projected = project(NODE, delta, eps, threat).numpy()
    frames = list(range(3)) if threat.frames is None else list(threat.frames)
    untouched = [t for t in range(3) if t not in frames]
    blocks = projected.reshape(2, 3, 4)
    assert np.all(blocks[:, untouched] == 0)
    p = threat.norm
    if threat.ball == "frame":
        norms = np.linalg.norm(blocks[:, frames], ord=p, axis=2)
        assert (norms <= eps.numpy()[:, None] * (1 + 1e-9)).all()
        assert np.allclose(norms, eps.numpy()[:, None])  # far-away points land on the sphere
    else:
        norms = np.linalg.norm(blocks[:, frames].reshape(2, -1), ord=p, axis=1)
        assert np.allclose(norms, eps.numpy())
    inside = torch.as_tensor(projected) * 0.5
    assert torch.allclose(project(NODE, inside, eps, threat), inside)


def test_l1_projection_is_the_nearest_point():
    rng = np.random.default_rng(2)
    point = torch.as_tensor(rng.normal(size=(1, 4)))
    node = ir.Input("x", (1, 4), 0, None, "x")
    eps = torch.tensor([0.5], dtype=torch.float64)
    projected = project(node, point, eps, ThreatModel(1.0, "sequence")).numpy()[0]
    candidates = random_deltas(node, 0.5, ThreatModel(1.0, "sequence"), 50000, rng)
    best = np.linalg.norm(candidates - point.numpy(), axis=1).min()
    assert np.linalg.norm(projected - point.numpy()[0]) <= best + 1e-9


def test_box_minimum_is_exact():
    lower = torch.tensor([[-1.0, 0.0, 2.0]], dtype=torch.float64)
    upper = torch.tensor([[1.0, 0.5, 2.0]], dtype=torch.float64)
    coefficients = torch.tensor([[[2.0, -1.0, 3.0]]], dtype=torch.float64)
    region = BoxRegion(lower, upper)
    assert region.minimize(coefficients).item() == pytest.approx(-2 - 0.5 + 6)
    assert region.maximize(coefficients).item() == pytest.approx(2 + 0 + 6)


def test_bad_threat_options_are_refused():
    with pytest.raises(InputError, match="norm"):
        parse_norm("3")
    with pytest.raises(InputError, match="ball"):
        ThreatModel(2.0, "cube")
    with pytest.raises(InputError, match="out of range"):
        ThreatModel(2.0, "frame", (5,)).frame_mask(NODE)
    with pytest.raises(InputError, match="integers"):
        parse_frames("a,b")
    with pytest.raises(InputError, match="eps"):
        BallRegion(NODE, torch.zeros(1, NODE.size), torch.tensor([-0.1]), ThreatModel())
    assert parse_norm("inf") == math.inf and parse_frames("0, 2") == (0, 2) and parse_frames("all") is None
