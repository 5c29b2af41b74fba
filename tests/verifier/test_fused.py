"""Fused pull-back kernels (verifier.fused): the same arithmetic as the eager ones, used only where
no gradient flows, chosen by a size rule on CUDA, and a compile failure never changes a bound.

The compiled path is exercised on CPU here (inductor's C++ backend); the GPU probe
(benchmarks/gpu_probe.py --fused) compares fused and eager bounds and radii on the device."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import parsers
from tests.verifier import models
from verifier import cuda_graphs, fused
from verifier.bounds import ball_regions, make_batch, relaxer_for
from verifier.certify import margin_lower_bounds, margin_spec
from verifier.propagation import BackwardPass, LineForm, PlaneForm, Propagator
from verifier.threat import ThreatModel


def _forms(rows_of_form: int, n: int, generator: torch.Generator) -> tuple[LineForm, PlaneForm]:
    draw = lambda: torch.randn(2, rows_of_form, n, dtype=torch.float64, generator=generator)
    return LineForm(draw(), draw().abs(), draw(), draw().abs()), PlaneForm(*(draw() for _ in range(6)))


@pytest.mark.parametrize("rows_of_form", [1, 7])  # shared by every row, or per row (optimised mode)
def test_eager_kernels_take_the_upper_relaxation_where_a_coefficient_is_negative(rows_of_form):
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(2, 7, 5, dtype=torch.float64, generator=generator)
    line, plane = _forms(rows_of_form, 5, generator)
    negative = a < 0
    pick = lambda low, gap: torch.where(negative, low + gap, low.expand_as(a))
    coefficients, constant = fused.EAGER.line(a, line)
    torch.testing.assert_close(coefficients, a * pick(line.slope, line.slope_gap), rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(constant, (a * pick(line.intercept, line.intercept_gap)).sum(-1), rtol=1e-13, atol=1e-13)
    left, right, constant = fused.EAGER.plane(a, plane)
    torch.testing.assert_close(left, a * pick(plane.x, plane.x_gap), rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(right, a * pick(plane.y, plane.y_gap), rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(constant, (a * pick(plane.const, plane.const_gap)).sum(-1), rtol=1e-13, atol=1e-13)
    center = torch.randn(2, 5, dtype=torch.float64, generator=generator)
    torch.testing.assert_close(fused.EAGER.dot(a, center), (a * center[:, None]).sum(-1), rtol=1e-13, atol=1e-13)


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fused")
    return {kind: models.export_torch(models.CellLoop(kind), folder / f"{kind}.onnx", seed=5)
            for kind in ("lstm", "gru", "rnn_tanh")}


def _margins(path, threat: ThreatModel, method: str, samples: int = 4) -> torch.Tensor:
    graph = parsers.load_onnx(path)
    x = np.random.default_rng(1).uniform(-1, 1, (samples, models.STEPS, models.FEATURES)).astype(np.float32)
    batch = make_batch(graph, x, dtype=torch.float64)
    spec = margin_spec(torch.arange(samples) % models.CLASSES, models.CLASSES, None)
    eps = torch.full((samples,), 0.05, dtype=torch.float64)
    with torch.inference_mode():
        return margin_lower_bounds(batch.graph, batch, eps, threat, spec, relaxer_for(method), batch.graph.outputs[0].node)


def test_fused_kernels_give_the_eager_bounds(nets, monkeypatch):
    """Every cell kind (products and plain activations), two norms, both relaxation families."""
    for kind, threat, method in (("lstm", ThreatModel(2.0, "frame"), "crown"),
                                 ("gru", ThreatModel(math.inf, "sequence"), "popqorn"),
                                 ("rnn_tanh", ThreatModel(1.0, "sequence", frames=(1, 2)), "crown")):
        monkeypatch.setenv("POPQORN_FUSED", "0")
        eager = _margins(nets[kind], threat, method)
        monkeypatch.setenv("POPQORN_FUSED", "1")
        fused_bounds = _margins(nets[kind], threat, method)
        assert not fused.fused().line_kernel.failed and not fused.fused().plane_kernel.failed, kind
        torch.testing.assert_close(fused_bounds, eager, rtol=1e-12, atol=1e-12)


def test_a_compile_failure_falls_back_to_the_eager_bounds_and_says_so(nets, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    kernel = fused._Compiled(fused._fusable_plane, fused.eager_plane)
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: broken)
    a = torch.randn(2, 3, 4, dtype=torch.float64)
    plane = _forms(1, 4, torch.Generator().manual_seed(2))[1]
    args = (a, plane.x, plane.x_gap, plane.y, plane.y_gap, plane.const, plane.const_gap)
    for got, want in zip(kernel(*args), fused.eager_plane(*args)):
        assert torch.equal(got, want)
    assert kernel.failed and "fusing the pull-back kernels failed" in capsys.readouterr().err


def test_passes_with_gradients_use_the_eager_kernels(nets, monkeypatch):
    """The optimised mode differentiates through its passes: they never go through a compiled kernel."""
    monkeypatch.setenv("POPQORN_FUSED", "1")
    graph = parsers.load_onnx(nets["lstm"])
    batch = make_batch(graph, np.zeros((2, models.STEPS, models.FEATURES), np.float32), dtype=torch.float64)
    regions = ball_regions(batch, torch.full((2,), 0.1, dtype=torch.float64), ThreatModel(2.0, "frame"))
    propagator = Propagator(batch.graph, regions, relaxer_for("crown"))
    assert propagator.kernels is fused.fused()
    with torch.enable_grad():
        assert BackwardPass(propagator).kernels is fused.EAGER
    with torch.no_grad():
        assert BackwardPass(propagator).kernels is fused.fused()


def test_fusing_is_chosen_by_device_size_and_setting(monkeypatch):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    monkeypatch.delenv("POPQORN_FUSED", raising=False)
    monkeypatch.delenv("POPQORN_CUDA_GRAPHS", raising=False)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: object() if name == "triton" else None)
    assert fused.wanted(cuda, 32, 512) and fused.wanted(cuda, 32, 1024)
    assert not fused.wanted(cuda, 1, 64) and not fused.wanted(cpu, 32, 1024)
    assert cuda_graphs.usable(cuda, 32, 1024)  # fused calls are replayed at any size
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)  # no triton: eager, and no graphs so large
    assert not fused.wanted(cuda, 32, 1024) and not cuda_graphs.usable(cuda, 32, 1024)
    monkeypatch.setenv("POPQORN_FUSED", "1")
    assert fused.wanted(cpu, 1, 8) and fused.pull_backs_for(cpu, 1, 8) is fused.fused()
    monkeypatch.setenv("POPQORN_FUSED", "0")
    assert not fused.wanted(cuda, 32, 1024) and fused.pull_backs_for(cuda, 32, 1024) is fused.EAGER
