"""parsers/ops/normalization.py: BatchNormalization (inference) against onnxruntime, its refusals, and
GRU models with torch BatchNorm1d (eval) before and after the recurrence certified end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import helper

import parsers
import verifier
from parsers import registry
from parsers.builder import GraphBuilder
from parsers.context import Context
from parsers.errors import Refusal
from parsers.values import Sym
from tests.parsers.ops.node_check import check_node, sample, save_node
from tests.parsers.ops.test_reduce import certified_and_sound, export
from verifier import ir
from verifier.cli import main
from verifier.errors import UnsupportedOperator

COVERED = {"BatchNormalization"}
INPUTS = ["x", "scale", "B", "mean", "var"]


def parameters(channels: int, *rest: int, seed: int = 1) -> dict[str, np.ndarray]:
    """Random scale, shift, mean and a positive variance of shape (channels, *rest)."""
    shape = (channels, *rest)
    return {"scale": sample(*shape, seed=seed), "B": sample(*shape, seed=seed + 1),
            "mean": sample(*shape, seed=seed + 2), "var": sample(*shape, seed=seed + 3, low=0.05, high=3.0)}


@pytest.mark.parametrize("opset, x_shape, attributes", [
    (7, (2, 3, 4), {}), (9, (2, 3), {"epsilon": 1e-3}), (13, (2, 3, 4), {"momentum": 0.8}),
    (14, (2, 3, 4), {"training_mode": 0}), (15, (2, 3, 2, 4), {"epsilon": 0.5}), (17, (2, 3), {}),
])
def test_inference_form_is_one_exact_affine_map(opset, x_shape, attributes, tmp_path):
    node = helper.make_node("BatchNormalization", INPUTS, ["y"], **attributes)
    check_node(tmp_path, node, {"x": sample(*x_shape)}, parameters(x_shape[1]), opset=opset)
    graph = parsers.load_onnx(tmp_path / "BatchNormalization.onnx")
    assert [type(n) for n in graph.nodes] == [ir.Input, ir.Affine]


def test_non_spatial_form_of_opset_7_has_one_constant_per_activation(tmp_path):
    node = helper.make_node("BatchNormalization", INPUTS, ["y"], spatial=0)
    check_node(tmp_path, node, {"x": sample(2, 3, 4)}, parameters(3, 4), opset=7)


def test_time_major_input_normalised_over_its_batch_axis_with_equal_constants(tmp_path):
    """x [T, N, F] has its batch on the channel axis 1: exact only when every channel's constants agree
    (then it is one map for all samples); onnxruntime needs as many channels as samples."""
    constants = {k: np.repeat(v[:1], 2) for k, v in parameters(2).items()}
    check_node(tmp_path, helper.make_node("BatchNormalization", INPUTS, ["y"]), {"x": sample(5, 2, 3)}, constants,
               batch_axes={"x": 1})


def test_time_major_input_with_per_channel_constants_is_refused(tmp_path):
    path = save_node(tmp_path, helper.make_node("BatchNormalization", INPUTS, ["y"], name="bn"),
                     {"x": sample(5, 2, 3)}, parameters(2), batch_axes={"x": 1})
    with pytest.raises(UnsupportedOperator, match="'bn'.*channel axis 1 is the batch axis.*differs between channels"):
        parsers.load_onnx(path, batch_axes={"x": 1})


@pytest.mark.parametrize("opset, attributes, outputs, message", [
    (15, {"training_mode": 1}, ["y", "running_mean", "running_var"],
     "training_mode=1 normalises with the batch's own statistics"),
    (9, {}, ["y", "new_mean", "new_var", "saved_mean", "saved_var"],
     r"outputs \['new_mean', 'new_var', 'saved_mean', 'saved_var'\] are running or saved statistics"),
])
def test_training_mode_is_refused(opset, attributes, outputs, message, tmp_path):
    node = helper.make_node("BatchNormalization", INPUTS, outputs, name="bn", **attributes)
    path = save_node(tmp_path, node, {"x": sample(4, 3)}, parameters(3), opset=opset)
    with pytest.raises(UnsupportedOperator, match=f"BatchNormalization .*'bn'.*{message}"):
        parsers.load_onnx(path)


def test_constants_computed_from_the_input_are_refused(tmp_path):
    constants = parameters(3)
    constants.pop("scale")
    path = save_node(tmp_path, helper.make_node("BatchNormalization", ["x", "s2", "B", "mean", "var"], ["y"], name="bn"),
                     {"x": sample(4, 3), "s": sample(3, seed=7)}, constants, batch_axes={"s": None},
                     extra_nodes=(helper.make_node("Neg", ["s"], ["s2"]),))
    with pytest.raises(UnsupportedOperator, match="'bn'.*the scale input must be a constant, not computed"):
        parsers.load_onnx(path, batch_axes={"s": None})


def test_scale_fed_as_a_graph_input_is_held_at_its_value(tmp_path):
    constants = parameters(3)
    scale = constants.pop("scale")
    x = sample(4, 3)
    path = save_node(tmp_path, helper.make_node("BatchNormalization", INPUTS, ["y"]), {"x": x, "scale": scale},
                     constants, batch_axes={"scale": None})
    graph = parsers.load_onnx(path, batch_axes={"scale": None})
    (y,) = verifier.evaluate(graph, {"x": x, "scale": scale})
    c = {k: v.astype(np.float64) for k, v in constants.items()}
    expected = scale * (x - c["mean"]) / np.sqrt(c["var"] + 1e-5) + c["B"]
    assert np.abs(y - expected).max() <= 1e-5


def test_non_positive_variance_is_refused(tmp_path):
    constants = parameters(3)
    constants["var"][1] = -1.0
    path = save_node(tmp_path, helper.make_node("BatchNormalization", INPUTS, ["y"], name="bn"), {"x": sample(4, 3)},
                     constants)
    with pytest.raises(UnsupportedOperator, match="'bn'.*var \\+ epsilon is not positive"):
        parsers.load_onnx(path)


def test_constants_not_one_per_channel_are_refused():
    """(onnx's checker rejects such a file; the converter must not broadcast its way around it either)"""
    builder = GraphBuilder()
    x = Sym(builder.input("x", (1, 3), 0, None, "x"), (1, 3), 0)
    constants = [v[:2] for v in parameters(3).values()]
    node = helper.make_node("BatchNormalization", INPUTS, ["y"], name="bn")
    with pytest.raises(Refusal, match=r"the scale of shape \(2,\) does not hold one value per channel"):
        registry.lookup("BatchNormalization", 17).fn(node, [x, *constants], Context(builder, 17))


# -- end to end: torch BatchNorm1d (eval) before and after a GRU, certified ----------------------------------


class NormalisedGru(torch.nn.Module):
    """BatchNorm1d over the features of x [N, T, F] (transposed to [N, F, T] as torch wants), a GRU, its
    last state normalised by a second BatchNorm1d, then a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.norm_in = torch.nn.BatchNorm1d(3)
        self.gru = torch.nn.GRU(3, 5, batch_first=True)
        self.norm_out = torch.nn.BatchNorm1d(5)
        self.head = torch.nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.gru(self.norm_in(x.transpose(1, 2)).transpose(1, 2))
        return self.head(self.norm_out(y[:, -1]))


@pytest.mark.parametrize("opset", [14, 17])
def test_gru_with_batch_norm_is_certified_soundly(opset, tmp_path, capsys):
    model = NormalisedGru()
    generator = torch.Generator().manual_seed(opset)
    with torch.no_grad():  # non-trivial running statistics (buffers: export only draws the parameters)
        for norm in (model.norm_in, model.norm_out):
            norm.running_mean.uniform_(-0.5, 0.5, generator=generator)
            norm.running_var.uniform_(0.5, 2.0, generator=generator)
    path = export(model, tmp_path / "gru_bn.onnx", opset)
    assert main(["inspect", str(path)]) == 0 and "GRU" in capsys.readouterr().out
    assert main(["check", str(path)]) == 0
    x = np.random.default_rng(opset).uniform(-1, 1, (2, 4, 3)).astype(np.float32)
    certified_and_sound(path, x)
