"""parsers/ops/reduce.py: ReduceSum, ReduceMean, ReduceMax and ReduceMin against onnxruntime, their
refusals, and GRUs with a mean- and a max-over-time head certified end to end (every sampled
onnxruntime output inside the bounds)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import helper

import parsers
import verifier
from parsers import registry
from parsers.builder import GraphBuilder
from parsers.context import Context
from parsers.errors import ConstantRequired, Refusal
from parsers.values import Sym
from tests.parsers.ops.node_check import check_node, sample, save_node
from tests.verifier.sampling import gradient_deltas, random_deltas
from verifier import ir
from verifier.bounds import bound_outputs, perturbed_input
from verifier.cli import main
from verifier.errors import InputError, UnsupportedOperator
from verifier.threat import ThreatModel

COVERED = {"ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin"}
SOUNDNESS_TOLERANCE = 2e-5  # onnxruntime computes in float32; the bounds are float64


def ints(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def _is_linear(graph: ir.Graph) -> bool:
    return all(isinstance(n, (ir.Input, ir.Select, ir.Affine)) for n in graph.nodes)


@pytest.mark.parametrize("op", sorted(COVERED))
@pytest.mark.parametrize("opset, axes, keepdims", [(11, [1], 0), (13, [-1], 1), (13, [1, 2], 0), (17, [2, -2], 1),
                                                   (17, [1], None)])
def test_axes_as_attribute(op, opset, axes, keepdims, tmp_path):
    if op == "ReduceSum" and opset >= 13:
        opset = 11  # ReduceSum takes its axes as an input from opset 13
    attributes = {"axes": axes} | ({} if keepdims is None else {"keepdims": keepdims})
    check_node(tmp_path, helper.make_node(op, ["x"], ["y"], **attributes), {"x": sample(2, 4, 3)}, opset=opset)
    linear = _is_linear(parsers.load_onnx(tmp_path / f"{op}.onnx"))
    assert linear == (op in ("ReduceSum", "ReduceMean"))  # max and min are ReLU chains


@pytest.mark.parametrize("op, opset", [("ReduceMean", 18), ("ReduceSum", 13), ("ReduceSum", 17), ("ReduceSum", 18)])
@pytest.mark.parametrize("axes, keepdims", [([1], 0), ([-1], 1), ([-3, 2], 0), ([3, 1], 1)])
def test_axes_as_input(op, opset, axes, keepdims, tmp_path):
    check_node(tmp_path, helper.make_node(op, ["x", "axes"], ["y"], keepdims=keepdims), {"x": sample(2, 4, 3, 2)},
               {"axes": ints(*axes)}, opset=opset)


@pytest.mark.parametrize("op, opset", [("ReduceMean", 18), ("ReduceSum", 13)])
def test_no_axes_reduce_everything_or_nothing(op, opset, tmp_path):
    """No axes (omitted or an empty tensor) reduce every axis, or none with noop_with_empty_axes=1."""
    x = {"x": sample(4, 3, seed=3)}
    (whole,) = check_node(tmp_path, helper.make_node(op, ["x"], ["y"], keepdims=0), x, opset=opset,
                          batch_axes={"x": None})
    assert np.shape(whole) == ()
    check_node(tmp_path, helper.make_node(op, ["x", "axes"], ["y"]), x, {"axes": ints()}, opset=opset,
               batch_axes={"x": None})
    (same,) = check_node(tmp_path, helper.make_node(op, ["x", "axes"], ["y"], noop_with_empty_axes=1), x,
                         {"axes": ints()}, opset=opset)
    assert np.array_equal(same, x["x"])
    (same,) = check_node(tmp_path, helper.make_node(op, ["x"], ["y"], noop_with_empty_axes=1), x, opset=opset)
    assert np.array_equal(same, x["x"])


@pytest.mark.parametrize("keepdims", [0, 1])
def test_time_major_mean_over_time_keeps_the_batch_axis(keepdims, tmp_path):
    """x [T, N, F] (batch axis 1) averaged over time: the batch axis moves to 0 without keepdims."""
    node = helper.make_node("ReduceMean", ["x"], ["y"], axes=[0], keepdims=keepdims)
    check_node(tmp_path, node, {"x": sample(5, 2, 3)}, opset=17, batch_axes={"x": 1})
    graph = parsers.load_onnx(tmp_path / "ReduceMean.onnx", batch_axes={"x": 1})
    assert graph.outputs[0].batch_axis == (1 if keepdims else 0)


@pytest.mark.parametrize("op, opset, attributes, constants", [
    ("ReduceMean", 17, {"axes": [0, 1]}, {}),
    ("ReduceMean", 17, {}, {}),  # no axes: every axis, the batch axis included
    ("ReduceMean", 18, {}, {"axes": ints(-3)}),
    ("ReduceSum", 13, {}, {}),
])
def test_reducing_over_the_batch_axis_is_refused(op, opset, attributes, constants, tmp_path):
    inputs = ["x", *constants]
    path = save_node(tmp_path, helper.make_node(op, inputs, ["y"], name="pool", **attributes), {"x": sample(2, 4, 3)},
                     constants, opset=opset)
    with pytest.raises(UnsupportedOperator, match=f"{op} .*'pool'.*include the batch axis 0 as popqorn tracks it: that mixes samples"):
        parsers.load_onnx(path)


def test_axes_fed_as_a_graph_input_are_refused(tmp_path):
    path = save_node(tmp_path, helper.make_node("ReduceSum", ["x", "axes"], ["y"]),
                     {"x": sample(2, 4, 3), "axes": ints(1)}, opset=13, batch_axes={"axes": None})
    with pytest.raises(InputError, match="input 'axes' has element type INT64"):
        parsers.load_onnx(path, batch_axes={"axes": None})


def _direct(op: str, opset: int, axes_value, **attributes):
    """Call the converter on a symbolic x [1, 4, 3] (batch axis 0) and `axes_value`."""
    builder = GraphBuilder()
    ctx = Context(builder, opset)
    x = Sym(builder.input("x", (1, 4, 3), 0, None, "x"), (1, 4, 3), 0)
    node = helper.make_node(op, ["x", "axes"], ["y"], name="pool", **attributes)
    inputs = [x, axes_value(builder, x) if callable(axes_value) else axes_value]
    return registry.lookup(op, opset).fn(node, inputs, ctx)


def test_axes_computed_from_the_input_are_refused():
    def computed(builder, x):
        return Sym(builder.affine(x.node, np.full(x.size, 2.0), None, "computed"), x.shape, 0)

    with pytest.raises(UnsupportedOperator, match="ReduceMean .*'pool'.*axes must be a constant"):
        _direct("ReduceMean", 18, computed)

    def graph_input(builder, x):
        return Sym(builder.input("axes", (1,), None, None, "axes"), (1,), None)

    with pytest.raises(ConstantRequired, match="needs axes"):
        _direct("ReduceSum", 13, graph_input)


@pytest.mark.parametrize("axes, message", [(ints(3), "axis 3 is out of range for an input of rank 3"),
                                           (ints(1, -2), r"axes \[1, -2\] name the same axis twice"),
                                           (np.array([1.0]), "axes must be a 1-D integer tensor")])
def test_malformed_axes_are_refused(axes, message):
    with pytest.raises(Refusal, match=message):
        _direct("ReduceSum", 13, axes)


# -- end to end: GRU -> mean over time -> Linear, certified ------------------------------------------------


class GruMeanPool(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = torch.nn.GRU(3, 5, batch_first=True)
        self.head = torch.nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.gru(x)
        return self.head(y.mean(1))


def export(module: torch.nn.Module, path: Path, opset: int, steps: int = 4, features: int = 3) -> Path:
    torch.manual_seed(0)
    for parameter in module.parameters():  # larger weights than the default init: harder bounds
        torch.nn.init.uniform_(parameter, -0.8, 0.8)
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(2, steps, features),), str(path), dynamo=False, input_names=["x"],
                          output_names=["logits"], dynamic_axes={"x": {0: "batch"}}, opset_version=opset)
    return path


def sampled_violation(path: Path, x: np.ndarray, eps: float, threat: ThreatModel, count: int = 400) -> float:
    """Largest amount by which an onnxruntime output, at points sampled in the threat set around each
    sample of x [N, T, F] (interior, boundary, corners, gradient-pushed), leaves popqorn's bounds."""
    graph = parsers.load_onnx(path)
    node = perturbed_input(graph, None)
    lower, upper = bound_outputs(graph, x, eps, threat.norm, threat.ball, threat.frames, method="crown")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    worst = -math.inf
    for k in range(len(x)):
        center = x[k].reshape(-1).astype(np.float64)
        deltas = np.concatenate([random_deltas(node, eps, threat, count, rng),
                                 gradient_deltas(graph, node, center, eps, threat, graph.outputs[0].node)])
        points = (center + deltas).reshape(len(deltas), *x.shape[1:]).astype(np.float32)
        values = session.run(None, {"x": points})[0]
        worst = max(worst, float((lower[k] - values).max()), float((values - upper[k]).max()))
    return worst


