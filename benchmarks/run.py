"""Speed, memory and tightness of the engine across cells, hidden sizes and sequence lengths.

    python -m benchmarks.run --quick                 # a few minutes on a 2-core CPU
    python -m benchmarks.run --device cuda --out benchmarks/results/gpu.json
    python -m benchmarks.run --gpu-probe --out benchmarks/results/gpu_probe.json   # fits in ~5 min of a GPU

Models are random (fixed seeds) torch cell loops exported to ONNX and parsed like any user model,
so the figures include nothing the product would not do. For every (cell, H, T) and method:
time per bound call, per radius search (one sample), samples/s when a batch is searched at once,
peak memory, and the mean certified radius. Times are medians of repeats (the spread is reported);
ratios between methods come from the same run; absolute seconds on shared machines are indicative
only. Time growth in T and H is fitted as a power law to the medians.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import parsers
from verifier.bounds import make_batch, resolve_device
from verifier.certify import SearchOptions, certify, margin_lower_bounds, margin_spec
from verifier.relaxations import RELAXERS
from verifier.threat import ThreatModel

METHODS = ("ibp", "crown", "popqorn")
CELLS = ("rnn_tanh", "rnn_relu", "lstm", "gru")
FEATURES, CLASSES = 28, 10


class _Loop(torch.nn.Module):
    def __init__(self, cell: str, hidden: int) -> None:
        super().__init__()
        self.cell_kind, self.hidden = cell, hidden
        self.cell = {"lstm": lambda: torch.nn.LSTMCell(FEATURES, hidden), "gru": lambda: torch.nn.GRUCell(FEATURES, hidden),
                     "rnn_tanh": lambda: torch.nn.RNNCell(FEATURES, hidden),
                     "rnn_relu": lambda: torch.nn.RNNCell(FEATURES, hidden, nonlinearity="relu")}[cell]()
        self.head = torch.nn.Linear(hidden, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.zeros(x.shape[0], self.hidden)
        c = torch.zeros(x.shape[0], self.hidden)
        for t in range(x.shape[1]):
            if self.cell_kind == "lstm":
                h, c = self.cell(x[:, t], (h, c))
            else:
                h = self.cell(x[:, t], h)
        return self.head(h)


def build_model(cell: str, hidden: int, steps: int, folder: Path):
    torch.manual_seed(hidden * 1000 + steps)
    module = _Loop(cell, hidden).eval()
    path = folder / f"{cell}_h{hidden}_t{steps}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(1, steps, FEATURES),), str(path), dynamo=False,
                          input_names=["x"], output_names=["logits"], dynamic_axes={"x": {0: "batch"}})
    return parsers.load_onnx(path)


class PeakMemory:
    """Peak resident memory (CPU, sampled every few ms) and CUDA max allocated during a block."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_rss = 0
        self._stop = threading.Event()

    @staticmethod
    def _rss() -> int:
        try:
            with open("/proc/self/statm") as handle:
                return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            return 0

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak_rss = max(self.peak_rss, self._rss())
            time.sleep(0.003)

    def __enter__(self) -> PeakMemory:
        self.base = self._rss()
        self.peak_rss = self.base
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.cuda_peak = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else 0

    def figures(self) -> dict:
        return {"rss_delta_mb": (self.peak_rss - self.base) / 2**20, "cuda_max_allocated_mb": self.cuda_peak / 2**20}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(graph, method: str, samples: np.ndarray, eps: float, norm: float, device: torch.device,
            dtype: torch.dtype, repeats: int) -> dict:
    threat = ThreatModel(norm, "frame")
    single = make_batch(graph, samples[:1], device=device, dtype=dtype)
    relaxer = None if method == "ibp" else RELAXERS[method]
    spec = margin_spec(torch.zeros(1, dtype=torch.long, device=device), CLASSES, None)
    eps_t = torch.tensor([eps], device=device, dtype=dtype)
    out = graph.outputs[0].node
    margin_lower_bounds(graph, single, eps_t, threat, spec, relaxer, out)  # warm-up
    _sync(device)
    times = []
    with PeakMemory(device) as memory:
        for _ in range(repeats):
            started = time.perf_counter()
            with torch.no_grad():
                margin_lower_bounds(graph, single, eps_t, threat, spec, relaxer, out)
            _sync(device)
            times.append(time.perf_counter() - started)
    bound_s, spread_s = float(np.median(times)), float(np.ptp(times))
    options = SearchOptions(method=method, tol=1e-3)
    started = time.perf_counter()
    one = certify(graph, samples[:1], norm, options=options, device=device, dtype=dtype)
    _sync(device)
    search_s = time.perf_counter() - started
    started = time.perf_counter()
    many = certify(graph, samples, norm, options=options, device=device, dtype=dtype)
    _sync(device)
    batch_s = time.perf_counter() - started
    radii = [r.radius for r in many if not r.misclassified]
    return {"bound_call_s": bound_s, "bound_call_spread_s": spread_s, "repeats": repeats,
            "radius_search_s": search_s, "batched_samples_per_s": len(samples) / batch_s,
            "mean_radius": float(np.mean(radii)) if radii else 0.0, "radius_first_sample": one[0].radius,
            **memory.figures()}


