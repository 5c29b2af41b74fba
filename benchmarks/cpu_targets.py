"""The CPU figures of the speed issue, measured through the command line as a user runs it (start-up
included), for this tree and optionally an older checkout in the same run:

    python -m benchmarks.cpu_targets --out benchmarks/results/cpu_targets.json \
        [--before /path/to/older/checkout]        # e.g. `git worktree add /tmp/base 86c1f5d`
        [--repeats 3] [--only popqorn_rnn,digits]   # a subset: figures whose name starts so

  * `popqorn --help` and `popqorn inspect` of a shipped model (target <= 0.5 s);
  * one bound call of an LSTM with H=64, T=16, 28 features (target <= 1 s);
  * the shipped digits LSTM (T=8, H=16), 5 samples, l_inf ball over the whole sequence (target <= 5 s;
    with --method alpha, the tightness issue's target <= 10 s; also --optimize-intermediate per-row);
  * a vanilla RNN shaped like POPQORN's own (T=7, 112 inputs, H=64, tanh; trained here for two epochs
    on sequence-MNIST), 10 samples, per-frame l2 and l_inf balls (target <= 2 s each), and the same
    without start-up (the certification's own work, in one interpreter, best of 6).
Every figure is the median of --repeats runs (spread reported); with --before the two trees take
turns run by run, so both see the same machine load. All runs use one thread
(OMP_NUM_THREADS=1), the default of the current CLI; older checkouts had no --threads option.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
# the console script's entry point (fast exit), or main() in trees that predate it
CLI = """import sys
try:
    from verifier.cli import entry
except ImportError:
    from verifier.cli import main
    entry = lambda: sys.exit(main(sys.argv[1:]))
entry()"""
BOUND_CALL = """
import sys, time, numpy as np, torch
import parsers
from verifier.bounds import make_batch, relaxer_for
from verifier.certify import margin_spec, margin_lower_bounds
from verifier.threat import ThreatModel
graph = parsers.load_onnx(sys.argv[1])
x = np.random.default_rng(0).uniform(0, 1, (1, 16, 28)).astype(np.float32)
batch = make_batch(graph, x, dtype=getattr(torch, sys.argv[3]))
graph = getattr(batch, "graph", graph)
spec = margin_spec(torch.zeros(1, dtype=torch.long), 10, None)
eps = torch.full((1,), 0.01, dtype=batch.center.dtype)
times = []
for _ in range(3):
    start = time.perf_counter()
    with torch.no_grad():
        margin_lower_bounds(graph, batch, eps, ThreatModel(2.0, "frame"), spec, relaxer_for(sys.argv[2]), graph.outputs[0].node)
    times.append(time.perf_counter() - start)
print(min(times))
"""


IN_PROCESS = """
import contextlib, io, sys, time
from verifier.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    main(sys.argv[1:])
    times = []
    for _ in range(3):
        start = time.perf_counter()
        main(sys.argv[1:])
        times.append(time.perf_counter() - start)
print(min(times))
"""


def _env(tree: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _timed(trees: dict[str, Path], args: list[str], repeats: int) -> dict[str, dict]:
    """Median wall time of a CLI command run in a fresh interpreter on each tree. The trees take
    turns run by run, in alternating order, so that a change of machine load between the trees'
    runs (this machine is shared) cannot pass for a change of speed."""
    times: dict[str, list[float]] = {name: [] for name in trees}
    failed: dict[str, dict] = {}
    for k in range(repeats):
        for name in (list(trees) if k % 2 == 0 else list(reversed(trees))):
            if name in failed:
                continue
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", CLI, *args], env=_env(trees[name]), cwd=trees[name],
                                  capture_output=True, text=True)
            times[name].append(time.perf_counter() - start)
            if done.returncode != 0:
                failed[name] = {"error": (done.stderr.strip().splitlines() or ["?"])[-1], "exit": done.returncode}
    return {name: failed.get(name) or {"median_s": statistics.median(t), "spread_s": max(t) - min(t), "runs": len(t)}
            for name, t in times.items()}


def _bound_call(trees: dict[str, Path], model: Path, method: str, dtype: str) -> dict[str, dict]:
    """Best of 3 bound calls in one interpreter per tree, twice per tree in alternating order."""
    best: dict[str, float] = {}
    for name in [*trees, *reversed(trees)]:
        done = subprocess.run([sys.executable, "-c", BOUND_CALL, str(model), method, dtype], env=_env(trees[name]),
                              cwd=trees[name], capture_output=True, text=True)
        if done.returncode != 0:
            return {name: {"error": (done.stderr.strip().splitlines() or ["?"])[-1]} for name in trees}
        best[name] = min(best.get(name, float("inf")), float(done.stdout.strip().splitlines()[-1]))
    return {name: {"best_of_6_s": value} for name, value in best.items()}


def _in_process(trees: dict[str, Path], args: list[str]) -> dict[str, dict]:
    """A CLI command's own work without start-up: best of 3 after a warm-up run in one interpreter,
    twice per tree in alternating order."""
    best: dict[str, float] = {}
    for name in [*trees, *reversed(trees)]:
        done = subprocess.run([sys.executable, "-c", IN_PROCESS, *args], env=_env(trees[name]), cwd=trees[name],
                              capture_output=True, text=True)
        if done.returncode != 0:
            return {name: {"error": (done.stderr.strip().splitlines() or ["?"])[-1]} for name in trees}
        best[name] = min(best.get(name, float("inf")), float(done.stdout.strip().splitlines()[-1]))
    return {name: {"best_of_6_s": value} for name, value in best.items()}


def _models(folder: Path) -> dict[str, Path]:
    """The RNN shaped like POPQORN's (trained briefly on sequence-MNIST) and a random LSTM H=64 T=16."""
    sys.path.insert(0, str(ROOT / "models_onnx"))
    import common
    from train_models import SequenceClassifier, export, train

    x_train, y_train, x_held, y_held = common.mnist_split(7)
    torch.manual_seed(0)
    rnn = SequenceClassifier("rnn_tanh", 112, 64)
    train(rnn, x_train, y_train, epochs=2, seed=0)
    paths = {"rnn": folder / "popqorn_rnn_t7_h64.onnx", "lstm": folder / "lstm_h64_t16.onnx"}
    export(rnn, paths["rnn"], x_held[:1])
    np.savez(folder / "popqorn_rnn_t7_h64.samples.npz", x=x_held[:10], y=y_held[:10])
    torch.manual_seed(0)
    lstm = SequenceClassifier("lstm", 28, 64).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(lstm, (torch.rand(1, 16, 28),), str(paths["lstm"]), input_names=["x"],
                          dynamic_axes={"x": {0: "batch"}}, dynamo=False)
    return paths


