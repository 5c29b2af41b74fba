"""Hostile and broken model files (issue 13), each built in memory with onnx.helper: every one ends in
a one-line refusal naming the cause, or in the correct answer, quickly and without big allocations
(numpy's allocations are traced; the cap is far below what the hostile sizes would ask for)."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import parsers
import verifier
from parsers.builder import GraphBuilder
from verifier import ir
from verifier.cli import main
from verifier.errors import (
    InputError,
    ModelFileError,
    PopqornError,
    UnsupportedOperator,
)

MAX_TRACED_BYTES = 64 * 1024 * 1024
F, H = 3, 4


def save(tmp_path: Path, nodes, inputs, outputs, initializers=(), opset: int = 17, name: str = "m") -> Path:
    graph = helper.make_graph(nodes, name, inputs, outputs, list(initializers))
    path = tmp_path / f"{name}.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]).SerializeToString())
    return path


def value(name: str, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def refused(path: Path, error: type[PopqornError], *fragments: str, capsys=None, **kwargs) -> str:
    """load_onnx raises `error` with every fragment, tracing allocations; the CLI prints one line."""
    tracemalloc.start()
    try:
        with pytest.raises(error) as info:
            parsers.load_onnx(path, **kwargs)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert all(f in message for f in fragments), message
    assert peak < MAX_TRACED_BYTES, peak
    if capsys is not None and not kwargs:
        code = main(["inspect", str(path)])
        err = capsys.readouterr().err
        assert code == error.exit_code and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    return message


# -- sizes checked before numpy allocates ----------------------------------------------------
def _const(name: str, array) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(array)), name=name)


@pytest.mark.parametrize("case", ["constant_of_shape", "expand", "tile", "range", "expand_input"])
def test_huge_constants_are_refused_before_they_are_computed(case, tmp_path, capsys):
    x = value("x", ["batch", F])
    head = [_const("shape", np.array([100_000, 100_000], np.int64))]
    if case == "constant_of_shape":
        nodes = [*head, helper.make_node("ConstantOfShape", ["shape"], ["big"], name="grow")]
    elif case == "expand":
        nodes = [*head, _const("one", np.ones((1, 1), np.float32)), helper.make_node("Expand", ["one", "shape"], ["big"], name="grow")]
    elif case == "tile":
        nodes = [*head, _const("one", np.ones((2, 2), np.float32)), helper.make_node("Tile", ["one", "shape"], ["big"], name="grow")]
    elif case == "range":
        nodes = [_const("a", np.array(0, np.int64)), _const("b", np.array(10**12, np.int64)),
                 _const("c", np.array(1, np.int64)), helper.make_node("Range", ["a", "b", "c"], ["big"], name="grow")]
    else:  # the input itself expanded (moved as an index array)
        nodes = [_const("shape", np.array([1, 10**9, F], np.int64)), helper.make_node("Expand", ["x", "shape"], ["y"], name="grow")]
    if case != "expand_input":
        nodes += [helper.make_node("ReduceSum", ["big"], ["total"], keepdims=0, name="sum"),
                  helper.make_node("Cast", ["total"], ["total_f"], to=TensorProto.FLOAT, name="cast"),
                  helper.make_node("Add", ["x", "total_f"], ["y"], name="use")]
    output = value("y", ["one", "long", F] if case == "expand_input" else ["batch", F])  # its result is 3-D
    path = save(tmp_path, nodes, [x], [output])
    refused(path, UnsupportedOperator, "at node 'grow'", "max_elements", capsys=capsys)


def test_huge_input_shape_is_refused(tmp_path):
    path = save(tmp_path, [helper.make_node("Relu", ["x"], ["y"])], [value("x", ["batch", "time", 8])],
                [value("y", ["batch", "time", 8])])
    refused(path, InputError, "'x'", "max_elements", input_shapes={"x": (1, 10**9, 8)})
    graph = parsers.load_onnx(path)
    with pytest.raises(InputError, match="max_elements"):
        parsers.bind_shapes(graph, {"x": (1, 10**9, 8)})


def test_huge_initializer_dims_are_refused_before_reading(tmp_path, capsys):
    """Dims of 10^10 elements over 4 bytes of data: refused (by onnx.checker or from the dims),
    never materialised."""
    weight = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[100_000, 100_000], raw_data=b"\0" * 4)
    path = save(tmp_path, [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")],
                [value("x", ["batch", 100_000])], [value("y", ["batch", 100_000])], [weight])
    message = refused(path, ModelFileError, "W", capsys=capsys)
    assert "max_elements" in message or "onnx.checker" in message
    model = onnx.load(str(path))
    model.graph.initializer[0].dims[:] = [3, 3]
    with pytest.raises(ModelFileError, match="'W' cannot be read"):
        parsers.convert_model(model)  # what the checker would have caught, met without it
    model.graph.initializer[0].dims[:] = [100_000, 100_000]
    with pytest.raises(ModelFileError, match="'W' has 10,000,000,000 elements, over the limit max_elements"):
        parsers.convert_model(model)


# -- budgets on unrolling, checked before it starts -----------------------------------------------
def lstm_model(tmp_path: Path, steps: int) -> Path:
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.uniform(-1, 1, s).astype(np.float32), n)
               for n, s in (("W", (1, 4 * H, F)), ("R", (1, 4 * H, H)))]
    node = helper.make_node("LSTM", ["x", "W", "R"], ["Y", "Y_h"], hidden_size=H, name="long_lstm")
    return save(tmp_path, [node], [value("x", [steps, "batch", F])], [value("Y_h", [1, "batch", H])], weights,
                name=f"lstm_{steps}")


def test_lstm_declaring_a_million_steps_is_refused_by_the_budget(tmp_path, capsys):
    path = lstm_model(tmp_path, 10**6)
    refused(path, ModelFileError, "long_lstm", "max_nodes", capsys=capsys)
    refused(path, ModelFileError, "long_lstm", "max_unrolled", max_nodes=10**9)


def test_budgets_are_configurable(tmp_path):
    path = lstm_model(tmp_path, 6)
    graph = parsers.load_onnx(path)
    assert graph.cells[0].steps == 6
    refused(path, ModelFileError, "max_nodes=50", max_nodes=50)
    refused(path, ModelFileError, "max_unrolled=20", max_unrolled=20)
    with pytest.raises(InputError, match="max_nodes must be a positive integer"):
        parsers.load_onnx(path, max_nodes=0)


def test_scan_declaring_a_million_steps_is_refused(tmp_path, capsys):
    body = helper.make_graph([helper.make_node("Add", ["s_in", "x_t"], ["s_out"]),
                              helper.make_node("Identity", ["s_out"], ["y_t"])], "body",
                             [value("s_in", []), value("x_t", [])], [value("s_out", []), value("y_t", [])])
    scan = helper.make_node("Scan", ["s0", "x"], ["s", "y"], num_scan_inputs=1, body=body, name="long_scan")
    path = save(tmp_path, [scan], [value("x", [10**6])], [value("s", []), value("y", [10**6])],
                [numpy_helper.from_array(np.array(0.0, np.float32), "s0")], opset=11)
    refused(path, ModelFileError, "long_scan", "max_unrolled", capsys=capsys)


def nested_loops(tmp_path: Path, trips: int) -> Path:
    """Two Loops of `trips` iterations, one inside the other, carrying h = tanh(h)."""
    inner_body = helper.make_graph(
        [helper.make_node("Identity", ["d_in"], ["d_out"]), helper.make_node("Tanh", ["g_in"], ["g_out"])], "inner",
        [value("j", [], TensorProto.INT64), value("d_in", [], TensorProto.BOOL), value("g_in", ["batch", F])],
        [value("d_out", [], TensorProto.BOOL), value("g_out", ["batch", F])])
    outer_body = helper.make_graph(
        [helper.make_node("Identity", ["c_in"], ["c_out"]),
         helper.make_node("Loop", ["M", "", "h_in"], ["h_out"], body=inner_body, name="inner_loop")], "outer",
        [value("i", [], TensorProto.INT64), value("c_in", [], TensorProto.BOOL), value("h_in", ["batch", F])],
        [value("c_out", [], TensorProto.BOOL), value("h_out", ["batch", F])])
    loop = helper.make_node("Loop", ["M", "", "x"], ["h"], body=outer_body, name="outer_loop")
    return save(tmp_path, [loop], [value("x", ["batch", F])], [value("h", ["batch", F])],
                [numpy_helper.from_array(np.array(trips, np.int64), "M")], name=f"nested_{trips}")


def test_nested_loops_are_refused_before_unrolling(tmp_path, capsys):
    refused(nested_loops(tmp_path, 9_999), ModelFileError, "outer_loop", "max_unrolled", capsys=capsys)
    small = nested_loops(tmp_path, 3)  # the positive control: tanh applied 9 times
    x = np.linspace(-1, 1, 2 * F, dtype=np.float32).reshape(2, F)
    (y,) = verifier.evaluate(parsers.load_onnx(small), {"x": x})
    expected = x.astype(np.float64)
    for _ in range(9):
        expected = np.tanh(expected)
    np.testing.assert_allclose(y, expected, atol=1e-12)


def test_naming_is_linear_in_repeated_names():
    """IR names for many nodes called alike: probes of the name table grow linearly, not
    quadratically (30,000 alike names used to take minutes)."""

    class Counting(dict):
        probes = 0

        def __contains__(self, key):
            Counting.probes += 1
            return super().__contains__(key)

    builder = GraphBuilder()
    builder.nodes = Counting()
    first = builder.input("x", (1, 2), 0, None, "x")
    names = [builder.activation(first, ir.TANH, "same") for _ in range(3000)]
    assert len(set(names)) == 3000 and names[:3] == ["same", "same_1", "same_2"]
    assert Counting.probes <= 4 * 3000


def _superscript(k: int) -> str:
    return "".join("⁰¹²³⁴⁵⁶⁷⁸⁹"[int(d)] for d in str(k))


def test_many_nodes_with_one_name_convert(tmp_path):
    """Distinct ONNX names that all clean to the IR name 'same' (superscript digits are dropped)."""
    count = 3000
    nodes = [helper.make_node("Relu", [f"v{k}"], [f"v{k + 1}"], name=f"same{_superscript(k)}") for k in range(count)]
    path = save(tmp_path, nodes, [value("v0", ["batch", F])], [value(f"v{count}", ["batch", F])])
    graph = parsers.load_onnx(path)
    assert len(graph.nodes) == count + 1 and len({n.name for n in graph.nodes}) == count + 1
    assert "same" in {n.name for n in graph.nodes} and "same_2999" in {n.name for n in graph.nodes}


def test_a_negative_declared_dimension_is_a_malformed_file(tmp_path, capsys):
    path = save(tmp_path, [helper.make_node("Relu", ["x"], ["y"])], [value("x", ["batch", -3, F])],
                [value("y", ["batch", -3, F])])
    refused(path, ModelFileError, "axis 1 has the negative length -3; the file is malformed", capsys=capsys)


def test_duplicate_node_names_are_refused(tmp_path, capsys):
    """onnxruntime refuses such a file ("two nodes with same node name"); unnamed nodes are fine."""
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="twice"), helper.make_node("Neg", ["a"], ["b"]),
             helper.make_node("Sigmoid", ["b"], ["c"]), helper.make_node("Tanh", ["c"], ["y"], name="twice")]
    path = save(tmp_path, nodes, [value("x", ["batch", F])], [value("y", ["batch", F])])
    refused(path, ModelFileError, "two nodes of the graph are named 'twice'", capsys=capsys)
    for node in nodes:
        node.name = ""
    assert len(parsers.load_onnx(save(tmp_path, nodes, [value("x", ["batch", F])], [value("y", ["batch", F])],
                                      name="unnamed")).inputs) == 1


# -- external data confined to the model's folder -----------------------------------------------
def _externalize(tensor: onnx.TensorProto, location: str, **entries: str) -> None:
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.ClearField("int64_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, text in [("location", location), *entries.items()]:
        entry = tensor.external_data.add()
        entry.key, entry.value = key, text


def sparse_constant_model(folder: Path, location: str, **entries: str) -> Path:
    """y = x + c, c a Constant whose sparse_value's values live in external data."""
    values = numpy_helper.from_array(np.array([2.0, -1.0], np.float32), "c_values")
    indices = numpy_helper.from_array(np.array([0, 2], np.int64), "c_indices")
    sparse = helper.make_sparse_tensor(values, indices, [F])
    _externalize(sparse.values, location, **entries)
    nodes = [helper.make_node("Constant", [], ["c"], sparse_value=sparse, name="sparse_const"),
             helper.make_node("Add", ["x", "c"], ["y"], name="add")]
    graph = helper.make_graph(nodes, "g", [value("x", ["batch", F])], [value("y", ["batch", F])])
    path = folder / "sparse.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    return path


