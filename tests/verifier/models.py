"""Small random recurrent models written to ONNX for engine tests: torch cell loops, torch nn.RNN/
nn.LSTM/nn.GRU (native ONNX recurrent nodes) and hand-built single ONNX nodes with attributes torch
never writes (peepholes, clip, GRU linear_before_reset=0)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

FEATURES, HIDDEN, STEPS, CLASSES = 3, 5, 4, 3


class CellLoop(torch.nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        cells = {"lstm": lambda: torch.nn.LSTMCell(FEATURES, HIDDEN), "gru": lambda: torch.nn.GRUCell(FEATURES, HIDDEN),
                 "rnn_tanh": lambda: torch.nn.RNNCell(FEATURES, HIDDEN),
                 "rnn_relu": lambda: torch.nn.RNNCell(FEATURES, HIDDEN, nonlinearity="relu")}
        self.cell = cells[kind]()
        self.head = torch.nn.Linear(HIDDEN, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.zeros(x.shape[0], HIDDEN)
        c = torch.zeros(x.shape[0], HIDDEN)
        for t in range(x.shape[1]):
            if self.kind == "lstm":
                h, c = self.cell(x[:, t], (h, c))
            else:
                h = self.cell(x[:, t], h)
        return self.head(h)


class Native(torch.nn.Module):
    def __init__(self, kind: str, layers: int = 1, bidirectional: bool = False) -> None:
        super().__init__()
        make = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn_tanh": torch.nn.RNN,
                "rnn_relu": lambda *a, **k: torch.nn.RNN(*a, nonlinearity="relu", **k)}[kind]
        self.rnn = make(FEATURES, HIDDEN, num_layers=layers, bidirectional=bidirectional, batch_first=True)
        self.head = torch.nn.Linear(HIDDEN * (2 if bidirectional else 1), CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(x)
        return self.head(y[:, -1])


def export_torch(module: torch.nn.Module, path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    for parameter in module.parameters():  # larger weights than the default init: harder bounds
        torch.nn.init.uniform_(parameter, -0.8, 0.8)
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(2, STEPS, FEATURES),), str(path), dynamo=False,
                          input_names=["x"], output_names=["logits"], dynamic_axes={"x": {0: "batch"}},
                          opset_version=17)
    return path


def onnx_recurrent(kind: str, path: Path, seed: int = 0, **attributes) -> Path:
    """One ONNX LSTM/GRU/RNN node on x [T, batch, F] with random weights, output Y_h."""
    rng = np.random.default_rng(seed)
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[kind]
    directions = 2 if attributes.get("direction") == "bidirectional" else 1
    weights = {
        "W": rng.uniform(-0.8, 0.8, (directions, gates * HIDDEN, FEATURES)),
        "R": rng.uniform(-0.8, 0.8, (directions, gates * HIDDEN, HIDDEN)),
        "B": rng.uniform(-0.5, 0.5, (directions, 2 * gates * HIDDEN)),
    }
    inputs = ["x", "W", "R", "B"]
    if kind == "LSTM" and attributes.pop("peepholes", False):
        weights["P"] = rng.uniform(-0.8, 0.8, (directions, 3 * HIDDEN))
        inputs += ["", "", "", "P"]
    initializers = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()]
    node = helper.make_node(kind, inputs, ["", "Y_h"], hidden_size=HIDDEN, name=f"{kind.lower()}0", **attributes)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [STEPS, "batch", FEATURES])],
                              [helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, [directions, "batch", HIDDEN])],
                              initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    onnx.save(model, str(path))
    return path
