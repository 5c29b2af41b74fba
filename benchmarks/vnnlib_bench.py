"""`popqorn vnnlib` on generated local-robustness properties for the shipped models (issue 14).

    python -m benchmarks.vnnlib_bench [--samples 3] [--out benchmarks/results/vnnlib.json]

For each model and held-out sample (correctly classified), with the L-inf balls `certify` and
`attack` use as boxes (not clipped to [0, 1], like those two commands):
  unsat target: radius r_c / 2, where `certify` proves r_c (a 2x margin)   -> unsat within 3 s
  sat target:   radius 2 r_a, where the attack finds a counterexample at r_a -> sat within 3 s
  near:         radius 0.97 r_a (the attack found none there), --timeout 3 -> any answer, on time
Each property is written in VNN-LIB 1.0 and 2.0 (2.0 with the model's own input shape) and run
as `popqorn vnnlib MODEL PROPERTY --timeout T` in a fresh process, timed by the wall clock from
outside (start-up, parsing and model loading included): the timing VNN-COMP sees. The same
properties then run once more through `--instances` (one warm worker; time per row).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["digits_lstm_t8_h16", "digits_gru_t8_h16", "mnist_lstm_t4_h32", "mnist_gru_t4_h32", "mnist_rnn_tanh_t4_h32",
          "mnist_rnn_relu_t4_h32", "mnist_lstm_t7_h32", "mnist_lstm_t4_h32_keras"]
TARGET_S = 3.0
TIMEOUT_S = 20.0  # for the unsat/sat targets (solved within TARGET_S counts)
NEAR_TIMEOUT_S = 3.0


def radii(name: str, count: int) -> list[dict]:
    """Certified and attack L-inf radii of the first `count` correctly classified samples."""
    import torch

    import parsers
    from verifier.attack import attack_radius
    from verifier.bounds import make_batch, output_node
    from verifier.certify import certify
    from verifier.onnx_runtime import OnnxModel
    from verifier.threat import ThreatModel

    torch.set_num_threads(1)
    path = ROOT / "models_onnx" / f"{name}.onnx"
    graph = parsers.load_onnx(path)
    data = np.load(ROOT / "models_onnx" / f"{name}.samples.npz")
    x, y = data["x"][:count * 2], data["y"][:count * 2].astype(np.int64)
    results = certify(graph, x, math.inf, labels=y)
    keep = [k for k, r in enumerate(results) if not r.misclassified][:count]
    batch = make_batch(graph, x[keep], dtype=torch.float64)
    attack = attack_radius(batch.graph, OnnxModel(str(path)), batch, y[keep], ThreatModel(math.inf, "frame"),
                           output=output_node(batch.graph, 0), lower=np.array([results[k].radius for k in keep]))
    return [{"index": int(k), "label": int(y[k]), "x": x[k], "certified": float(results[k].radius),
             "attack": float(a)} for k, a in zip(keep, attack)]


def properties(name: str, folder: Path, samples: list[dict]) -> list[dict]:
    from verifier.vnnlib.write import robustness_property

    rows = []
    for sample in samples:
        x = sample["x"].astype(np.float64)
        kinds = [("unsat", sample["certified"] / 2, TIMEOUT_S)]
        if math.isfinite(sample["attack"]):
            kinds += [("sat", 2 * sample["attack"], TIMEOUT_S), ("near", 0.97 * sample["attack"], NEAR_TIMEOUT_S)]
        for kind, eps, timeout in kinds:
            lower, upper = x - eps, x + eps
            for version in ("1.0", "2.0"):
                text = robustness_property(lower, upper, sample["label"], 10, version=version, input_shape=x.shape)
                path = folder / f"{name}_s{sample['index']}_{kind}_v{version[0]}.vnnlib"
                path.write_text(text)
                rows.append({"model": name, "sample": sample["index"], "kind": kind, "version": version,
                             "eps": eps, "timeout": timeout, "property": str(path)})
    return rows


def run_cli(row: dict) -> dict:
    model = ROOT / "models_onnx" / f"{row['model']}.onnx"
    begin = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "verifier.cli", "vnnlib", str(model), row["property"],
                           "--timeout", str(row["timeout"]), "--json"], capture_output=True, text=True, check=False)
    wall = time.perf_counter() - begin
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        report = {"result": f"error (exit {done.returncode}): {done.stderr.strip()[-200:]}"}
    return {**row, "answer": report["result"], "wall_s": round(wall, 3), "boxes": report.get("boxes"),
            "phases": report.get("phases")}


def run_instances(rows: list[dict], folder: Path) -> dict[str, dict]:
    listing = folder / "instances.csv"
    with open(listing, "w", newline="") as handle:
        writer = csv.writer(handle)
        for row in rows:
            writer.writerow([str(ROOT / "models_onnx" / f"{row['model']}.onnx"), row["property"], row["timeout"]])
    subprocess.run([sys.executable, "-m", "verifier.cli", "vnnlib", "--instances", str(listing)],
                   check=True, capture_output=True, text=True)
    with open(folder / "results" / "summary.csv") as handle:
        return {r["vnnlib"]: r for r in csv.DictReader(handle)}


def startup_floor() -> float:
    """Median wall time of a bare `python -c "import torch, onnxruntime"` now: the part of every
    CLI answer that no solver work can remove (it grows with the machine's load)."""
    walls = []
    for _ in range(3):
        begin = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch, onnxruntime"], check=True)
        walls.append(time.perf_counter() - begin)
    return round(float(np.median(walls)), 3)


def summarise(rows: list[dict]) -> dict:
    summary = {}
    for kind, expected in (("unsat", "unsat"), ("sat", "sat"), ("near", None)):
        for version in ("1.0", "2.0"):
            chosen = [r for r in rows if r["kind"] == kind and r["version"] == version]
            if not chosen:
                continue
            walls = np.array([r["wall_s"] for r in chosen])
            entry = {"properties": len(chosen), "answers": {a: sum(r["answer"] == a for r in chosen)
                                                            for a in sorted({r["answer"] for r in chosen})},
                     "median_wall_s": round(float(np.median(walls)), 3), "max_wall_s": round(float(walls.max()), 3),
                     "max_over_timeout_s": round(max(r["wall_s"] - r["timeout"] for r in chosen), 3)}
            if expected:
                entry[f"solved_within_{TARGET_S:g}s"] = sum(r["answer"] == expected and r["wall_s"] <= TARGET_S
                                                            for r in chosen)
                entry["median_row_s_instances"] = round(float(np.median([r["instances_s"] for r in chosen])), 3)
            summary[f"{kind} v{version}"] = entry
    summary["max_over_timeout_s"] = round(max(r["wall_s"] - r["timeout"] for r in rows), 3)
    summary["wrong_answers"] = sum(r["kind"] == "unsat" and r["answer"] == "sat" or
                                   r["kind"] == "sat" and r["answer"] == "unsat" for r in rows)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=3, help="samples per model")
    parser.add_argument("--models", nargs="*", default=MODELS)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "vnnlib.json"))
    args = parser.parse_args()
    load_before = os.getloadavg()
    floor_before = startup_floor()
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rows = []
        for name in args.models:
            samples = radii(name, args.samples)
            print(f"{name}: certified {[round(s['certified'], 4) for s in samples]} "
                  f"attack {[round(s['attack'], 4) for s in samples]}", flush=True)
            rows += properties(name, folder, samples)
        for k, row in enumerate(rows):
            rows[k] = run_cli(row)
            print(f"{row['model']} s{row['sample']} {row['kind']:5s} v{row['version']} eps={row['eps']:.4f}: "
                  f"{rows[k]['answer']} in {rows[k]['wall_s']:.2f} s", flush=True)
        by_property = run_instances(rows, folder)
        for row in rows:
            entry = by_property[row["property"]]
            row["instances_answer"], row["instances_s"] = entry["result"], float(entry["time_s"])
            row["property"] = Path(row["property"]).name
    result = {"summary": summarise(rows), "rows": rows,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                          "load_average_before": [round(v, 2) for v in load_before],
                          "load_average_after": [round(v, 2) for v in os.getloadavg()],
                          "import_torch_onnxruntime_s": [floor_before, startup_floor()],
                          "note": "shared 2-core machine; other agents were running (see load averages)"},
              "wall_s": round(time.time() - started, 1)}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["summary"], indent=1))


if __name__ == "__main__":
    main()
