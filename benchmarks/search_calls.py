"""Bound calls per radius search: the device-independent cost of `certify`'s search.

    python -m benchmarks.search_calls --out benchmarks/results/search_calls.json \
        [--before /path/to/older/checkout]        # e.g. `git worktree add /tmp/base 70d8d60`

A batch of 32 samples is searched together. Two figures per case:
  * calls: bound calls the batch needed (the most any sample needed). On a GPU every call is one
    replay of a captured bound computation over the whole batch (verifier/cuda_graphs.py), so the
    search's time there is calls x one replay;
  * row-calls: bound-call rows summed over the calls (samples decided early leave the batch). On a
    CPU a call's cost grows with its rows, so the search's time there follows row-calls.
Cases: the six shipped MNIST/digits models under l2 frame, l_inf sequence, l1 frame and l2 sequence
balls (crown), and randomly initialised LSTM/GRU (H=16, T=16, 28 features, uniform inputs: the GPU
probe's model family) under l2 frame and l_inf sequence. Each tree runs in its own interpreter;
radii are reported so that a change of search can be checked for the same radii to the tolerance.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ("mnist_lstm_t4_h32", "mnist_gru_t4_h32", "mnist_rnn_tanh_t4_h32", "mnist_rnn_relu_t4_h32",
           "digits_lstm_t8_h16", "digits_gru_t8_h16")
THREATS = (("2", "frame"), ("inf", "sequence"), ("1", "frame"), ("2", "sequence"))
WORKER = r"""
import importlib, json, sys, tempfile, time, warnings
from pathlib import Path
import numpy as np, torch
import parsers
engine = importlib.import_module("verifier.certify")
shipped, threats, models = json.loads(sys.argv[1]), json.loads(sys.argv[2]), Path(sys.argv[3])
calls = []
search = engine.search_radius
def counted(margin, clean, options, device, dtype):
    def margin_counted(rows, eps):
        calls.append(int(rows.numel()))
        return margin(rows, eps)
    return search(margin_counted, clean, options, device, dtype)
engine.search_radius = counted

class Net(torch.nn.Module):
    def __init__(self, cell):
        super().__init__()
        self.rnn = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](28, 16, batch_first=True)
        self.head = torch.nn.Linear(16, 10)
    def forward(self, x):
        y, _ = self.rnn(x)
        return self.head(y[:, -1])

cases = []
for name in shipped:
    x = np.load(models / f"{name}.samples.npz")["x"][:32]
    for norm, ball in threats:
        cases.append((name, models / f"{name}.onnx", x, norm, ball))
folder = Path(tempfile.mkdtemp())
rng = np.random.default_rng(0)
for cell in ("lstm", "gru"):
    torch.manual_seed(0)
    path = folder / f"random_{cell}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Net(cell).eval(), (torch.rand(1, 16, 28),), str(path), input_names=["x"],
                          dynamic_axes={"x": {0: "batch"}}, dynamo=False)
    x = rng.uniform(0, 1, (32, 16, 28)).astype(np.float32)
    for norm, ball in threats[:2]:
        cases.append((f"random_{cell}_h16_t16", path, x, norm, ball))
out = {}
for name, path, x, norm, ball in cases:
    graph = parsers.load_onnx(path)
    calls.clear()
    started = time.perf_counter()
    results = engine.certify(graph, x, norm=norm, ball=ball)
    out[f"{name} l{norm} {ball}"] = {"calls": len(calls), "row_calls": sum(calls),
                                     "time_s": round(time.perf_counter() - started, 3),
                                     "radii": [r.radius for r in results]}
print(json.dumps(out))
"""


def _run(tree: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", WORKER, json.dumps(SHIPPED), json.dumps(THREATS),
                           str(ROOT / "models_onnx")], cwd=tree, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{tree}: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _totals(cases: dict) -> dict:
    return {"calls": sum(c["calls"] for c in cases.values()), "row_calls": sum(c["row_calls"] for c in cases.values()),
            "most_calls": max(c["calls"] for c in cases.values()),
            "time_s": round(sum(c["time_s"] for c in cases.values()), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", help="an older checkout to measure in the same run")
    parser.add_argument("--out")
    args = parser.parse_args()
    report: dict = {"machine": f"{platform.machine()} {os.cpu_count()} cores", "load_before": os.getloadavg(),
                    "date": time.strftime("%Y-%m-%d %H:%M")}
    trees = {"after": ROOT, **({"before": Path(args.before)} if args.before else {})}
    for label, tree in trees.items():
        cases = _run(tree)
        report[label] = {"tree": str(tree), "totals": _totals(cases), "cases": cases}
        print(f"{label}: {report[label]['totals']}", file=sys.stderr)
    if "before" in report:
        after, before = report["after"]["cases"], report["before"]["cases"]
        ratio = lambda key: sum(after[k][key] for k in after) / sum(before[k][key] for k in after)
        relative = [abs(a - b) / b for k in after for a, b in zip(after[k]["radii"], before[k]["radii"]) if b > 0]
        report["after_over_before"] = {"calls": round(ratio("calls"), 3), "row_calls": round(ratio("row_calls"), 3),
                                       "largest_relative_radius_change": max(relative, default=0.0)}
        print(f"after / before: {report['after_over_before']}", file=sys.stderr)
    report["load_after"] = os.getloadavg()
    text = json.dumps(report, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()
