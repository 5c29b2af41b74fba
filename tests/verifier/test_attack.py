"""Attacks: counterexamples stay inside the exact threat model, are confirmed by onnxruntime, and
no attack ever beats a certified radius."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import parsers
from tests.verifier import models
from verifier.attack import attack_radius, find_counterexamples, inside_set, margins
from verifier.bounds import make_batch
from verifier.certify import certify
from verifier.onnx_runtime import OnnxModel
from verifier.threat import ThreatModel


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = models.export_torch(models.CellLoop("lstm"), tmp_path_factory.mktemp("attack") / "lstm.onnx", seed=3)
    graph = parsers.load_onnx(path)
    x = np.random.default_rng(5).uniform(-1, 1, (4, models.STEPS, models.FEATURES)).astype(np.float32)
    return path, graph, x


THREATS = [ThreatModel(p, ball, frames) for p in (1.0, 2.0, math.inf) for ball in ("frame", "sequence")
           for frames in (None, (1, 2))]


@pytest.mark.parametrize("threat", THREATS, ids=str)
def test_counterexamples_are_inside_the_set_and_confirmed(model, threat):
    path, graph, x = model
    batch = make_batch(graph, x, dtype=torch.float64)
    onnx_model = OnnxModel(str(path))
    labels = onnx_model.outputs(graph, {batch.node.name: batch.center.numpy()}, graph.outputs[0]).argmax(1)
    eps = np.full(4, 3.0)
    result = find_counterexamples(graph, onnx_model, batch, labels, eps, threat, output=graph.outputs[0], steps=40)
    delta = result.adversarial - batch.center.numpy()
    assert inside_set(batch.node, delta, eps, threat).all()
    if threat.frames is not None:  # untouched frames stay exactly as they were
        assert np.abs(delta.reshape(4, models.STEPS, models.FEATURES)[:, [0, 3]]).max() == 0
    if threat.frames is None:
        assert result.found.any()  # a radius of 3 on every frame of inputs in [-1, 1] is far from robust
    confirmed = margins(onnx_model.outputs(graph, {batch.node.name: result.adversarial}, graph.outputs[0]), labels, None)
    assert (confirmed[result.found] < 0).all()


def test_fabricated_points_are_rejected(model, monkeypatch):
    path, graph, x = model
    batch = make_batch(graph, x, dtype=torch.float64)
    onnx_model = OnnxModel(str(path))
    labels = onnx_model.outputs(graph, {batch.node.name: batch.center.numpy()}, graph.outputs[0]).argmax(1)
    import verifier.attack as attack
    # an "attack" that claims success but returns the clean inputs: onnxruntime disagrees
    monkeypatch.setattr(attack, "pgd", lambda graph, batch, eps, *a, **k: (batch.center.double(), torch.full((batch.size,), -1.0)))
    result = attack.find_counterexamples(graph, onnx_model, batch, labels, np.full(4, 0.1), ThreatModel(2.0),
                                         output=graph.outputs[0])
    assert not result.found.any()
    # and points outside the set are rejected even when they flip the prediction
    far = batch.center.double() + 50.0
    monkeypatch.setattr(attack, "pgd", lambda graph, batch, eps, *a, **k: (far, torch.full((batch.size,), -1.0)))
    result = attack.find_counterexamples(graph, onnx_model, batch, labels, np.full(4, 0.1), ThreatModel(2.0),
                                         output=graph.outputs[0])
    assert not result.found.any()


@pytest.mark.parametrize("norm", [2.0, math.inf])
def test_no_attack_beats_a_certified_radius(model, norm):
    path, graph, x = model
    results = certify(graph, x, norm, dtype=torch.float64)
    batch = make_batch(graph, x, dtype=torch.float64)
    labels = np.array([r.label for r in results])
    certified = np.array([r.radius for r in results])
    attacked = attack_radius(graph, OnnxModel(str(path)), batch, labels, ThreatModel(norm), output=graph.outputs[0],
                             start=float(certified.mean()))
    assert np.isfinite(attacked).all()
    assert (certified <= attacked).all()
    assert (certified / attacked).mean() > 0.1  # the bounds are not vacuous
