"""`popqorn certify` and `popqorn bounds` as a user meets them: the table, JSON/CSV/plot outputs,
resuming, and one clear line (no traceback) with a documented exit code for every refusal."""

from __future__ import annotations

import csv
import importlib
import json
from pathlib import Path

import numpy as np
import pytest

from tests.verifier import models
from verifier.cli import main
from verifier.errors import (
    InputError,
    ModelFileError,
    PopqornError,
    UnsupportedOperator,
)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    path = models.export_torch(models.CellLoop("gru"), folder / "gru.onnx", seed=2)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (5, models.STEPS, models.FEATURES)).astype(np.float32)
    np.save(folder / "x.npy", x)
    np.savez(folder / "samples.npz", x=x, y=np.array([0, 1, 2, 0, 1]))
    return folder, path


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_table_summary_and_files(model, capsys):
    folder, path = model
    code, out, err = run(capsys, "certify", path, "--input", folder / "samples.npz", "--norm", "2", "--per-frame",
                         "--csv", folder / "r.csv", "--plot", folder / "r.png", "--json", folder / "r.json",
                         "--limit", "4", "--start", "1")
    assert code == 0, err
    assert "sample label pred" in out and "summary: 4 samples" in out
    report = json.loads((folder / "r.json").read_text())
    assert [s["index"] for s in report["samples"]] == [1, 2, 3, 4]
    assert {"index", "label", "predicted", "radius", "per_frame_radius", "time_s", "misclassified"} <= set(report["samples"][0])
    assert report["norm"] == "2" and report["ball"] == "frame" and report["frames"] == "all"
    assert report["method"] == "crown" and report["dtype"] == "float64"  # the engine's defaults
    assert len(report["samples"][0]["per_frame_radius"]) == models.STEPS
    rows = list(csv.DictReader(open(folder / "r.csv")))
    assert len(rows) == 4 and float(rows[0]["radius"]) == pytest.approx(report["samples"][0]["radius"])
    assert (folder / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_json_on_stdout_is_the_contract(model, capsys):
    folder, path = model
    code, out, _ = run(capsys, "certify", path, "--input", folder / "x.npy", "--norm", "inf", "--json", "--limit", "2",
                       "--frames", "0,2", "--method", "crown")
    assert code == 0
    report = json.loads(out)
    assert set(report) >= {"samples", "norm", "ball", "frames", "method", "device"}
    assert report["frames"] == [0, 2] and report["norm"] == "inf" and report["method"] == "crown"
    assert all(s["radius"] >= 0 for s in report["samples"])


def test_resume_skips_done_samples(model, capsys, monkeypatch):
    folder, path = model
    log = folder / "resume.jsonl"
    code, _, _ = run(capsys, "certify", path, "--input", folder / "x.npy", "--norm", "2", "--limit", "2", "--resume", log)
    assert code == 0 and len(log.read_text().splitlines()) == 2
    engine = importlib.import_module("verifier.certify")  # the module (verifier.certify is also the function)
    calls = []
    original = engine.certify
    monkeypatch.setattr(engine, "certify", lambda graph, x, *a, **k: calls.append(len(x)) or original(graph, x, *a, **k))
    code, out, _ = run(capsys, "certify", path, "--input", folder / "x.npy", "--norm", "2", "--resume", log, "--json")
    assert code == 0 and calls == [3]  # only the three new samples were certified
    assert [s["index"] for s in json.loads(out)["samples"]] == [0, 1, 2, 3, 4]
    code, _, err = run(capsys, "certify", path, "--input", folder / "x.npy", "--norm", "1", "--resume", log)
    assert code == InputError.exit_code and "different options" in err


def test_bounds_json(model, capsys):
    folder, path = model
    code, out, _ = run(capsys, "bounds", path, "--input", folder / "x.npy", "--eps", "0.05", "--norm", "2", "--json")
    assert code == 0
    report = json.loads(out)
    lower, upper = np.array(report["lower"]), np.array(report["upper"])
    assert lower.shape == (5, 3) and (lower <= upper).all()


@pytest.mark.parametrize("case, code, message", [
    ("missing_model", ModelFileError.exit_code, "not found"),
    ("not_onnx", ModelFileError.exit_code, ""),
    ("missing_input", InputError.exit_code, "not found"),
    ("wrong_shape", InputError.exit_code, "shape"),
    ("nan", InputError.exit_code, "NaN"),
    ("negative_eps", InputError.exit_code, "eps"),
    ("bad_norm", InputError.exit_code, "norm"),
    ("frames", InputError.exit_code, "out of range"),
    ("label", InputError.exit_code, "out of range"),
    ("gpu", InputError.exit_code, "cuda"),
    ("tol", InputError.exit_code, "tol"),
])
def test_errors_are_one_line_with_exit_codes(model, capsys, case, code, message, tmp_path):
    folder, path = model
    x = np.load(folder / "x.npy")
    args = ["certify", path, "--input", folder / "x.npy", "--norm", "2"]
    if case == "missing_model":
        args[1] = tmp_path / "nope.onnx"
    elif case == "not_onnx":
        (tmp_path / "junk.onnx").write_bytes(b"\x00garbage, not a protobuf\xff" * 10)
        args[1] = tmp_path / "junk.onnx"
    elif case == "missing_input":
        args[3] = tmp_path / "nope.npy"
    elif case == "wrong_shape":
        np.save(tmp_path / "bad.npy", x[:, :, :2])
        args[3] = tmp_path / "bad.npy"
    elif case == "nan":
        x = x.copy()
        x[0, 0, 0] = np.nan
        np.save(tmp_path / "nan.npy", x)
        args[3] = tmp_path / "nan.npy"
    elif case == "negative_eps":
        args = ["bounds", path, "--input", folder / "x.npy", "--eps", "-0.1"]
    elif case == "bad_norm":
        args[-1] = "3"
    elif case == "frames":
        args += ["--frames", "0,9"]
    elif case == "label":
        np.save(tmp_path / "y.npy", np.array([0, 1, 7, 0, 1]))
        args += ["--labels", tmp_path / "y.npy"]
    elif case == "gpu":
        args += ["--device", "cuda"]
    elif case == "tol":
        args += ["--tol", "2"]
    got, out, err = run(capsys, *args)
    assert got == code, err
    assert err.startswith("popqorn: error:") and message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_help_documents_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for error in (PopqornError, ModelFileError, UnsupportedOperator, InputError):
        assert f"  {error.exit_code}  " in out


def test_attack_command_and_certify_attack(model, capsys):
    folder, path = model
    code, out, err = run(capsys, "attack", path, "--input", folder / "x.npy", "--eps", "2", "--norm", "inf",
                         "--out", folder / "adv.npy", "--json")
    assert code == 0, err
    report = json.loads(out)
    adversarial = np.load(folder / "adv.npy")
    assert adversarial.shape == (report["found"], models.STEPS, models.FEATURES) and report["found"] > 0
    rows = [s["out_row"] for s in report["samples"] if s["found"]]
    assert rows == list(range(report["found"])) and all(s["out_row"] is None for s in report["samples"] if not s["found"])
    code, out, err = run(capsys, "certify", path, "--input", folder / "x.npy", "--norm", "inf", "--limit", "2",
                         "--attack", "--json")
    assert code == 0, err
    report = json.loads(out)
    for sample in report["samples"]:
        assert sample["attack_radius"] is None or sample["attack_radius"] >= sample["radius"]
        assert "unsound" not in sample
    assert "mean_gap" in report["summary"]


def test_labels_source_is_reported(model, capsys):
    folder, path = model
    code, out, _ = run(capsys, "certify", path, "--input", folder / "x.npy", "--limit", "1", "--json")
    assert code == 0 and json.loads(out)["labels"] == "predicted"
    code, out, _ = run(capsys, "certify", path, "--input", folder / "samples.npz", "--limit", "1", "--json")
    assert code == 0 and json.loads(out)["labels"] == "given"
    code, out, _ = run(capsys, "certify", path, "--input", folder / "x.npy", "--limit", "1")
    assert code == 0 and "labels: the model's own predictions" in out.splitlines()[0]
    code, out, _ = run(capsys, "attack", path, "--input", folder / "samples.npz", "--limit", "1", "--eps", "0.01",
                       "--steps", "2", "--restarts", "1", "--json")
    assert code == 0 and json.loads(out)["labels"] == "given"


def test_target_equal_to_the_label_is_skipped_with_a_reason(model, capsys):
    folder, path = model
    _, out, _ = run(capsys, "certify", path, "--input", folder / "x.npy", "--limit", "3", "--json")
    predicted = [row["predicted"] for row in json.loads(out)["samples"]]
    target = predicted[0]
    code, out, err = run(capsys, "certify", path, "--input", folder / "x.npy", "--limit", "3", "--target", target,
                         "--json", "--csv", folder / "t.csv")
    assert code == 0, err
    report = json.loads(out)
    for row, label in zip(report["samples"], predicted):
        if label == target:
            assert row["skipped"] == "label equals --target" and row["radius"] is None and not row["misclassified"]
        else:
            assert "skipped" not in row and row["radius"] > 0
    assert report["summary"]["skipped"] == predicted.count(target) and report["summary"]["misclassified"] == 0
    code, out, _ = run(capsys, "certify", path, "--input", folder / "x.npy", "--limit", "3", "--target", target)
    assert "skipped" in out and f"{predicted.count(target)} skipped (label equals --target)" in out


def test_resume_refuses_changed_samples(model, capsys, tmp_path):
    folder, path = model
    log = tmp_path / "audit.jsonl"
    x = np.load(folder / "x.npy")
    np.save(tmp_path / "x.npy", x)
    code, _, _ = run(capsys, "certify", path, "--input", tmp_path / "x.npy", "--limit", "2", "--resume", log)
    assert code == 0
    x[1, 0, 0] += 0.5
    np.save(tmp_path / "x.npy", x)
    code, _, err = run(capsys, "certify", path, "--input", tmp_path / "x.npy", "--limit", "3", "--resume", log)
    assert code == InputError.exit_code and "sample 1 was recorded for different sample values" in err
    code, out, err = run(capsys, "certify", path, "--input", tmp_path / "x.npy", "--start", "2", "--limit", "1",
                         "--resume", log, "--json")  # the changed sample is not part of this slice
    assert code == 0 and [row["index"] for row in json.loads(out)["samples"]] == [2]
    np.savez(tmp_path / "given.npz", x=x, y=np.zeros(len(x), dtype=np.int64))
    code, _, err = run(capsys, "certify", path, "--input", tmp_path / "given.npz", "--resume", log)
    assert code == InputError.exit_code and "different options" in err  # labels given now, predicted before


def test_resume_refuses_another_model_under_the_same_name(model, capsys, tmp_path):
    """A journal records the model file's sha256: a model retrained (or swapped) in place must not
    inherit the old model's radii (found by a hostile-input sweep: they were reprinted as
    certified, one for a sample the new model misclassifies)."""
    folder, path = model
    log = tmp_path / "resume.jsonl"
    swapped = tmp_path / "model.onnx"
    swapped.write_bytes(Path(path).read_bytes())
    code, _, _ = run(capsys, "certify", swapped, "--input", folder / "x.npy", "--limit", "2", "--resume", log)
    assert code == 0 and '"model_sha256"' in log.read_text()
    models.export_torch(models.CellLoop("gru"), swapped, seed=3)  # other weights, same file name
    code, _, err = run(capsys, "certify", swapped, "--input", folder / "x.npy", "--limit", "2", "--resume", log)
    assert code == InputError.exit_code and "different options" in err and "model_sha256" in err
    code, _, err = run(capsys, "certify", path, "--input", folder / "x.npy", "--limit", "1", "--method", "alpha",
                       "--optimize-steps", "2", "--resume", tmp_path / "alpha.jsonl")
    assert code == 0
    code, _, err = run(capsys, "certify", path, "--input", folder / "x.npy", "--limit", "1", "--method", "alpha",
                       "--optimize-steps", "3", "--resume", tmp_path / "alpha.jsonl")
    assert code == InputError.exit_code and "'steps': 2" in err  # other optimisation settings


def test_bounds_beyond_float32_are_flagged(capsys, tmp_path):
    """Outputs past float32's range: a float32 file computes inf there while the exact (float64)
    bounds are finite; `bounds` says so, as `certify` does, in its warning and JSON."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.full((3, 2), 1e30, np.float32), "w")
    graph = helper.make_graph([helper.make_node("Flatten", ["x"], ["f"], axis=1),
                               helper.make_node("MatMul", ["f", "w"], ["y"])], "big",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "big.onnx")
    np.save(tmp_path / "x.npy", np.array([[[1e9, 1e9, 1e9]], [[1, 1, 1]]], np.float32))
    code, out, err = run(capsys, "bounds", tmp_path / "big.onnx", "--input", tmp_path / "x.npy", "--eps", "0.1", "--json")
    report = json.loads(out)
    assert code == 0 and report["beyond_float32"] == [0] and "samples [0]: bounds beyond float32's range" in err
    assert report["lower"][0][0] == pytest.approx(3e39, rel=1e-6)


def test_alpha_reports_the_float64_it_computes_in(model, capsys):
    folder, path = model
    code, out, err = run(capsys, "certify", path, "--input", folder / "x.npy", "--limit", "1", "--method", "alpha",
                         "--optimize-steps", "1", "--dtype", "float32", "--json")
    assert code == 0 and json.loads(out)["dtype"] == "float64" and "--dtype float32 is ignored" in err


def test_threads_flag(model, capsys):
    import torch
    folder, path = model
    before = torch.get_num_threads()
    try:
        code, _, err = run(capsys, "bounds", path, "--input", folder / "x.npy", "--eps", "0.01", "--threads", "2")
        assert code == 0 and torch.get_num_threads() == 2, err
        code, _, err = run(capsys, "bounds", path, "--input", folder / "x.npy", "--eps", "0.01")
        assert code == 0 and torch.get_num_threads() == 1, err  # the default
    finally:
        torch.set_num_threads(before)


def test_domain_options(model, capsys, tmp_path):
    folder, path = model
    base = ("certify", path, "--input", folder / "x.npy", "--norm", "inf", "--ball", "sequence", "--limit", "2", "--json")
    code, out, _ = run(capsys, *base)
    plain = json.loads(out)
    code, out, _ = run(capsys, *base, "--domain=-1,1")
    clipped = json.loads(out)
    assert code == 0 and clipped["domain"] == {"low": -1.0, "high": 1.0} and plain["domain"] is None
    for before, after in zip(plain["samples"], clipped["samples"]):
        assert after["radius"] >= before["radius"] * (1 - 1e-3)
    np.savez(tmp_path / "range.npz", low=np.full(models.FEATURES, -1.0), high=np.ones(models.FEATURES))
    code, out, _ = run(capsys, *base, "--domain-file", tmp_path / "range.npz")
    assert code == 0 and [s["radius"] for s in json.loads(out)["samples"]] == [s["radius"] for s in clipped["samples"]]
    code, out, _ = run(capsys, "certify", path, "--input", folder / "x.npy", "--limit", "1", "--domain", "0,1")
    assert "domain [0, 1]" in out or code == InputError.exit_code  # samples in [-1, 1]: outside [0, 1] is refused
    for bad, message in (("1,0", "exceeds"), ("0;1", "LOW,HIGH"), ("nan,1", "NaN")):
        code, _, err = run(capsys, *base, "--domain", bad)
        assert code == InputError.exit_code and message in err and err.count("\n") == 1
    code, _, err = run(capsys, "certify", path, "--input", folder / "x.npy", "--domain", "0,0.5", "--limit", "1")
    assert code == InputError.exit_code and "outside the domain" in err


def test_bounds_and_attack_take_the_domain(model, capsys):
    folder, path = model
    code, out, _ = run(capsys, "bounds", path, "--input", folder / "x.npy", "--eps", "0.5", "--domain=-1,1", "--json")
    report = json.loads(out)
    assert code == 0 and report["domain"] == {"low": -1.0, "high": 1.0}
    code, out, _ = run(capsys, "attack", path, "--input", folder / "x.npy", "--eps", "0.5", "--domain=-1,1",
                       "--limit", "2", "--json")
    assert code in (0, 1)


def test_alpha_method_from_the_command_line(model, capsys):
    folder, path = model
    base = ("certify", path, "--input", folder / "x.npy", "--norm", "2", "--limit", "2", "--json")
    crown = json.loads(run(capsys, *base)[1])
    for mode in ("none", "per-bound"):
        code, out, _ = run(capsys, *base, "--method", "alpha", "--optimize-steps", "4", "--optimize-intermediate", mode)
        alpha = json.loads(out)
        assert code == 0 and alpha["method"] == "alpha"
        assert all(a["radius"] >= c["radius"] * (1 - 1e-3) for a, c in zip(alpha["samples"], crown["samples"]))


def test_alpha_mix_ratio_from_the_command_line(model, capsys):
    from verifier.errors import InputError

    folder, path = model
    base = ("certify", path, "--input", folder / "x.npy", "--norm", "2", "--limit", "1", "--json", "--method", "alpha",
            "--optimize-steps", "3")
    code, out, _ = run(capsys, *base, "--optimize-mix-ratio", "5")
    assert code == 0 and json.loads(out)["samples"][0]["radius"] > 0
    for bad in ("0", "nan", "-1"):
        code, _, err = run(capsys, *base, "--optimize-mix-ratio", bad)
        assert code == InputError.exit_code and "--optimize-mix-ratio must be in (0, 1e6)" in err, bad


def test_alpha_joint_planes_switch_from_the_command_line(model, capsys):
    folder, path = model
    base = ("certify", path, "--input", folder / "x.npy", "--norm", "2", "--limit", "2", "--json", "--method", "alpha",
            "--optimize-steps", "3")
    radii = {}
    for switch in ("off", "on"):
        code, out, _ = run(capsys, *base, "--optimize-joint-planes", switch)
        assert code == 0
        radii[switch] = [s["radius"] for s in json.loads(out)["samples"]]
    assert all(r > 0 for r in radii["on"])


def test_a_radius_at_the_search_cap_is_marked(model, capsys):
    """Inputs of 1e30 saturate every gate: the margin hardly depends on the input and the search
    stops at its cap. The radius is certified, but it is not the largest: JSON says "capped"."""
    folder, path = model
    np.save(folder / "huge.npy", np.full((2, models.STEPS, models.FEATURES), 1e30, np.float32))
    code, out, err = run(capsys, "certify", path, "--input", folder / "huge.npy", "--norm", "inf", "--json")
    assert code == 0, err
    samples = json.loads(out)["samples"]
    assert all(s["capped"] is True and s["radius"] >= 1e4 for s in samples)
    code, out, _ = run(capsys, "certify", path, "--input", folder / "huge.npy", "--norm", "inf", "--json",
                       "--method", "alpha", "--optimize-steps", "3")
    assert code == 0 and [s["radius"] for s in json.loads(out)["samples"]] == [s["radius"] for s in samples]
    code, out, _ = run(capsys, "certify", path, "--input", folder / "huge.npy", "--norm", "inf", "--limit", "1")
    assert code == 0 and ">=" in out and "reached the search's cap" in out
    code, out, _ = run(capsys, "certify", path, "--input", folder / "huge.npy", "--limit", "1", "--per-frame")
    assert code == 0 and f"{'>=10000 ' * models.STEPS}".strip() in out  # per-frame radii at the cap too
    code, out, _ = run(capsys, "certify", path, "--input", folder / "x.npy", "--norm", "inf", "--json", "--limit", "2")
    assert not any("capped" in s for s in json.loads(out)["samples"])


def test_values_beyond_float32_are_flagged(model, capsys):
    """At inputs of 3e38 the exact pre-activations leave float32's range: a float32 file computes inf
    or NaN there, so the certificate (of the exact computation) says so."""
    folder, path = model
    x = np.full((1, models.STEPS, models.FEATURES), 3e38, np.float32)
    x[0, ::2] *= -1
    np.save(folder / "overflow.npy", x)
    code, out, err = run(capsys, "certify", path, "--input", folder / "overflow.npy", "--json")
    assert code == 0 and json.loads(out)["samples"][0]["beyond_float32"] > 3.4e38
    assert "exceed float32's range" in err
    code, out, err = run(capsys, "certify", path, "--input", folder / "x.npy", "--json", "--limit", "2")
    assert not any("beyond_float32" in s for s in json.loads(out)["samples"]) and "float32" not in err
