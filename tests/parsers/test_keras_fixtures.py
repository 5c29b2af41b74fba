"""Keras recurrent models exported by tf2onnx (committed fixtures, so no TensorFlow here): the IR's
forward pass matches onnxruntime and Keras' own output; input-dependent masking is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import parsers
import verifier
from verifier import ir
from verifier.errors import UnsupportedOperator

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "keras"

# fixture -> recurrent structures the front end should report (tf2onnx rewrites Keras LSTMs into
# native LSTM nodes; GRU and SimpleRNN stay as Loop bodies with the weights as loop state)
EXPECTED_CELLS = {
    "lstm": ["LSTM"],
    "lstm_go_backwards": ["LSTM"],
    "bidirectional_lstm": ["LSTM"],
    "stacked_lstm": ["LSTM", "LSTM"],
    "gru_reset_after": ["Loop"],
    "gru_reset_before": ["Loop"],
    "simple_rnn": ["Loop"],
}


def _load(name: str) -> tuple[str, np.ndarray, np.ndarray]:
    data = np.load(FIXTURES / f"{name}.npz")
    return str(FIXTURES / f"{name}.onnx"), data["x"], data["y"]


def test_every_fixture_is_covered():
    names = {p.stem for p in FIXTURES.glob("*.onnx")}
    assert names == set(EXPECTED_CELLS) | {"masking_lstm"}
    assert all((FIXTURES / f"{n}.npz").exists() for n in names)


@pytest.mark.parametrize("name", sorted(EXPECTED_CELLS))
def test_keras_fixture_matches_onnxruntime_and_keras(name):
    path, x, keras_y = _load(name)
    graph = parsers.load_onnx(path)
    assert [c.kind for c in graph.cells] == EXPECTED_CELLS[name]
    assert graph.cells[0].steps == x.shape[1]
    (input_node,) = graph.inputs
    assert (input_node.batch_axis, input_node.frame_axis) == (0, 1)
    (got,) = verifier.evaluate(graph, {input_node.onnx_name: x})
    (runtime_y,) = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {input_node.onnx_name: x})
    assert got.shape == keras_y.shape == runtime_y.shape
    assert np.abs(got - runtime_y).max() <= 1e-5
    assert np.abs(got - keras_y).max() <= 1e-5
    # every gate nonlinearity is in the IR, one set per step: nothing was folded away by mistake
    assert sum(isinstance(n, (ir.Activation, ir.Product)) for n in graph.nodes) >= x.shape[1]


@pytest.mark.parametrize("name", ["gru_reset_after", "gru_reset_before"])
def test_keras_gru_loop_gates_are_fused_products(name):
    """Unrolled Keras GRU steps expose sigmoid(x)*y products, the form bounded with joint planes."""
    path, x, _ = _load(name)
    graph = parsers.load_onnx(path)
    products = [n for n in graph.nodes if isinstance(n, ir.Product)]
    assert len(products) >= 2 * x.shape[1]
    assert all("/iter" in n.name for n in products)


def test_keras_masking_is_refused_because_the_mask_depends_on_the_input():
    path, _, _ = _load("masking_lstm")
    with pytest.raises(UnsupportedOperator) as info:
        parsers.load_onnx(path)
    message = str(info.value)
    assert "masking" in message.lower() and "opset 17" in message and "depend" in message and "at node '" in message

