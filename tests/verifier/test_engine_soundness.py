"""Soundness of the bound engine, checked the only way that counts: points drawn inside the
perturbation set (interior, boundary, corners, and gradient-pushed toward the worst case) are run
through onnxruntime on the ONNX file, and every output must lie inside the certified bounds."""

from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import pytest
import torch

import parsers
import verifier
from tests.verifier import models
from tests.verifier.sampling import gradient_deltas, random_deltas
from verifier.bounds import bound_outputs, perturbed_input
from verifier.threat import ThreatModel

CELL_LOOPS = ["lstm", "gru", "rnn_tanh", "rnn_relu"]
NATIVE = [("lstm", 1, False), ("gru", 1, False), ("rnn_tanh", 2, False), ("rnn_relu", 1, True),
          ("lstm", 2, True), ("gru", 1, True)]
ONNX_NODES = [("LSTM", {"peepholes": True}), ("LSTM", {"clip": 0.7}), ("GRU", {"linear_before_reset": 0}),
              ("GRU", {"linear_before_reset": 1, "direction": "reverse"}), ("LSTM", {"input_forget": 1})]
TOLERANCE = 2e-5  # onnxruntime computes in float32; the bounds are float64


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("engine_models")
    files = {}
    for kind in CELL_LOOPS:
        files[f"loop_{kind}"] = models.export_torch(models.CellLoop(kind), folder / f"loop_{kind}.onnx")
    for kind, layers, bidirectional in NATIVE:
        name = f"native_{kind}_l{layers}{'_bi' if bidirectional else ''}"
        files[name] = models.export_torch(models.Native(kind, layers, bidirectional), folder / f"{name}.onnx")
    for k, (kind, attributes) in enumerate(ONNX_NODES):
        name = f"node_{kind}_{k}"
        files[name] = models.onnx_recurrent(kind, folder / f"{name}.onnx", seed=k, **dict(attributes))
    return files


def _check(path, threat: ThreatModel, method: str, eps: float, seed: int = 0, count: int = 1500,
           dtype: torch.dtype = torch.float64) -> tuple[float, float]:
    """Max violation of the bounds over sampled points, and the mean bound width."""
    graph = parsers.load_onnx(path)
    node = perturbed_input(graph, None)
    rng = np.random.default_rng(seed)
    shape = tuple(2 if k == node.batch_axis else d for k, d in enumerate(node.shape))
    x = rng.uniform(-1, 1, size=shape).astype(np.float32)
    lower, upper = bound_outputs(graph, x, eps, threat.norm, threat.ball, threat.frames, method=method,
                                 dtype=dtype)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = graph.outputs[0]
    worst = -math.inf
    for sample in range(2):
        center_model = np.take(x, [sample], axis=node.batch_axis)
        center = np.moveaxis(center_model, node.batch_axis, 0).reshape(-1).astype(np.float64)
        deltas = np.concatenate([random_deltas(node, eps, threat, count, rng),
                                 gradient_deltas(graph, node, center, eps, threat, out.node, seed=seed)])
        points = (center + deltas).reshape(len(deltas), *[d for k, d in enumerate(node.shape) if k != node.batch_axis])
        points = np.moveaxis(points, 0, node.batch_axis).astype(np.float32)
        values = session.run(None, {node.onnx_name: points})[0]
        values = np.moveaxis(values, out.batch_axis, 0).reshape(len(deltas), -1)
        lo = np.take(lower, [sample], axis=out.batch_axis).reshape(-1)
        up = np.take(upper, [sample], axis=out.batch_axis).reshape(-1)
        worst = max(worst, float((lo - values).max()), float((values - up).max()))
    return worst, float((upper - lower).mean())


@pytest.mark.parametrize("name", [f"loop_{k}" for k in CELL_LOOPS]
                         + [f"native_{k}_l{n}{'_bi' if b else ''}" for k, n, b in NATIVE]
                         + [f"node_{kind}_{k}" for k, (kind, _) in enumerate(ONNX_NODES)])
@pytest.mark.parametrize("method", ["popqorn", "crown"])
def test_bounds_contain_onnxruntime_outputs(model_files, name, method):
    threats = [ThreatModel(2.0, "frame"), ThreatModel(math.inf, "frame", (1, 3)),
               ThreatModel(1.0, "sequence"), ThreatModel(2.0, "sequence", (0,))]
    for k, threat in enumerate(threats):
        violation, width = _check(model_files[name], threat, method, eps=0.3, seed=k, count=600)
        assert violation <= TOLERANCE, (threat, violation)
        assert width > 0


@pytest.mark.parametrize("name", ["loop_lstm", "native_gru_l1"])
def test_interval_bounds_are_sound_and_looser(model_files, name):
    threat = ThreatModel(math.inf, "frame")
    violation, ibp_width = _check(model_files[name], threat, "ibp", eps=0.1)
    assert violation <= TOLERANCE
    _, crown_width = _check(model_files[name], threat, "crown", eps=0.1)
    _, planes_width = _check(model_files[name], threat, "popqorn", eps=0.1)
    assert crown_width <= ibp_width * 1.0001
    assert planes_width <= crown_width * 1.05  # joint planes: never much looser, usually tighter


@pytest.mark.parametrize("name", ["loop_lstm", "loop_gru", "loop_rnn_relu"])
def test_float32_engine_is_sound(model_files, name):
    for k, threat in enumerate([ThreatModel(2.0, "frame"), ThreatModel(math.inf, "sequence", (0, 2))]):
        violation, _ = _check(model_files[name], threat, "popqorn", eps=0.3, seed=k, count=600, dtype=torch.float32)
        assert violation <= TOLERANCE, (threat, violation)


