"""One canonical gate algebra (verifier.canonical): algebraically equal cells get one IR whatever the
exporter wrote, the rewritten graph computes the same function, and bounds on it stay sound.

The five-exporter fixtures (tests/fixtures/exporters) hold one GRU and one LSTM, each exported from
identical weights by torch legacy, torch dynamo, a torch cell loop, Keras 2 and Keras 3."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import parsers
import verifier
from parsers import builder as builder_module
from tests.verifier.sampling import gradient_deltas, random_deltas
from verifier import forward, ir
from verifier.bounds import bound_outputs, perturbed_input
from verifier.canonical import GRU_UPDATE_FORMS, canonicalize, describe_products
from verifier.certify import SearchOptions
from verifier.ir import Act
from verifier.threat import ThreatModel

ROOT = Path(__file__).resolve().parents[2]
EXPORTERS = ROOT / "tests" / "fixtures" / "exporters"
EXPORTER_NAMES = ("torch_legacy", "torch_dynamo", "torch_cellloop", "keras2", "keras3")
REFUSED = {"masking_lstm", "dynamo_lstm_proj_size", "loop_trip_from_input"}
MODELS = sorted(path for path in [*ROOT.glob("tests/fixtures/*/*.onnx"), *ROOT.glob("models_onnx/*.onnx")]
                if path.stem not in REFUSED)


def feeds_for(path: Path) -> dict[str, np.ndarray]:
    """The feeds saved next to a model (held-out sample files: their first two samples)."""
    if path.with_suffix(".npz").exists():
        with np.load(path.with_suffix(".npz")) as data:
            return {key: data[key] for key in data.files if key != "y"}
    samples = path.parent / f"{path.stem}.samples.npz"
    with np.load(samples if samples.exists() else path.parent / "samples.npz") as data:
        return {"x": data["x"][:2]}


def load_raw(path: Path, feeds: dict[str, np.ndarray], monkeypatch) -> tuple[ir.Graph, dict[str, np.ndarray]]:
    """The graph as the front end builds it without the canonical pass."""
    with monkeypatch.context() as patch:
        patch.setattr(builder_module, "canonicalize", lambda graph: graph)
        return parsers.load_onnx(path).specialize(feeds)


def structure(graph: ir.Graph) -> list[tuple]:
    """Everything about the graph, names included, for exact comparisons."""
    def describe(node: ir.Node) -> tuple:
        values = []
        for value in vars(node).values():
            values.append(value.tobytes() if isinstance(value, np.ndarray) else value)
        return (type(node).__name__, *values)
    return [describe(node) for node in graph.nodes] + [tuple(vars(out).values()) for out in graph.outputs]


def fingerprint(graph: ir.Graph) -> Counter:
    """The graph's nonlinear skeleton without names: every activation and product with its kind, size
    and, per operand, the skeletons of the nearest nonlinear nodes (or inputs) it is computed from.
    Linear plumbing (how an exporter groups matrix products, biases and slices) is left out."""
    sizes, signature = graph.sizes(), {}

    def sources(name: str) -> tuple:
        node = graph[name]
        if isinstance(node, (ir.Input, ir.Activation, ir.Product)):
            return (signature[name],)
        return tuple(sorted({s for x in ir.node_inputs(node) for s in sources(x)}))

    for node in graph.nodes:
        match node:
            case ir.Input():
                signature[node.name] = hash(("input", node.size))
            case ir.Activation():
                signature[node.name] = hash(("activation", str(node.fn), sizes[node.name], sources(node.input)))
            case ir.Product():
                signature[node.name] = hash(("product", str(node.left_fn), str(node.right_fn), sizes[node.name],
                                             sources(node.left), sources(node.right)))
    return Counter(signature[n.name] for n in graph.nodes if isinstance(n, (ir.Activation, ir.Product)))


@pytest.fixture(scope="module")
def exporter_graphs() -> dict[str, dict[str, ir.Graph]]:
    return {cell: {name: parsers.load_onnx(EXPORTERS / f"{cell}_{name}.onnx") for name in EXPORTER_NAMES}
            for cell in ("gru", "lstm")}


@pytest.mark.parametrize("path", MODELS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_canonical_graph_computes_the_same_function_and_is_a_fixed_point(path, monkeypatch):
    raw, feeds = load_raw(path, feeds_for(path), monkeypatch)
    canonical = canonicalize(raw)
    assert structure(canonicalize(canonical)) == structure(canonical)
    flat, _ = forward.flatten_feeds(raw, feeds)
    rng = np.random.default_rng(0)
    inputs = {name: torch.as_tensor(value + rng.normal(0, 0.5, value.shape)) for name, value in flat.items()}
    before, after = forward.run(raw, inputs), forward.run(canonical, inputs)
    for out_raw, out_canonical in zip(raw.outputs, canonical.outputs):
        expected, got = before[out_raw.node], after[out_canonical.node]
        assert got.shape == expected.shape and got.dtype == torch.float64
        assert ((got - expected).abs() <= 1e-12 * expected.abs().clamp(min=1)).all()


def test_the_front_end_returns_canonical_graphs(monkeypatch):
    path = EXPORTERS / "gru_keras3.onnx"
    raw, _ = load_raw(path, feeds_for(path), monkeypatch)
    assert structure(parsers.load_onnx(path)) == structure(canonicalize(raw))
    # Keras 3 writes (1 - z) * tanh(c): without the pass the gate is an affine value, not a fused sigmoid
    assert describe_products(raw) == {"σ·tanh": 0, "σ·y": 80, "McCormick": 0, "tanh·y": 48}


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_five_exporters_give_one_canonical_ir(exporter_graphs, cell):
    graphs = exporter_graphs[cell]
    reference = fingerprint(graphs["torch_legacy"])
    for name, graph in graphs.items():
        assert fingerprint(graph) == reference, name
    # T=6, H=8 (h0 = 0, so step 0 has no state products). GRU: step 0 sigmoid(-u)*tanh(c); from step 1
    # sigmoid(r)*(R h + b) and the update z*h + (1 - z)*n with one gate z (two McCormick products, see
    # canonical.GRU_UPDATE_FORM). LSTM: i*g and o*tanh(c), from step 1 f*c.
    expected = {"gru": {"σ·tanh": 8, "σ·y": 40, "McCormick": 80}, "lstm": {"σ·tanh": 96, "σ·y": 40, "McCormick": 0}}
    assert {name: describe_products(g) for name, g in graphs.items()} == {name: expected[cell] for name in graphs}


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_five_exporters_certify_the_same_radius(exporter_graphs, cell):
    x = np.load(EXPORTERS / "samples.npz")["x"][:2]
    options = SearchOptions(method="crown", tol=0.05, start=0.025)  # equal graphs: any tolerance shows it
    radii = {name: np.array([r.radius for r in verifier.certify(graph, x, 2.0, options=options, dtype=torch.float64)])
             for name, graph in exporter_graphs[cell].items()}
    reference = radii["torch_legacy"]
    assert (reference > 0.005).all()
    for name, values in radii.items():
        assert np.abs(values - reference).max() <= 1e-6 * reference.max(), (name, values, reference)


@pytest.mark.parametrize("name, method", [("gru_keras3", "crown"), ("gru_torch_cellloop", "popqorn"),
                                          ("lstm_torch_cellloop", "popqorn")])
def test_bounds_on_canonical_graphs_contain_onnxruntime_outputs(name, method):
    path = EXPORTERS / f"{name}.onnx"
    graph = parsers.load_onnx(path)
    node = perturbed_input(graph, None)
    x = np.load(EXPORTERS / "samples.npz")["x"][:2]
    threat, eps = ThreatModel(2.0, "frame"), 0.05
    lower, upper = bound_outputs(graph, x, eps, threat.norm, threat.ball, method=method, dtype=torch.float64)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for sample in range(len(x)):
        center = x[sample].reshape(-1).astype(np.float64)
        deltas = np.concatenate([random_deltas(node, eps, threat, 300, rng),
                                 gradient_deltas(graph, node, center, eps, threat, graph.outputs[0].node)])
        values = session.run(None, {"x": (center + deltas).reshape(-1, *x.shape[1:]).astype(np.float32)})[0]
        assert (values >= lower[sample] - 2e-5).all() and (values <= upper[sample] + 2e-5).all()


# ---- rewrite rules on tiny hand-written graphs ----------------------------------------------------

F, H = 3, 4


def _model(nodes, initializers, path: Path, opset: int = 17) -> Path:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", F])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", H])],
                              [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in initializers.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), path)
    return path


HARD_SIGMOIDS = {  # Keras 3 relu6(a + 3)/6, Keras 2 clip(0.2 a + 0.5, 0, 1), ONNX HardSigmoid, relu then clip
    "relu6": [helper.make_node("Add", ["a", "three"], ["s"]), helper.make_node("Clip", ["s", "zero", "six"], ["c"]),
              helper.make_node("Div", ["c", "six"], ["gate"])],
    "clip": [helper.make_node("Mul", ["a", "sixth"], ["m"]), helper.make_node("Add", ["m", "half"], ["s"]),
             helper.make_node("Clip", ["s", "zero", "one"], ["gate"])],
    "hard_sigmoid": [helper.make_node("HardSigmoid", ["a"], ["gate"], alpha=1 / 6, beta=0.5)],
    "relu_clip": [helper.make_node("Add", ["a", "three"], ["s"]), helper.make_node("Relu", ["s"], ["r"]),
                  helper.make_node("Clip", ["r", "", "six"], ["c"]), helper.make_node("Mul", ["c", "sixth"], ["gate"])],
}


@pytest.mark.parametrize("spelling", sorted(HARD_SIGMOIDS))
def test_hard_sigmoid_spellings_become_one_clip_of_an_affine_map(spelling, tmp_path):
    rng = np.random.default_rng(1)
    constants = {"W": rng.uniform(-2, 2, (F, H)), "V": rng.uniform(-2, 2, (F, H)), "three": 3.0, "six": 6.0,
                 "sixth": 1 / 6, "half": 0.5, "zero": 0.0, "one": 1.0}
    nodes = [helper.make_node("MatMul", ["x", "W"], ["a"]), *HARD_SIGMOIDS[spelling],
             helper.make_node("MatMul", ["x", "V"], ["b"]), helper.make_node("Tanh", ["b"], ["t"]),
             helper.make_node("Mul", ["gate", "t"], ["y"])]
    path = _model(nodes, constants, tmp_path / f"{spelling}.onnx")
    graph = parsers.load_onnx(path)
    clips = [n for n in graph.nodes if isinstance(n, ir.Activation)]
    assert [(n.fn.kind, n.fn.alpha) for n in clips] == [(Act.CLIP, 0.0)] and clips[0].fn.beta == pytest.approx(1.0)
    pre = graph[clips[0].input]
    assert isinstance(pre, ir.Affine) and pre.input == "x" and pre.weight.shape == (H, F)
    assert np.allclose(pre.weight, constants["W"].T / 6) and np.allclose(pre.bias, 0.5)
    assert describe_products(graph) == {"σ·tanh": 0, "σ·y": 0, "McCormick": 0, "tanh·y": H}
    x = rng.uniform(-4, 4, (50, F)).astype(np.float32)
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.abs(verifier.evaluate(graph, {"x": x})[0] - expected).max() < 1e-5


def _split_gate_cell(split: bool) -> tuple[list, dict]:
    """A GRU-like cell whose two gates come from one sigmoid over one matrix product then a Split, or
    from two matrix products and two sigmoids: (1 - z) * tanh(r * c) + z * h."""
    rng = np.random.default_rng(2)
    W = rng.uniform(-1, 1, (F, 2 * H))
    if split:
        gates = [helper.make_node("MatMul", ["x", "W"], ["gates"]), helper.make_node("Sigmoid", ["gates"], ["s"]),
                 helper.make_node("Split", ["s"], ["z", "r"], axis=1)]
        weights = {"W": W}
    else:
        gates = [helper.make_node("MatMul", ["x", "Wz"], ["u"]), helper.make_node("Sigmoid", ["u"], ["z"]),
                 helper.make_node("MatMul", ["x", "Wr"], ["v"]), helper.make_node("Sigmoid", ["v"], ["r"])]
        weights = {"Wz": W[:, :H], "Wr": W[:, H:]}
    nodes = gates + [helper.make_node("Sub", ["one", "z"], ["not_z"]), helper.make_node("MatMul", ["x", "V"], ["c"]),
                     helper.make_node("Mul", ["r", "c"], ["rc"]), helper.make_node("Tanh", ["rc"], ["n"]),
                     helper.make_node("Mul", ["not_z", "n"], ["new"]), helper.make_node("MatMul", ["x", "P"], ["h"]),
                     helper.make_node("Mul", ["z", "h"], ["keep"]), helper.make_node("Add", ["new", "keep"], ["y"])]
    return nodes, {**weights, "V": rng.uniform(-1, 1, (F, H)), "P": rng.uniform(-1, 1, (F, H)), "one": 1.0}


def test_one_sigmoid_over_all_gates_then_split_is_the_same_cell(tmp_path):
    """sigmoid(all gates) -> Split -> z, r: the update is recognised although 1 - z's -u was folded
    into the sliced matrix product, and the graph is the one two separate sigmoids give."""
    graphs = {}
    for split in (True, False):
        path = _model(*_split_gate_cell(split), tmp_path / f"split_{split}.onnx")
        graph = graphs[split] = parsers.load_onnx(path)
        assert describe_products(graph) == {"σ·tanh": 0, "σ·y": H, "McCormick": 2 * H}  # r*c; z*h, (1 - z)*n
        z = [n for n in graph.nodes if isinstance(n, ir.Activation) and n.fn == ir.SIGMOID]
        assert len(z) == 1  # the update gate relaxed once; r is fused into r * c
        x = np.random.default_rng(5).uniform(-2, 2, (20, F)).astype(np.float32)
        expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        assert np.abs(verifier.evaluate(graph, {"x": x})[0] - expected).max() < 1e-5
        assert fingerprint(canonicalize(graph)) == fingerprint(graph)  # a fixed point
    assert fingerprint(graphs[True]) == fingerprint(graphs[False])


def test_gru_update_spellings_give_one_graph():
    """n + z*(h - n), (h - n)*z + n, z*h + (1 - z)*n and sigmoid(-u)*n + sigmoid(u)*h: one form."""
    x = ir.Input("x", (1, 3 * H), 0, None, "x")
    u, c, h = (ir.Select(name, "x", np.arange(k * H, (k + 1) * H)) for k, name in enumerate(("u", "c", "h")))
    z, n = ir.Activation("z", "u", ir.SIGMOID), ir.Activation("n", "c", ir.TANH)
    base = (x, u, c, h, z, n)
    neg_n = ir.Affine("neg_n", "n", -np.ones(H))
    diff = ir.Add("diff", ("h", "neg_n"))
    spellings = {
        "difference": (neg_n, diff, ir.Product("step", "z", "diff"), ir.Add("y", ("n", "step"))),
        "difference_swapped": (neg_n, diff, ir.Product("step", "diff", "z"), ir.Add("y", ("step", "n"))),
        "one_minus": (ir.Affine("not_z", "z", -np.ones(H), np.ones(H)), ir.Product("keep", "z", "h"),
                      ir.Product("new", "not_z", "n"), ir.Add("y", ("keep", "new"))),
        "gates": (ir.Affine("neg_u", "u", -np.ones(H)), ir.Product("new", "neg_u", "c", ir.SIGMOID, ir.TANH),
                  ir.Product("keep", "u", "h", ir.SIGMOID), ir.Add("y", ("new", "keep"))),
    }
    values = torch.as_tensor(np.random.default_rng(3).normal(0, 2, (10, 3 * H)))
    results = {}
    for spelling, nodes in spellings.items():
        graph = ir.Graph(base + nodes, (x,), (ir.Output("y", "y", (1, H), 0),))
        canonical = canonicalize(graph)
        got = forward.run(canonical, {"x": values})["y"]
        assert torch.allclose(got, forward.run(graph, {"x": values})["y"], rtol=0, atol=1e-14)
        results[spelling] = fingerprint(canonical)
        assert describe_products(canonical) == {"σ·tanh": 0, "σ·y": 0, "McCormick": 2 * H}, spelling
        z = [n for n in canonical.nodes if isinstance(n, ir.Activation) and n.fn == ir.SIGMOID]
        assert len(z) == 1 and z[0].input == "u"  # one gate, relaxed once
    assert all(result == results["gates"] for result in results.values())


@pytest.mark.parametrize("form", GRU_UPDATE_FORMS)
def test_every_gru_update_form_computes_the_update_and_is_a_fixed_point(form):
    x = ir.Input("x", (1, 3 * H), 0, None, "x")
    u, c, h = (ir.Select(name, "x", np.arange(k * H, (k + 1) * H)) for k, name in enumerate(("u", "c", "h")))
    nodes = (x, u, c, h, ir.Activation("z", "u", ir.SIGMOID), ir.Activation("n", "c", ir.TANH),
             ir.Affine("not_z", "z", -np.ones(H), np.ones(H)), ir.Product("keep", "z", "h"),
             ir.Product("new", "not_z", "n"), ir.Add("y", ("keep", "new")))
    graph = ir.Graph(nodes, (x,), (ir.Output("y", "y", (1, H), 0),))
    canonical = canonicalize(graph, gru_update=form)
    assert structure(canonicalize(canonical, gru_update=form)) == structure(canonical)
    values = torch.as_tensor(np.random.default_rng(4).normal(0, 2, (10, 3 * H)))
    z, n, state = torch.sigmoid(values[:, :H]), torch.tanh(values[:, H:2 * H]), values[:, 2 * H:]
    expected = z * state + (1 - z) * n
    assert torch.allclose(forward.run(canonical, {"x": values})["y"], expected, rtol=0, atol=1e-14)
    sigmoids = [n for n in canonical.nodes if isinstance(n, (ir.Activation, ir.Product))
                and ir.SIGMOID in (getattr(n, "fn", None), getattr(n, "left_fn", None))]
    assert len(sigmoids) == {"complement": 1, "gates": 2, "difference": 1}[form]


def test_describe_products_counts_neurons_by_relaxation_kind():
    x = ir.Input("x", (1, 2 * H), 0, None, "x")
    a, b = ir.Select("a", "x", np.arange(H)), ir.Select("b", "x", np.arange(H, 2 * H))
    nodes = (x, a, b, ir.Product("p", "a", "b", ir.SIGMOID, ir.TANH), ir.Product("q", "a", "b", ir.SIGMOID),
             ir.Product("r", "a", "b", ir.RELU), ir.Product("s", "a", "b"))
    graph = ir.Graph(nodes, (x,), (ir.Output("y", "s", (1, H), 0),))
    assert describe_products(graph) == {"σ·tanh": H, "σ·y": H, "McCormick": 2 * H}