def fit_exponent(xs: list[float], ys: list[float]) -> float | None:
    """Slope of log y against log x (time ~ x^slope)."""
    if len(set(xs)) < 2:
        return None
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small grid, under two minutes on a 2-core CPU")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    parser.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1, as the CLI)")
    parser.add_argument("--gpu-probe", action="store_true",
                        help="the few-minute GPU probe instead (benchmarks.gpu_probe: LSTM/GRU H 32-256, T 8-56, "
                             "batch 32, kernel launches and peak GPU memory)")
    parser.add_argument("--norm", default="2")
    parser.add_argument("--cells", default=",".join(CELLS))
    parser.add_argument("--hidden", help="comma-separated hidden sizes")
    parser.add_argument("--steps", help="comma-separated sequence lengths")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--batch", type=int, default=8, help="samples per batched radius search")
    parser.add_argument("--out", help="write results JSON here")
    args, rest = parser.parse_known_args(argv)
    if args.gpu_probe:
        import sys

        from benchmarks import gpu_probe
        sys.argv = [sys.argv[0], *rest, *(["--out", args.out] if args.out else [])]
        gpu_probe.main()
        return 0
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]
    norm = math.inf if args.norm == "inf" else float(args.norm)
    hidden = [int(h) for h in (args.hidden or ("16,32" if args.quick else "16,32,64,128,256")).split(",")]
    steps = [int(t) for t in (args.steps or ("4,8" if args.quick else "4,8,16,28,56")).split(",")]
    cells = args.cells.split(",")
    methods = args.methods.split(",")
    batch = 4 if args.quick else args.batch
    repeats = 5 if args.quick else 7  # figures are medians of the repeats, exponents fitted to medians
    rng = np.random.default_rng(0)
    rows = []
    print(f"device={device} dtype={args.dtype} norm={args.norm} cpu_threads={torch.get_num_threads()}")
    header = f"{'cell':>8} {'H':>4} {'T':>3} {'method':>8} {'bound_s':>9} {'search_s':>9} {'samples/s':>9} {'radius':>9} {'rss_MB':>7}"
    print(header)
    with tempfile.TemporaryDirectory() as folder:
        for cell in cells:
            for h in hidden:
                for t in steps:
                    graph = build_model(cell, h, t, Path(folder))
                    samples = rng.uniform(0, 1, (batch, t, FEATURES)).astype(np.float32)
                    for method in methods:
                        figures = measure(graph, method, samples, 0.01, norm, device, dtype, repeats)
                        rows.append({"cell": cell, "hidden": h, "steps": t, "method": method, **figures})
                        print(f"{cell:>8} {h:>4} {t:>3} {method:>8} {figures['bound_call_s']:>9.4f} "
                              f"{figures['radius_search_s']:>9.3f} {figures['batched_samples_per_s']:>9.2f} "
                              f"{figures['mean_radius']:>9.5f} {figures['rss_delta_mb']:>7.1f}", flush=True)
    summary = summarize(rows, cells, hidden, steps, methods)
    for line in summary["lines"]:
        print(line)
    if args.out:
        result = {"date": datetime.date.today().isoformat(), "device": str(device),
                  "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                                  else platform.processor() or platform.machine()),
                  "torch": torch.__version__, "threads": torch.get_num_threads(), "dtype": args.dtype, "norm": args.norm,
                  "quick": args.quick, "rows": rows, "summary": {k: v for k, v in summary.items() if k != "lines"}}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
        print(f"results written to {args.out}")
    return 0


def summarize(rows: list[dict], cells, hidden, steps, methods) -> dict:
    """Method ratios and power-law exponents of bound-call time in T and in H."""
    lines, ratios, exponents = [], {}, {}
    index = {(r["cell"], r["hidden"], r["steps"], r["method"]): r for r in rows}
    if "popqorn" in methods and "crown" in methods:
        for cell in cells:
            pairs = [(index[(cell, h, t, "popqorn")], index[(cell, h, t, "crown")]) for h in hidden for t in steps]
            time_ratio = float(np.mean([p["bound_call_s"] / c["bound_call_s"] for p, c in pairs]))
            radius_ratio = float(np.mean([p["mean_radius"] / c["mean_radius"] for p, c in pairs if c["mean_radius"] > 0] or [math.nan]))
            ratios[cell] = {"time_popqorn_over_crown": time_ratio, "radius_popqorn_over_crown": radius_ratio}
            lines.append(f"{cell}: popqorn/crown time x{time_ratio:.2f}, radius x{radius_ratio:.3f}")
    for cell in cells:
        for method in methods:
            in_t = [fit_exponent(steps, [index[(cell, h, t, method)]["bound_call_s"] for t in steps]) for h in hidden]
            in_h = [fit_exponent(hidden, [index[(cell, h, t, method)]["bound_call_s"] for h in hidden]) for t in steps]
            in_t = [e for e in in_t if e is not None]
            in_h = [e for e in in_h if e is not None]
            exponents[f"{cell}/{method}"] = {"time_vs_T": float(np.mean(in_t)) if in_t else None,
                                             "time_vs_H": float(np.mean(in_h)) if in_h else None}
            text = ", ".join(f"{k} ~ {v:.2f}" for k, v in exponents[f"{cell}/{method}"].items() if v is not None)
            if text:
                lines.append(f"{cell}/{method}: bound-call time exponent {text}")
    return {"ratios": ratios, "exponents": exponents, "lines": lines}


if __name__ == "__main__":
    raise SystemExit(main())
