"""`popqorn inspect` / `popqorn check`, and untrusted model files refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import parsers
import verifier
from verifier.cli import main
from verifier.errors import InputError, ModelFileError, UnsupportedOperator

MODELS = Path(__file__).resolve().parents[1] / "models_onnx"


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_inspect_reports_cells_inputs_and_outputs(capsys):
    code, out, _ = run(capsys, "inspect", MODELS / "mnist_lstm_t4_h32.onnx", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["cells"][0]["kind"] == "LSTM" and report["cells"][0]["steps"] == 4
    assert report["cells"][0]["hidden_size"] == 32 and report["cells"][0]["input_size"] == 196
    assert report["inputs"][0] == {"name": "x", "shape": [1, 4, 196], "batch_axis": 0, "frame_axis": 1, "frames": 4}
    assert report["outputs"][0]["name"] == "logits" and report["outputs"][0]["dropped"] is None
    code, out, _ = run(capsys, "inspect", MODELS / "mnist_gru_t4_h32.onnx")
    assert code == 0 and "GRU forward, 4 steps" in out


def test_inspect_reports_a_dropped_softmax(tmp_path, capsys):
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["z"]), helper.make_node("Softmax", ["z"], ["p"], axis=-1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
                              [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["batch", 2])],
                              [numpy_helper.from_array(rng.normal(size=(3, 2)).astype(np.float32), "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "s.onnx")
    code, out, _ = run(capsys, "inspect", tmp_path / "s.onnx", "--json")
    assert code == 0 and json.loads(out)["outputs"][0]["dropped"] == "softmax"
    code, out, _ = run(capsys, "check", tmp_path / "s.onnx")
    assert code == 0 and "check passed" in out  # evaluate re-applies the softmax


@pytest.mark.parametrize("name", sorted(p.name for p in MODELS.glob("*.onnx")))
def test_check_passes_on_every_shipped_model(name, capsys):
    code, out, err = run(capsys, "check", MODELS / name, "--samples", "3")
    assert code == 0, out + err


def test_check_reports_a_mismatch(monkeypatch, capsys):
    real = verifier.evaluate
    monkeypatch.setattr(verifier, "evaluate", lambda graph, feeds: [o + 1e-3 for o in real(graph, feeds)])
    code, out, _ = run(capsys, "check", MODELS / "mnist_rnn_tanh_t4_h32.onnx", "--json")
    report = json.loads(out)
    assert code == 1 and not report["ok"] and report["outputs"][0]["max_abs_diff"] > 5e-4


def _tiny_model(tmp_path: Path, op: str = "Relu", **attributes) -> Path:
    node = helper.make_node(op, ["x"], ["y"], name="the_node", **attributes)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])])
    path = tmp_path / f"{op}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_untrusted_files_are_refused_in_one_line(tmp_path, capsys):
    cases = []
    cases.append((tmp_path / "missing.onnx", ModelFileError, "not found"))
    (tmp_path / "garbage.onnx").write_bytes(b"\x08\x07garbage\xff\xfe" * 50)
    cases.append((tmp_path / "garbage.onnx", ModelFileError, "ONNX"))
    good = _tiny_model(tmp_path)
    (tmp_path / "truncated.onnx").write_bytes(good.read_bytes()[:40])
    cases.append((tmp_path / "truncated.onnx", ModelFileError, ""))
    # external data pointing outside the model's folder is refused, never read
    model = onnx.load(str(good))
    weight = numpy_helper.from_array(np.ones((3, 3), np.float32), "w")
    weight.data_location = TensorProto.EXTERNAL
    weight.ClearField("raw_data")
    entry = weight.external_data.add()
    entry.key, entry.value = "location", "../../../etc/passwd"
    model.graph.initializer.append(weight)
    (tmp_path / "sub").mkdir()
    with open(tmp_path / "sub" / "escape.onnx", "wb") as handle:
        handle.write(model.SerializeToString())
    cases.append((tmp_path / "sub" / "escape.onnx", ModelFileError, "outside the model's folder"))
    cases.append((_tiny_model(tmp_path, "Erf"), UnsupportedOperator, "Erf"))
    for path, error, message in cases:
        code, out, err = run(capsys, "inspect", path)
        assert code == error.exit_code, err
        assert err.startswith("popqorn: error:") and message in err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_unsupported_operator_names_op_opset_and_node(tmp_path):
    with pytest.raises(UnsupportedOperator) as info:
        parsers.load_onnx(_tiny_model(tmp_path, "Erf"))
    assert "Erf" in str(info.value) and "17" in str(info.value) and "the_node" in str(info.value)


def test_size_cap(tmp_path):
    with pytest.raises(ModelFileError, match="limit"):
        parsers.load_onnx(MODELS / "mnist_lstm_t4_h32.onnx", max_bytes=1000)


def test_evaluate_refuses_bad_feeds():
    graph = parsers.load_onnx(MODELS / "mnist_rnn_tanh_t4_h32.onnx")
    x = np.zeros((2, 4, 196), np.float32)
    with pytest.raises(InputError, match="missing"):
        verifier.evaluate(graph, {"input": x})
    with pytest.raises(InputError, match="shape"):
        verifier.evaluate(graph, {"x": x[:, :3]})
    with pytest.raises(InputError, match="dtype"):
        verifier.evaluate(graph, {"x": x.astype(np.int64)})
    x[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        verifier.evaluate(graph, {"x": x})
