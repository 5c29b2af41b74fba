"""torch 2.x exports, legacy (dynamo=False) and dynamo, of nn.LSTM / nn.GRU / nn.RNN and of Python
loops over the cells: the IR must reproduce onnxruntime on the exported file."""

from __future__ import annotations

import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch

import parsers
import verifier
from tests.verifier.models import CellLoop

F, H, T = 3, 4, 5


class Recurrent(torch.nn.Module):
    """A recurrent layer and a head on y[-1] (or on h_n), optionally with initial states as inputs."""

    def __init__(self, kind: str, layers: int, bidirectional: bool, batch_first: bool, head: str, states: bool) -> None:
        super().__init__()
        make = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn_tanh": torch.nn.RNN,
                "rnn_relu": lambda *a, **k: torch.nn.RNN(*a, nonlinearity="relu", **k)}[kind]
        self.kind, self.head_on, self.states, self.batch_first = kind, head, states, batch_first
        self.rnn = make(F, H, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first)
        directions = 2 if bidirectional else 1
        self.head = torch.nn.Linear(H * directions, 3)
        self.state_shape = (layers * directions, H)

    def forward(self, x, *state):
        if self.states:
            y, final = self.rnn(x, state if self.kind == "lstm" else state[0])
        else:
            y, final = self.rnn(x)
        if self.head_on == "h_n":
            h = final[0] if self.kind == "lstm" else final
            return self.head(torch.cat([h[-2], h[-1]], 1) if self.head.in_features == 2 * H else h[-1])
        return self.head(y[:, -1] if self.batch_first else y[-1])


def _export(module, inputs: tuple, path, dynamo: bool, names: list[str]) -> None:
    torch.manual_seed(0)
    for parameter in module.parameters():
        torch.nn.init.uniform_(parameter, -0.7, 0.7)
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            program = torch.onnx.export(module, inputs, dynamo=True, input_names=names, output_names=["logits"])
            program.save(str(path), external_data=False)
        else:
            batch_axes = {name: {0 if k == 0 and module_batch_first(module) else 1: "batch"} for k, name in enumerate(names)}
            torch.onnx.export(module, inputs, str(path), dynamo=False, opset_version=17, input_names=names,
                              output_names=["logits"], dynamic_axes=batch_axes)


def module_batch_first(module) -> bool:
    return getattr(module, "batch_first", True)


def _compare(path, feeds) -> None:
    expected = ort.InferenceSession(str(path)).run(None, feeds)
    got = verifier.evaluate(parsers.load_onnx(path), feeds)
    for e, g in zip(expected, got):
        assert e.shape == g.shape and np.abs(e - g).max() <= 1e-5


CASES = [("lstm", 1, False, True, "y", False), ("lstm", 2, True, True, "h_n", False), ("lstm", 1, False, False, "y", True),
         ("gru", 2, False, True, "y", False), ("gru", 1, True, False, "h_n", True), ("rnn_tanh", 2, True, True, "y", False),
         ("rnn_relu", 1, False, True, "h_n", True), ("rnn_relu", 2, False, False, "y", False)]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_legacy_exports(case, tmp_path):
    kind, layers, bidirectional, batch_first, head, states = case
    module = Recurrent(kind, layers, bidirectional, batch_first, head, states)
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (2, T, F) if batch_first else (T, 2, F)).astype(np.float32)
    inputs, names, feeds = [torch.from_numpy(x)], ["x"], {"x": x}
    if states:
        for k in range(2 if kind == "lstm" else 1):
            state = rng.uniform(-1, 1, (module.state_shape[0], 2, H)).astype(np.float32)
            inputs.append(torch.from_numpy(state))
            names.append(f"state{k}")
            feeds[f"state{k}"] = state
    _export(module, tuple(inputs), tmp_path / "m.onnx", dynamo=False, names=names)
    _compare(tmp_path / "m.onnx", feeds)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_dynamo_exports(kind, tmp_path):
    module = Recurrent(kind, 2 if kind == "rnn_tanh" else 1, kind == "gru", True, "y", False)
    x = np.random.default_rng(2).uniform(-1, 1, (2, T, F)).astype(np.float32)
    _export(module, (torch.from_numpy(x),), tmp_path / "m.onnx", dynamo=True, names=["x"])
    _compare(tmp_path / "m.onnx", {"x": x})


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("dynamo", [False, True])
def test_cell_loops(kind, dynamo, tmp_path):
    x = np.random.default_rng(3).uniform(-1, 1, (2, T, F)).astype(np.float32)
    _export(CellLoop(kind), (torch.from_numpy(x),), tmp_path / "m.onnx", dynamo=dynamo, names=["x"])
    _compare(tmp_path / "m.onnx", {"x": x})


class FusedGateGRU(torch.nn.Module):
    """A hand-written GRU as users write one: the state starts as zeros(x.shape[0], H) and is joined
    to x_t, both gates come from one matrix product and one sigmoid, then chunk."""

    def __init__(self) -> None:
        super().__init__()
        self.gates, self.candidate, self.head = torch.nn.Linear(F + H, 2 * H), torch.nn.Linear(F + H, H), torch.nn.Linear(H, 3)

    def forward(self, x):
        h = torch.zeros(x.shape[0], H)
        for t in range(x.shape[1]):
            z, r = torch.sigmoid(self.gates(torch.cat([x[:, t], h], 1))).chunk(2, 1)
            n = torch.tanh(self.candidate(torch.cat([x[:, t], r * h], 1)))
            h = (1 - z) * n + z * h
        return self.head(h)


@pytest.mark.parametrize("dynamo", [False, True])
def test_fixed_batch_exports_join_their_batch_sized_constants(dynamo, tmp_path):
    """Exported without dynamic axes (torch's default), zeros(x.shape[0], H) becomes a constant of the
    export's batch size joined to x_t by Concat; one sample needs one row of it. The file must give
    the IR of the dynamic-batch export."""
    from verifier.canonical import describe_products
    x = np.random.default_rng(4).uniform(-1, 1, (3, T, F)).astype(np.float32)
    module = FusedGateGRU()
    _export(module, (torch.from_numpy(x),), tmp_path / "dynamic.onnx", dynamo=False, names=["x"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(module, (torch.from_numpy(x),), dynamo=True, input_names=["x"]).save(
                str(tmp_path / "fixed.onnx"), external_data=False)
        else:
            torch.onnx.export(module, (torch.from_numpy(x),), str(tmp_path / "fixed.onnx"), dynamo=False,
                              opset_version=17, input_names=["x"])
    _compare(tmp_path / "fixed.onnx", {"x": x})
    fixed, dynamic = parsers.load_onnx(tmp_path / "fixed.onnx"), parsers.load_onnx(tmp_path / "dynamic.onnx")
    # at t = 0 the state is zero: the update is (1 - z) * n, one σ·tanh product
    expected = {"σ·tanh": H, "σ·y": (T - 1) * H, "McCormick": 2 * (T - 1) * H}
    assert describe_products(fixed) == describe_products(dynamic) == expected