def certified_and_sound(path: Path, x: np.ndarray) -> None:
    """A radius > 0 is certified for every sample; the bounds at a radius of 0.2 and at the certified
    radius hold on sampled points, and at the certified radius no sampled point changes the prediction."""
    graph = parsers.load_onnx(path)
    threat = ThreatModel(math.inf, "frame")
    assert sampled_violation(path, x, 0.2, threat) <= SOUNDNESS_TOLERANCE
    results = verifier.certify(graph, x, norm="inf")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    node = perturbed_input(graph, None)
    for k, result in enumerate(results):
        assert not result.misclassified and result.radius > 0, result
        assert sampled_violation(path, x[k:k + 1], result.radius, threat) <= SOUNDNESS_TOLERANCE
        points = x[k].reshape(-1) + random_deltas(node, result.radius, threat, 500, rng)
        logits = session.run(None, {"x": points.reshape(-1, *x.shape[1:]).astype(np.float32)})[0]
        assert (logits.argmax(1) == result.label).all()


@pytest.mark.parametrize("opset", [17, 18])
def test_gru_with_mean_over_time_is_certified_soundly(opset, tmp_path, capsys):
    path = export(GruMeanPool(), tmp_path / "gru_mean.onnx", opset)
    assert main(["inspect", str(path)]) == 0 and "GRU" in capsys.readouterr().out
    assert main(["check", str(path), "--input-shape", "x=1,4,3"]) == 0
    x = np.random.default_rng(opset).uniform(-1, 1, (2, 4, 3)).astype(np.float32)
    certified_and_sound(path, x)


@pytest.mark.parametrize("op, opset", [("ReduceMax", 18), ("ReduceMin", 18), ("ReduceMax", 20)])
@pytest.mark.parametrize("axes, keepdims", [([1], 0), ([-1], 1), ([1, 2], 0)])
def test_max_and_min_with_axes_as_input(op, opset, axes, keepdims, tmp_path):
    check_node(tmp_path, helper.make_node(op, ["x", "axes"], ["y"], keepdims=keepdims), {"x": sample(2, 4, 3)},
               {"axes": ints(*axes)}, opset=opset)


class GruMaxPool(GruMeanPool):
    """Keras GlobalMaxPooling1D after a GRU: a max over time."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.gru(x)
        return self.head(y.amax(1))


def test_gru_with_max_over_time_is_certified_soundly(tmp_path):
    path = export(GruMaxPool(), tmp_path / "gru_max.onnx", 17)
    assert main(["check", str(path), "--input-shape", "x=1,4,3"]) == 0
    x = np.random.default_rng(5).uniform(-1, 1, (2, 4, 3)).astype(np.float32)
    certified_and_sound(path, x)
