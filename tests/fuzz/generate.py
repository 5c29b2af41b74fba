"""Seeded generators of broken and hostile inputs for the fuzz suite (issue 13): ONNX models
(byte-level damage of the shipped and tiny models, structural mutations built with onnx.helper,
random op chains), sample and label files, command-line values and VNN-LIB text.

Everything is deterministic in its seed; nothing here imports torch or the verifier, so cases
are listed at collection time for free and built by the tests that run them."""

from __future__ import annotations

import copy
import gzip
import io
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MODELS = Path(__file__).resolve().parents[2] / "models_onnx"
STEPS, FEATURES, HIDDEN, CLASSES = 3, 2, 3, 3
GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
OPSET = 17


@dataclass(frozen=True)
class Case:
    """One generated file: `name` is the pytest id, `make(folder)` writes it and returns its path."""

    name: str
    make: Callable


# ---- tiny models -----------------------------------------------------------------------------------
def value(name: str, shape, elem: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def recurrent_model(cell: str = "RNN", seed: int = 0, scale: float = 0.8) -> onnx.ModelProto:
    """x [batch, T, F] -> Transpose -> ONNX RNN/GRU/LSTM -> last hidden state -> linear head -> logits
    [batch, C]: the shape of what users export, small enough for every command to answer fast."""
    rng = np.random.default_rng(seed)
    gates = GATES[cell]
    weights = {"W": (1, gates * HIDDEN, FEATURES), "R": (1, gates * HIDDEN, HIDDEN), "B": (1, 2 * gates * HIDDEN),
               "head": (HIDDEN, CLASSES), "bias": (CLASSES,)}
    initializers = [numpy_helper.from_array(rng.uniform(-scale, scale, shape).astype(np.float32), name)
                    for name, shape in weights.items()]
    extra = {"linear_before_reset": 1} if cell == "GRU" else {}
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2], name="to_time_major"),
             helper.make_node(cell, ["xt", "W", "R", "B"], ["", "h"], hidden_size=HIDDEN, name="cell", **extra),
             helper.make_node("Transpose", ["h"], ["hb"], perm=[1, 0, 2], name="to_batch_first"),
             helper.make_node("Flatten", ["hb"], ["hf"], axis=1, name="flatten"),
             helper.make_node("MatMul", ["hf", "head"], ["z"], name="head"),
             helper.make_node("Add", ["z", "bias"], ["logits"], name="bias")]
    graph = helper.make_graph(nodes, f"tiny_{cell.lower()}", [value("x", ["batch", STEPS, FEATURES])],
                              [value("logits", ["batch", CLASSES])], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def samples(count: int = 2, seed: int = 0, steps: int = STEPS, features: int = FEATURES) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (count, steps, features)).astype(np.float32)


def save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


# ---- byte-level damage ------------------------------------------------------------------------------
def _source_bytes(source: str) -> bytes:
    if source in GATES:
        return recurrent_model(source).SerializeToString()
    return (MODELS / f"{source}.onnx").read_bytes()


