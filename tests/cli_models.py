"""Small models exported the ways users export them, for the command-line tests: a fixed-batch
export, a model with an initial-state input, a float16-input model, a symbolic time axis."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from tests.verifier import models

FEATURES, HIDDEN, STEPS, CLASSES = models.FEATURES, models.HIDDEN, models.STEPS, models.CLASSES


def _export(module: torch.nn.Module, args: tuple, path: Path, **kwargs) -> Path:
    torch.manual_seed(0)
    for parameter in module.parameters():
        torch.nn.init.uniform_(parameter, -0.8, 0.8)
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), dynamo=False, output_names=["logits"], opset_version=17, **kwargs)
    return path


def fixed_batch(path: Path) -> Path:
    """Batch size 1 baked into the file (no dynamic axes): onnxruntime refuses any other batch."""
    return _export(models.CellLoop("gru"), (torch.zeros(1, STEPS, FEATURES),), path, input_names=["x"])


class GRUWithState(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = torch.nn.GRU(FEATURES, HIDDEN, batch_first=True)
        self.head = torch.nn.Linear(HIDDEN, CLASSES)

    def forward(self, x: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(x, h0)
        return self.head(y[:, -1])


def with_initial_state(path: Path) -> Path:
    """Inputs x (N, T, F) and h0 (1, N, H)."""
    return _export(GRUWithState(), (torch.zeros(2, STEPS, FEATURES), torch.zeros(1, 2, HIDDEN)), path,
                   input_names=["x", "h0"], dynamic_axes={"x": {0: "batch"}, "h0": {1: "batch"}})


def symbolic_time(path: Path) -> Path:
    """The most common legacy export: batch and time axes both dynamic."""
    return _export(models.Native("gru"), (torch.zeros(2, STEPS, FEATURES),), path, input_names=["x"],
                   dynamic_axes={"x": {0: "batch", 1: "time"}})


def float16_input(path: Path, seed: int = 0) -> Path:
    """x float16 (N, T, F) -> Cast -> ONNX RNN -> linear head (what a half-precision export looks like)."""
    rng = np.random.default_rng(seed)
    weights = {"W": (1, HIDDEN, FEATURES), "R": (1, HIDDEN, HIDDEN), "B": (1, 2 * HIDDEN), "head": (HIDDEN, CLASSES)}
    initializers = [numpy_helper.from_array(rng.uniform(-0.8, 0.8, shape).astype(np.float32), name)
                    for name, shape in weights.items()]
    nodes = [helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT),
             helper.make_node("Transpose", ["xf"], ["xt"], perm=[1, 0, 2]),
             helper.make_node("RNN", ["xt", "W", "R", "B"], ["", "h"], hidden_size=HIDDEN),
             helper.make_node("Transpose", ["h"], ["ht"], perm=[1, 0, 2]),
             helper.make_node("Flatten", ["ht"], ["hf"], axis=1),
             helper.make_node("MatMul", ["hf", "head"], ["logits"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["batch", STEPS, FEATURES])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])], initializers)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), str(path))
    return path


def samples(count: int = 5, steps: int = STEPS, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (count, steps, FEATURES)).astype(np.float32)
