"""Untrusted model files and feeds, through the API and the CLI: every refusal is a
PopqornError with a useful message, and the CLI prints it as one line without a traceback."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import parsers
import verifier
from verifier.cli import main
from verifier.errors import InputError, ModelFileError, UnsupportedOperator

MODELS = Path(__file__).resolve().parents[2] / "models_onnx"


def tiny_model(folder: Path, op: str = "Relu", name: str | None = None, **attributes) -> Path:
    """y = op(x W) on x [batch, 3]; W is an initializer so external-data variants can be built."""
    nodes = [helper.make_node("MatMul", ["x", "W"], ["xw"], name="matmul"),
             helper.make_node(op, ["xw"], ["y"], name="the_node", **attributes)]
    weight = numpy_helper.from_array(np.arange(9, dtype=np.float32).reshape(3, 3) / 10, "W")
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])], [weight])
    path = folder / f"{name or op}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def with_external_weight(folder: Path, location: str, offset: int | None = None) -> Path:
    """The tiny model with W stored as external data at `location` (not checked or written)."""
    model = onnx.load(str(tiny_model(folder)))
    weight = model.graph.initializer[0]
    weight.ClearField("raw_data")
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in [("location", location)] + ([("offset", str(offset))] if offset is not None else []):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    path = folder / "external.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_refused_everywhere(capsys, path: Path, error: type, message: str, **load_kwargs) -> None:
    """The API raises `error` mentioning `message`; `inspect` and `check` exit with its code and
    print exactly one line, no traceback."""
    with pytest.raises(error) as info:
        parsers.load_onnx(path, **load_kwargs)
    assert message in str(info.value)
    if load_kwargs:
        return  # the CLI has no equivalent of these keyword arguments
    for command in ("inspect", "check"):
        code, out, err = run_cli(capsys, command, path)
        assert code == error.exit_code, err
        assert err.startswith("popqorn: error:") and message in err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and not out


def test_missing_file(tmp_path, capsys):
    assert_refused_everywhere(capsys, tmp_path / "missing.onnx", ModelFileError, "not found")


def test_a_folder_is_not_a_model(tmp_path, capsys):
    assert_refused_everywhere(capsys, tmp_path, ModelFileError, "is a directory, not an ONNX model file")


@pytest.mark.skipif(not os.path.exists("/dev/null"), reason="needs /dev/null")
def test_a_device_is_not_a_model(capsys):
    assert_refused_everywhere(capsys, Path("/dev/null"), ModelFileError, "/dev/null is not a regular file")


def test_a_model_in_memory_is_read_like_its_file(tmp_path):
    """load_onnx takes the file's bytes or an onnx.ModelProto too (the loader works on a ModelProto
    anyway); the ModelProto given is left as it was."""
    path = tiny_model(tmp_path, "Softmax", axis=-1)
    model = onnx.load(str(path))
    before = model.SerializeToString()
    from_file = parsers.load_onnx(path)
    x = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    expected = verifier.evaluate(from_file, x)[0]
    for source in (path.read_bytes(), model):
        graph = parsers.load_onnx(source)
        assert repr(graph.nodes) == repr(from_file.nodes) and graph.notes == from_file.notes
        np.testing.assert_array_equal(verifier.evaluate(graph, x)[0], expected)
    assert model.SerializeToString() == before
    with pytest.raises(ModelFileError, match=r"the model \(given as bytes\) is not a readable ONNX model"):
        parsers.load_onnx(b"\x08\x07garbage\xff" * 10)
    external = onnx.load(str(with_external_weight(tmp_path, "w.bin")), load_external_data=False)
    with pytest.raises(ModelFileError, match="keeps its data in an external file; load the model from its path"):
        parsers.load_onnx(external)


@pytest.mark.parametrize("source", [None, 5, [b"\x08"]])
def test_what_is_no_model_is_refused_by_type(source):
    with pytest.raises(ModelFileError, match=f"a path to an .onnx file, its bytes or an onnx.ModelProto, "
                                             f"not {type(source).__name__}"):
        parsers.load_onnx(source)


@pytest.mark.parametrize("function", ["evaluate", "bound_outputs"])
def test_the_engine_refuses_what_is_no_graph(function):
    with pytest.raises(InputError, match=f"{function} takes the verifier.ir.Graph that parsers.load_onnx returns.*"
                                         "not NoneType"):
        getattr(verifier, function)(None, np.zeros((1, 3), np.float32), *([0.1] if function == "bound_outputs" else []))


def test_garbage_bytes(tmp_path, capsys):
    path = tmp_path / "garbage.onnx"
    path.write_bytes(b"\x08\x07garbage\xff\xfe" * 50)
    assert_refused_everywhere(capsys, path, ModelFileError, "ONNX model")


def test_empty_file(tmp_path, capsys):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    assert_refused_everywhere(capsys, path, ModelFileError, "empty graph")


@pytest.mark.parametrize("keep", [40, 150])
def test_truncated_model(keep, tmp_path, capsys):
    good = tiny_model(tmp_path)
    path = tmp_path / "truncated.onnx"
    path.write_bytes(good.read_bytes()[:keep])
    assert_refused_everywhere(capsys, path, ModelFileError, "truncated.onnx")


@pytest.mark.parametrize("location", ["../../../etc/passwd", "/etc/passwd", "../outside.bin", "missing.bin"])
def test_external_data_outside_the_folder_is_refused(location, tmp_path, capsys):
    (tmp_path / "outside.bin").write_bytes(np.ones(9, np.float32).tobytes())
    (tmp_path / "sub").mkdir()
    path = with_external_weight(tmp_path / "sub", location)
    assert_refused_everywhere(capsys, path, ModelFileError, "outside the model's folder")


def test_external_data_through_a_symlink_out_of_the_folder_is_refused(tmp_path, capsys):
    (tmp_path / "outside.bin").write_bytes(np.ones(9, np.float32).tobytes())
    (tmp_path / "sub").mkdir()
    os.symlink(tmp_path / "outside.bin", tmp_path / "sub" / "weights.bin")
    path = with_external_weight(tmp_path / "sub", "weights.bin")
    assert_refused_everywhere(capsys, path, ModelFileError, "outside the model's folder")


def test_external_data_inside_the_folder_is_read(tmp_path):
    """The positive control: the refusals above are about the location, not external data as such."""
    weight = np.arange(9, dtype=np.float32).reshape(3, 3) / 10
    (tmp_path / "weights.bin").write_bytes(b"\0" * 8 + weight.tobytes())
    graph = parsers.load_onnx(with_external_weight(tmp_path, "weights.bin", offset=8))
    x = np.array([[1.0, -2.0, 0.5]], np.float32)
    (y,) = verifier.evaluate(graph, {"x": x})
    np.testing.assert_allclose(y, np.maximum(x.astype(np.float64) @ weight, 0), atol=1e-6)


def test_size_cap_counts_the_file_and_its_external_data(tmp_path):
    with pytest.raises(ModelFileError, match="limit"):
        parsers.load_onnx(MODELS / "mnist_lstm_t4_h32.onnx", max_bytes=1000)
    (tmp_path / "weights.bin").write_bytes(np.zeros(10_000, np.float32).tobytes())
    path = with_external_weight(tmp_path, "weights.bin")
    size = path.stat().st_size
    with pytest.raises(ModelFileError, match="external data exceeds"):
        parsers.load_onnx(path, max_bytes=size + 100)


def test_checker_failure(tmp_path, capsys):
    model = onnx.load(str(tiny_model(tmp_path)))
    model.graph.node[1].input[0] = "never_defined"
    path = tmp_path / "broken.onnx"
    path.write_bytes(model.SerializeToString())
    assert_refused_everywhere(capsys, path, ModelFileError, "fails onnx.checker")


def test_a_tensor_nothing_defines_names_the_node_that_reads_it(tmp_path, capsys):
    """onnx.checker names the node on a second line; only the first used to be shown."""
    model = onnx.load(str(tiny_model(tmp_path)))
    model.graph.node[1].input[0] = "ghost"
    path = tmp_path / "ghost.onnx"
    path.write_bytes(model.SerializeToString())
    assert_refused_everywhere(capsys, path, ModelFileError, "fails onnx.checker: node 'the_node' (Relu) reads 'ghost', "
                              "which no graph input, initializer or earlier node defines")


def test_unsupported_operator_names_op_opset_and_node(tmp_path, capsys):
    path = tiny_model(tmp_path, "Erf")
    assert_refused_everywhere(capsys, path, UnsupportedOperator, "unsupported operator Erf (opset 17) at node 'the_node'")


def test_unsupported_attribute_value_names_the_node(tmp_path, capsys):
    # a custom-domain op: nothing popqorn can convert, refused with the domain named
    model = onnx.load(str(tiny_model(tmp_path)))
    model.graph.node[1].domain = "com.example"
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    path = tmp_path / "custom.onnx"
    path.write_bytes(model.SerializeToString())
    assert_refused_everywhere(capsys, path, UnsupportedOperator, "Relu (domain 'com.example', opset 1) at node 'the_node'")


@pytest.mark.parametrize("weight, element", [
    (helper.make_tensor("W", TensorProto.STRING, [3, 3], [b"a"] * 9), "STRING"),
    (numpy_helper.from_array(np.ones((3, 3), np.complex64), "W"), "COMPLEX64"),
])
def test_non_real_weights_name_the_node_and_the_element_type(weight, element, tmp_path, capsys):
    """A STRING initializer reached the MatMul converter and ended as an internal error (exit 70).
    ONNX's type inference rejects the file (exit 3); the converter itself refuses such an input by
    name too (convert_model runs no type inference)."""
    model = onnx.load(str(tiny_model(tmp_path)))
    model.graph.initializer[0].CopyFrom(weight)
    path = tmp_path / f"{element}.onnx"
    path.write_bytes(model.SerializeToString())
    assert_refused_everywhere(capsys, path, ModelFileError, f"unsupported type: tensor({element.lower()})")
    with pytest.raises(UnsupportedOperator, match=f"MatMul \\(opset 17\\) at node 'matmul': input 'W' has element "
                                                  f"type {element}"):
        parsers.convert_model(parsers.read_model(path))


def test_weights_of_the_wrong_shape_make_a_malformed_file(tmp_path, capsys):
    """The MatMul converter refused it as an unsupported operator (exit 4); ONNX rejects the file."""
    model = onnx.load(str(tiny_model(tmp_path)))
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.ones((2, 2), np.float32), "W"))
    path = tmp_path / "wrong_shape.onnx"
    path.write_bytes(model.SerializeToString())
    assert_refused_everywhere(capsys, path, ModelFileError, "fails ONNX type and shape inference")
    with pytest.raises(UnsupportedOperator, match="do not multiply"):
        parsers.convert_model(parsers.read_model(path))


def test_dynamic_shapes_are_taken_from_the_feeds_or_an_input_shape(tmp_path, capsys):
    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "time", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "time", 3])])
    path = tmp_path / "dynamic.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    symbolic = parsers.load_onnx(path)
    assert symbolic.specializer is not None and symbolic.inputs[0].shape == (1, -1, 3) and not symbolic.outputs
    x = np.linspace(-1, 1, 2 * 5 * 3, dtype=np.float32).reshape(2, 5, 3)
    (y,) = verifier.evaluate(symbolic, {"x": x})
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    with pytest.raises(InputError, match="dynamic dimension"):
        verifier.evaluate(symbolic, {})
    code, out, err = run_cli(capsys, "inspect", path, "--input-shape", "x=1,4,3")
    assert code == 0 and "shape ['N', 4, 3]" in out
    code, out, err = run_cli(capsys, "check", path, "--input-shape", "x=1,4,3", "--samples", "2")
    assert code == 0 and "check passed" in out
    for bad, message in [("x=1,four,3", "NAME=d0,d1"), ("x", "NAME=d0,d1"), ("x=1,0,3", "NAME=d0,d1"),
                         ("x=1,4", "does not fit"), ("y=1,4,3", "names ['y']")]:
        code, out, err = run_cli(capsys, "inspect", path, "--input-shape", bad)
        assert code == InputError.exit_code and message in err, (bad, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_evaluate_refuses_bad_feeds():
    graph = parsers.load_onnx(MODELS / "mnist_rnn_tanh_t4_h32.onnx")
    x = np.zeros((2, 4, 196), np.float32)
    with pytest.raises(InputError, match="missing"):
        verifier.evaluate(graph, {"input": x})
    with pytest.raises(InputError, match="shape"):
        verifier.evaluate(graph, {"x": x[:, :3]})
    with pytest.raises(InputError, match="shape"):
        verifier.evaluate(graph, {"x": x[0]})
    with pytest.raises(InputError, match="dtype"):
        verifier.evaluate(graph, {"x": x.astype(np.int64)})
    for bad in (np.nan, np.inf):
        poisoned = x.copy()
        poisoned[1, 3, 5] = bad
        with pytest.raises(InputError, match="NaN"):
            verifier.evaluate(graph, {"x": poisoned})


def test_check_refuses_bad_sample_files(tmp_path, capsys):
    model = MODELS / "mnist_rnn_tanh_t4_h32.onnx"
    np.save(tmp_path / "short.npy", np.zeros((2, 3, 196), np.float32))
    np.savez(tmp_path / "nox.npz", y=np.zeros(2))
    nan = np.zeros((2, 4, 196), np.float32)
    nan[0, 0, 0] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    (tmp_path / "pickle.npy").write_bytes(b"\x93NUMPY garbage")
    for name, message in [("short.npy", "shape"), ("nox.npz", "needs 'x'"), ("nan.npy", "NaN"),
                          ("missing.npy", "not found"), ("pickle.npy", "cannot read"), ("data.txt", ".npy or .npz")]:
        code, _, err = run_cli(capsys, "check", model, "--input", tmp_path / name)
        assert code == InputError.exit_code and message in err, (name, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