def measure(trees: dict[str, Path], paths: dict[str, Path], repeats: int, only: list[str] | None = None
            ) -> dict[str, dict]:
    """Every figure, or those whose name starts with one of `only`."""
    digits = ROOT / "models_onnx" / "digits_lstm_t8_h16.onnx"
    rnn_samples = paths["rnn"].with_suffix(".samples.npz")
    out: dict[str, dict] = {name: {"tree": str(tree), "methods": "defaults of that tree (crown, float64)"}
                            for name, tree in trees.items()}

    def record(key: str, measured: Callable[[], dict[str, dict]]) -> None:
        if only is None or any(key.startswith(prefix) for prefix in only):
            for name, result in measured().items():
                out[name][key] = result

    record("help", lambda: _timed(trees, ["--help"], repeats))
    record("inspect", lambda: _timed(trees, ["inspect", str(ROOT / "models_onnx" / "mnist_lstm_t4_h32.onnx")], repeats))
    for method in ("crown", "popqorn"):
        for dtype in ("float32", "float64"):
            record(f"lstm_h64_t16_bound_call_{method}_{dtype}",
                   lambda m=method, d=dtype: _bound_call(trees, paths["lstm"], m, d))
    certify = ["certify", str(digits), "--input", str(digits.with_suffix(".samples.npz")), "--limit", "5",
               "--norm", "inf", "--ball", "sequence", "--no-progress"]
    record("digits_lstm_5_linf_sequence", lambda: _timed(trees, certify, repeats))
    record("digits_lstm_5_linf_sequence_alpha", lambda: _timed(trees, [*certify, "--method", "alpha"], repeats))
    # the mode that certifies beyond alpha-CROWN (README), at its 20-step default
    record("digits_lstm_5_linf_sequence_alpha_per_row",
           lambda: _timed(trees, [*certify, "--method", "alpha", "--optimize-intermediate", "per-row"], repeats))
    for norm in ("2", "inf"):
        rnn = ["certify", str(paths["rnn"]), "--input", str(rnn_samples), "--norm", norm, "--no-progress"]
        record(f"popqorn_rnn_10_l{norm}_frame", lambda r=rnn: _timed(trees, r, repeats))
        record(f"popqorn_rnn_10_l{norm}_frame_in_process", lambda r=rnn: _in_process(trees, r))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", help="an older checkout to measure in the same run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", help="comma-separated name prefixes of the figures to measure (e.g. popqorn_rnn)")
    parser.add_argument("--out")
    args = parser.parse_args()
    report = {"machine": f"{platform.machine()} {os.cpu_count()} cores", "load_before": os.getloadavg(),
              "date": time.strftime("%Y-%m-%d %H:%M")}
    trees = {"after": ROOT, **({"before": Path(args.before)} if args.before else {})}
    with tempfile.TemporaryDirectory() as folder:
        paths = _models(Path(folder))
        report.update(measure(trees, paths, args.repeats, args.only.split(",") if args.only else None))
    report["load_after"] = os.getloadavg()
    text = json.dumps(report, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
