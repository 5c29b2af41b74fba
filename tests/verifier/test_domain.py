"""The input domain end to end on a shipped model (pixels in [0, 1]): bounds over ball ∩ domain
contain onnxruntime's outputs at points of that set (clipped faces included), and intersecting
with the domain never shrinks a certified radius."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import parsers
from tests.verifier.sampling import random_deltas
from verifier.bounds import bound_outputs, make_batch
from verifier.certify import certify
from verifier.errors import InputError
from verifier.threat import ThreatModel

MODEL = Path(__file__).resolve().parents[2] / "models_onnx" / "digits_lstm_t8_h16.onnx"


@pytest.fixture(scope="module")
def shipped():
    data = np.load(MODEL.with_suffix(".samples.npz"))
    return parsers.load_onnx(MODEL), data["x"][:2], data["y"][:2]


@pytest.mark.parametrize("norm, eps", [(math.inf, 0.02), (2.0, 0.1), (1.0, 0.3)])
def test_bounds_over_ball_and_domain_contain_onnxruntime(shipped, norm, eps):
    graph, x, _ = shipped
    threat = ThreatModel(norm, "frame", None, (0.0, 1.0))
    lower, upper = bound_outputs(graph, x, eps, threat=threat)
    session = ort.InferenceSession(str(MODEL))
    node = make_batch(graph, x).node
    rng = np.random.default_rng(0)
    for k in range(len(x)):
        center = x[k].reshape(-1).astype(np.float64)
        deltas = random_deltas(node, eps, threat, 3000, rng)
        points = np.clip(center + deltas, 0.0, 1.0)  # clipping toward the centre stays in the ball
        outputs = session.run(None, {"x": points.reshape(-1, *x.shape[1:]).astype(np.float32)})[0]
        assert (outputs >= lower[k] - 2e-5).all() and (outputs <= upper[k] + 2e-5).all()


def test_domain_never_shrinks_the_radius_and_often_grows_it(shipped):
    graph, x, y = shipped
    plain = [r.radius for r in certify(graph, x, math.inf, labels=y, ball="sequence")]
    clipped = [r.radius for r in certify(graph, x, math.inf, labels=y, ball="sequence", domain=(0.0, 1.0))]
    assert all(c >= p * (1 - 1e-3) for c, p in zip(clipped, plain))
    assert sum(clipped) > sum(plain)  # blank pixels are 0: half of their ball leaves the domain


def test_clean_input_outside_the_domain_is_refused(shipped):
    graph, x, y = shipped
    with pytest.raises(InputError, match="outside the domain"):
        certify(graph, x * 2 - 0.5, 2.0, domain=(0.0, 1.0))
