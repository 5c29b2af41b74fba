"""`popqorn audit` on a local Ray with two workers: the same rows as `popqorn certify`, a worker
killed mid-batch, an interrupted audit resumed, errors recorded per sample, other audits' journals
refused, and the in-process fallback (with its install hint) when Ray cannot be imported.

One Ray session (2 CPUs) serves the whole module: starting Ray costs seconds on this machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from verifier.cli import main
from verifier.distributed.journal import Journal
from verifier.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models_onnx" / "mnist_rnn_tanh_t4_h32.onnx"
SAMPLES = ROOT / "models_onnx" / "mnist_rnn_tanh_t4_h32.samples.npz"
COUNT = 6
# batch size 1 on both sides: bounds of a batch may still depend on its other samples (tightness issue)
COMMON = ["--input", SAMPLES, "--norm", "2", "--limit", COUNT, "--batch-size", 1, "--no-progress"]


def audit(*argv) -> int:
    return main(["audit", str(MODEL), *[str(a) for a in COMMON], *[str(a) for a in argv]])


def journal_rows(path: Path) -> list[dict]:
    lines = path.read_text().splitlines()
    assert json.loads(lines[0])["popqorn_audit"] == "popqorn-audit/1"
    return [json.loads(line) for line in lines[1:]]


def without_time(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "time_s"} for row in sorted(rows, key=lambda r: r["index"])]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> list[dict]:
    """`popqorn certify` on the same samples."""
    path = tmp_path_factory.mktemp("certify") / "certify.json"
    assert main(["certify", str(MODEL), *[str(a) for a in COMMON], "--json", str(path)]) == 0
    rows = json.loads(path.read_text())["samples"]
    assert len(rows) == COUNT and all(row["radius"] > 0 for row in rows)
    return without_time(rows)


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    import logging
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_two_workers_give_certify_rows_table_and_files(ray_session, reference, tmp_path, capsys):
    out = tmp_path / "audit.jsonl"
    code = audit("--workers", 2, "--out", out, "--json", tmp_path / "r.json", "--csv", tmp_path / "r.csv",
                 "--plot", tmp_path / "r.png")
    printed = capsys.readouterr().out
    assert code == 0
    assert without_time(journal_rows(out)) == reference  # bit-for-bit radii, labels, predictions
    report = json.loads((tmp_path / "r.json").read_text())
    assert without_time(report["samples"]) == reference and report["errors"] == []
    assert report["summary"]["samples"] == COUNT and report["summary"]["errors"] == 0
    assert "sample label pred" in printed and f"summary: {COUNT} samples" in printed
    assert len((tmp_path / "r.csv").read_text().splitlines()) == COUNT + 1
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


def nan_samples(folder: Path, position: int = 2) -> Path:
    """The first COUNT shipped samples, one of them with a NaN."""
    data = np.load(SAMPLES)
    x = data["x"][:COUNT].copy()
    x[position, 1, 5] = np.nan
    np.savez(folder / "nan.npz", x=x, y=data["y"][:COUNT])
    return folder / "nan.npz"


def test_killed_worker_and_failing_sample(ray_session, reference, tmp_path, monkeypatch, capsys):
    """One worker process dies in its first batch (that batch is redone elsewhere); the batch with
    the NaN sample fails, is split, and only that sample is an error row. Batches of 2 here: the
    bounds are batch-independent, so the rows still equal certify's at batch size 1."""
    from verifier.distributed import ray_pool
    marker = tmp_path / "crashed"
    monkeypatch.setenv(ray_pool.CRASH_ONCE_ENV, str(marker))  # the first batch kills its worker process
    out = tmp_path / "audit.jsonl"
    code = main(["audit", str(MODEL), "--input", str(nan_samples(tmp_path)), "--norm", "2", "--batch-size", "2",
                 "--workers", "2", "--no-progress", "--out", str(out)])
    assert code == 1  # finished, with an error to look at
    assert marker.exists()  # a worker really died
    assert "error: sample 2: InputError:" in capsys.readouterr().out
    rows = {row["index"]: row for row in journal_rows(out)}
    assert len(journal_rows(out)) == COUNT and sorted(rows) == list(range(COUNT))  # none lost, none twice
    assert "NaN" in rows[2]["error"] and "radius" not in rows[2]
    assert without_time([rows[k] for k in range(COUNT) if k != 2]) == [r for r in reference if r["index"] != 2]


def test_interrupted_audit_resumes_without_redoing_samples(ray_session, reference, tmp_path, monkeypatch, capsys):
    out = tmp_path / "audit.jsonl"
    append, batches = Journal.append, []

    def append_then_interrupt(self, rows):
        append(self, rows)
        batches.append(rows)
        if len(batches) == 2:
            raise KeyboardInterrupt  # Ctrl-C while the workers are busy

    monkeypatch.setattr(Journal, "append", append_then_interrupt)
    assert audit("--workers", 1, "--out", out) == 130
    monkeypatch.setattr(Journal, "append", append)
    first = journal_rows(out)  # every line complete
    assert len(first) == 2
    assert audit("--workers", 2, "--out", out) == 0
    rows = journal_rows(out)
    assert rows[:2] == first and sorted(row["index"] for row in rows) == list(range(COUNT))
    assert without_time(rows) == reference
    capsys.readouterr()
    assert audit("--workers", 2, "--out", out, "--json") == 0  # all done: nothing is recomputed
    assert journal_rows(out) == rows
    assert without_time(json.loads(capsys.readouterr().out)["samples"]) == reference


