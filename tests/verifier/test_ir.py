"""The IR validates itself and the builder keeps it small and fused."""

import numpy as np
import pytest
import torch

from parsers.builder import GraphBuilder
from verifier import ir
from verifier.forward import run
from verifier.ir import SIGMOID, TANH


def test_graph_rejects_duplicate_and_undefined_names():
    x = ir.Input("x", (1, 2), 0, None, "x")
    with pytest.raises(ValueError, match="duplicate"):
        ir.Graph(nodes=(x, ir.Activation("x", "x", TANH)), inputs=(x,), outputs=())
    with pytest.raises(ValueError, match="before they are defined"):
        ir.Graph(nodes=(x, ir.Activation("y", "z", TANH)), inputs=(x,), outputs=())


def test_builder_fuses_gate_products_and_prunes_dead_nodes():
    b = GraphBuilder()
    x = b.input("x", (1, 3), 0, None, "x")
    gate = b.activation(b.affine(x, np.eye(3), np.ones(3), "pre"), SIGMOID, "gate")
    cand = b.activation(x, TANH, "cand")
    prod = b.product(gate, cand, "prod")
    b.activation(x, TANH, "unused")
    g = b.build([ir.Output("y", prod, (1, 3), 0)])
    node = g[prod]
    assert isinstance(node, ir.Product)
    assert node.left_fn == SIGMOID and node.right_fn == TANH and node.right == x
    assert "unused" not in {n.name for n in g.nodes}
    values = torch.tensor([[0.3, -1.0, 2.0]], dtype=torch.float64)
    got = run(g, {"x": values})[prod]
    want = torch.sigmoid(values + 1) * torch.tanh(values)
    assert torch.allclose(got, want)


def test_bias_after_affine_is_merged_and_block_affine_sizes():
    b = GraphBuilder()
    x = b.input("x", (1, 4, 2), 0, 1, "x")
    w = np.arange(6.0).reshape(3, 2)
    y = b.affine(x, w, None, "mm")
    z = b.affine(y, np.ones(12), np.full(12, 0.5), "bias")
    assert isinstance(b.nodes[z], ir.Affine) and b.nodes[z].input == x
    g = b.build([ir.Output("y", z, (1, 4, 3), 0)])
    assert g.sizes()[z] == 12
    values = torch.randn(2, 8, dtype=torch.float64)
    got = run(g, {"x": values})[z]
    want = (values.reshape(2, 4, 2) @ torch.tensor(w).T + 0.5).reshape(2, 12)
    assert torch.allclose(got, want)
