"""CUDA-graph replay of bound calls (verifier.cuda_graphs), checked without a GPU: the captured
computation must never read a device value on the host (that would break the capture), and the
radius search over replayed fixed-shape calls must give the same radii as the direct path."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import parsers
from tests.verifier import models
from verifier import cuda_graphs
from verifier.bounds import ball_regions, make_batch, relaxer_for
from verifier.certify import certify, margin_spec
from verifier.propagation import Propagator
from verifier.threat import ThreatModel

# operations that copy a device value to the host (or need its value there), forbidden in a capture
HOST_READS = {"_local_scalar_dense", "nonzero", "is_nonzero", "item", "equal", "allclose", "masked_select",
              "unique", "_unique2", "repeat_interleave"}


class _Recorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        indices = args[1] if name in ("index", "index_put", "index_put_") and len(args) > 1 else ()
        if any(isinstance(t, torch.Tensor) and t.dtype == torch.bool for t in indices):
            name = "masked_select"  # a boolean mask index waits for the count of its True entries
        self.names.add(name)
        return func(*args, **(kwargs or {}))


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("graphs")
    return {kind: models.export_torch(models.CellLoop(kind), folder / f"{kind}.onnx", seed=4)
            for kind in ("lstm", "gru", "rnn_tanh")}


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
@pytest.mark.parametrize("method", ["crown", "popqorn"])
@pytest.mark.parametrize("threat", [ThreatModel(2.0, "frame"), ThreatModel(math.inf, "sequence"),
                                    ThreatModel(1.0, "sequence", frames=(1, 2))])
def test_a_bound_call_never_reads_the_device(nets, kind, method, threat):
    graph = parsers.load_onnx(nets[kind])
    x = np.random.default_rng(0).uniform(-1, 1, (3, models.STEPS, models.FEATURES)).astype(np.float32)
    batch = make_batch(graph, x)
    eps = torch.full((3,), 0.1, dtype=torch.float64)
    regions = ball_regions(batch, eps, threat)  # built before the capture: it may read the host
    spec = margin_spec(torch.zeros(3, dtype=torch.long), models.CLASSES, None)
    recorder = _Recorder()
    with recorder, torch.no_grad():
        Propagator(batch.graph, regions, relaxer_for(method)).bound(batch.graph.outputs[0].node, spec, need_upper=False)
    assert not recorder.names & HOST_READS, recorder.names & HOST_READS


class _Replay:
    """ReplayedBounds without a GPU: the same protocol (build once around a radii tensor, then
    copy new radii in and recompute), so the fixed-shape search path runs on CPU."""

    def __init__(self, build, eps):
        self.eps = eps.clone()
        self.compute = build(self.eps)
        self.calls = 0

    def __call__(self, eps):
        self.eps.copy_(eps)
        self.calls += 1
        return self.compute().clone()


@pytest.mark.parametrize("method", ["crown", "popqorn"])
def test_the_replayed_search_finds_the_same_radii(nets, monkeypatch, method):
    graph = parsers.load_onnx(nets["lstm"])
    x = np.random.default_rng(1).uniform(-1, 1, (4, models.STEPS, models.FEATURES)).astype(np.float32)
    direct = certify(graph, x, 2.0, options=_options(method), per_frame=True)
    made = []
    monkeypatch.setattr(cuda_graphs, "usable", lambda device, rows, widest: True)
    monkeypatch.setattr(cuda_graphs, "ReplayedBounds", lambda build, eps: made.append(_Replay(build, eps)) or made[-1])
    replayed = certify(graph, x, 2.0, options=_options(method), per_frame=True)
    assert len(made) == 1 and made[0].calls > 3
    for a, b in zip(direct, replayed):
        assert a.radius == pytest.approx(b.radius, rel=1e-12, abs=0)
        assert a.per_frame_radius == pytest.approx(b.per_frame_radius, rel=1e-12, abs=0)


def _options(method):
    from verifier.certify import SearchOptions

    return SearchOptions(method=method)


def test_replayed_bounds_refuse_a_cpu_tensor():
    with pytest.raises(ValueError, match="CUDA"):
        cuda_graphs.ReplayedBounds(lambda eps: (lambda: eps), torch.zeros(2))


def test_graphs_are_used_on_cuda_for_launch_bound_sizes_only(monkeypatch):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    monkeypatch.delenv("POPQORN_CUDA_GRAPHS", raising=False)
    monkeypatch.setenv("POPQORN_FUSED", "0")  # eager pull-backs (fused ones are replayed at any size)
    assert cuda_graphs.usable(cuda, 32, 512) and not cuda_graphs.usable(cuda, 32, 1024)
    assert not cuda_graphs.usable(cpu, 1, 8)
    monkeypatch.setenv("POPQORN_CUDA_GRAPHS", "1")
    assert cuda_graphs.usable(cuda, 32, 1024) and not cuda_graphs.usable(cpu, 1, 8)
    monkeypatch.setenv("POPQORN_CUDA_GRAPHS", "0")
    assert not cuda_graphs.usable(cuda, 1, 8)
