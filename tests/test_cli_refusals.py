"""Hostile or mistaken command-line input (issue 13): every refusal is one line with a documented
exit code, comes before any work (and before allocating what a file or flag announces), and the
same rule holds in every command."""

from __future__ import annotations

import errno
import io
import json
import os
import sys
import zipfile

import numpy as np
import pytest

from tests.verifier import models
from verifier import ir
from verifier.cli import main
from verifier.commands import samples as sample_files
from verifier.errors import InputError, PopqornError

STEPS, FEATURES = models.STEPS, models.FEATURES


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("refusals")
    path = models.export_torch(models.CellLoop("rnn_tanh"), folder / "rnn.onnx", seed=1)
    x = np.random.default_rng(0).uniform(-1, 1, (3, STEPS, FEATURES)).astype(np.float32)
    np.save(folder / "x.npy", x)
    return folder, path, x


def refused(capsys, *argv, code=InputError.exit_code) -> str:
    got = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert got == code, err
    assert err.startswith("popqorn") and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


@pytest.fixture
def no_work(monkeypatch):
    """Fails the test if the engine or the model loader is reached."""
    import parsers

    def forbidden(*args, **kwargs):
        raise AssertionError("work started before the refusal")
    monkeypatch.setattr(parsers, "load_onnx", forbidden)


@pytest.mark.parametrize("flag, value, message", [
    ("--csv", "missing/r.csv", "does not exist"),
    ("--json", ".", "is a directory"),
    ("--plot", "r.xyz", "unknown format"),
    ("--resume", "missing/log.jsonl", "does not exist"),
    ("--json", "x.npy/r.json", "x.npy is a file, not a folder"),
    ("--csv", "x.npy/sub/r.csv", "x.npy is a file, not a folder"),
])
def test_outputs_are_checked_before_any_work(model, capsys, no_work, flag, value, message, monkeypatch, tmp_path):
    folder, path, _ = model
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.npy").touch()  # a file where an output path needs a folder
    err = refused(capsys, "certify", path, "--input", folder / "x.npy", flag, value)
    assert flag in err and message in err


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("flag", ["--json", "--csv"])
def test_a_write_that_fails_after_the_checks_names_the_file(model, capsys, flag):
    """/dev/full passes every up-front check (root passes os.access on /sys and /proc the same way);
    the failure shows only when the data goes out: a user error, not an internal one (exit 70)."""
    folder, path, _ = model
    err = refused(capsys, "certify", path, "--input", folder / "x.npy", "--limit", "1", "--no-progress", flag, "/dev/full")
    assert f"cannot write {flag} /dev/full: No space left on device" in err


def _fail_writing(*args, **kwargs):
    raise PermissionError(errno.EACCES, "Permission denied")


def test_failing_plot_and_attack_files_are_user_errors(model, capsys, monkeypatch, tmp_path):
    import verifier.plots

    folder, path, _ = model
    monkeypatch.setattr(verifier.plots, "plot_radii", _fail_writing)
    err = refused(capsys, "certify", path, "--input", folder / "x.npy", "--limit", "1", "--plot", tmp_path / "r.png")
    assert "cannot write --plot" in err and "Permission denied" in err
    monkeypatch.setattr(np, "save", _fail_writing)
    err = refused(capsys, "attack", path, "--input", folder / "x.npy", "--limit", "1", "--eps", "0.1",
                  "--out", tmp_path / "a.npy")
    assert "cannot write --out" in err and "Permission denied" in err


class _FullStream(io.StringIO):
    def write(self, text):
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_standard_output_is_a_user_error(model, capsys, monkeypatch):
    folder, path, _ = model
    monkeypatch.setattr(sys, "stdout", _FullStream())
    err = refused(capsys, "bounds", path, "--input", folder / "x.npy", "--eps", "0.1", "--json")
    assert "cannot write to standard output: No space left on device" in err
    assert isinstance(sys.stdout, _FullStream)  # main puts the stream it wrapped back


def test_attack_output_must_be_npy(model, capsys, no_work):
    folder, path, _ = model
    assert ".npy" in refused(capsys, "attack", path, "--input", folder / "x.npy", "--eps", "1", "--out", folder / "a.txt")


