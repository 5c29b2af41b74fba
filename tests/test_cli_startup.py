"""The command line answers at once: --help, --version, usage errors and `inspect` import neither
torch, onnxruntime nor matplotlib (each command imports what it uses when it runs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from verifier.errors import PopqornError

MODEL = Path(__file__).resolve().parents[1] / "models_onnx" / "mnist_lstm_t4_h32.onnx"
HEAVY = ("torch", "onnxruntime", "matplotlib")

# Runs the CLI in a fresh interpreter, then reports its exit code and which heavy modules it loaded.
PROBE = """
import json, sys
from verifier.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
print(json.dumps({"code": code, "heavy": [m for m in HEAVY if m in sys.modules]}))
""".replace("HEAVY", repr(HEAVY))


def probe(*argv: str) -> tuple[int, list[str], str]:
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=60, check=False)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return report["code"], report["heavy"], done.stdout + done.stderr


@pytest.mark.parametrize("argv, code", [
    (["--help"], 0),
    (["--version"], 0),
    (["certify", "--help"], 0),
    (["certify"], PopqornError.exit_code),  # missing arguments
    (["bounds", "m.onnx", "--input", "x.npy", "--eps", "1", "--method", "nope"], PopqornError.exit_code),
    (["frobnicate"], PopqornError.exit_code),
    (["inspect", str(MODEL)], 0),
    (["inspect", str(MODEL), "--json"], 0),
])
def test_light_commands_do_not_import_the_engine(argv, code):
    got, heavy, output = probe(*argv)
    assert got == code, output
    assert heavy == [], f"popqorn {' '.join(argv)} imported {heavy}"


def test_usage_errors_are_one_line():
    done = subprocess.run([sys.executable, "-m", "verifier.cli", "certify"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == PopqornError.exit_code
    assert done.stderr.count("\n") == 1 and "required" in done.stderr and "Traceback" not in done.stderr


def test_version_is_the_installed_one(capsys):
    from importlib import metadata

    from verifier.cli import main
    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0
    assert capsys.readouterr().out.strip() == f"popqorn {metadata.version('popqorn')}"


def test_console_entry_exits_fast_with_every_output_written(tmp_path):
    """`popqorn` (verifier.cli:entry) ends the process with os._exit after main(): the table, the
    JSON file and the exit code must all survive that, also when stdout is a pipe."""
    samples = MODEL.with_suffix(".samples.npz")
    out = tmp_path / "r.json"
    done = subprocess.run([sys.executable, "-c", "from verifier.cli import entry; entry()", "certify", str(MODEL),
                           "--input", str(samples), "--limit", "2", "--no-progress", "--json", str(out)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip().splitlines()[-1].startswith("summary: 2 samples")
    assert [row["index"] for row in json.loads(out.read_text())["samples"]] == [0, 1]
    refused = subprocess.run([sys.executable, "-c", "from verifier.cli import entry; entry()", "certify",
                              str(tmp_path / "missing.onnx"), "--input", str(samples)],
                             capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode != 0 and refused.stderr.count("\n") == 1


# The console script with the collector watched: it must be off while torch and the model load and
# back on (with the start-up objects frozen) before any bound is computed.
COLLECTOR = """
import gc, json, sys
import verifier.certify
engine = sys.modules["verifier.certify"]
seen = {}
original = engine.search_radius
def watched(*args, **kwargs):
    seen.update(enabled=gc.isenabled(), frozen=gc.get_freeze_count())
    return original(*args, **kwargs)
engine.search_radius = watched
import atexit
from verifier import cli
sys.argv = ["popqorn", *sys.argv[1:]]
main = cli.main
def reporting_main(argv=None):
    code = main(argv)
    print(json.dumps(seen), file=sys.stderr)
    return code
cli.main = reporting_main
cli.entry()
"""


def test_the_console_script_collects_garbage_once_the_model_is_loaded():
    """cli.entry turns the cyclic collector off for start-up (its full passes over torch's and the
    model's ~10^6 objects took 0.15-0.3 s of a short run); a search must run with it on again."""
    samples = MODEL.with_suffix(".samples.npz")
    done = subprocess.run([sys.executable, "-c", COLLECTOR, "certify", str(MODEL), "--input", str(samples),
                           "--limit", "1", "--no-progress"], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stderr.strip().splitlines()[-1])
    assert seen["enabled"] is True and seen["frozen"] > 100000, seen


def test_a_reader_that_goes_away_is_not_an_internal_error():
    """`popqorn bounds ... | head -1`: the closed pipe ends the command with 141 (as SIGPIPE would),
    without an 'internal error' line."""
    samples = MODEL.with_suffix(".samples.npz")
    command = (f"{sys.executable} -c 'from verifier.cli import entry; entry()' bounds {MODEL} --input {samples} "
               "--eps 0.01 --limit 40 | head -c 10; exit ${PIPESTATUS[0]}")
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 141 and "internal error" not in done.stderr, done.stderr