def test_cluster_too_small_is_refused(ray_session, tmp_path, capsys):
    assert audit("--workers", 3, "--out", tmp_path / "a.jsonl") == InputError.exit_code
    assert "needs 3 CPUs; the Ray cluster has 2" in capsys.readouterr().err
    assert audit("--gpus-per-worker", 1, "--out", tmp_path / "a.jsonl") == InputError.exit_code
    assert "needs 2 GPUs" in capsys.readouterr().err


def test_failing_sample_in_process_and_other_journals_refused(reference, tmp_path, monkeypatch, capsys):
    """Ray import blocked: a NaN sample is an error row, its batch-mates still get their radius;
    a journal of other samples or another threat model is refused."""
    monkeypatch.setitem(sys.modules, "ray", None)
    nan_samples(tmp_path)
    out = tmp_path / "audit.jsonl"
    argv = ["audit", str(MODEL), "--input", str(tmp_path / "nan.npz"), "--norm", "2", "--batch-size", "3",
            "--no-progress", "--out", str(out)]
    assert main(argv) == 1  # finished, with an error to look at
    printed = capsys.readouterr()
    assert "pip install" in printed.err and "error: sample 2: InputError:" in printed.out
    rows = {row["index"]: row for row in journal_rows(out)}
    assert "NaN" in rows[2]["error"] and "radius" not in rows[2]
    assert without_time([rows[k] for k in range(COUNT) if k != 2]) == [r for r in reference if r["index"] != 2]
    assert main([*argv, "--norm", "inf"]) == InputError.exit_code
    assert "belongs to another audit (norm: '2' there, 'inf' now)" in capsys.readouterr().err
    data = np.load(tmp_path / "nan.npz")
    np.savez(tmp_path / "nan.npz", x=np.nan_to_num(data["x"]), y=data["y"])
    assert main(argv) == InputError.exit_code
    assert "samples_sha256" in capsys.readouterr().err


def test_target_rows_match_certify_in_process(tmp_path, monkeypatch):
    """--target (samples of that class skipped with a reason) gives certify's rows."""
    monkeypatch.setitem(sys.modules, "ray", None)
    argv = ["--input", str(SAMPLES), "--norm", "2", "--limit", "4", "--target", "9", "--batch-size", "2", "--no-progress"]
    assert main(["certify", str(MODEL), *argv, "--json", str(tmp_path / "c.json")]) == 0
    assert main(["audit", str(MODEL), *argv, "--json", str(tmp_path / "a.json"), "--out", str(tmp_path / "a.jsonl")]) == 0
    expected = without_time(json.loads((tmp_path / "c.json").read_text())["samples"])
    assert without_time(json.loads((tmp_path / "a.json").read_text())["samples"]) == expected
    assert any(row.get("skipped") for row in expected) and any(row.get("radius") for row in expected)


def test_graph_that_cannot_travel_is_audited_here(reference, tmp_path, monkeypatch, capsys):
    pytest.importorskip("ray")
    from verifier.distributed import ray_pool

    def refuse(graph):
        raise ray_pool.GraphNotPortable("TypeError: cannot pickle")

    monkeypatch.setattr(ray_pool, "check_portable", refuse)
    assert audit("--out", tmp_path / "a.jsonl", "--json") == 0
    printed = capsys.readouterr()
    assert "cannot be sent to Ray workers (TypeError: cannot pickle)" in printed.err
    report = json.loads(printed.out)
    assert report["run"]["backend"] == "in-process" and without_time(report["samples"]) == reference


def test_journal_on_a_device_or_a_full_disk_is_a_user_error(tmp_path, monkeypatch):
    """Not an endless read of /dev/full's zeros, not an internal error when a write fails."""
    with pytest.raises(InputError, match="not a regular file"):
        Journal.open("/dev/full", {"model": "m"})
    journal = Journal.open(str(tmp_path / "audit.jsonl"), {"model": "m"})

    def full(fd, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(InputError, match="cannot write the audit journal .*No space left on device"):
        journal.append([{"index": 0, "radius": 0.5}])
    monkeypatch.undo()
    journal.close()


def test_torn_last_line_is_dropped_and_redone(tmp_path):
    path = tmp_path / "audit.jsonl"
    journal = Journal.open(str(path), {"model": "m"})
    journal.append([{"index": 0, "radius": 0.5}, {"index": 1, "error": "InputError: x"}])
    journal.close()
    with open(path, "a") as handle:
        handle.write('{"index": 2, "rad')  # a write cut short
    reopened = Journal.open(str(path), {"model": "m"})
    with pytest.raises(InputError, match="being written by another popqorn audit"):
        Journal.open(str(path), {"model": "m"})
    reopened.close()
    assert reopened.dropped_torn_line and sorted(reopened.rows) == [0, 1]
    assert path.read_text().endswith('"error": "InputError: x"}\n')
    with open(path, "a") as handle:
        handle.write("not json\n")
    with pytest.raises(InputError, match=":4: not a line written by popqorn audit"):
        Journal.open(str(path), {"model": "m"})


def test_without_ray_says_how_to_install_and_runs_in_process(reference, tmp_path):
    """Ray is installed here, so its import is blocked in a fresh interpreter."""
    argv = ["audit", str(MODEL), *[str(a) for a in COMMON], "--out", str(tmp_path / "a.jsonl"), "--json"]
    script = "import sys; sys.modules['ray'] = None\nfrom verifier.cli import main\nsys.exit(main(sys.argv[1:]))"
    done = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert 'pip install ".[distributed]"' in done.stderr and "in this process" in done.stderr
    assert without_time(json.loads(done.stdout)["samples"]) == reference
