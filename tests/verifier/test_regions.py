"""Balls intersected with an input domain, and equal sets giving equal bounds.

The minimum of a linear function over ball ∩ box must be a lower bound of every point of the set
(sampled: ball points clipped into the box, which stay in the ball, so points on the clipped faces
are included) and attained by a point of the set; projections must land in the set."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.verifier.sampling import random_deltas
from verifier import ir
from verifier.errors import InputError
from verifier.regions import BallRegion, BoxRegion, PointRegion, Slices, _max_weighted_sum, project
from verifier.threat import Domain, ThreatModel

NODE = ir.Input("x", (1, 3, 4), 0, 1, "x")  # [batch, T=3, F=4]
NODE_INTERLEAVED = ir.Input("x", (1, 4, 3), 0, 2, "x")  # [batch, F=4, T=3]: frames interleaved


def _threats(domain):
    return [ThreatModel(p, ball, frames, domain) for p in (1.0, 2.0, math.inf)
            for ball in ("frame", "sequence") for frames in (None, (0, 2))]


@pytest.mark.parametrize("p", [1.0, 2.0, math.inf])
def test_weighted_sum_is_the_exact_maximum(p):
    """max sum w_i t_i over 0 <= t <= c, ||t||_p <= eps: never beaten by feasible points, and
    matched by the greedy/KKT point built independently here."""
    rng = np.random.default_rng(3)
    weight = np.abs(rng.normal(size=(200, 6)))
    weight[::7, 2] = 0.0
    room = np.abs(rng.normal(size=(200, 6))) * rng.choice([0.05, 1.0, 5.0], size=(200, 1))
    room[::5, 1] = np.inf  # an unbounded side of the domain
    eps = rng.uniform(0.1, 2.0, size=200)
    value = _max_weighted_sum(torch.as_tensor(weight), torch.as_tensor(room), torch.as_tensor(eps), p).numpy()
    for k in range(200):
        w, c, e = weight[k], room[k], eps[k]
        points = rng.uniform(size=(4000, 6)) * np.minimum(c, 10 * e)
        norms = np.linalg.norm(points, ord=p, axis=1)
        points = points * np.minimum(1, e / np.maximum(norms, 1e-300))[:, None]  # scale into the ball
        assert (points @ w <= value[k] + 1e-9).all()
        assert _independent_optimum(w, c, e, p) == pytest.approx(value[k], rel=1e-9, abs=1e-12)


def _independent_optimum(w, c, e, p) -> float:
    return float(w @ _independent_point(w, c, e, p))


def _independent_point(w, c, e, p) -> np.ndarray:
    """The maximiser from first principles: min(c, eps) (p = inf); greedy on w (p = 1); for p = 2,
    t_i = min(c_i, s*w_i) with the scale s found by bisection."""
    if math.isinf(p):
        return np.minimum(c, e)
    if p == 1.0:
        t, budget = np.zeros_like(w), e
        for i in np.argsort(-w, kind="stable"):
            t[i] = min(c[i], budget) if w[i] > 0 else 0.0
            budget -= t[i]
        return t
    t_of = lambda s: np.where(w > 0, np.minimum(c, s * w), 0.0)
    if np.linalg.norm(t_of(1e300)) <= e:
        return t_of(1e300)
    lo, hi = 0.0, 1.0
    while np.linalg.norm(t_of(hi)) < e:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if np.linalg.norm(t_of(mid)) < e else (lo, mid)
    return t_of(lo)


@pytest.mark.parametrize("node", [NODE, NODE_INTERLEAVED])
@pytest.mark.parametrize("threat", _threats((0.0, 1.0)), ids=str)
def test_minimum_over_ball_and_domain_is_sound_and_attained(node, threat):
    rng = np.random.default_rng(0)
    center = torch.as_tensor(rng.uniform(0, 1, size=(2, node.size)))
    center[0, :3] = torch.tensor([0.0, 1.0, 0.02], dtype=torch.float64)  # on and near the domain's faces
    eps = torch.tensor([0.3, 0.7], dtype=torch.float64)
    region = BallRegion(node, center, eps, threat)
    coefficients = torch.as_tensor(rng.normal(size=(2, 3, node.size)))
    minimum = region.minimize(coefficients).numpy()
    maximum = region.maximize(coefficients).numpy()
    low, high = region.element_bounds()
    for sample in range(2):
        c = center[sample].numpy()
        deltas = np.clip(random_deltas(node, float(eps[sample]), threat, 20000, rng), -c, 1 - c)
        points = c + deltas
        assert (points >= low[sample].numpy() - 1e-12).all() and (points <= high[sample].numpy() + 1e-12).all()
        values = points @ coefficients[sample].numpy().T
        assert (values.min(0) >= minimum[sample] - 1e-9).all()
        assert (values.max(0) <= maximum[sample] + 1e-9).all()
        # attained: the optimal point built group by group from first principles lies in the set
        frame_of = node.frame_of_element()
        frames = range(node.num_frames) if threat.frames is None else threat.frames
        groups = ([frame_of == t for t in frames] if threat.ball == "frame"
                  else [np.isin(frame_of, list(frames))])
        for row in range(3):
            a = coefficients[sample, row].numpy()
            delta = np.zeros_like(a)
            for group in groups:
                room = np.where(a[group] < 0, 1 - c[group], c[group])
                t = _independent_point(np.abs(a[group]), room, float(eps[sample]), threat.norm)
                delta[group] = -np.sign(a[group]) * t
            assert (c + delta >= -1e-12).all() and (c + delta <= 1 + 1e-12).all()
            assert (c + delta) @ a == pytest.approx(minimum[sample, row], rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("threat", _threats(Domain(-0.2, np.array([0.1, 0.5, 1.0, np.inf]))), ids=str)
def test_projection_lands_in_ball_and_domain(threat):
    rng = np.random.default_rng(1)
    center = torch.as_tensor(rng.uniform(-0.2, 0.1, size=(2, NODE.size)))
    eps = torch.tensor([0.5, 0.2], dtype=torch.float64)
    delta = torch.as_tensor(rng.normal(size=(2, NODE.size)) * 2)
    projected = project(NODE, delta, eps, threat, center=center)
    region = BallRegion(NODE, center, eps, threat)
    low, high = region.element_bounds()
    points = center + projected
    assert (points >= low - 1e-12).all() and (points <= high + 1e-12).all()
    inside = projected * 0.5  # a point of the set stays where it is
    assert torch.allclose(project(NODE, inside, eps, threat, center=center), inside, atol=1e-9)


def test_equal_sets_give_bit_identical_bounds():
    rng = np.random.default_rng(5)
    center = torch.as_tensor(rng.uniform(0, 1, size=(2, NODE.size)))
    eps = torch.tensor([0.3, 0.1], dtype=torch.float64)
    coefficients = torch.as_tensor(rng.normal(size=(2, 4, NODE.size)))
    for domain in (None, Domain(0.0, 1.0)):
        frame = BallRegion(NODE, center, eps, ThreatModel(math.inf, "frame", None, domain)).minimize(coefficients)
        sequence = BallRegion(NODE, center, eps, ThreatModel(math.inf, "sequence", None, domain)).minimize(coefficients)
        assert torch.equal(frame, sequence)  # l_inf: the same set
        for p in (1.0, 2.0, math.inf):
            one_frame = BallRegion(NODE, center, eps, ThreatModel(p, "frame", (1,), domain)).minimize(coefficients)
            one_seq = BallRegion(NODE, center, eps, ThreatModel(p, "sequence", (1,), domain)).minimize(coefficients)
            assert torch.equal(one_frame, one_seq)  # one perturbed frame: the same set


@pytest.mark.parametrize("node", [NODE, NODE_INTERLEAVED])
@pytest.mark.parametrize("threat", _threats(None) + _threats((0.0, 1.0)), ids=str)
def test_slices_give_the_dense_minimum(node, threat):
    """Coefficients as per-frame slices (how a backward pass reaches a sequence input) or as one
    tensor: the same minimum, to rounding, whether or not the slices are frame-aligned."""
    rng = np.random.default_rng(7)
    center = torch.as_tensor(rng.uniform(0, 1, size=(3, node.size)))
    eps = torch.tensor([0.3, 0.0, 0.05], dtype=torch.float64)
    region = BallRegion(node, center, eps, threat)
    row = lambda width: torch.as_tensor(rng.normal(size=(3, 2, width)))
    for parts in [((0, row(4)), (8, row(4))),  # frames 0 and 2, frame 1 left out
                  ((4, row(8)),),  # frames 1-2 in one slice
                  ((0, row(12)),),  # the whole input
                  ((1, row(2)), (6, row(5)))]:  # not on frame boundaries
        slices = Slices(parts, node.size)
        dense = slices.dense()
        assert dense.shape == (3, 2, node.size)
        for start, a in parts:
            assert torch.equal(dense[..., start:start + a.shape[-1]], a)
        assert float(dense.abs().sum()) == pytest.approx(sum(float(a.abs().sum()) for _, a in parts))
        assert torch.allclose(region.minimize(slices), region.minimize(dense), rtol=1e-13, atol=1e-13)
    box = BoxRegion(center - 0.1, center + 0.2)
    assert torch.allclose(box.minimize(slices), box.minimize(dense), rtol=1e-13, atol=1e-13)
    assert torch.allclose(PointRegion(center).minimize(slices), PointRegion(center).minimize(dense))


def test_domain_values_and_errors():
    threat = ThreatModel(2.0, "frame", None, "0,1")
    assert threat.domain.describe() == {"low": 0.0, "high": 1.0}
    assert threat.describe()["domain"] == {"low": 0.0, "high": 1.0}
    per_feature = Domain(np.zeros(4), np.ones(4))
    low, high = per_feature.flat(NODE)
    assert low.shape == (12,) and (high == 1).all()
    with pytest.raises(InputError, match="LOW,HIGH"):
        Domain.parse("0;1")
    with pytest.raises(InputError, match="exceeds"):
        Domain(1.0, 0.0)
    with pytest.raises(InputError, match="NaN"):
        Domain(np.nan, 1.0)
    with pytest.raises(InputError, match="do not fit"):
        Domain(np.zeros(5), np.ones(5)).flat(NODE)
    center = torch.full((1, NODE.size), 0.5, dtype=torch.float64)
    center[0, 7] = 1.5
    with pytest.raises(InputError, match="outside the domain"):
        BallRegion(NODE, center, torch.tensor([0.1], dtype=torch.float64), threat)


def test_api_spellings_are_one_typed_value():
    assert ThreatModel("2", "frame", "0,2") == ThreatModel(2, "FRAME", [0, 2]) == ThreatModel(2.0, "frame", (0, 2))
    assert str(ThreatModel(math.inf, "sequence").ball) == "sequence"
    with pytest.raises(InputError, match="norm"):
        ThreatModel("3")
    with pytest.raises(InputError, match="frames"):
        ThreatModel(2.0, "frame", [0.5])
