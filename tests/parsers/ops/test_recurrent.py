"""parsers/ops/recurrent.py: LSTM, GRU and RNN nodes against onnxruntime, with the attribute forms
the exporters write (activation lists without alpha/beta take the operators' defaults)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import parsers
from tests.parsers.ops.node_check import check_node, sample, save_node
from verifier.errors import UnsupportedOperator

COVERED = {"LSTM", "GRU", "RNN"}
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
T, N, F, H = 4, 3, 2, 5


def weights(op: str, seed: int = 0, scale: float = 1.5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    g = GATES[op]
    return {"W": rng.uniform(-scale, scale, (1, g * H, F)).astype(np.float32),
            "R": rng.uniform(-scale, scale, (1, g * H, H)).astype(np.float32),
            "B": rng.uniform(-1, 1, (1, 2 * g * H)).astype(np.float32)}


@pytest.mark.parametrize("op", sorted(COVERED))
def test_default_node(op, tmp_path):
    node = helper.make_node(op, ["x", "W", "R", "B"], ["Y", "Y_h"], hidden_size=H)
    check_node(tmp_path, node, {"x": sample(T, N, F)}, weights(op), batch_axes={"x": 1})


ACTIVATIONS = {"RNN": [["HardSigmoid"], ["LeakyRelu"], ["Elu"]],
               "GRU": [["HardSigmoid", "Relu"], ["Sigmoid", "LeakyRelu"]],
               "LSTM": [["HardSigmoid", "Relu", "Relu"], ["HardSigmoid", "Elu", "LeakyRelu"]]}


@pytest.mark.parametrize("op, names", [(op, n) for op, lists in ACTIVATIONS.items() for n in lists],
                         ids=lambda v: v if isinstance(v, str) else "-".join(v))
def test_activation_parameters_default_to_the_operator_defaults(op, names, tmp_path):
    """No activation_alpha/beta (how tf2onnx writes Keras 2's hard_sigmoid): onnxruntime uses
    HardSigmoid 0.2/0.5, LeakyRelu 0.01, Elu 1.0 (the operators' own defaults)."""
    node = helper.make_node(op, ["x", "W", "R", "B"], ["Y", "Y_h"], hidden_size=H, activations=names)
    check_node(tmp_path, node, {"x": sample(T, N, F)}, weights(op, seed=1), batch_axes={"x": 1})


def test_partial_parameter_lists_take_defaults_for_the_rest(tmp_path):
    """alpha consumed in order by the activations that take one; the missing ones default."""
    node = helper.make_node("LSTM", ["x", "W", "R", "B"], ["Y", "Y_h"], hidden_size=H,
                            activations=["HardSigmoid", "LeakyRelu", "Elu"], activation_alpha=[0.3])
    check_node(tmp_path, node, {"x": sample(T, N, F)}, weights("LSTM", seed=2), batch_axes={"x": 1})


@pytest.mark.parametrize("name", ["Affine", "ScaledTanh", "ThresholdedRelu"])
def test_activations_without_agreed_defaults_need_their_parameters(name, tmp_path):
    """ThresholdedRelu's operator default is 1.0, but onnxruntime's RNN uses 0: refused, not guessed."""
    node = helper.make_node("RNN", ["x", "W", "R", "B"], ["Y", "Y_h"], hidden_size=H, activations=[name], name="cell")
    path = save_node(tmp_path, node, {"x": sample(T, N, F)}, weights("RNN"), opset=14, batch_axes={"x": 1})
    with pytest.raises(UnsupportedOperator, match="RNN .*'cell'.*activation_alpha"):
        parsers.load_onnx(path)