def test_sparse_constant_external_data_is_read_from_the_models_folder(tmp_path, monkeypatch):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "sparse.bin").write_bytes(np.array([2.0, -1.0], np.float32).tobytes())
    path = sparse_constant_model(tmp_path / "model", "sparse.bin")
    x = np.zeros((2, F), np.float32)
    (y,) = verifier.evaluate(parsers.load_onnx(path), {"x": x})
    np.testing.assert_array_equal(y, [[2.0, 0.0, -1.0]] * 2)
    # the same name in the working directory but not beside the model: never opened
    (tmp_path / "cwd").mkdir()
    (tmp_path / "cwd" / "elsewhere.bin").write_bytes(np.ones(2, np.float32).tobytes())
    monkeypatch.chdir(tmp_path / "cwd")
    refused(sparse_constant_model(tmp_path / "model", "elsewhere.bin"), ModelFileError, "outside the model's folder")
    refused(sparse_constant_model(tmp_path / "model", "../cwd/elsewhere.bin"), ModelFileError, "outside the model's folder")


def test_external_data_in_subgraph_attributes_is_confined(tmp_path):
    (tmp_path / "outside.bin").write_bytes(np.ones(F, np.float32).tobytes())
    (tmp_path / "model").mkdir()
    bias = numpy_helper.from_array(np.ones(F, np.float32), "bias")
    _externalize(bias, "../outside.bin")
    body = helper.make_graph([helper.make_node("Identity", ["c_in"], ["c_out"]),
                              helper.make_node("Add", ["h_in", "bias"], ["h_out"])], "body",
                             [value("i", [], TensorProto.INT64), value("c_in", [], TensorProto.BOOL),
                              value("h_in", ["batch", F])],
                             [value("c_out", [], TensorProto.BOOL), value("h_out", ["batch", F])], [bias])
    loop = helper.make_node("Loop", ["M", "", "x"], ["h"], body=body, name="loop")
    path = save(tmp_path / "model", [loop], [value("x", ["batch", F])], [value("h", ["batch", F])],
                [numpy_helper.from_array(np.array(2, np.int64), "M")])
    refused(path, ModelFileError, "'bias'", "outside the model's folder")


