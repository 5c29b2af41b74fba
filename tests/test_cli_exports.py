"""The command line on models exported the usual ways (issue 12): a symbolic time axis taken from
--input, a fixed batch baked into the file, an initial state fed as a second input, a float16
input. Results are compared with the engine called directly on the same values."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import parsers
import verifier
from tests import cli_models
from verifier.cli import main
from verifier.errors import InputError


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("exports")


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def symbolic(folder):
    path = cli_models.symbolic_time(folder / "time.onnx")
    np.save(folder / "t6.npy", cli_models.samples(3, steps=6))
    return path


def test_time_axis_from_the_samples(symbolic, capsys):
    folder = symbolic.parent
    code, out, err = run(capsys, "certify", symbolic, "--input", folder / "t6.npy", "--norm", "2", "--json",
                         "--tol", "0.1", "--dtype", "float64", "--method", "popqorn")
    assert code == 0, err
    radii = [row["radius"] for row in json.loads(out)["samples"]]
    fixed = parsers.load_onnx(symbolic, input_shapes={"x": (1, 6, cli_models.FEATURES)})
    search = verifier.SearchOptions(method="popqorn", tol=0.1)
    expected = verifier.certify(fixed, np.load(folder / "t6.npy"), 2.0, options=search, dtype=torch.float64)
    assert radii == pytest.approx([r.radius for r in expected], rel=1e-6) and min(radii) > 0
    code, out, err = run(capsys, "bounds", symbolic, "--input", folder / "t6.npy", "--eps", "0.01", "--json")
    assert code == 0, err
    assert np.array(json.loads(out)["lower"]).shape == (3, cli_models.CLASSES)
    code, out, err = run(capsys, "check", symbolic, "--input", folder / "t6.npy")
    assert code == 0 and "check passed" in out, err


def test_a_still_missing_length_names_the_flag(symbolic, capsys):
    code, out, _ = run(capsys, "inspect", symbolic)
    assert code == 0 and "dynamic length" in out and "--input-shape x=1,<T>,3" in out
    code, _, err = run(capsys, "check", symbolic)
    assert code == InputError.exit_code and "--input-shape x=1,<T>,3" in err
    node = parsers.load_onnx(symbolic).inputs[0]
    from verifier.commands import options
    assert options.shape_from_size(node, 6 * cli_models.FEATURES) == (1, 6, cli_models.FEATURES)
    with pytest.raises(InputError, match="--input-shape x=1,<T>,3"):
        options.shape_from_size(node, 7)


def test_fixed_batch_export_attacks_in_chunks(folder, capsys):
    path = cli_models.fixed_batch(folder / "fixed.onnx")
    np.save(folder / "x.npy", cli_models.samples(3))
    code, out, err = run(capsys, "attack", path, "--input", folder / "x.npy", "--eps", "2", "--json",
                         "--steps", "20", "--restarts", "2", "--out", folder / "adv.npy")
    assert code == 0, err
    report = json.loads(out)
    assert report["found"] > 0 and np.load(folder / "adv.npy").shape[0] == report["found"]
    code, out, err = run(capsys, "certify", path, "--input", folder / "x.npy", "--limit", "2", "--attack", "--json")
    assert code == 0, err
    for row in json.loads(out)["samples"]:
        assert row["attack_radius"] is None or row["attack_radius"] >= row["radius"] > 0
    code, out, err = run(capsys, "check", path, "--samples", "3")
    assert code == 0 and "check passed" in out, err


def test_initial_state_from_the_npz(folder, capsys):
    path = cli_models.with_initial_state(folder / "h0.onnx")
    x = cli_models.samples(3)
    h0 = np.random.default_rng(1).uniform(-1, 1, (1, 3, cli_models.HIDDEN)).astype(np.float32)
    np.savez(folder / "h0.npz", x=x, h0=h0)
    code, out, err = run(capsys, "certify", path, "--input", folder / "h0.npz", "--norm", "2", "--json",
                         "--start", "1", "--tol", "0.1", "--dtype", "float64", "--method", "popqorn")
    assert code == 0, err
    radii = [row["radius"] for row in json.loads(out)["samples"]]
    graph = parsers.load_onnx(path)
    search = verifier.SearchOptions(method="popqorn", tol=0.1)
    expected = verifier.certify(graph, {"x": x[1:], "h0": h0[:, 1:]}, 2.0, options=search, dtype=torch.float64)
    assert radii == pytest.approx([r.radius for r in expected], rel=1e-6)
    np.save(folder / "x_only.npy", x)
    code, _, err = run(capsys, "certify", path, "--input", folder / "x_only.npy")
    assert code == InputError.exit_code and "'h0' (1, N, 5)" in err and "under those names" in err
    np.savez(folder / "h0_short.npz", x=x, h0=h0[:, :2])
    code, _, err = run(capsys, "bounds", path, "--input", folder / "h0_short.npz", "--eps", "0.1")
    assert code == InputError.exit_code and "different numbers of samples" in err
    code, out, err = run(capsys, "check", path, "--input", folder / "h0.npz")
    assert code == 0 and "check passed" in out, err


def test_float16_input_model(folder, capsys):
    path = cli_models.float16_input(folder / "half.onnx")
    np.save(folder / "x16.npy", cli_models.samples(4))
    code, out, err = run(capsys, "check", path)
    assert code == 0 and "check passed" in out, err
    code, out, err = run(capsys, "attack", path, "--input", folder / "x16.npy", "--eps", "3", "--json",
                         "--steps", "20", "--restarts", "2", "--out", folder / "adv16.npy")
    assert code == 0, err
    report = json.loads(out)
    adversarial = np.load(folder / "adv16.npy")
    assert report["found"] > 0 and adversarial.shape[0] == report["found"]
    assert np.array_equal(adversarial, adversarial.astype(np.float16).astype(np.float64))  # the point the file saw


def test_weights_fed_as_inputs_from_the_npz(folder, capsys):
    """Every ONNX conformance case feeds W, R, B as inputs: read from the .npz by name, folded by
    the front end, and still fed to onnxruntime when a counterexample is validated."""
    import onnx
    from onnx import TensorProto, helper
    steps, features, hidden = cli_models.STEPS, cli_models.FEATURES, cli_models.HIDDEN
    shapes = {"W": (1, 4 * hidden, features), "R": (1, 4 * hidden, hidden), "B": (1, 8 * hidden)}
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [steps, "batch", features])]
    inputs += [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)) for name, shape in shapes.items()]
    graph = helper.make_graph([helper.make_node("LSTM", ["x", "W", "R", "B"], ["", "Y_h"], hidden_size=hidden)], "g",
                              inputs, [helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, [1, "batch", hidden])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), folder / "fed.onnx")
    rng = np.random.default_rng(0)
    arrays = {name: rng.uniform(-0.8, 0.8, shape).astype(np.float32) for name, shape in shapes.items()}
    np.savez(folder / "fed.npz", x=rng.uniform(-1, 1, (steps, 2, features)).astype(np.float32), **arrays)
    code, out, err = run(capsys, "check", folder / "fed.onnx", "--input", folder / "fed.npz")
    assert code == 0 and "check passed" in out, err
    code, out, err = run(capsys, "attack", folder / "fed.onnx", "--input", folder / "fed.npz", "--eps", "2", "--json",
                         "--steps", "20", "--restarts", "2")
    assert code == 0 and json.loads(out)["found"] > 0, err
