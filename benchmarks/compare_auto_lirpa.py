"""popqorn side by side with auto_LiRPA (CROWN and alpha-CROWN) on a shipped LSTM/GRU.

auto_LiRPA is not a dependency: point PYTHONPATH at a checkout of it
(https://github.com/Verified-Intelligence/auto_LiRPA) to run this. The ONNX model's native
LSTM/GRU weights are rebuilt as an explicit torch cell loop (sigmoid/tanh and products, the form
auto_LiRPA bounds), checked against onnxruntime, and both verifiers bound the margins
f_label - f_j over the same l_inf ball around the whole sequence:

    PYTHONPATH=/path/to/auto_LiRPA python -m benchmarks.compare_auto_lirpa \
        models_onnx/digits_lstm_t8_h16.onnx --samples 5 --eps 0.01

It prints per-sample minimum margins at --eps and certified radii (bisection to 1e-3 relative)
for each method, and writes benchmarks/results/auto_lirpa.json with --out. With --at-radii alpha it
instead certifies with popqorn's alpha and bounds auto_LiRPA's margins at exactly those radii, per
sample (~8 min for alpha-CROWN on 5 samples): where alpha-CROWN's margin is positive, it certifies
beyond popqorn.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper

import parsers
from verifier.bounds import make_batch, relaxer_for
from verifier.certify import SearchOptions, certify, margin_lower_bounds, margin_spec
from verifier.threat import ThreatModel


class CellLoop(torch.nn.Module):
    """x [batch, T, F] -> logits, an LSTM or GRU written with elementwise ops only."""

    def __init__(self, kind: str, weights: dict[str, np.ndarray]) -> None:
        super().__init__()
        self.kind = kind
        for name, value in weights.items():
            self.register_buffer(name, torch.as_tensor(value, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.R.shape[1]
        h = x[:, 0, :1].mul(0).expand(-1, hidden)  # zeros shaped like the batch (traceable)
        c = h
        for t in range(x.shape[1]):
            xt = x[:, t]
            if self.kind == "LSTM":  # ONNX gate order i, o, f, c
                gates = xt @ self.W.T + h @ self.R.T + self.B
                i, o, f, g = gates.split(hidden, dim=1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
            else:  # GRU, linear_before_reset=1 (torch's export), gate order z, r, h
                xz, xr, xn = (xt @ self.W.T + self.Wb).split(hidden, dim=1)
                hz, hr, hn = (h @ self.R.T + self.Rb).split(hidden, dim=1)
                z, r = torch.sigmoid(xz + hz), torch.sigmoid(xr + hr)
                n = torch.tanh(xn + r * hn)
                h = (1 - z) * n + z * h
        return h @ self.head_w.T + self.head_b


def rebuild(path: str) -> CellLoop:
    model = onnx.load(path)
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    cell = next(n for n in model.graph.node if n.op_type in ("LSTM", "GRU"))
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    w, r, b = (values[name][0] for name in cell.input[1:4])
    weights = {"W": w, "R": r, "head_w": values[gemm.input[1]], "head_b": values[gemm.input[2]]}
    half = b.shape[0] // 2
    if cell.op_type == "LSTM":
        weights["B"] = b[:half] + b[half:]
    else:
        weights["Wb"], weights["Rb"] = b[:half], b[half:]
    return CellLoop(cell.op_type, weights)


def lirpa_margins(module, x: np.ndarray, labels: np.ndarray, eps: float | np.ndarray, method: str) -> np.ndarray:
    """auto_LiRPA's lower bounds of the margins; `eps` one radius or one per sample."""
    from auto_LiRPA import BoundedModule, BoundedTensor, PerturbationLpNorm

    xt = torch.as_tensor(x)
    bounded = BoundedModule(module, torch.zeros_like(xt[:1]), verbose=0)
    spec = margin_spec(torch.as_tensor(labels), 10, None).float()
    if np.ndim(eps):
        eps = torch.as_tensor(np.asarray(eps), dtype=torch.float32).reshape(-1, 1, 1)
    inputs = BoundedTensor(xt, PerturbationLpNorm(norm=math.inf, eps=eps))
    if method == "alpha-CROWN":
        bounded.set_bound_opts({"optimize_bound_args": {"iteration": 100, "lr_alpha": 0.1}})
    lower, _ = bounded.compute_bounds(x=(inputs,), C=spec, method=method, bound_upper=False)
    return lower.detach().numpy()