@pytest.mark.parametrize("entries, fragment", [({"offset": "-4"}, "offset -4 is negative"),
                                               ({"offset": "four"}, "offset 'four' is not an integer"),
                                               ({"length": "-1"}, "length -1 is negative"),
                                               ({"offset": "1000"}, "past the end"),
                                               ({"offset": "8", "length": "100"}, "past the end"),
                                               ({"length": "1e3"}, "not an integer")])
def test_external_data_offsets_and_lengths_are_validated(entries, fragment, tmp_path, capsys):
    weight = np.arange(9, dtype=np.float32).reshape(3, 3)
    (tmp_path / "w.bin").write_bytes(b"\0" * 8 + weight.tobytes())
    tensor = numpy_helper.from_array(weight, "W")
    _externalize(tensor, "w.bin", **entries)
    path = save(tmp_path, [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], [value("x", ["batch", 3])],
                [value("y", ["batch", 3])], [tensor])
    refused(path, ModelFileError, "'W'", fragment, capsys=capsys)


# -- types and values ---------------------------------------------------------------------------
@pytest.mark.parametrize("elem, type_name", [(TensorProto.INT64, "INT64"), (TensorProto.STRING, "STRING"),
                                             (TensorProto.COMPLEX64, "COMPLEX64"), (TensorProto.BOOL, "BOOL")])