def damaged_bytes(source: str, how: str, seed: int) -> bytes:
    """Truncated, bit-flipped, overwritten or spliced serialisations of a model."""
    data = bytearray(_source_bytes(source))
    rng = np.random.default_rng(seed)
    if how == "truncate":
        return bytes(data[:int(rng.integers(0, len(data)))])
    if how == "bitflip":
        for position in rng.integers(0, len(data), int(rng.integers(1, 9))):
            data[position] ^= 1 << int(rng.integers(0, 8))
        return bytes(data)
    if how == "overwrite":
        start = int(rng.integers(0, len(data)))
        span = rng.integers(0, 256, int(rng.integers(1, 33)), dtype=np.uint8).tobytes()
        data[start:start + len(span)] = span
        return bytes(data)
    if how == "not-utf8":  # a name whose bytes are no UTF-8 (protobuf then yields bytes, not str)
        name = b"to_time_major" if b"to_time_major" in data else b"Constant"
        at = data.index(name)
        data[at + len(name) // 2] = 0xEE
        return bytes(data)
    if how == "splice":
        start, stop = sorted(int(p) for p in rng.integers(0, len(data), 2))
        at = int(rng.integers(0, len(data)))
        return bytes(data[:at] + data[start:stop] + data[at:])
    raise ValueError(how)


def byte_cases(count_per_kind: int = 3, sources=("RNN", "LSTM", "GRU", "digits_gru_t8_h16")) -> list[Case]:
    cases = []
    for how in ("truncate", "bitflip", "overwrite", "splice", "not-utf8"):
        for k in range(count_per_kind):
            source = sources[k % len(sources)]
            seed = 1000 * k + len(how)

            def make(folder: Path, source=source, how=how, seed=seed) -> Path:
                path = folder / f"{how}_{source}_{seed}.onnx"
                path.write_bytes(damaged_bytes(source, how, seed))
                return path
            cases.append(Case(f"{how}-{source}-{seed}", make))
    return cases


# ---- structural mutations ---------------------------------------------------------------------------
def _node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def _initializer(model: onnx.ModelProto, name: str) -> onnx.TensorProto:
    return next(t for t in model.graph.initializer if t.name == name)


def _set_attribute(node: onnx.NodeProto, name: str, value) -> None:
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend([*kept, helper.make_attribute(name, value)])


def _set_dims(info: onnx.ValueInfoProto, dims: list) -> None:
    shape = info.type.tensor_type.shape
    shape.ClearField("dim")
    for d in dims:
        entry = shape.dim.add()
        if isinstance(d, str):
            entry.dim_param = d
        else:
            entry.dim_value = d


def _poison(model: onnx.ModelProto, tensor: str, fill: float, count: int = 1) -> None:
    init = _initializer(model, tensor)
    array = numpy_helper.to_array(init).copy()
    array.reshape(-1)[:count] = fill
    init.CopyFrom(numpy_helper.from_array(array, tensor))


def _reshape_initializer(model: onnx.ModelProto, tensor: str, shape: tuple[int, ...]) -> None:
    init = _initializer(model, tensor)
    init.CopyFrom(numpy_helper.from_array(np.full(shape, 0.25, np.float32), tensor))


def _cycle(model: onnx.ModelProto) -> None:
    _node(model, "to_time_major").input[0] = "logits"


def _duplicate_output(model: onnx.ModelProto) -> None:
    _node(model, "flatten").output[0] = "xt"
    _node(model, "head").input[0] = "xt"


def _duplicate_initializer(model: onnx.ModelProto) -> None:
    twin = copy.deepcopy(_initializer(model, "bias"))
    twin.CopyFrom(numpy_helper.from_array(np.full(CLASSES, 7.0, np.float32), "bias"))
    model.graph.initializer.append(twin)


def _input_is_initializer(model: onnx.ModelProto) -> None:
    model.graph.initializer.append(numpy_helper.from_array(np.zeros((1, STEPS, FEATURES), np.float32), "x"))


def _float16_input(model: onnx.ModelProto) -> None:
    """A half-precision input cast to float first: a valid model (what half-precision exports look like)."""
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.FLOAT16
    _node(model, "to_time_major").input[0] = "x_float"
    model.graph.node.insert(0, helper.make_node("Cast", ["x"], ["x_float"], to=TensorProto.FLOAT, name="cast"))


def _no_outputs(model: onnx.ModelProto) -> None:
    del model.graph.output[:]


def _no_nodes(model: onnx.ModelProto) -> None:
    del model.graph.node[:]


def _no_inputs(model: onnx.ModelProto) -> None:
    del model.graph.input[:]


def _empty_graph(model: onnx.ModelProto) -> None:
    for field in (model.graph.node, model.graph.input, model.graph.output, model.graph.initializer):
        del field[:]


def _output_is_input(model: onnx.ModelProto) -> None:
    del model.graph.node[:]
    del model.graph.output[:]
    model.graph.output.append(value("x", ["batch", STEPS, FEATURES]))


def _unknown_op(model: onnx.ModelProto, domain: str = "") -> None:
    node = _node(model, "flatten")
    node.op_type = "FuzzOp"
    node.domain = domain
    if domain:
        model.opset_import.append(helper.make_opsetid(domain, 1))


def _opset(model: onnx.ModelProto, version: int | None) -> None:
    del model.opset_import[:]
    if version is not None:
        model.opset_import.append(helper.make_opsetid("", version))


def _sequence_lengths(model: onnx.ModelProto, lengths) -> None:
    model.graph.initializer.append(numpy_helper.from_array(np.asarray(lengths, np.int32), "lens"))
    cell = _node(model, "cell")
    cell.input.extend(["lens"])


def _mutate(base: str, mutation: Callable[[onnx.ModelProto], None]) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        model = recurrent_model(base)
        mutation(model)
        return save(model, folder / "mutated.onnx")
    return make


def structural_cases() -> list[Case]:
    """Each mutation on the tiny model (cell chosen to vary between cases)."""
    x_input = lambda m: m.graph.input[0]  # noqa: E731
    mutations: list[tuple[str, str, Callable]] = [
        # wrong, huge, negative dims of the graph input
        ("dims-zero-time", "RNN", lambda m: _set_dims(x_input(m), ["batch", 0, FEATURES])),
        ("dims-negative-time", "GRU", lambda m: _set_dims(x_input(m), ["batch", -5, FEATURES])),
        ("dims-huge-time", "LSTM", lambda m: _set_dims(x_input(m), ["batch", 10**9, FEATURES])),
        ("dims-million-time", "GRU", lambda m: _set_dims(x_input(m), ["batch", 10**6, FEATURES])),
        ("dims-huge-features", "RNN", lambda m: _set_dims(x_input(m), ["batch", STEPS, 2**40])),
        ("dims-wrong-features", "GRU", lambda m: _set_dims(x_input(m), ["batch", STEPS, FEATURES + 1])),
        ("dims-rank-2", "RNN", lambda m: _set_dims(x_input(m), ["batch", STEPS * FEATURES])),
        ("dims-rank-4", "LSTM", lambda m: _set_dims(x_input(m), ["batch", STEPS, FEATURES, 1])),
        ("dims-all-symbolic", "GRU", lambda m: _set_dims(x_input(m), ["a", "b", "c"])),
        ("dims-fixed-batch-7", "RNN", lambda m: _set_dims(x_input(m), [7, STEPS, FEATURES])),
        ("dims-no-shape", "RNN", lambda m: x_input(m).type.tensor_type.ClearField("shape")),
        # input element types
        *[(f"input-type-{TensorProto.DataType.Name(t).lower()}", "RNN",
           lambda m, t=t: setattr(x_input(m).type.tensor_type, "elem_type", t))
          for t in (TensorProto.INT64, TensorProto.INT32, TensorProto.STRING, TensorProto.COMPLEX64, TensorProto.BOOL,
                    TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.UINT8, TensorProto.BFLOAT16, 0)],
        # missing / duplicate / cyclic names
        *[(f"missing-initializer-{name}", cell, lambda m, name=name: m.graph.initializer.remove(_initializer(m, name)))
          for name, cell in (("W", "RNN"), ("R", "LSTM"), ("B", "GRU"), ("head", "RNN"), ("bias", "LSTM"))],
        ("cycle", "RNN", _cycle),
        ("duplicate-output-name", "GRU", _duplicate_output),
        ("duplicate-initializer", "RNN", _duplicate_initializer),
        ("input-is-also-initializer", "LSTM", _input_is_initializer),
        ("input-float16-with-cast", "LSTM", _float16_input),
        ("dangling-node-input", "RNN", lambda m: _node(m, "head").input.__setitem__(1, "nowhere")),
        # graphs without parts
        ("no-outputs", "RNN", _no_outputs),
        ("no-nodes", "GRU", _no_nodes),
        ("no-inputs", "RNN", _no_inputs),
        ("empty-graph", "LSTM", _empty_graph),
        ("output-is-input", "RNN", _output_is_input),
        # operators and opsets
        ("unknown-op", "RNN", _unknown_op),
        ("unknown-domain", "GRU", lambda m: _unknown_op(m, "com.fuzz")),
        ("unknown-domain-no-opset", "RNN", lambda m: setattr(_node(m, "head"), "domain", "org.nowhere")),
        *[(f"opset-{v}", "LSTM", lambda m, v=v: _opset(m, v)) for v in (None, 0, 1, 7, 99)],
        ("ir-version-0", "RNN", lambda m: setattr(m, "ir_version", 0)),
        ("ir-version-99", "RNN", lambda m: setattr(m, "ir_version", 99)),
        # attribute values
        *[(f"hidden-size-{v}", cell, lambda m, v=v: _set_attribute(_node(m, "cell"), "hidden_size", v))
          for v, cell in ((10**9, "LSTM"), (-1, "RNN"), (0, "GRU"), (2**62, "RNN"), (HIDDEN + 1, "LSTM"), (1, "GRU"))],
        ("direction-sideways", "RNN", lambda m: _set_attribute(_node(m, "cell"), "direction", "sideways")),
        ("direction-bidirectional", "GRU", lambda m: _set_attribute(_node(m, "cell"), "direction", "bidirectional")),
        ("activation-unknown", "RNN", lambda m: _set_attribute(_node(m, "cell"), "activations", ["Gelu"])),
        ("activation-relu", "RNN", lambda m: _set_attribute(_node(m, "cell"), "activations", ["Relu"])),
        ("activation-too-many", "LSTM", lambda m: _set_attribute(_node(m, "cell"), "activations", ["Tanh"] * 7)),
        ("clip-negative", "LSTM", lambda m: _set_attribute(_node(m, "cell"), "clip", -1.0)),
        ("clip-nan", "GRU", lambda m: _set_attribute(_node(m, "cell"), "clip", float("nan"))),
        ("clip-tiny", "RNN", lambda m: _set_attribute(_node(m, "cell"), "clip", 1e-3)),
        ("linear-before-reset-7", "GRU", lambda m: _set_attribute(_node(m, "cell"), "linear_before_reset", 7)),
        ("layout-5", "RNN", lambda m: _set_attribute(_node(m, "cell"), "layout", 5)),
        ("perm-repeated", "RNN", lambda m: _set_attribute(_node(m, "to_time_major"), "perm", [0, 0, 2])),
        ("perm-out-of-range", "GRU", lambda m: _set_attribute(_node(m, "to_time_major"), "perm", [1, 0, 9])),
        ("flatten-axis-99", "LSTM", lambda m: _set_attribute(_node(m, "flatten"), "axis", 99)),
        ("flatten-axis-huge-negative", "RNN", lambda m: _set_attribute(_node(m, "flatten"), "axis", -(2**62))),
        ("sequence-lengths-zero", "RNN", lambda m: _sequence_lengths(m, [0, 0])),
        ("sequence-lengths-huge", "GRU", lambda m: _sequence_lengths(m, [2**31 - 1])),
        # weight values and shapes
        *[(f"weight-{tensor}-{label}", cell, lambda m, tensor=tensor, fill=fill: _poison(m, tensor, fill))
          for (tensor, cell), (label, fill) in zip(
              [("W", "RNN"), ("R", "LSTM"), ("B", "GRU"), ("head", "RNN"), ("bias", "LSTM"), ("W", "GRU"),
               ("R", "RNN"), ("head", "GRU")],
              [("nan", np.nan), ("inf", np.inf), ("-inf", -np.inf), ("3e38", 3e38), ("-3e38", -3e38),
               ("1e30", 1e30), ("denormal", 1e-45), ("1e19", 1e19)])],
        ("weight-all-3e38", "LSTM", lambda m: _poison(m, "W", 3e38, count=4 * HIDDEN * FEATURES)),
        ("weight-W-wrong-shape", "RNN", lambda m: _reshape_initializer(m, "W", (1, HIDDEN + 1, FEATURES))),
        ("weight-R-wrong-rank", "LSTM", lambda m: _reshape_initializer(m, "R", (4 * HIDDEN, HIDDEN))),
        ("weight-B-wrong-length", "GRU", lambda m: _reshape_initializer(m, "B", (1, 5))),
        ("weight-head-wrong-inner", "RNN", lambda m: _reshape_initializer(m, "head", (HIDDEN + 2, CLASSES))),
        ("weight-bias-wrong-broadcast", "GRU", lambda m: _reshape_initializer(m, "bias", (CLASSES + 1,))),
        ("weight-as-int64", "RNN", lambda m: _initializer(m, "head").CopyFrom(
            numpy_helper.from_array(np.ones((HIDDEN, CLASSES), np.int64), "head"))),
        ("weight-dims-lie", "LSTM", lambda m: _initializer(m, "head").dims.__setitem__(0, 10**6)),
        ("output-type-string", "RNN", lambda m: setattr(m.graph.output[0].type.tensor_type, "elem_type",
                                                        TensorProto.STRING)),
    ]
    return [Case(name, _mutate(cell, mutation)) for name, cell, mutation in mutations]


# ---- tiny graphs with control flow and hostile sizes ------------------------------------------------
def _loop_model(trips: int | None, condition: bool = True) -> onnx.ModelProto:
    """h <- tanh(h) `trips` times (no trip count when None: the loop runs while its condition holds)."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["c_in"], ["c_out"]), helper.make_node("Tanh", ["h_in"], ["h_out"])], "body",
        [value("i", [], TensorProto.INT64), value("c_in", [], TensorProto.BOOL), value("h_in", ["batch", FEATURES])],
        [value("c_out", [], TensorProto.BOOL), value("h_out", ["batch", FEATURES])])
    initializers = [numpy_helper.from_array(np.array(condition), "cond")]
    if trips is not None:
        initializers.append(numpy_helper.from_array(np.array(trips, np.int64), "M"))
    loop = helper.make_node("Loop", ["M" if trips is not None else "", "cond", "x"], ["h"], body=body, name="loop")
    graph = helper.make_graph([loop], "loop", [value("x", ["batch", FEATURES])], [value("h", ["batch", FEATURES])],
                              initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def _grow_model(op: str, count: int) -> onnx.ModelProto:
    """A tensor of `count` elements computed from constants, reduced and added to x."""
    shape = numpy_helper.from_array(np.array([count], np.int64), "shape")
    nodes = [helper.make_node(op, ["shape"] if op == "ConstantOfShape" else ["one", "shape"], ["big"], name="grow"),
             helper.make_node("ReduceSum", ["big"], ["total"], keepdims=1, name="sum"),
             helper.make_node("Add", ["x", "total"], ["y"], name="use")]
    initializers = [shape]
    if op != "ConstantOfShape":
        initializers.append(numpy_helper.from_array(np.ones(1, np.float32), "one"))
    else:
        _set_attribute(nodes[0], "value", numpy_helper.from_array(np.ones(1, np.float32)))
    graph = helper.make_graph(nodes, "grow", [value("x", ["batch", FEATURES])], [value("y", ["batch", FEATURES])],
                              initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def _lstm_with_steps(steps: int) -> onnx.ModelProto:
    model = recurrent_model("LSTM")
    _set_dims(model.graph.input[0], ["batch", steps, FEATURES])
    return model


def repeated_names(count: int) -> onnx.ModelProto:
    """A chain whose node names differ (ONNX requires it) but all clean to the IR name 'same': the
    superscript digits that tell them apart are no IR name characters."""
    digits = "⁰¹²³⁴⁵⁶⁷⁸⁹"
    nodes = [helper.make_node("Relu", [f"v{k}"], [f"v{k + 1}"], name="same" + "".join(digits[int(d)] for d in str(k)))
             for k in range(count)]
    graph = helper.make_graph(nodes, "names", [value("v0", ["batch", FEATURES])], [value(f"v{count}", ["batch", FEATURES])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def hostile_size_cases() -> list[Case]:
    def model_case(name: str, build: Callable[[], onnx.ModelProto]) -> Case:
        return Case(name, lambda folder: save(build(), folder / f"{name}.onnx"))

    return [
        model_case("loop-3-trips", lambda: _loop_model(3)),
        model_case("loop-1e12-trips", lambda: _loop_model(10**12)),
        model_case("loop-negative-trips", lambda: _loop_model(-5)),
        model_case("loop-zero-trips", lambda: _loop_model(0)),
        model_case("loop-no-trip-count-forever", lambda: _loop_model(None, condition=True)),
        model_case("loop-condition-false", lambda: _loop_model(None, condition=False)),
        model_case("constant-of-shape-1e12", lambda: _grow_model("ConstantOfShape", 10**12)),
        model_case("expand-1e10", lambda: _grow_model("Expand", 10**10)),
        model_case("tile-1e11", lambda: _grow_model("Tile", 10**11)),
        model_case("constant-of-shape-negative", lambda: _grow_model("ConstantOfShape", -3)),
        model_case("lstm-declares-1e6-steps", lambda: _lstm_with_steps(10**6)),
        model_case("repeated-names-5000", lambda: repeated_names(5000)),
    ]


# ---- random op chains -------------------------------------------------------------------------------
# mostly operators popqorn converts (the chain then reaches the engine), a few it refuses
UNARY = ["Relu", "Tanh", "Sigmoid", "Neg", "Softplus", "LeakyRelu", "HardSigmoid", "Elu", "Softsign", "Identity",
         "ThresholdedRelu", "Relu", "Tanh", "Sigmoid", "Exp", "Abs", "Erf"]
BINARY = ["Add", "Sub", "Mul", "Div", "Add", "Mul", "Max"]


def random_chain(seed: int) -> onnx.ModelProto:
    """A random chain of elementwise, affine and shape ops on x [batch, T, F] ending in logits
    [batch, C]. Constants are drawn from wide ranges (zeros, negatives, huge values included), so
    some graphs are refused, some overflow, and the rest must be bounded soundly."""
    rng = np.random.default_rng(seed)
    nodes, initializers = [], []
    width = FEATURES
    current = "x"

    def constant(shape) -> str:
        name = f"c{len(initializers)}"
        scale = float(rng.choice([0.5, 1.0, 3.0, 1e3, 1e20]))
        data = rng.uniform(-scale, scale, shape).astype(np.float32)
        if rng.random() < 0.1:
            data[...] = 0.0
        initializers.append(numpy_helper.from_array(data, name))
        return name

    for k in range(int(rng.integers(1, 6))):
        out = f"v{k}"
        roll = rng.random()
        if roll < 0.4:
            op = str(rng.choice(UNARY))
            nodes.append(helper.make_node(op, [current], [out], name=f"n{k}"))
        elif roll < 0.7:
            op = str(rng.choice(BINARY))
            shape = [width] if rng.random() < 0.8 else [int(rng.integers(1, 4)), width]
            operands = [current, constant(shape)] if rng.random() < 0.7 else [constant(shape), current]
            nodes.append(helper.make_node(op, operands, [out], name=f"n{k}"))
        elif roll < 0.85:
            new_width = int(rng.integers(1, 5))
            inner = width if rng.random() < 0.9 else width + 1  # sometimes the shapes do not fit
            nodes.append(helper.make_node("MatMul", [current, constant((inner, new_width))], [out], name=f"n{k}"))
            width = new_width
        elif roll < 0.92:
            nodes.append(helper.make_node("Concat", [current, "x" if width == FEATURES else current], [out], axis=-1,
                                          name=f"n{k}"))
            width *= 2
        else:
            nodes.append(helper.make_node("Clip", [current, constant(()), constant(())], [out], name=f"n{k}"))
        current = out
    nodes.append(helper.make_node("Flatten", [current], ["flat"], axis=1, name="flatten"))
    nodes.append(helper.make_node("MatMul", ["flat", constant((STEPS * width, CLASSES))], ["logits"], name="head"))
    graph = helper.make_graph(nodes, f"chain_{seed}", [value("x", ["batch", STEPS, FEATURES])],
                              [value("logits", ["batch", CLASSES])], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def chain_cases(count: int = 12) -> list[Case]:
    return [Case(f"chain-{seed}", lambda folder, seed=seed: save(random_chain(seed), folder / f"chain_{seed}.onnx"))
            for seed in range(count)]


# ---- sample and label files -------------------------------------------------------------------------
def npy_bytes(header: dict, data: bytes) -> bytes:
    """A .npy file with this header (which may lie about the data that follows)."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue() + data


def npz_bytes(members: dict[str, bytes], compress: bool = True) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def array_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def zip_bomb(member_bytes: int) -> bytes:
    """An .npz whose 'x' member honestly holds `member_bytes` of zeros (float32 [n, T, F]),
    deflated to about a thousandth of that."""
    count = member_bytes // (4 * STEPS * FEATURES)
    header = {"descr": "<f4", "fortran_order": False, "shape": (count, STEPS, FEATURES)}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("x.npy", "w", force_zip64=True) as member:
            member.write(npy_bytes(header, b""))
            block = bytes(2**20)
            left = count * 4 * STEPS * FEATURES
            while left > 0:
                member.write(block[:min(left, len(block))])
                left -= len(block)
    return buffer.getvalue()


def sample_cases() -> list[Case]:
    """Files for --input, all aimed at the tiny models (x [N, 3, 2], 3 classes): the case name says
    what is wrong with each (a few are right, as controls)."""
    x = samples(2)
    labels = np.array([0, 2])

    def npy(name: str, array: np.ndarray) -> Case:
        return Case(name, lambda folder: _write(folder / f"{name}.npy", array_bytes(array)))

    def npz(name: str, compress: bool = True, **members) -> Case:
        return Case(name, lambda folder: _write(folder / f"{name}.npz", npz_bytes(
            {f"{key}.npy": data if isinstance(data, bytes) else array_bytes(data) for key, data in members.items()},
            compress)))

    def raw(name: str, suffix: str, data: bytes) -> Case:
        return Case(name, lambda folder: _write(folder / f"{name}{suffix}", data))

    def poisoned(fill: float, dtype=np.float32) -> np.ndarray:
        bad = x.astype(dtype)
        bad[1, 2, 1] = fill
        return bad

    header = lambda descr, shape: {"descr": descr, "fortran_order": False, "shape": shape}  # noqa: E731
    return [
        npy("good", x),
        npy("rank-2", x.reshape(2, -1)),
        npy("rank-4", x[..., None]),
        npy("single-sample-no-batch", x[0]),
        npy("time-major", x.transpose(1, 0, 2).copy()),
        npy("wrong-features", samples(2, features=FEATURES + 1)),
        npy("wrong-steps", samples(2, steps=STEPS + 2)),
        npy("empty-batch", np.zeros((0, STEPS, FEATURES), np.float32)),
        npy("empty-everything", np.zeros((0,), np.float32)),
        npy("scalar", np.float32(1.0)),
        npy("nan", poisoned(np.nan)),
        npy("inf", poisoned(np.inf)),
        npy("-inf", poisoned(-np.inf)),
        npy("3e38", poisoned(3e38)),
        npy("1e30", poisoned(1e30)),
        npy("float64-1e300", poisoned(1e300, np.float64)),
        npy("float64-denormal", poisoned(5e-324, np.float64)),
        npy("float16", x.astype(np.float16)),
        npy("int64", np.ones((2, STEPS, FEATURES), np.int64)),
        npy("int64-huge", np.full((2, STEPS, FEATURES), 2**62, np.int64)),
        npy("uint8", np.ones((2, STEPS, FEATURES), np.uint8)),
        npy("bool", np.ones((2, STEPS, FEATURES), bool)),
        npy("complex", x.astype(np.complex64) + 1j),
        npy("strings", np.full((2, STEPS, FEATURES), "a")),
        npy("bytes", np.full((2, STEPS, FEATURES), b"a")),
        npy("datetime", np.zeros((2, STEPS, FEATURES), "datetime64[s]")),
        npy("structured", np.zeros((2, STEPS, FEATURES), [("a", "f4")])),
        npy("big-endian", x.astype(">f4")),
        npy("fortran-order", np.asfortranarray(x)),
        raw("object-array", ".npy", npy_bytes(header("|O", (2,)), b"\x80\x04N.")),
        raw("header-huge-shape", ".npy", npy_bytes(header("<f4", (10**6, 10**6, 10**6)), b"")),
        raw("header-negative-shape", ".npy", npy_bytes(header("<f4", (-2, STEPS, FEATURES)), b"")),
        raw("header-truncated-data", ".npy", npy_bytes(header("<f4", (2, STEPS, FEATURES)), bytes(8))),
        raw("header-void-dtype", ".npy", npy_bytes(header("|V8", (2, STEPS, FEATURES)), bytes(96))),
        raw("header-garbage", ".npy", b"\x93NUMPY\x01\x00\x10\x00{garbage}      \n"),
        raw("header-version-9", ".npy", b"\x93NUMPY\x09\x00" + bytes(20)),
        raw("empty-file", ".npy", b""),
        raw("text-file", ".npy", b"1,2,3\n4,5,6\n"),
        raw("gzip-file", ".npz", gzip.compress(array_bytes(x))),
        raw("truncated-zip", ".npz", npz_bytes({"x.npy": array_bytes(x)})[:-30]),
        raw("bitflipped-zip", ".npz", _flip(npz_bytes({"x.npy": array_bytes(x)}), 60)),
        raw("npz-as-npy", ".npy", npz_bytes({"x.npy": array_bytes(x)})),
        raw("wrong-extension", ".txt", array_bytes(x)),
        npz("npz-good", x=x, y=labels),
        npz("npz-stored", False, x=x, y=labels),
        npz("npz-no-x", y=labels),
        npz("npz-x-under-other-name", inputs=x, y=labels),
        npz("npz-not-npy-member", x=x, **{"notes": b"hello"}),
        npz("npz-object-member", x=npy_bytes(header("|O", (2,)), b"\x80\x04N.")),
        npz("npz-huge-header", x=npy_bytes(header("<f4", (10**5, 10**5, 10**5)), b"")),
        npz("npz-truncated-member", x=npy_bytes(header("<f4", (2, STEPS, FEATURES)), bytes(10))),
        npz("npz-empty-x", x=np.zeros((0, STEPS, FEATURES), np.float32)),
        npz("labels-float", x=x, y=np.array([0.5, 1.0])),
        npz("labels-whole-float", x=x, y=np.array([1.0, 2.0])),
        npz("labels-negative", x=x, y=np.array([-1, 0])),
        npz("labels-out-of-range", x=x, y=np.array([0, CLASSES])),
        npz("labels-huge", x=x, y=np.array([2**63 - 1, 0], np.int64)),
        npz("labels-uint64-huge", x=x, y=np.array([2**64 - 1, 0], np.uint64)),
        npz("labels-nan", x=x, y=np.array([np.nan, 0.0])),
        npz("labels-inf", x=x, y=np.array([np.inf, 0.0])),
        npz("labels-strings", x=x, y=np.array(["cat", "dog"])),
        npz("labels-bool", x=x, y=np.array([True, False])),
        npz("labels-complex", x=x, y=np.array([1 + 0j, 0j])),
        npz("labels-one-hot", x=x, y=np.eye(CLASSES)[[0, 2]]),
        npz("labels-too-few", x=x, y=np.array([0])),
        npz("labels-too-many", x=x, y=np.array([0, 1, 2])),
        npz("labels-scalar", x=x, y=np.array(1)),
        npz("labels-empty", x=x, y=np.zeros(0, np.int64)),
        npz("labels-object", x=x, y=npy_bytes(header("|O", (2,)), b"\x80\x04N.")),
    ]


def _flip(data: bytes, position: int) -> bytes:
    flipped = bytearray(data)
    flipped[position % len(flipped)] ^= 0xFF
    return bytes(flipped)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# ---- VNN-LIB text -----------------------------------------------------------------------------------
def vnnlib_header(inputs: int, outputs: int) -> str:
    return "".join(f"(declare-const X_{i} Real)\n" for i in range(inputs)) + \
        "".join(f"(declare-const Y_{j} Real)\n" for j in range(outputs))


def vnnlib_box(inputs: int, lower: float = -0.1, upper: float = 0.1, center: np.ndarray | None = None) -> str:
    center = np.zeros(inputs) if center is None else center
    return "".join(f"(assert (>= X_{i} {float(center[i] + lower)!r}))\n(assert (<= X_{i} {float(center[i] + upper)!r}))\n"
                   for i in range(inputs))


TOKENS = ["(", "(", ")", ")", "assert", "and", "or", "<=", ">=", "<", ">", "=", "+", "-", "*", "/", "X_0", "X_5",
          "Y_1", "Y_9", "0.5", "-1e400", "nan", "1e308", "declare-const", "Real", "vnnlib-version", "<2.0>", ";",
          "X[0]", "\"", "|x|", "#b101", "\x00", "é", "\n"]


def token_soup(seed: int, length: int = 60) -> str:
    rng = np.random.default_rng(seed)
    return " ".join(str(t) for t in rng.choice(TOKENS, length))


def vnnlib_cases(inputs: int = STEPS * FEATURES, outputs: int = CLASSES) -> list[tuple[str, str | bytes]]:
    """(name, text) of hostile or broken properties over the tiny model (6 inputs, 3 outputs)."""
    head, box = vnnlib_header(inputs, outputs), vnnlib_box(inputs)
    good = head + box + "(assert (>= Y_1 Y_0))\n"
    depth = 20_000
    return [
        ("good", good),
        *[(f"token-soup-{seed}", token_soup(seed)) for seed in range(6)],
        *[(f"good-prefix-then-soup-{seed}", head + box + token_soup(seed, 20)) for seed in range(2)],
        ("empty", ""),
        ("only-comments", "; nothing here\n; at all\n"),
        ("binary-garbage", bytes(range(256)) * 4),
        ("not-utf8", head.encode() + b"(assert (<= X_0 \xff\xfe))\n"),
        ("unbalanced-open", head + box + "(assert (and (<= Y_0 1.0)\n"),
        ("unbalanced-close", head + box + "(assert (<= Y_0 1.0)))\n"),
        ("deep-nesting", head + box + "(assert " + "(and " * depth + "(<= Y_0 1.0)" + ")" * depth + ")\n"),
        ("deep-unbalanced", head + box + "(" * depth),
        ("deep-arithmetic", head + box + "(assert (<= " + "(- " * 2000 + "Y_0" + ")" * 2000 + " 1.0))\n"),
        ("huge-number", head + box.replace("0.1))", "1e400))", 1) + "(assert (>= Y_1 Y_0))\n"),
        ("huge-finite-box", head + box.replace("-0.1", "-1e308").replace(" 0.1", " 1e308") + "(assert (>= Y_1 Y_0))\n"),
        ("box-3e38", head + box.replace("-0.1", "-3e38").replace(" 0.1", " 3e38") + "(assert (>= Y_1 Y_0))\n"),
        ("nan-bound", head + box.replace("0.1))", "nan))", 1) + "(assert (>= Y_1 Y_0))\n"),
        ("inf-bound", head + box.replace("0.1))", "inf))", 1) + "(assert (>= Y_1 Y_0))\n"),
        ("nan-output-constant", good + "(assert (<= Y_0 nan))\n"),
        ("huge-coefficient", head + box + "(assert (<= (* 1e308 Y_0) (* -1e308 Y_1)))\n"),
        ("undeclared-input", head + box + "(assert (<= X_99 1.0))\n(assert (>= Y_1 Y_0))\n"),
        ("undeclared-output", head + box + "(assert (>= Y_7 Y_0))\n"),
        ("undeclared-name", head + box + "(assert (>= Z_1 Y_0))\n"),
        ("too-few-inputs", vnnlib_header(inputs - 1, outputs) + vnnlib_box(inputs - 1) + "(assert (>= Y_1 Y_0))\n"),
        ("too-many-inputs", vnnlib_header(inputs + 1, outputs) + vnnlib_box(inputs + 1) + "(assert (>= Y_1 Y_0))\n"),
        ("too-many-outputs", vnnlib_header(inputs, outputs + 2) + box + "(assert (>= Y_4 Y_0))\n"),
        ("unbounded-input", head + box.split("\n", 1)[1] + "(assert (>= Y_1 Y_0))\n"),
        ("empty-box", head + box.replace("-0.1", "0.5", 1) + "(assert (>= Y_1 Y_0))\n"),
        ("no-output-constraint", head + box),
        ("contradictory-outputs", head + box + "(assert (>= Y_0 1.0))\n(assert (<= Y_0 -1.0))\n"),
        ("nonlinear", head + box + "(assert (<= (* Y_0 Y_1) 1.0))\n"),
        ("division-by-zero", head + box + "(assert (<= (/ Y_0 0) 1.0))\n"),
        ("exponential-dnf", head + box + "(assert (and " + "(or (<= Y_0 1.0) (>= Y_1 2.0)) " * 40 + "))\n"),
        ("many-asserts", head + box + "(assert (>= Y_1 Y_0))\n" * 20_000),
        ("declare-twice", head + "(declare-const X_0 Real)\n" + box + "(assert (>= Y_1 Y_0))\n"),
        ("declare-bad-type", head + "(declare-const X_9 Bool)\n" + box + "(assert (>= Y_1 Y_0))\n"),
        ("v2-good", _v2(inputs, outputs) + "(assert (>= Y[1] Y[0]))\n"),
        ("v2-index-out-of-range", _v2(inputs, outputs) + "(assert (>= Y[9] Y[0]))\n"),
        ("v2-wrong-shape", _v2(inputs, outputs, shape="[4,4]") + "(assert (>= Y[1] Y[0]))\n"),
        ("v2-negative-dim", _v2(inputs, outputs, shape="[-6]") + "(assert (>= Y[1] Y[0]))\n"),
        ("v2-huge-dim", _v2(inputs, outputs, shape="[1000000000000]") + "(assert (>= Y[1] Y[0]))\n"),
        ("v2-unknown-type", _v2(inputs, outputs).replace("float32", "quaternion", 1) + "(assert (>= Y[1] Y[0]))\n"),
        ("v2-no-network", "(vnnlib-version <2.0>)\n(assert (>= Y[1] Y[0]))\n"),
        ("v2-version-9", _v2(inputs, outputs).replace("<2.0>", "<9.9>") + "(assert (>= Y[1] Y[0]))\n"),
    ]


def _v2(inputs: int, outputs: int, shape: str | None = None) -> str:
    shape = shape or f"[1,{STEPS},{FEATURES}]"
    head = (f"(vnnlib-version <2.0>)\n(declare-network f\n  (declare-input X float32 {shape})\n"
            f"  (declare-output Y float32 [{outputs}])\n)\n")
    box = "".join(f"(assert (>= X[0,{i // FEATURES},{i % FEATURES}] -0.1))\n"
                  f"(assert (<= X[0,{i // FEATURES},{i % FEATURES}] 0.1))\n" for i in range(inputs))
    return head + box


def vnnlib_text_cases() -> list[Case]:
    def make(folder: Path, name: str, text: str | bytes) -> Path:
        data = text.encode() if isinstance(text, str) else text
        return _write(folder / f"{name}.vnnlib", data)
    return [Case(name, lambda folder, name=name, text=text: make(folder, name, text)) for name, text in vnnlib_cases()]


# ---- command-line values ----------------------------------------------------------------------------
# flag -> values a user (or a script with a bug) might pass; every command that takes the flag is tried
CLI_VALUES: dict[str, list[str]] = {
    "--eps": ["-1", "nan", "inf", "-inf", "1e308", "3e38", "abc", "", "0x10", "1e-320", "0", " 0.1", "1_0", "--1"],
    "--norm": ["3", "x", "0", "-1", "Inf", "INF", "1.5", "nan", "2.0", "1", "infinity", ""],
    "--ball": ["sequence", "box"],
    "--frames": ["5", "-1", "a,b", "0,0", "", ",", "0,,1", "1e9", "99999999999999999999", "2,1", " 1", "0-2"],
    "--method": ["ibp", "alpha"],
    "--target": ["-1", "3", "99999999999999999999999", "x", "1"],
    "--tol": ["0", "1", "-1", "nan", "x", "1e-300", "0.5"],
    "--batch-size": ["0", "-1", "1000000000", "1"],
    "--start": ["-1", "2", "1000000000", "1"],
    "--limit": ["0", "-5", "1000000000", "1"],
    "--device": ["tpu", "cuda:99", "cpu:0", " cpu", "CPU", "cuda:-1", "meta", ""],
    "--dtype": ["float16", "float32", "bfloat16"],
    "--threads": ["-1", "1000000", "0", "2", "1.5"],
    "--output": ["5", "nope", "-1", "logits", "-9"],
    "--input-name": ["nope", "", "x"],
    "--input-shape": ["x=1,3,2", "x=1,3", "x=0,3,2", "x=-1,3,2", "x=1,3,2,", "=1", "x=1,9999999999999,2", "y=1,3,2",
                      "x=2,3,2"],
    "--at": ["a", "-1", "nan", "0.1,0.2", "", "1e308", "0.1,,0.2"],
    "--steps": ["0", "-1", "1000000000", "1"],
    "--restarts": ["0", "1000000000"],
    "--seed": ["-1", "99999999999999999999999"],
    "--samples": ["0", "-1", "1000000000", "1e9", "3"],
    "--csv": ["missing/r.csv", ".", "", "r.csv"],
    "--json": ["missing/r.json", ".", "r.json"],
    "--plot": ["r.xyz", "missing/r.png", "r"],
    "--resume": ["missing/log.jsonl", ".", "log.jsonl"],
    "--out": ["missing/a.npy", "a.txt", ".", "a.npy"],
    "--timeout": ["-1", "nan", "0", "inf", "x", "1e308"],
    "--max-boxes": ["0", "-1", "99999999999999999999"],
    "--max-cases": ["0", "-3", "1"],
    "--domain": ["-1,1", "1,0", "nan,1", "a", "", "-inf,inf", "0,0", "-1e308,1e308"],
}

# the flags each command takes (besides MODEL and its required arguments)
COMMAND_FLAGS: dict[str, tuple[str, ...]] = {
    "bounds": ("--eps", "--norm", "--ball", "--frames", "--method", "--start", "--limit", "--device", "--dtype",
               "--threads", "--output", "--input-name", "--input-shape", "--domain"),
    "certify": ("--norm", "--ball", "--frames", "--method", "--target", "--tol", "--batch-size", "--start", "--limit",
                "--device", "--dtype", "--threads", "--output", "--at", "--csv", "--json", "--plot", "--resume", "--domain"),
    "attack": ("--eps", "--norm", "--ball", "--frames", "--target", "--steps", "--restarts", "--seed", "--start",
               "--limit", "--device", "--threads", "--out", "--output", "--input-name", "--domain"),
    "check": ("--samples", "--tol", "--seed", "--threads", "--input-shape"),
    "inspect": ("--input-shape",),
    "vnnlib": ("--timeout", "--max-boxes", "--max-cases", "--method", "--threads", "--out", "--input-shape"),
}


def cli_value_cases() -> list[tuple[str, str, str]]:
    """(command, flag, value) for every flag a command takes and every value listed for it."""
    return [(command, flag, value) for command, flags in COMMAND_FLAGS.items() for flag in flags
            for value in CLI_VALUES[flag] if not (flag == "--method" and command == "vnnlib" and value == "alpha")]


def cli_combinations(command: str, count: int, seed: int) -> list[list[str]]:
    """Seeded random mixes of 2-4 flags of one command (values from CLI_VALUES)."""
    rng = np.random.default_rng(seed)
    flags = COMMAND_FLAGS[command]
    mixes = []
    for _ in range(count):
        chosen = rng.choice(len(flags), int(rng.integers(2, 5)), replace=False)
        mixes.append([f"{flags[k]}={rng.choice(CLI_VALUES[flags[k]])}" for k in sorted(chosen)])
    return mixes


# ---- random recurrent nodes -------------------------------------------------------------------------
ACTIVATIONS = {"Tanh": (), "Relu": (), "Sigmoid": (), "LeakyRelu": (0.1,), "HardSigmoid": (0.2, 0.5), "Elu": (1.0,),
               "Softsign": (), "Softplus": (), "ThresholdedRelu": (0.3,), "ScaledTanh": (1.5, 0.7), "Affine": (0.5, 0.1)}
DEFAULT_ACTIVATIONS = {"RNN": ["Tanh"], "GRU": ["Sigmoid", "Tanh"], "LSTM": ["Sigmoid", "Tanh", "Tanh"]}


def random_recurrent(seed: int) -> onnx.ModelProto:
    """One ONNX RNN/GRU/LSTM node with random attributes (direction, activations with their
    alpha/beta, clip, linear_before_reset, input_forget, peepholes, initial states, which output
    feeds the head) and weights at random scales: the corners of the converter and of the bounds."""
    rng = np.random.default_rng(seed)
    cell = str(rng.choice(list(GATES)))
    gates, directions = GATES[cell], int(rng.choice([1, 1, 2]))
    direction = "bidirectional" if directions == 2 else str(rng.choice(["forward", "reverse"]))
    scale = float(rng.choice([0.1, 0.8, 3.0, 30.0]))
    weight = lambda *shape: rng.uniform(-scale, scale, shape).astype(np.float32)  # noqa: E731
    initializers = {"W": weight(directions, gates * HIDDEN, FEATURES), "R": weight(directions, gates * HIDDEN, HIDDEN),
                    "B": weight(directions, 2 * gates * HIDDEN)}
    cell_inputs = ["xt", "W", "R", "B", ""]
    if rng.random() < 0.4:
        initializers["h0"] = weight(directions, 1, HIDDEN)
        cell_inputs.append("h0")
    if cell == "LSTM" and rng.random() < 0.4:
        initializers["c0"] = weight(directions, 1, HIDDEN)
        cell_inputs += [""] * (6 - len(cell_inputs)) + ["c0"]
        if rng.random() < 0.5:
            initializers["P"] = weight(directions, 3 * HIDDEN)
            cell_inputs.append("P")
    attributes: dict = {"hidden_size": HIDDEN, "direction": direction}
    if rng.random() < 0.6:
        names = [str(rng.choice(list(ACTIVATIONS))) if rng.random() < 0.5 else default
                 for _ in range(directions) for default in DEFAULT_ACTIVATIONS[cell]]
        attributes["activations"] = names
        alphas = [a for name in names for a in ACTIVATIONS[name][:1]]
        betas = [b for name in names for b in ACTIVATIONS[name][1:2]]
        if alphas:
            attributes["activation_alpha"] = alphas
        if betas:
            attributes["activation_beta"] = betas
    if rng.random() < 0.3:
        attributes["clip"] = float(rng.uniform(0.1, 5.0))
    if cell == "GRU":
        attributes["linear_before_reset"] = int(rng.integers(0, 2))
    if cell == "LSTM" and rng.random() < 0.3:
        attributes["input_forget"] = 1
    use_sequence = rng.random() < 0.5
    outputs = ["y", "h"] if use_sequence else ["", "h"]
    if cell == "LSTM":
        outputs.append("c" if rng.random() < 0.3 else "")
    feed = "y" if use_sequence else ("c" if "c" in outputs else "h")
    width = STEPS * directions * HIDDEN if use_sequence else directions * HIDDEN
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2], name="to_time_major"),
             helper.make_node(cell, cell_inputs, outputs, name="cell", **attributes),
             helper.make_node("Transpose", [feed], ["fb"], perm=[2, 0, 1, 3] if use_sequence else [1, 0, 2], name="to_batch"),
             helper.make_node("Flatten", ["fb"], ["flat"], axis=1, name="flatten"),
             helper.make_node("MatMul", ["flat", "head"], ["logits"], name="head")]
    initializers["head"] = rng.uniform(-1, 1, (width, CLASSES)).astype(np.float32)
    graph = helper.make_graph(nodes, f"recurrent_{seed}", [value("x", ["batch", STEPS, FEATURES])],
                              [value("logits", ["batch", CLASSES])],
                              [numpy_helper.from_array(array, name) for name, array in initializers.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def recurrent_cases(count: int = 12) -> list[Case]:
    return [Case(f"recurrent-{seed}", lambda folder, seed=seed: save(random_recurrent(seed), folder / f"rec_{seed}.onnx"))
            for seed in range(count)]
