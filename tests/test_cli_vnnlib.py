"""`popqorn vnnlib` as VNN-COMP runs it: the wall clock of a whole process on a property that
cannot be decided in time, result files, errors with their exit codes, `--prepare`, instance
lists (one result file per row, a summary CSV) and the run_instance.sh / prepare_instance.sh
scripts."""

from __future__ import annotations

import csv
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from parsers.errors import BatchLayoutError, ConstantRequired, ConverterBug
from verifier.cli import main
from verifier.errors import InputError, ModelFileError, UnsupportedOperator

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models_onnx" / "digits_lstm_t8_h16.onnx"
FIXTURES = ROOT / "tests" / "fixtures" / "vnnlib"
SCRIPTS = ROOT / "verifier" / "vnnlib" / "vnncomp"
UNFIT = "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= X_0 1.0))\n(assert (>= X_0 0.0))\n(assert (>= Y_0 0.0))\n"


def test_timeout_is_kept_in_wall_time_from_process_start(tmp_path):
    timeout = 2.0
    out = tmp_path / "result.txt"
    begin = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "verifier.cli", "vnnlib", str(MODEL),
                           str(FIXTURES / "digits_lstm_hard_v1.vnnlib"), "--timeout", str(timeout), "--out", str(out)],
                          capture_output=True, text=True, timeout=60, check=False)
    wall = time.perf_counter() - begin
    assert done.returncode == 0, done.stderr
    assert done.stdout == "timeout\n" and out.read_text() == "timeout\n"
    assert wall <= timeout + 1.0, f"answered after {wall:.2f} s"


def test_result_file_and_prepare(tmp_path, capsys):
    out = tmp_path / "result.txt"
    code = main(["vnnlib", str(MODEL), str(FIXTURES / "digits_lstm_robust_v2.vnnlib"), "--out", str(out),
                 "--timeout", "120"])
    assert code == 0 and out.read_text() == "unsat\n" and capsys.readouterr().out == "unsat\n"
    code = main(["vnnlib", str(MODEL), str(FIXTURES / "digits_lstm_robust_v1.vnnlib"), "--prepare"])
    assert code == 0 and capsys.readouterr().out.startswith("ok: ")
    unfit = tmp_path / "unfit.vnnlib"
    unfit.write_text(UNFIT)
    code = main(["vnnlib", str(MODEL), str(unfit), "--prepare"])
    assert code == InputError.exit_code and "64 elements" in capsys.readouterr().err
    code = main(["vnnlib", str(MODEL), str(unfit), "--out", str(tmp_path / "missing" / "r.txt")])
    assert code == InputError.exit_code and "does not exist" in capsys.readouterr().err