def bisect(certified, lo: float = 0.0, hi: float = 0.1, tol: float = 1e-3) -> float:
    """Largest certified radius to `tol` (relative), from a bracket guess [lo, hi]."""
    if lo > 0 and not certified(lo):
        lo, hi = 0.0, lo
    while certified(hi):
        lo, hi = hi, hi * 2
    while hi - lo > tol * hi:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if certified(mid) else (lo, mid)
    return lo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--eps", type=float, default=0.01)
    parser.add_argument("--methods", default="crown,popqorn")
    parser.add_argument("--no-alpha", action="store_true", help="skip auto_LiRPA's alpha-CROWN (slow)")
    parser.add_argument("--no-crown", action="store_true", help="skip auto_LiRPA's CROWN")
    parser.add_argument("--tol", type=float, default=1e-3, help="relative tolerance of auto_LiRPA's radius bisection")
    parser.add_argument("--at-radii", metavar="METHOD",
                        help="instead: popqorn METHOD's certified radii, then auto_LiRPA's margins at exactly those "
                             "radii (a positive alpha-CROWN margin means alpha-CROWN certifies beyond popqorn there)")
    parser.add_argument("--optimize-intermediate", default="shared", help="with --at-radii alpha")
    parser.add_argument("--optimize-steps", type=int, default=20, help="with --at-radii alpha")
    parser.add_argument("--optimize-mix-ratio", type=float, help="with --at-radii alpha (default: the engine's)")
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = np.load(args.model.replace(".onnx", ".samples.npz"))
    x, labels = data["x"][:args.samples].astype(np.float32), data["y"][:args.samples]
    module = rebuild(args.model)
    reference = ort.InferenceSession(args.model).run(None, {"x": x})[0]
    assert np.abs(module(torch.as_tensor(x)).detach().numpy() - reference).max() < 1e-4, "cell loop != ONNX"
    keep = reference.argmax(1) == labels
    x, labels = x[keep], labels[keep]
    graph = parsers.load_onnx(args.model)
    threat = ThreatModel(math.inf, "sequence")
    report: dict = {"model": args.model, "eps": args.eps, "samples": int(len(x)), "methods": {}}

    def ours(method: str):
        batch = make_batch(graph, x, dtype=torch.float64)
        spec = margin_spec(torch.as_tensor(labels), 10, None)

        def margins(eps: float) -> np.ndarray:
            radius = torch.full((len(x),), eps, dtype=torch.float64)
            with torch.inference_mode():
                return margin_lower_bounds(batch.graph, batch, radius, threat, spec, relaxer_for(method),
                                           batch.graph.outputs[0].node).numpy()

        started = time.perf_counter()
        radii = [r.radius for r in certify(graph, x, math.inf, ball="sequence", labels=labels,
                                           options=SearchOptions(method=method), dtype=torch.float64)]
        return margins(args.eps), radii, time.perf_counter() - started

    def theirs(method: str):
        started = time.perf_counter()
        crown = report["methods"].get("popqorn crown", {}).get("radius")
        guess = (lambda k: (crown[k], crown[k] * 1.4)) if crown else (lambda k: (0.0, 0.1))
        radii = [bisect(lambda e, k=k: lirpa_margins(module, x[k:k + 1], labels[k:k + 1], e, method).min() > 0,
                        *guess(k), tol=args.tol) for k in range(len(x))]
        return lirpa_margins(module, x, labels, args.eps, method), radii, time.perf_counter() - started

    if args.at_radii:
        from verifier.optimize import OptimizeOptions

        options = SearchOptions(method=args.at_radii, optimize=OptimizeOptions(intermediate=args.optimize_intermediate,
                                                                               steps=args.optimize_steps,
                                                                               mix_ratio=args.optimize_mix_ratio))
        started = time.perf_counter()
        radii = np.array([r.radius for r in certify(graph, x, math.inf, ball="sequence", labels=labels, options=options)])
        report["at_radii"] = {"popqorn": args.at_radii, "intermediate": args.optimize_intermediate,
                              "steps": args.optimize_steps, "mix_ratio": args.optimize_mix_ratio,
                              "radii": radii.tolist(), "seconds": time.perf_counter() - started}
        print(f"popqorn {args.at_radii} radii {np.round(radii, 6).tolist()} ({report['at_radii']['seconds']:.1f} s)")
        for method in ("CROWN", "alpha-CROWN"):
            started = time.perf_counter()
            margins = lirpa_margins(module, x, labels, radii, method).min(1)
            report["at_radii"][method] = {"min_margin": margins.tolist(), "seconds": time.perf_counter() - started}
            print(f"auto_LiRPA {method:12s} min margin at those radii {np.round(margins, 4).tolist()} "
                  f"({time.perf_counter() - started:.0f} s)")
        if args.out:
            with open(args.out, "w") as handle:
                json.dump(report, handle, indent=1)
        return
    runs = {f"popqorn {m}": (lambda m=m: ours(m)) for m in args.methods.split(",")}
    if not args.no_crown:
        runs["auto_LiRPA CROWN"] = lambda: theirs("CROWN")
    if not args.no_alpha:
        runs["auto_LiRPA alpha-CROWN"] = lambda: theirs("alpha-CROWN")
    for name, run in runs.items():
        margins, radii, seconds = run()
        report["methods"][name] = {"min_margin": margins.min(1).tolist(), "radius": radii,
                                   "mean_radius": float(np.mean(radii)), "seconds": seconds}
        print(f"{name:24s} mean min-margin at eps={args.eps}: {margins.min(1).mean():+.4f}  "
              f"mean radius {np.mean(radii):.6f}  ({seconds:.1f} s)  radii {np.round(radii, 5).tolist()}")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(report, handle, indent=1)


if __name__ == "__main__":
    main()