@pytest.mark.parametrize("argv, message", [
    (["--device", "tpu"], "--device must be cpu, cuda or cuda:N"),
    (["--threads", "-2"], "--threads"),
    (["--input-shape", "x=1,1000000000,8"], "more than the"),
])
def test_flags_refused_up_front(model, capsys, no_work, argv, message):
    folder, path, _ = model
    assert message in refused(capsys, "certify", path, "--input", folder / "x.npy", *argv)


def test_an_input_shape_given_twice_is_refused(model, capsys, no_work):
    folder, path, _ = model
    err = refused(capsys, "certify", path, "--input", folder / "x.npy", "--input-shape", f"x=1,{STEPS},{FEATURES}",
                  "--input-shape", f"x=1,{STEPS + 1},{FEATURES}")
    assert "--input-shape gives input 'x' twice" in err


def test_optimize_flags_without_alpha_are_named_as_ignored(model, capsys):
    folder, path, _ = model
    base = ["bounds", str(path), "--input", str(folder / "x.npy"), "--limit", "1", "--eps", "0.01"]
    assert main([*base, "--optimize-steps", "5", "--optimize-intermediate", "none"]) == 0
    err = capsys.readouterr().err
    assert "warning: --optimize-steps, --optimize-intermediate apply only to --method alpha; ignored with " \
           "--method crown" in err
    assert main([*base, "--optimize-steps", "5", "--method", "alpha"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_check_samples_are_capped(model, capsys, no_work):
    _, path, _ = model
    assert "--samples" in refused(capsys, "check", path, "--samples", "1000000000")
    with pytest.raises(SystemExit) as exit:  # argparse's own refusal, also one line
        main(["check", str(path), "--samples", "1e9"])
    err = capsys.readouterr().err
    assert exit.value.code == PopqornError.exit_code and "invalid int" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("command", ["certify", "attack"])
@pytest.mark.parametrize("labels, message", [
    (np.array([0.7, 1, 2]), "whole numbers"),
    (np.array(["a", "b", "c"]), "integer class indices"),
    (np.array([0, 1, 9]), "label 9 out of range"),
    (np.eye(3), "one-hot"),
])
def test_one_label_rule_in_every_command(model, capsys, command, labels, message, tmp_path):
    _, path, x = model
    np.savez(tmp_path / "s.npz", x=x, y=labels)
    extra = ["--eps", "0.1"] if command == "attack" else []
    assert message in refused(capsys, command, path, "--input", tmp_path / "s.npz", *extra)


def test_whole_float_labels_are_accepted():
    assert sample_files.check_labels(np.array([1.0, 0.0]), 2, 3).tolist() == [1, 0]


@pytest.mark.parametrize("eps, dtype", [("3e38", "float32"), ("1e308", "float64")])
def test_absurd_radii_are_refused(model, capsys, eps, dtype):
    folder, path, _ = model
    assert f"too large for {dtype}" in refused(capsys, "bounds", path, "--input", folder / "x.npy",
                                               "--eps", eps, "--dtype", dtype)


def _npz_with_header(path, header: dict, data: bytes, compress: bool = True) -> None:
    """An .npz whose 'x' member has this .npy header and these data bytes (possibly lying)."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as archive:
        archive.writestr("x.npy", buffer.getvalue() + data)


def test_npz_members_are_checked_before_allocating(model, capsys, tmp_path, monkeypatch):
    _, path, _ = model
    monkeypatch.setenv("POPQORN_MAX_INPUT_MB", "1")
    # 8 MiB of zeros compress to a few KiB: refused by the budget, never inflated
    _npz_with_header(tmp_path / "bomb.npz", {"descr": "<f4", "fortran_order": False, "shape": (2**21 // 12, 4, 3)},
                     bytes(2**23))
    assert (tmp_path / "bomb.npz").stat().st_size < 100_000
    allocations = []
    monkeypatch.setattr(sample_files.np, "empty", lambda *a, **k: allocations.append(a) or np.zeros(*a, **k))
    err = refused(capsys, "bounds", path, "--input", tmp_path / "bomb.npz", "--eps", "0.1")
    assert "input budget" in err and "POPQORN_MAX_INPUT_MB" in err
    assert all(np.prod(shape[0]) < 2**18 for shape in allocations)  # nothing near the announced size
    # a header that announces more than the member holds
    _npz_with_header(tmp_path / "short.npz", {"descr": "<f4", "fortran_order": False, "shape": (3, 4, 3)}, bytes(40))
    assert "truncated" in refused(capsys, "bounds", path, "--input", tmp_path / "short.npz", "--eps", "0.1")
    # an object array (a pickle) is never loaded
    _npz_with_header(tmp_path / "pickle.npz", {"descr": "|O", "fortran_order": False, "shape": (3,)}, b"\x80\x04N.")
    assert "never pickled" in refused(capsys, "bounds", path, "--input", tmp_path / "pickle.npz", "--eps", "0.1")
    (tmp_path / "junk.npy").write_bytes(b"\x93NUMPY garbage")
    assert "not a valid .npy" in refused(capsys, "bounds", path, "--input", tmp_path / "junk.npy", "--eps", "0.1")


def test_complex_samples_are_refused(model, capsys, tmp_path):
    _, path, x = model
    np.save(tmp_path / "c.npy", x.astype(np.complex64) + 1j)
    assert "complex" in refused(capsys, "certify", path, "--input", tmp_path / "c.npy")


def test_sample_file_messages_name_what_is_wrong(model, capsys, tmp_path):
    _, path, x = model
    (tmp_path / "text.npy").write_text("hello")
    err = refused(capsys, "certify", path, "--input", tmp_path / "text.npy")
    assert "the file is not a valid .npy array" in err and "'array'" not in err
    np.savez(tmp_path / "nox.npz", foo=x)
    err = refused(capsys, "certify", path, "--input", tmp_path / "nox.npz")
    assert "has arrays ['foo']; an .npz input needs 'x' for the perturbed input" in err and "(or 'x')" not in err


def test_arrays_the_model_does_not_read_are_named(model, capsys, tmp_path):
    """An initial state for a model that takes none is not dropped without a word."""
    _, path, x = model
    np.savez(tmp_path / "extra.npz", x=x[:1], h0=np.zeros((1, 4), np.float32))
    assert main(["certify", str(path), "--input", str(tmp_path / "extra.npz"), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "ignoring array(s) ['h0']: this model reads only ['x', 'y']" in err


@pytest.mark.parametrize("content, message", [
    ('[1, 2]\n', "not a --resume entry"),
    ('{"config": {}, "result": {"radius": 1}}\n', "not a --resume entry"),
    ('{"config": {}, "result": {"index": "0"}}\n', "not a --resume entry"),
    ("not json\n", "not a JSON line"),
])
def test_bad_resume_files(model, capsys, tmp_path, content, message):
    folder, path, _ = model
    (tmp_path / "log.jsonl").write_text(content)
    assert message in refused(capsys, "certify", path, "--input", folder / "x.npy", "--resume", tmp_path / "log.jsonl")


def _input(shape, batch_axis=0, frame_axis=1) -> ir.Input:
    return ir.Input("x", shape, batch_axis, frame_axis, "x")


@pytest.mark.parametrize("node, shape, message", [
    (_input((1, 4, 3)), (4, 5, 3), "looks time-major; the model's input 'x' is (N, T=4, F=3) (batch-first)"),
    (_input((4, 1, 3), 1, 0), (5, 4, 3), "looks batch-first; the model's input 'x' is (T=4, N, F=3) (time-major)"),
    (_input((1, 4, 3)), (4, 3), "a single sample without the batch axis"),
    (_input((1, 4, 3)), (5, 4, 2), "axis 2 (features) has 2, expected 3"),
    (_input((1, 4, 3)), (5, 6, 3), "axis 1 (time) has 6, expected 4"),
    (_input((1, 4, 3)), (5, 4, 3, 1), "has 4 axes"),
])
def test_layout_mistakes_name_the_axis(node, shape, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        sample_files.check_layout(node, np.zeros(shape, dtype=np.float32), "x.npy")


def test_dynamic_dimensions_take_any_length():
    node = _input((1, -1, 3))
    assert sample_files.check_layout(node, np.zeros((2, 9, 3)), "x.npy").shape == (2, 9, 3)
    with pytest.raises(InputError, match="features"):
        sample_files.check_layout(node, np.zeros((2, 9, 4)), "x.npy")


def test_usage_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["certify"])
    assert exit.value.code == PopqornError.exit_code
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "required" in err


def test_json_report_of_a_refusal_free_run_keeps_its_fields(model, capsys):
    folder, path, _ = model
    assert main(["bounds", str(path), "--input", str(folder / "x.npy"), "--eps", "0.01", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"lower", "upper", "samples", "eps", "norm", "ball", "frames", "method", "device"} <= set(report)