def test_non_float_inputs_are_refused_with_the_type(elem, type_name, tmp_path, capsys):
    """The int64 Div model must not be bounded as if it were real (onnxruntime gives 3 // 2 = 1)."""
    nodes = [_const("two", np.array(2, np.int64)), helper.make_node("Div", ["x", "two"], ["y"], name="div")]
    path = save(tmp_path, nodes, [value("x", ["batch", 1], elem)], [value("y", ["batch", 1], elem)])
    refused(path, InputError, "'x'", type_name, "float", capsys=capsys)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_are_refused_naming_the_tensor(bad, tmp_path, capsys):
    weight = np.ones((3, 3), np.float32)
    weight[1, 2] = bad
    path = save(tmp_path, [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], [value("x", ["batch", 3])],
                [value("y", ["batch", 3])], [numpy_helper.from_array(weight, "W")])
    refused(path, ModelFileError, "initializer 'W'", "NaN or infinite", capsys=capsys)
    nodes = [_const("c", weight), helper.make_node("MatMul", ["x", "c"], ["y"], name="mm")]
    path = save(tmp_path, nodes, [value("x", ["batch", 3])], [value("y", ["batch", 3])], name="constant")
    refused(path, ModelFileError, "Constant node 'c'", "NaN or infinite", capsys=capsys)


def test_opset_newer_than_onnx_knows_is_refused(tmp_path, capsys):
    path = save(tmp_path, [helper.make_node("Relu", ["x"], ["y"])], [value("x", ["batch", 3])],
                [value("y", ["batch", 3])], opset=99)
    refused(path, ModelFileError, "opset 99", f"up to {onnx.defs.onnx_opset_version()}", capsys=capsys)


@pytest.mark.parametrize("as_input", [False, True])
def test_initial_state_of_the_wrong_size_is_refused(as_input, tmp_path, capsys):
    rng = np.random.default_rng(1)
    weights = [numpy_helper.from_array(rng.uniform(-1, 1, s).astype(np.float32), n)
               for n, s in (("W", (1, 4 * H, F)), ("R", (1, 4 * H, H)))]
    inputs = [value("x", [5, "batch", F])]
    if as_input:
        inputs.append(value("h0", [1, "batch", H + 1]))
    else:
        weights.append(numpy_helper.from_array(np.zeros((1, 1, H + 1), np.float32), "h0"))
    node = helper.make_node("LSTM", ["x", "W", "R", "", "", "h0"], ["Y", "Y_h"], hidden_size=H, name="lstm")
    path = save(tmp_path, [node], inputs, [value("Y_h", [1, "batch", H])], weights)
    refused(path, UnsupportedOperator, "at node 'lstm'", "initial_h has shape", capsys=capsys)