def test_zero_radius_bounds_are_the_exact_output(model_files):
    graph = parsers.load_onnx(model_files["loop_lstm"])
    x = np.random.default_rng(4).uniform(-1, 1, (2, models.STEPS, models.FEATURES)).astype(np.float32)
    lower, upper = bound_outputs(graph, x, 0.0, "inf", dtype=torch.float64)
    exact = ort.InferenceSession(str(model_files["loop_lstm"])).run(None, {"x": x})[0]
    assert np.allclose(lower, exact, atol=1e-5) and np.allclose(upper, exact, atol=1e-5)
    assert (upper - lower).max() < 1e-6


def _window_model(path, windows: list[tuple[int, int]], seed: int = 0):
    """x [N, 4, 3] -> tanh(sum_k flatten(x[:, a_k:b_k]) @ W_k) @ V: the input read through
    contiguous windows of frames, overlapping or with gaps (frame 3 unread in one case)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits, terms = [], [], []
    for k, (start, stop) in enumerate(windows):
        inits += [numpy_helper.from_array(np.array([start], np.int64), f"s{k}"),
                  numpy_helper.from_array(np.array([stop], np.int64), f"e{k}"),
                  numpy_helper.from_array(rng.normal(size=(3 * (stop - start), 5)).astype(np.float32), f"w{k}")]
        nodes += [helper.make_node("Slice", ["x", f"s{k}", f"e{k}", "axis"], [f"win{k}"]),
                  helper.make_node("Flatten", [f"win{k}"], [f"flat{k}"], axis=1),
                  helper.make_node("MatMul", [f"flat{k}", f"w{k}"], [f"term{k}"])]
        terms.append(f"term{k}")
    inits += [numpy_helper.from_array(np.array([1], np.int64), "axis"),
              numpy_helper.from_array(rng.normal(size=(5, 2)).astype(np.float32), "v")]
    nodes += [helper.make_node("Sum", terms, ["pre"]), helper.make_node("Tanh", ["pre"], ["h"]),
              helper.make_node("MatMul", ["h", "v"], ["y"])]
    graph = helper.make_graph(nodes, "windows", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize("windows", [[(0, 3), (1, 4)], [(0, 1), (2, 3)], [(0, 2), (0, 2), (2, 4)]],
                         ids=["overlapping", "gaps", "shared_and_adjacent"])
@pytest.mark.parametrize("norm", [1.0, 2.0, math.inf])
def test_windows_of_the_input_are_bounded_soundly(tmp_path, windows, norm):
    """A backward pass reaches the input as slices: overlapping ones are added into one tensor,
    disjoint ones are read slice by slice by the ball (regions.Slices). Both must stay sound, and
    bounds at radius 0 must be the exact output."""
    path = _window_model(tmp_path / "windows.onnx", windows)
    for ball in ("frame", "sequence"):
        worst, width = _check(path, ThreatModel(norm, ball), "crown", 0.3, count=800)
        assert worst <= TOLERANCE and width > 0.01, (ball, worst, width)
    graph = parsers.load_onnx(path)
    x = np.random.default_rng(1).uniform(-1, 1, size=(2, 4, 3)).astype(np.float32)
    lower, upper = bound_outputs(graph, x, 0.0, norm, "frame", method="crown", dtype=torch.float64)
    exact = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.abs(lower - exact).max() < 1e-5 and np.abs(upper - exact).max() < 1e-5


class _SoftsignAbsLoop(torch.nn.Module):
    """h_t = softsign(W x_t + U h_{t-1}) written as PyTorch exports it (x / (1 + |x|)), and a head
    on |h_T| (a standalone Abs)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Linear(models.FEATURES, models.HIDDEN)
        self.u = torch.nn.Linear(models.HIDDEN, models.HIDDEN, bias=False)
        self.head = torch.nn.Linear(models.HIDDEN, models.CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.zeros(x.shape[0], models.HIDDEN)
        for t in range(x.shape[1]):
            h = torch.nn.functional.softsign(self.w(x[:, t]) + self.u(h))
        return self.head(torch.abs(h - 0.1))


def test_pytorch_softsign_and_abs_are_converted_and_bounded_soundly(tmp_path):
    """x / (1 + |x|) becomes one Softsign activation (no ReLU left over from its |x|); a standalone
    |x| is relu(x) + relu(-x). Both match onnxruntime and their bounds hold on sampled points."""
    from verifier import ir

    path = models.export_torch(_SoftsignAbsLoop(), tmp_path / "softsign.onnx")
    graph = parsers.load_onnx(path)
    kinds = [n.fn.kind for n in graph.nodes if isinstance(n, ir.Activation)]
    assert kinds.count(ir.Act.SOFTSIGN) == models.STEPS and kinds.count(ir.Act.RELU) == 2, kinds
    x = np.random.default_rng(2).uniform(-1, 1, (3, models.STEPS, models.FEATURES)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (expected,) = session.run(None, {"x": x})
    assert np.abs(verifier.evaluate(graph, {"x": x})[0] - expected).max() < 1e-5
    for threat in (ThreatModel(2.0, "frame"), ThreatModel(math.inf, "sequence"), ThreatModel(1.0, "sequence")):
        worst, width = _check(path, threat, "crown", 0.3, count=800)
        assert worst <= TOLERANCE and width > 0.01, (threat, worst)
