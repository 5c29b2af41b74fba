"""Native ONNX LSTM / GRU / RNN nodes with random weights (constant weights hide gate-order bugs),
every attribute, compared with onnxruntime (layout=1 against a transposed twin, since onnxruntime
refuses it)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import parsers
import verifier
from verifier.errors import UnsupportedOperator

T, B, I, H = 4, 3, 3, 5
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def make_model(op: str, opset: int = 14, seed: int = 0, direction: str = "forward", layout: int = 0,
               peepholes: bool = False, initial: str | None = None, sequence_lens: int | None = None,
               hidden_size: bool = True, outputs: tuple[str, ...] = ("Y", "Y_h"), transpose_twin: bool = False,
               **attributes) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    d = 2 if direction == "bidirectional" else 1
    g = GATES[op]
    tensors = {"W": rng.uniform(-1, 1, (d, g * H, I)), "R": rng.uniform(-1, 1, (d, g * H, H)),
               "B": rng.uniform(-1, 1, (d, 2 * g * H))}
    names = ["X", "W", "R", "B"]
    graph_inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [B, T, I] if layout or transpose_twin else [T, B, I])]
    extra_inputs = {}
    if sequence_lens is not None:
        tensors["seq"] = np.full(B, sequence_lens)
    names.append("seq" if sequence_lens is not None else "")
    state_shape = (B, d, H) if layout else (d, B, H)
    for state in ("h0", "c0")[: 2 if op == "LSTM" else 1]:
        if initial == "const":
            tensors[state] = np.repeat(rng.uniform(-1, 1, (d, 1, H)), B, axis=1).transpose((1, 0, 2) if layout else (0, 1, 2))
            names.append(state)
        elif initial == "input":
            graph_inputs.append(helper.make_tensor_value_info(state, TensorProto.FLOAT, list(state_shape)))
            extra_inputs[state] = rng.uniform(-1, 1, state_shape).astype(np.float32)
            names.append(state)
        else:
            names.append("")
    if peepholes:
        tensors["P"] = rng.uniform(-1, 1, (d, 3 * H))
        names.append("P")
    while names and names[-1] == "":
        names.pop()
    initializers = [numpy_helper.from_array(v.astype(np.int32 if k == "seq" else np.float32), k) for k, v in tensors.items()]
    all_outputs = ["Y", "Y_h", "Y_c"][: 3 if op == "LSTM" else 2]
    node_outputs = [o if o in outputs else "" for o in all_outputs]
    while node_outputs[-1] == "":
        node_outputs.pop()
    if hidden_size:
        attributes["hidden_size"] = H
    nodes = []
    if transpose_twin:  # [B, T, I] input fed through a Transpose to a layout-0 node
        nodes.append(helper.make_node("Transpose", ["X"], ["Xt"], perm=[1, 0, 2]))
        names[0] = "Xt"
    recurrent = helper.make_node(op, names, [f"{o}_raw" if transpose_twin and o else o for o in node_outputs],
                                 name=f"{op.lower()}_node", direction=direction, **({"layout": 1} if layout else {}), **attributes)
    nodes.append(recurrent)
    outs = []
    for o in node_outputs:
        if not o:
            continue
        if transpose_twin:
            perm = [2, 0, 1, 3] if o == "Y" else [1, 0, 2]
            nodes.append(helper.make_node("Transpose", [f"{o}_raw"], [o], perm=perm))
        outs.append(helper.make_tensor_value_info(o, TensorProto.FLOAT, [None] * (4 if o == "Y" else 3)))
    graph = helper.make_graph(nodes, "g", graph_inputs, outs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    model.doc_string = repr(extra_inputs and {k: v.tolist() for k, v in extra_inputs.items()})
    return model, extra_inputs


def check(model, extra, tmp_path, atol=1e-5, reference=None):
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    x_shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(1).uniform(-2, 2, x_shape).astype(np.float32)
    feeds = {"X": x, **extra}
    expected = (reference or ort.InferenceSession(str(path)).run)(None, feeds)
    got = verifier.evaluate(parsers.load_onnx(path), feeds)
    assert len(got) == len(expected)
    for e, g in zip(expected, got):
        assert e.shape == g.shape
        assert np.abs(e - g).max() <= atol


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("opset", [7, 14, 22])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_directions_and_opsets(op, opset, direction, tmp_path):
    model, extra = make_model(op, opset, direction=direction, outputs=("Y", "Y_h", "Y_c"))
    check(model, extra, tmp_path)


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("initial", ["const", "input"])
def test_initial_states(op, initial, tmp_path):
    model, extra = make_model(op, direction="bidirectional", initial=initial, outputs=("Y", "Y_h", "Y_c"))
    check(model, extra, tmp_path)


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_clip_sequence_lens_and_missing_hidden_size(op, tmp_path):
    check(*make_model(op, clip=0.6, seed=3), tmp_path)
    check(*make_model(op, sequence_lens=2, direction="bidirectional", seed=4, outputs=("Y", "Y_h", "Y_c")), tmp_path)
    # onnxruntime insists on hidden_size; the onnx reference evaluator infers it from R like we do
    model, extra = make_model(op, hidden_size=False, seed=5)
    check(model, extra, tmp_path, reference=ReferenceEvaluator(model).run)


@pytest.mark.parametrize("linear_before_reset", [0, 1])
def test_gru_reset_modes(linear_before_reset, tmp_path):
    check(*make_model("GRU", linear_before_reset=linear_before_reset, direction="bidirectional",
                      initial="const", seed=6), tmp_path)


def test_lstm_peepholes_and_input_forget(tmp_path):
    check(*make_model("LSTM", peepholes=True, direction="bidirectional", seed=7, outputs=("Y", "Y_h", "Y_c")), tmp_path)
    check(*make_model("LSTM", input_forget=1, seed=8, outputs=("Y", "Y_c")), tmp_path)
    check(*make_model("LSTM", input_forget=1, peepholes=True, clip=0.8, seed=9), tmp_path)


ACTIVATION_CASES = {
    "RNN": [(["Relu"], [], []), (["LeakyRelu"], [0.1], []), (["HardSigmoid"], [0.3], [0.4]),
            (["Affine"], [0.5], [0.2]), (["ScaledTanh"], [0.7], [1.3]), (["Softsign"], [], []),
            (["Elu"], [0.8], []), (["Softplus"], [], []), (["ThresholdedRelu"], [0.2], []), (["Sigmoid"], [], [])],
    "GRU": [(["HardSigmoid", "Softsign"], [0.3], [0.5]), (["Sigmoid", "Relu"], [], [])],
    "LSTM": [(["HardSigmoid", "LeakyRelu", "Softsign"], [0.25, 0.05], [0.5]), (["Sigmoid", "Tanh", "Relu"], [], [])],
}


@pytest.mark.parametrize("op, case", [(op, c) for op, cases in ACTIVATION_CASES.items() for c in cases],
                         ids=lambda v: v if isinstance(v, str) else "-".join(v[0]))
def test_activation_lists(op, case, tmp_path):
    names, alpha, beta = case
    attributes = {"activations": names}
    if alpha:
        attributes["activation_alpha"] = alpha
    if beta:
        attributes["activation_beta"] = beta
    check(*make_model(op, seed=10, **attributes), tmp_path)


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_layout_one_matches_a_transposed_twin(op, tmp_path):
    twin, extra = make_model(op, direction="bidirectional", transpose_twin=True, seed=11, outputs=("Y", "Y_h"))
    onnx.save(twin, tmp_path / "twin.onnx")
    session = ort.InferenceSession(str(tmp_path / "twin.onnx"))
    model, _ = make_model(op, direction="bidirectional", layout=1, seed=11, outputs=("Y", "Y_h"))
    check(model, extra, tmp_path, reference=session.run)


def test_unsupported_cases_name_the_node(tmp_path):
    model, _ = make_model("RNN", activations=["ScaledTanh"])  # alpha missing: no operator defaults
    onnx.save(model, tmp_path / "a.onnx")
    with pytest.raises(UnsupportedOperator, match="rnn_node.*activation_alpha"):
        parsers.load_onnx(tmp_path / "a.onnx")
    model, _ = make_model("RNN", activations=["Gelu"])
    onnx.save(model, tmp_path / "b.onnx")
    with pytest.raises(UnsupportedOperator, match="RNN.*rnn_node.*Gelu.*supported: Affine, Elu"):
        parsers.load_onnx(tmp_path / "b.onnx")
    # a bidirectional node lists its activations per direction (the spec: 6 for an LSTM); onnxruntime
    # refuses 3, so a certificate for such a file would be for a model nothing can run
    model, _ = make_model("LSTM", direction="bidirectional", activations=["Sigmoid", "Tanh", "Tanh"])
    onnx.save(model, tmp_path / "c.onnx")
    with pytest.raises(UnsupportedOperator, match="expected 6 activations .3 per direction, 2 direction.s... got 3"):
        parsers.load_onnx(tmp_path / "c.onnx")
    with pytest.raises(Exception, match="activation"):
        ort.InferenceSession(str(tmp_path / "c.onnx"), providers=["CPUExecutionProvider"])


def _over_constant_sequence(model: onnx.ModelProto, x: np.ndarray, lengths: list[int] | None = None) -> onnx.ModelProto:
    """The model with X made a constant initializer (its batch rows differ), and every output
    replaced by its batch entry 0 plus a symbolic input Z [B, H]: the recurrent node reads only
    constants and is folded at load."""
    graph = model.graph
    x_input = next(v for v in graph.input if v.name == "X")
    graph.input.remove(x_input)
    graph.initializer.append(numpy_helper.from_array(x, "X"))
    if lengths is not None:
        seq = next(t for t in graph.initializer if t.name == "seq")
        seq.CopyFrom(numpy_helper.from_array(np.array(lengths, dtype=np.int32), "seq"))
    graph.input.append(helper.make_tensor_value_info("Z", TensorProto.FLOAT, [B, H]))
    graph.initializer.append(numpy_helper.from_array(np.array([0], dtype=np.int64), "first"))
    outputs = list(graph.output)
    del graph.output[:]
    for out in outputs:
        for node in graph.node:
            node.output[:] = [f"{o}_const" if o == out.name else o for o in node.output]
        batch_axis = 2 if out.name == "Y" else 1
        graph.node.append(helper.make_node("Gather", [f"{out.name}_const", "first"], [f"{out.name}_first"],
                                           axis=batch_axis))
        graph.node.append(helper.make_node("Add", [f"{out.name}_first", "Z"], [out.name]))
        graph.output.append(out)
    return model


@pytest.mark.parametrize("op, attributes", [
    ("LSTM", {"activations": ["Sigmoid", "Relu", "Relu"] * 2}), ("LSTM", {"clip": 0.5, "input_forget": 1}),
    ("GRU", {"activations": ["Sigmoid", "Relu"] * 2, "clip": 0.7}), ("RNN", {"activations": ["Relu"] * 2, "clip": 0.9}),
], ids=["lstm-relu", "lstm-clip-input_forget", "gru-relu-clip", "rnn-relu-clip"])
def test_a_node_over_constants_honours_every_attribute(op, attributes, tmp_path):
    """Folded by the converter itself, per batch entry: onnx's reference evaluator ignores clip,
    activations, input_forget and sequence_lens, and its constant was certified as the model's."""
    x = np.random.default_rng(2).uniform(-2, 2, (T, B, I)).astype(np.float32)
    model, _ = make_model(op, direction="bidirectional", sequence_lens=3, outputs=("Y", "Y_h", "Y_c"), seed=12,
                          **attributes)
    model = _over_constant_sequence(model, x, lengths=[2, 4, 3])  # lengths may differ per batch entry here
    path = tmp_path / "folded.onnx"
    onnx.save(model, path)
    graph = parsers.load_onnx(path)
    assert not graph.cells and any("reads only constants" in note for note in graph.notes)
    z = np.random.default_rng(3).uniform(-1, 1, (B, H)).astype(np.float32)
    expected = ort.InferenceSession(str(path)).run(None, {"Z": z})
    unattributed, _ = make_model(op, direction="bidirectional", sequence_lens=3, outputs=("Y", "Y_h", "Y_c"), seed=12)
    reference = ReferenceEvaluator(_over_constant_sequence(unattributed, x, lengths=[2, 4, 3])).run(None, {"Z": z})
    assert max(np.abs(e - r).max() for e, r in zip(expected, reference)) > 0.05  # the attributes matter
    for e, g in zip(expected, verifier.evaluate(graph, {"Z": z})):
        assert e.shape == g.shape and np.abs(e - g).max() <= 1e-5 * max(1.0, np.abs(e).max())


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_a_decoder_over_a_constant_sequence_is_certified_soundly(op, tmp_path):
    """A seq2seq decoder: constant X (equal rows, sized for the export's batch), initial_h (and c)
    computed from the model's input. Its states are symbolic from the first step on."""
    model, extra = make_model(op, initial="input", outputs=("Y_h",), seed=13)
    graph = model.graph
    x_input = next(v for v in graph.input if v.name == "X")
    graph.input.remove(x_input)
    x = np.repeat(np.random.default_rng(4).uniform(-1, 1, (T, 1, I)), B, axis=1).astype(np.float32)
    graph.initializer.append(numpy_helper.from_array(x, "X"))
    path = tmp_path / "decoder.onnx"
    onnx.save(model, path)
    loaded = parsers.load_onnx(path)
    expected = ort.InferenceSession(str(path)).run(None, extra)[0]
    assert np.abs(verifier.evaluate(loaded, extra)[0] - expected).max() <= 1e-5
    eps = 0.05
    lower, upper = verifier.bound_outputs(loaded, extra, eps=eps, norm="inf", input_name="h0")
    session = ort.InferenceSession(str(path))
    rng = np.random.default_rng(5)
    for _ in range(200):
        feeds = dict(extra)
        feeds["h0"] = (extra["h0"] + rng.choice([-eps, eps], extra["h0"].shape) * (rng.random() < 0.5 or
                       rng.random(extra["h0"].shape))).astype(np.float32)
        out = session.run(None, feeds)[0]
        assert np.all(out >= lower - 1e-5) and np.all(out <= upper + 1e-5)
    assert np.all(upper - lower > 0)
