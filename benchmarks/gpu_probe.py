"""A GPU probe that fits in a few minutes of a lent GPU: bound-call time, kernel launches per bound
call (torch profiler), peak GPU memory and radius-search time per sample, for random LSTM/GRU
models (torch nn.LSTM/nn.GRU, exported to ONNX and parsed like any user model), batch 32.

    python -m benchmarks.gpu_probe --out benchmarks/results/gpu_probe.json [--budget 240]

Configurations run smallest first and the probe stops starting new ones once `--budget` seconds
have passed, so it always writes what it measured. Also runs on CPU (--device cpu) for a dry run.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import parsers
from verifier.bounds import make_batch, relaxer_for
from verifier.certify import SearchOptions, certify, margin_lower_bounds, margin_spec
from verifier.threat import ThreatModel

FEATURES, CLASSES, BATCH = 28, 10, 32
GRID = [("lstm", 32, 8), ("gru", 32, 8), ("lstm", 128, 28), ("gru", 128, 28), ("lstm", 256, 28),
        ("gru", 256, 28), ("lstm", 32, 56), ("lstm", 128, 56), ("lstm", 256, 56)]


class _Net(torch.nn.Module):
    def __init__(self, cell: str, hidden: int) -> None:
        super().__init__()
        self.rnn = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](FEATURES, hidden, batch_first=True)
        self.head = torch.nn.Linear(hidden, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(x)
        return self.head(y[:, -1])


def _model(cell: str, hidden: int, steps: int, folder: Path):
    torch.manual_seed(0)
    net = _Net(cell, hidden).eval()
    path = folder / f"{cell}_{hidden}_{steps}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.rand(1, steps, FEATURES),), str(path), input_names=["x"],
                          dynamic_axes={"x": {0: "batch"}}, dynamo=False)
    return parsers.load_onnx(path)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _bound_call(graph, batch, spec, threat, device):
    eps = torch.full((BATCH,), 0.01, dtype=batch.center.dtype, device=device)
    with torch.no_grad():
        return margin_lower_bounds(graph, batch, eps, threat, spec, relaxer_for("crown"), graph.outputs[0].node)


def _kernels(call, device) -> int | None:
    if device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        call()
        _sync(device)
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


def probe(device: torch.device, budget: float, dtypes: list[torch.dtype]) -> dict:
    started = time.perf_counter()
    rows = []
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        for cell, hidden, steps in GRID:
            for dtype in dtypes:
                if time.perf_counter() - started > budget:
                    break
                graph = _model(cell, hidden, steps, Path(folder))
                x = rng.uniform(0, 1, (BATCH, steps, FEATURES)).astype(np.float32)
                batch = make_batch(graph, x, device=device, dtype=dtype)
                spec = margin_spec(torch.zeros(BATCH, dtype=torch.long, device=device), CLASSES, None)
                threat = ThreatModel(2.0, "frame")
                call = lambda: _bound_call(batch.graph, batch, spec, threat, device)
                call()  # warm-up: tangent tables, constants, cuBLAS handles
                _sync(device)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                times = []
                for _ in range(3):
                    t0 = time.perf_counter()
                    call()
                    _sync(device)
                    times.append(time.perf_counter() - t0)
                row = {"cell": cell, "hidden": hidden, "steps": steps, "batch": BATCH, "dtype": str(dtype).split(".")[-1],
                       "bound_call_s": float(np.median(times)), "bound_call_spread_s": float(np.ptp(times)),
                       "peak_memory_mb": (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None)}
                row["kernels_per_bound_call"] = _kernels(call, device)
                if time.perf_counter() - started < budget * 0.8:
                    t0 = time.perf_counter()
                    results = certify(graph, x, 2.0, options=SearchOptions(method="crown"), device=device, dtype=dtype)
                    _sync(device)
                    row["radius_search_s_per_sample"] = (time.perf_counter() - t0) / BATCH
                    row["mean_radius"] = float(np.mean([r.radius for r in results]))
                rows.append(row)
                print(json.dumps(row), flush=True)
    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "threat": "l2 frame balls", "method": "crown", "rows": rows,
            "elapsed_s": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--budget", type=float, default=240.0, help="seconds after which no new configuration starts")
    parser.add_argument("--dtypes", default="float64,float32")
    parser.add_argument("--out")
    args = parser.parse_args()
    dtypes = [getattr(torch, name) for name in args.dtypes.split(",")]
    report = probe(torch.device(args.device), args.budget, dtypes)
    text = json.dumps(report, indent=1)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
