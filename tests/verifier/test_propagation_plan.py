"""The propagation plan skips backward passes that cannot tighten a node's interval (activations,
elementwise affine maps of tight nodes) where every pass uses the same relaxations: the bounds are
those of running every pass, to rounding. Optimised per-row passes keep them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import parsers
from verifier import ir, propagation
from verifier.bounds import make_batch, relaxer_for
from verifier.certify import margin_lower_bounds, margin_spec
from verifier.optimize import OptimizeOptions
from verifier.threat import ThreatModel

MODELS = Path(__file__).resolve().parents[2] / "models_onnx"


def _margins(graph, x, labels, method, optimize=None):
    batch = make_batch(graph, x, dtype=torch.float64)
    eps = torch.full((len(x),), 0.05, dtype=torch.float64)
    spec = margin_spec(torch.as_tensor(labels), 10, None)
    return margin_lower_bounds(batch.graph, batch, eps, ThreatModel(2.0, "frame"), spec, relaxer_for(method),
                               batch.graph.outputs[0].node, optimize=optimize)


def test_activations_and_elementwise_maps_of_tight_nodes_get_no_pass():
    graph = parsers.load_onnx(MODELS / "digits_gru_t8_h16.onnx")
    plan = propagation.Plan.of(graph)
    skipped = [n for n in graph.nodes if n.name in plan.exact and any(
        n.name in ir.node_inputs(m) for m in graph.nodes if isinstance(m, (ir.Activation, ir.Product)))]
    kinds = {type(n).__name__ for n in skipped}
    assert kinds == {"Activation", "Affine"}  # z, n = tanh(.) and 1 - z of the GRU update
    assert all(isinstance(n, ir.Activation) or n.weight.ndim == 1 for n in skipped)
    assert not [n for n in graph.nodes if isinstance(n, ir.Affine) and n.weight.ndim == 2
                and n.name in plan.exact and any(n.name in ir.node_inputs(m) for m in graph.nodes
                                                      if isinstance(m, (ir.Activation, ir.Product)))]


@pytest.mark.parametrize("name", ["digits_gru_t8_h16", "mnist_gru_t4_h32"])  # LSTMs have no such node
@pytest.mark.parametrize("method", ["crown", "popqorn", "alpha-shared", "alpha-none", "alpha-per-row"])
def test_skipped_passes_change_no_bound(monkeypatch, name, method):
    graph = parsers.load_onnx(MODELS / f"{name}.onnx")
    data = np.load(MODELS / f"{name}.samples.npz")
    x, labels = data["x"][:3], data["y"][:3]
    method, _, mode = method.partition("-")
    optimize = OptimizeOptions(steps=3, intermediate=mode) if method == "alpha" else None
    skipping = _margins(graph, x, labels, method, optimize)
    monkeypatch.setattr(propagation, "_exact_given_inputs", lambda node, tight: False)
    propagation._PLANS.clear()
    every_pass = _margins(graph, x, labels, method, optimize)
    propagation._PLANS.clear()
    # the optimised mode follows gradients: where a pass matched the interval to rounding, the gradient
    # took the other branch of the intersection, which moves Adam's path by ~1e-7 after three steps
    tolerance = 1e-6 if method == "alpha" and mode == "shared" else 1e-12
    assert torch.allclose(skipping, every_pass, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("name", ["digits_lstm_t8_h16", "digits_gru_t8_h16", "mnist_rnn_tanh_t4_h32",
                                  "mnist_lstm_t4_h32_keras"])
@pytest.mark.parametrize("frames", [(3,), (1, 2), (0,), "variants"])
@pytest.mark.parametrize("method", ["crown", "popqorn"])
def test_steps_before_the_first_perturbed_frame_are_constants_that_change_no_bound(monkeypatch, name, frames, method):
    """With a frame subset, the nodes no perturbed frame reaches get no CROWN pass and end every
    backward pass (their intervals are points): the margins equal those of bounding every node, to
    rounding, and the shortcut is really taken (a whole step where it comes before the first perturbed frame).
    "variants": per-sample frame masks (as --per-frame uses), where only frames no row perturbs count."""
    graph = parsers.load_onnx(MODELS / f"{name}.onnx")
    data = np.load(MODELS / f"{name}.samples.npz")
    x, labels = data["x"][:4], data["y"][:4]
    batch = make_batch(graph, x, dtype=torch.float64)
    count = batch.node.num_frames
    if frames == "variants":
        mask = torch.zeros(4, count, dtype=torch.bool)
        mask[torch.arange(4), torch.tensor([count - 1, count - 2, count - 1, count - 2])] = True
        threat = ThreatModel(2.0, "frame")
    else:
        mask, threat = None, ThreatModel(2.0, "frame", frames=frames)
    eps = torch.full((4,), 0.05, dtype=torch.float64)
    spec = margin_spec(torch.as_tensor(labels), 10, None)

    def margins():
        return margin_lower_bounds(batch.graph, batch, eps, threat, spec, relaxer_for(method),
                                   batch.graph.outputs[0].node, mask)

    folded = []
    original = propagation._constant_nodes
    monkeypatch.setattr(propagation, "_constant_nodes", lambda g, r: folded.append(original(g, r)) or folded[-1])
    shortcut = margins()
    assert folded[-1]  # an unperturbed frame's input projection at least is a constant
    first = count - 2 if frames == "variants" else min(frames)
    steps_before = {n.name for n in batch.graph.nodes if "/t0/" in n.name and not isinstance(n, ir.Input)}
    assert (steps_before <= folded[-1]) == (first > 0)  # the whole first step, when it comes before
    monkeypatch.setattr(propagation, "_constant_nodes", lambda g, r: frozenset())
    every_node = margins()
    assert torch.allclose(shortcut, every_node, rtol=1e-11, atol=1e-11), (shortcut - every_node).abs().max()
