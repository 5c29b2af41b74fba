"""The committed export fixtures (tests/fixtures/exports): each common way of exporting a recurrent
model that used to be refused now evaluates exactly as onnxruntime runs the file, or stays refused
with a one-line reason naming the op and node."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import parsers
import verifier
from tests.verifier.sampling import random_deltas
from verifier.bounds import bound_outputs
from verifier.cli import main
from verifier.errors import InputError, UnsupportedOperator
from verifier.threat import ThreatModel

EXPORTS = Path(__file__).resolve().parents[1] / "fixtures" / "exports"
STATIC = ["dynamo_rnn_tanh_hn", "dynamo_rnn_relu_hn", "dynamo_rnn_tanh_hn_opset23", "dynamo_lstm_states",
          "dynamo_gru_states", "scan_scalar_state", "keras2_lstm_relu_hard_sigmoid"]
DYNAMIC_TIME = ["legacy_lstm_dynamic_time", "dynamo_gru_dynamic_time"]
WEIGHTS_AS_INPUTS = ["lstm_weights_as_inputs", "gru_weights_as_inputs", "rnn_weights_as_inputs"]
REFUSED = {"dynamo_lstm_proj_size": ("LSTM", "node_lstm__2", "initial_c has shape"),
           "loop_trip_from_input": ("Loop", "loop_node", "trip count depends on the input")}


def feeds_of(name: str) -> dict[str, np.ndarray]:
    with np.load(EXPORTS / f"{name}.npz") as data:
        return {key: data[key] for key in data.files if key != "y"}


def onnxruntime_outputs(name: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(EXPORTS / f"{name}.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def assert_matches_onnxruntime(graph, name: str, feeds: dict[str, np.ndarray]) -> None:
    expected = onnxruntime_outputs(name, feeds)
    got = verifier.evaluate(graph, feeds)
    assert len(got) == len(expected)
    for e, g in zip(expected, got):
        assert e.shape == g.shape
        assert np.abs(e.astype(np.float64) - g).max() <= 1e-5


@pytest.mark.parametrize("name", STATIC + DYNAMIC_TIME + WEIGHTS_AS_INPUTS)
def test_fixture_evaluates_like_onnxruntime(name):
    assert_matches_onnxruntime(parsers.load_onnx(EXPORTS / f"{name}.onnx"), name, feeds_of(name))


def test_dynamo_rnn_unbind_pattern_is_time_major_with_a_fixed_batch():
    graph = parsers.load_onnx(EXPORTS / "dynamo_rnn_tanh_hn.onnx")
    (x,) = graph.inputs
    assert (x.shape, x.batch_axis, x.frame_axis) == ((5, 1, 3), 1, 0)
    assert any("batch axis inferred" in note for note in graph.notes)


def test_initial_state_inputs_keep_their_batch_axis():
    graph = parsers.load_onnx(EXPORTS / "dynamo_lstm_states.onnx")
    layouts = {node.onnx_name: (node.shape, node.batch_axis) for node in graph.inputs}
    assert layouts == {"x": ((1, 5, 3), 0), "h0": ((1, 1, 4), 1), "c0": ((1, 1, 4), 1)}


def test_keras2_hard_sigmoid_uses_the_operator_defaults():
    """tf2onnx omits activation_alpha/beta; HardSigmoid's defaults (0.2, 0.5) are Keras 2's."""
    with np.load(EXPORTS / "keras2_lstm_relu_hard_sigmoid.npz") as data:
        x, keras_output = data["x"], data["y"]
    (got,) = verifier.evaluate(parsers.load_onnx(EXPORTS / "keras2_lstm_relu_hard_sigmoid.onnx"), {"x": x})
    assert np.abs(got - keras_output).max() <= 1e-5


@pytest.mark.parametrize("name", DYNAMIC_TIME)
def test_dynamic_time_graph_is_built_per_feed_shape(name):
    graph = parsers.load_onnx(EXPORTS / f"{name}.onnx")
    (x,) = graph.inputs
    assert graph.specializer is not None and x.shape == (1, -1, 3) and graph.nodes == (x,) and not graph.outputs
    rng = np.random.default_rng(0)
    for steps in (2, 7, 9):
        feeds = {"x": rng.uniform(-1, 1, (3, steps, 3)).astype(np.float32)}
        assert_matches_onnxruntime(graph, name, feeds)
        concrete, _ = graph.specialize(feeds)
        assert concrete.inputs[0].shape == (1, steps, 3) and concrete.cells[0].steps == steps
        assert graph.specialize({"x": feeds["x"][:1]})[0] is concrete  # cached per shape, not per batch
    with pytest.raises(InputError, match="'x': axis 2 has size 4; the model expects 3"):
        verifier.evaluate(graph, {"x": np.zeros((2, 5, 4), np.float32)})
    with pytest.raises(InputError, match="'x' has shape .* the model expects 3 axes"):
        verifier.evaluate(graph, {"x": np.zeros((5, 3), np.float32)})


def test_bind_shapes_builds_the_graph_without_feeds():
    graph = parsers.load_onnx(EXPORTS / "legacy_lstm_dynamic_time.onnx")
    concrete = parsers.bind_shapes(graph, {"x": (1, 6, 3)})
    assert concrete.specializer is None and concrete.inputs[0].shape == (1, 6, 3) and concrete.outputs
    assert parsers.bind_shapes(concrete, {"x": (1, 6, 3)}) is concrete
    with pytest.raises(InputError, match="'y'"):
        parsers.bind_shapes(graph, {"y": (1, 6, 3)})
    weights = parsers.load_onnx(EXPORTS / "lstm_weights_as_inputs.onnx")
    with pytest.raises(InputError, match="values are needed"):
        parsers.bind_shapes(weights, {"W": (1, 16, 3)})


def test_weights_fed_as_inputs_are_held_fixed_at_their_values():
    name = "lstm_weights_as_inputs"
    graph = parsers.load_onnx(EXPORTS / f"{name}.onnx")
    feeds = feeds_of(name)
    assert [n.onnx_name for n in graph.inputs] == ["x", "W", "R", "B", "initial_h"]
    concrete, taken = graph.specialize(feeds)
    assert sorted(taken) == ["initial_h", "x"] and [n.onnx_name for n in concrete.inputs] == ["x", "initial_h"]
    other = dict(feeds, W=feeds["W"] * 0.5)  # other values: another graph, still exact
    assert graph.specialize(other)[0] is not concrete
    assert_matches_onnxruntime(graph, name, other)
    with pytest.raises(InputError, match="'W' is used as a constant .*LSTM node 'lstm_node'.*pass its value"):
        verifier.evaluate(graph, {k: v for k, v in feeds.items() if k != "W"})


def test_bounds_hold_fed_weights_fixed():
    """Bounds over x with the weights at their fed values contain onnxruntime's outputs."""
    name = "gru_weights_as_inputs"
    graph = parsers.load_onnx(EXPORTS / f"{name}.onnx")
    feeds = feeds_of(name)
    lower, upper = bound_outputs(graph, feeds, 0.05, "inf", input_name="x")
    session = ort.InferenceSession(str(EXPORTS / f"{name}.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    for _ in range(20):
        moved = dict(feeds, x=(feeds["x"] + rng.uniform(-0.05, 0.05, feeds["x"].shape)).astype(np.float32))
        (y,) = session.run(None, moved)
        assert (y >= lower - 1e-5).all() and (y <= upper + 1e-5).all()


def test_bounds_through_the_specializer_contain_onnxruntime_outputs():
    """Symbolic time axis: bound_outputs builds the graph for the samples' length; points sampled
    in the threat model and run through onnxruntime lie inside the bounds."""
    name = "legacy_lstm_dynamic_time"
    graph = parsers.load_onnx(EXPORTS / f"{name}.onnx")
    x = np.random.default_rng(2).uniform(-1, 1, (2, 6, 3)).astype(np.float32)
    threat, eps = ThreatModel(2.0, "frame"), 0.2
    lower, upper = bound_outputs(graph, x, eps, threat.norm, threat.ball)
    node = graph.specialize({"x": x})[0].inputs[0]
    session = ort.InferenceSession(str(EXPORTS / f"{name}.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(3)
    for sample in range(2):
        deltas = random_deltas(node, eps, threat, 400, rng)
        points = (x[sample].reshape(-1) + deltas).reshape(-1, 6, 3).astype(np.float32)
        (values,) = session.run(None, {"x": points})
        assert (values >= lower[sample] - 1e-5).all() and (values <= upper[sample] + 1e-5).all()
    assert np.isfinite(lower).all() and (upper - lower).max() < math.inf


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_exports_name_op_and_node(name, capsys):
    op, node, reason = REFUSED[name]
    with pytest.raises(UnsupportedOperator) as info:
        parsers.load_onnx(EXPORTS / f"{name}.onnx")
    message = str(info.value)
    assert f"unsupported operator {op}" in message and repr(node) in message and reason in message
    code = main(["inspect", str(EXPORTS / f"{name}.onnx")])
    err = capsys.readouterr().err
    assert code == UnsupportedOperator.exit_code and len(err.strip().splitlines()) == 1 and node in err


@pytest.mark.parametrize("name, extra", [(n, ["--samples", "2"]) for n in STATIC]
                         + [("legacy_lstm_dynamic_time", ["--input-shape", "x=1,7,3"]),
                            ("dynamo_gru_dynamic_time", ["--input-shape", "x=1,4,3"])])
def test_check_command_passes(name, extra, capsys):
    """`popqorn check` (IR vs onnxruntime on random inputs). Fixed-batch dynamo exports take the
    batch they were exported with (2)."""
    code = main(["check", str(EXPORTS / f"{name}.onnx"), *extra])
    out = capsys.readouterr().out
    assert code == 0 and "check passed" in out
