"""The node rule table is complete, and the levelled engine reproduces the bounds of the engine it
replaced (reference values computed before the rewrite, tests/fixtures/reference_bounds)."""

from __future__ import annotations

import sys
import typing
from pathlib import Path

import numpy as np
import pytest
import torch

import parsers
from parsers import builder
from verifier import ir
from verifier.bounds import bound_outputs
from verifier.propagation import MAX_PASS_ROWS, Plan, _chunks
from verifier.rules import RULES, NodeRule, rule

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "reference_bounds"
sys.path.insert(0, str(FIXTURES))
from make_reference_bounds import CASES, ROOT  # noqa: E402


def test_every_node_kind_has_every_rule():
    kinds = set(typing.get_args(ir.Node))
    assert kinds == set(RULES)
    for kind, entry in RULES.items():
        assert isinstance(entry, NodeRule) and entry.kind is kind
        for field in ("size", "forward", "interval", "pull_back"):
            assert callable(getattr(entry, field)), (kind, field)


def test_unknown_node_kinds_are_errors_not_skips():
    class Stray:
        name = "stray"

    with pytest.raises(TypeError, match="Stray"):
        rule(Stray())
    with pytest.raises(TypeError, match="not an IR node"):
        ir.node_inputs(Stray())


@pytest.mark.parametrize("model, norm, ball, eps", CASES, ids=[c[0] for c in CASES])
def test_bounds_equal_the_engine_before_the_rewrite(model, norm, ball, eps, monkeypatch):
    reference = np.load(FIXTURES / "reference_bounds.npz")
    # the references were computed on the IR as the exporter wrote it (before canonicalisation)
    monkeypatch.setattr(builder, "canonicalize", lambda graph: graph, raising=False)
    graph = parsers.load_onnx(ROOT / "models_onnx" / f"{model}.onnx")
    x = np.load(ROOT / "models_onnx" / f"{model}.samples.npz")["x"][:3]
    for method in ("crown", "popqorn", "ibp"):
        lower, upper = bound_outputs(graph, x, eps, norm, ball, method=method, dtype=torch.float64)
        scale = 1 + np.abs(reference[f"{model}/{method}/lower"])
        assert np.abs(lower - reference[f"{model}/{method}/lower"]).max() <= 1e-9 * scale.max(), method
        assert np.abs(upper - reference[f"{model}/{method}/upper"]).max() <= 1e-9 * scale.max(), method


def test_levels_and_chunks():
    graph = parsers.load_onnx(ROOT / "models_onnx" / "digits_lstm_t8_h16.onnx")
    plan = Plan.of(graph)
    assert Plan.of(graph) is plan  # cached per graph
    for node in graph.nodes:  # a node's inputs never sit on a higher level; nonlinear nodes go up one
        below = [plan.level[x] for x in ir.node_inputs(node)]
        assert all(b <= plan.level[node.name] for b in below)
        if isinstance(node, (ir.Activation, ir.Product)):
            assert plan.level[node.name] == max(below) + 1
    rows = [("a", np.arange(5000)), ("b", np.arange(10))]
    chunks = _chunks(rows, MAX_PASS_ROWS)
    assert [sum(len(i) for _, i in c) for c in chunks] == [MAX_PASS_ROWS, 5010 - MAX_PASS_ROWS]
    assert np.array_equal(np.concatenate([i for c in chunks for n, i in c if n == "a"]), np.arange(5000))


def test_the_backward_work_budget_refuses_before_any_work(monkeypatch):
    from verifier.errors import InputError

    graph = parsers.load_onnx(ROOT / "models_onnx" / "digits_lstm_t8_h16.onnx")
    x = np.load(ROOT / "models_onnx" / "digits_lstm_t8_h16.samples.npz")["x"][:1]
    assert 0 < Plan.of(graph).visits < 1000
    monkeypatch.setenv("POPQORN_MAX_VISITS", "100")
    with pytest.raises(InputError, match="POPQORN_MAX_VISITS"):
        bound_outputs(graph, x, 0.01)
    lower, upper = bound_outputs(graph, x, 0.01, method="ibp")  # interval arithmetic is linear: no budget
    assert (lower <= upper).all()
