"""The bound methods side by side on the shipped models (IBP, CROWN, POPQORN planes, the optimised
mode): mean certified radius, time per sample, and the ratio to the smallest radius an attack
(validated by onnxruntime) succeeds at (1 = the certificate is tight).

    python -m benchmarks.methods [--samples 20] [--norm 2] [--methods ibp,crown,popqorn,alpha]
                                 [--out benchmarks/results/methods.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

import parsers
from verifier.attack import attack_radius
from verifier.bounds import make_batch
from verifier.certify import SearchOptions, certify
from verifier.onnx_runtime import OnnxModel
from verifier.threat import ThreatModel

MODELS = Path(__file__).resolve().parents[1] / "models_onnx"
DEFAULT = ["mnist_rnn_tanh_t4_h32", "mnist_rnn_relu_t4_h32", "mnist_lstm_t4_h32", "mnist_lstm_t7_h32",
           "mnist_gru_t4_h32", "digits_lstm_t8_h16", "digits_gru_t8_h16"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--norm", default="2")
    parser.add_argument("--models", default=",".join(DEFAULT))
    parser.add_argument("--no-attack", action="store_true")
    parser.add_argument("--methods", default="ibp,crown,popqorn,alpha")
    parser.add_argument("--ball", default="frame")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    norm = math.inf if args.norm == "inf" else float(args.norm)
    rows = []
    print(f"{'model':>24} {'method':>8} {'mean radius':>12} {'s/sample':>9} {'attack':>9} {'cert/attack':>11}")
    for name in args.models.split(","):
        graph = parsers.load_onnx(MODELS / f"{name}.onnx")
        data = np.load(MODELS / f"{name}.samples.npz")
        x, y = data["x"][:args.samples], data["y"][:args.samples]
        attack = None
        for method in args.methods.split(","):
            started = time.perf_counter()
            results = certify(graph, x, norm, ball=args.ball, labels=y, options=SearchOptions(method=method))
            elapsed = (time.perf_counter() - started) / len(x)
            correct = [r for r in results if not r.misclassified]
            radii = np.array([r.radius for r in correct])
            if attack is None and method != "ibp" and not args.no_attack and correct:
                rows_t = torch.as_tensor([r.index for r in correct])
                batch = make_batch(graph, x, dtype=torch.float64).select(rows_t)
                attack = attack_radius(batch.graph, OnnxModel(str(MODELS / f"{name}.onnx")), batch,
                                       np.array([r.label for r in correct]), ThreatModel(norm, args.ball),
                                       output=batch.graph.outputs[0], start=float(radii.mean() * 1.5))
            gap = float(np.mean(radii / attack)) if attack is not None else None
            row = {"model": name, "method": method, "mean_radius": float(radii.mean()), "time_per_sample_s": elapsed,
                   "samples": len(correct), "attack_mean_radius": float(np.mean(attack)) if gap is not None else None,
                   "certified_over_attack": gap}
            rows.append(row)
            attack_text = f"{row['attack_mean_radius']:9.4f} {gap:11.3f}" if gap is not None else f"{'':>9} {'':>11}"
            print(f"{name:>24} {method:>8} {row['mean_radius']:12.5f} {elapsed:9.3f} {attack_text}", flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"date": datetime.date.today().isoformat(), "norm": args.norm,
                                              "ball": args.ball, "samples": args.samples,
                                              "threads": torch.get_num_threads(), "dtype": "float64",
                                              "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