def test_a_refusal_in_the_worker_keeps_its_class_and_message(tmp_path, capsys):
    """The model is read in a worker process; its refusal (here an unsupported op) must reach the
    user as in any other command: exit 4, op and node named, not an internal error."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((4, 2), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Erf", ["x"], ["e"], name="the_erf"),
                               helper.make_node("MatMul", ["e", "w"], ["y"])], "erf",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], [weight])
    model = tmp_path / "erf.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model)
    prop = tmp_path / "p.vnnlib"
    prop.write_text("".join(f"(declare-const X_{k} Real)\n" for k in range(4))
                    + "(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"
                    + "".join(f"(assert (<= X_{k} 1.0))\n(assert (>= X_{k} 0.0))\n" for k in range(4))
                    + "(assert (>= Y_1 Y_0))\n")
    code = main(["vnnlib", str(model), str(prop), "--timeout", "60"])
    err = capsys.readouterr().err
    assert code == UnsupportedOperator.exit_code, err
    assert "unsupported operator Erf" in err and "the_erf" in err and "internal error" not in err


def test_errors_survive_pickling():
    """Worker processes (vnnlib, audit) send errors and parsed graphs back by pickling."""
    cases = [UnsupportedOperator("Erf", 17, "n", "why"), BatchLayoutError("Reshape", 13, "r"),
             ConverterBug("Gemm", "g", ValueError("bad")), ConstantRequired("w", "LSTM", "l", "its weights"),
             InputError("x"), ModelFileError("y")]
    for error in cases:
        again = pickle.loads(pickle.dumps(error))
        assert type(again) is type(error) and str(again) == str(error) and again.__dict__ == error.__dict__


def test_instance_list(tmp_path, capsys):
    folder = tmp_path / "benchmark"
    (folder / "onnx").mkdir(parents=True)
    (folder / "vnnlib").mkdir()
    (folder / "onnx" / "lstm.onnx").write_bytes(MODEL.read_bytes())
    for name in ("robust_v1", "fragile_v2", "hard_v1"):
        (folder / "vnnlib" / f"{name}.vnnlib").write_text((FIXTURES / f"digits_lstm_{name}.vnnlib").read_text())
    (folder / "vnnlib" / "unfit.vnnlib").write_text(UNFIT)
    (folder / "instances.csv").write_text("onnx/lstm.onnx,vnnlib/robust_v1.vnnlib,60\n"
                                          "onnx/lstm.onnx,vnnlib/fragile_v2.vnnlib,60\n"
                                          "onnx/lstm.onnx,vnnlib/hard_v1.vnnlib,1.5\n"
                                          "onnx/lstm.onnx,vnnlib/unfit.vnnlib,60\n"
                                          "onnx/missing.onnx,vnnlib/robust_v1.vnnlib,60\n")
    code = main(["vnnlib", "--instances", str(folder / "instances.csv")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "5 instances: error 2, sat 1, timeout 1, unsat 1" in captured.out
    assert "5/5" in captured.err  # the progress bar
    with open(folder / "results" / "summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["result"] for row in rows] == ["unsat", "sat", "timeout", "error", "error"]
    assert float(rows[2]["time_s"]) <= 1.5 + 1.0
    assert "64 elements" in rows[3]["detail"] and "missing.onnx" in rows[4]["detail"]
    texts = [Path(row["result_file"]).read_text() for row in rows]
    assert texts[0] == "unsat\n" and texts[1].startswith("sat\n((X_0 ") and texts[2] == "timeout\n"


def test_vnncomp_scripts(tmp_path):
    environment = {**os.environ, "POPQORN": f"{sys.executable} -m verifier.cli"}
    prepare = subprocess.run(["bash", str(SCRIPTS / "prepare_instance.sh"), "v1", "digits", str(MODEL),
                              str(FIXTURES / "digits_lstm_fragile_v1.vnnlib")], capture_output=True, text=True,
                             timeout=120, check=False, env=environment)
    assert prepare.returncode == 0, prepare.stderr
    unfit, out = tmp_path / "unfit.vnnlib", tmp_path / "result.txt"
    unfit.write_text(UNFIT)
    run = subprocess.run(["bash", str(SCRIPTS / "run_instance.sh"), "v1", "digits", str(MODEL), str(unfit), str(out), "60"],
                         capture_output=True, text=True, timeout=120, check=False, env=environment)
    assert run.returncode == 0 and out.read_text() == "error\n"  # the worker's refusal, exit code 5, then `error`
    assert "64 elements" in run.stderr


def test_an_empty_input_set_is_unsat_with_a_note(tmp_path, capsys):
    """Every input box empty (a low bound above its high bound): 'unsat' is true but vacuous, and the
    user is told so on stderr; stdout keeps VNN-COMP's one-word answer."""
    text = (FIXTURES / "digits_lstm_robust_v1.vnnlib").read_text()
    lines = text.splitlines()
    first = next(k for k, line in enumerate(lines) if line.startswith("(assert (<= X_0 "))
    lines[first] = "(assert (<= X_0 -1000.0))"
    empty = tmp_path / "empty.vnnlib"
    empty.write_text("\n".join(lines) + "\n")
    code = main(["vnnlib", str(MODEL), str(empty), "--timeout", "60"])
    captured = capsys.readouterr()
    assert code == 0 and captured.out == "unsat\n" and "holds vacuously" in captured.err
    assert "every input box is empty" in captured.err


def test_a_constant_false_assert_is_named_not_called_an_empty_box(tmp_path, capsys):
    """An output assert that can never hold ((<= 1 0)) empties the unsafe set; the note says which
    line did it, not that the input boxes are empty (vnnlib sweep)."""
    text = (FIXTURES / "digits_lstm_robust_v1.vnnlib").read_text().rstrip("\n") + "\n(assert (<= 1 0))\n"
    false = tmp_path / "false.vnnlib"
    false.write_text(text)
    code = main(["vnnlib", str(MODEL), str(false), "--timeout", "60"])
    captured = capsys.readouterr()
    line = len(text.splitlines())
    assert code == 0 and captured.out == "unsat\n" and "holds vacuously" in captured.err
    assert f"an assert on line {line} is always false" in captured.err and "input box" not in captured.err
