"""A GPU probe that fits in a few minutes of a lent GPU: bound-call time, kernel launches per bound
call (torch profiler), peak GPU memory and radius-search time per sample, for random LSTM/GRU
models (torch nn.LSTM/nn.GRU, exported to ONNX and parsed like any user model), batch 32.

    python -m benchmarks.gpu_probe --out benchmarks/results/gpu_probe.json [--budget 240]
    python -m benchmarks.gpu_probe --fused --grid lstm:256:28 --out ...   # fused vs eager pull-backs

Configurations run smallest first and the probe stops starting new ones once `--budget` seconds
have passed, so it always writes what it measured. Also runs on CPU (--device cpu) for a dry run.
"""

from __future__ import annotations

import argparse
import importlib
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
GRID = [("lstm", 32, 8), ("lstm", 128, 28), ("lstm", 256, 28), ("gru", 256, 28), ("gru", 32, 8), ("gru", 128, 28),
        ("lstm", 32, 56), ("lstm", 128, 56), ("lstm", 256, 56)]
LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cudaGraphLaunch", "cuGraphLaunch")


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


def _bound_call(graph, batch, spec, threat, device, radius: float = 0.01):
    eps = torch.full((BATCH,), radius, dtype=batch.center.dtype, device=device)
    with torch.no_grad():
        return margin_lower_bounds(graph, batch, eps, threat, spec, relaxer_for("crown"), graph.outputs[0].node)


def _kernels(call, device) -> tuple[int | None, int | None]:
    """(kernels the GPU ran, launch calls the CPU made: kernel launches plus graph launches)."""
    if device.type != "cuda":
        return None, None
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        call()
        _sync(device)
    events = prof.events()
    kernels = sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    launches = sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CPU and e.name.startswith(LAUNCHES))
    return kernels, launches


def _replayed(graph, batch, spec, threat, device):
    """A bound call captured in a CUDA graph (verifier.cuda_graphs), as the radius search uses it."""
    from verifier.bounds import ball_regions
    from verifier.cuda_graphs import ReplayedBounds
    from verifier.propagation import Propagator

    def build(eps):
        regions = ball_regions(batch, eps, threat)
        return lambda: Propagator(graph, regions, relaxer_for("crown")).bound(
            graph.outputs[0].node, spec.to(batch.center.dtype), need_upper=False)[0]
    return ReplayedBounds(build, torch.full((BATCH,), 0.01, dtype=batch.center.dtype, device=device))


def _timed(call, device, repeats: int = 3) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), float(np.ptp(times))


LAST_SEARCH: dict[str, int] = {}  # bound calls of the last _search: of the batch, and rows summed over calls


def _search(graph, x, device, dtype, graphs: bool | None, fused: bool | None = None) -> tuple[float, list[float]]:
    """Radius search time per sample and radii; graphs/fused forced on or off (None: the default rule).
    Its bound calls go to LAST_SEARCH: a replayed search costs its calls x one replay."""
    engine = importlib.import_module("verifier.certify")
    search = engine.search_radius
    calls: list[int] = []

    def counted(margin, *args, **kwargs):
        return search(lambda rows, eps: calls.append(int(rows.numel())) or margin(rows, eps), *args, **kwargs)

    engine.search_radius = counted
    try:
        with _settings(graphs, fused):
            t0 = time.perf_counter()
            results = certify(graph, x, 2.0, options=SearchOptions(method="crown"), device=device, dtype=dtype)
            _sync(device)
    finally:
        engine.search_radius = search
    LAST_SEARCH.update(calls=len(calls), rows=sum(calls))
    return (time.perf_counter() - t0) / BATCH, [r.radius for r in results]


class _settings:
    """POPQORN_CUDA_GRAPHS / POPQORN_FUSED forced for a block (None leaves the default rule)."""

    def __init__(self, graphs: bool | None, fused: bool | None) -> None:
        self.values = {"POPQORN_CUDA_GRAPHS": graphs, "POPQORN_FUSED": fused}

    def __enter__(self) -> None:
        import os

        for key, value in self.values.items():
            if value is not None:
                os.environ[key] = "1" if value else "0"

    def __exit__(self, *exc) -> None:
        import os

        for key in self.values:
            os.environ.pop(key, None)


def _top_kernels(call, device, count: int = 8) -> tuple[list[tuple[str, float, int]], int, float] | None:
    """The kernels that took most GPU time in one call ((name, ms, calls)), the number of kernels
    and their total GPU time in ms."""
    if device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        call()
        _sync(device)
    totals: dict[str, list[float]] = {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            entry = totals.setdefault(e.name[:80], [0.0, 0])
            entry[0] += (getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)) / 1000
            entry[1] += 1
    ranked = sorted(totals.items(), key=lambda kv: -kv[1][0])
    top = [(name, round(ms, 2), int(calls)) for name, (ms, calls) in ranked[:count]]
    return top, int(sum(c for _, c in totals.values())), round(sum(ms for ms, _ in totals.values()), 1)


def _fused_rows(row: dict, graph, x, batch, spec, threat, device, dtype, search: bool, quick: bool = False) -> None:
    """Fused pull-back kernels (verifier.fused) against the eager ones, with and without CUDA
    graphs, in the same process; kernel counts and GPU time from a CUDA-only profile."""
    call = lambda: _bound_call(batch.graph, batch, spec, threat, device)
    with _settings(None, False):
        eager = call()
        row["eager_bound_call_s"], row["eager_bound_call_spread_s"] = _timed(call, device)
        profiled = _top_kernels(call, device)
        if profiled:
            row["eager_top_kernels"], row["eager_kernels"], row["eager_gpu_ms"] = profiled
    with _settings(None, True):
        t0 = time.perf_counter()
        first = call()
        _sync(device)
        row["fused_first_call_s"] = time.perf_counter() - t0  # includes compiling
        row["fused_bound_call_s"], row["fused_bound_call_spread_s"] = _timed(call, device)
        row["fused_vs_eager_max_abs_diff"] = float((first - eager).abs().max())
        row["fused_vs_eager_scale"] = float(eager.abs().max())
        profiled = _top_kernels(call, device)
        if profiled:
            row["fused_top_kernels"], row["fused_kernels"], row["fused_gpu_ms"] = profiled
        if device.type == "cuda":
            replay = _replayed(batch.graph, batch, spec, threat, device)
            eps = torch.full((BATCH,), 0.01, dtype=dtype, device=device)
            t0 = time.perf_counter()
            replayed = replay(eps)
            _sync(device)
            row["fused_capture_s"] = time.perf_counter() - t0
            row["fused_replayed_s"], row["fused_replayed_spread_s"] = _timed(lambda: replay(eps), device)
            row["fused_replayed_vs_eager_max_abs_diff"] = float((replay(eps) - eager).abs().max())
            del replayed, replay
    if search and quick:  # only the default rule's search (fused and replayed where verifier.fused says)
        row["search_default_s_per_sample"], radii = _search(graph, x, device, dtype, graphs=None, fused=None)
        row["search_bound_calls"] = LAST_SEARCH["calls"]
        row["mean_radius"] = float(np.mean(radii))
    elif search:
        row["search_eager_s_per_sample"], reference = _search(graph, x, device, dtype, graphs=False, fused=False)
        row["mean_radius"] = float(np.mean(reference))
        for name, graphs in (("search_fused_s_per_sample", False), ("search_fused_graphs_s_per_sample", True)):
            row[name], radii = _search(graph, x, device, dtype, graphs=graphs, fused=True)
            row[name.replace("_s_per_sample", "_radii_max_rel_diff")] = float(
                np.max(np.abs(np.array(radii) - reference) / np.maximum(reference, 1e-12)))


def probe(device: torch.device, budget: float, dtypes: list[torch.dtype], grid: list | None = None,
          compare_fused: bool = False, progress: Path | None = None, quick: bool = False) -> dict:
    started = time.perf_counter()
    rows = []
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        for cell, hidden, steps in grid or GRID:
            for dtype in dtypes:
                if time.perf_counter() - started > budget:
                    break
                graph = _model(cell, hidden, steps, Path(folder))
                x = rng.uniform(0, 1, (BATCH, steps, FEATURES)).astype(np.float32)
                batch = make_batch(graph, x, device=device, dtype=dtype)
                spec = margin_spec(torch.zeros(BATCH, dtype=torch.long, device=device), CLASSES, None)
                threat = ThreatModel(2.0, "frame")
                call = lambda: _bound_call(batch.graph, batch, spec, threat, device)
                with _settings(None, False):
                    direct = call()  # warm-up: tangent tables, constants, cuBLAS handles
                _sync(device)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                row = {"cell": cell, "hidden": hidden, "steps": steps, "batch": BATCH, "dtype": str(dtype).split(".")[-1]}
                if compare_fused:
                    try:
                        _fused_rows(row, graph, x, batch, spec, threat, device, dtype,
                                    search=time.perf_counter() - started < budget * 0.8, quick=quick)
                    except Exception as exc:  # record why, keep probing
                        row["fused_error"] = f"{type(exc).__name__}: {exc}"[:500]
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    if progress is not None:
                        progress.write_text(json.dumps(rows, indent=1))
                    continue
                median, spread = _timed(call, device)
                row.update({"bound_call_s": median, "bound_call_spread_s": spread, "peak_memory_mb": (
                    torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None)})
                row["kernels_per_bound_call"], row["launch_calls_per_bound_call"] = _kernels(call, device)
                if device.type == "cuda":
                    try:
                        replay = _replayed(batch.graph, batch, spec, threat, device)
                        t0 = time.perf_counter()
                        replayed = replay(torch.full((BATCH,), 0.01, dtype=dtype, device=device))
                        _sync(device)
                        row["capture_s"] = time.perf_counter() - t0
                        eps = torch.full((BATCH,), 0.01, dtype=dtype, device=device)
                        row["replayed_bound_call_s"], row["replayed_spread_s"] = _timed(lambda: replay(eps), device)
                        row["replayed_kernels"], row["replayed_launch_calls"] = _kernels(lambda: replay(eps), device)
                        row["replayed_vs_direct_max_abs_diff"] = float((replayed - direct).abs().max())
                        other = torch.full((BATCH,), 0.02, dtype=dtype, device=device)
                        again = _bound_call(batch.graph, batch, spec, threat, device, 0.02)
                        row["replayed_new_eps_max_abs_diff"] = float((replay(other) - again).abs().max())
                    except Exception as exc:  # record why, keep probing
                        row["replay_error"] = f"{type(exc).__name__}: {exc}"[:500]
                if time.perf_counter() - started < budget * 0.8:
                    try:
                        row["radius_search_s_per_sample"], radii = _search(graph, x, device, dtype, graphs=True)
                        row["search_bound_calls"], row["search_row_calls"] = LAST_SEARCH["calls"], LAST_SEARCH["rows"]
                    except Exception as exc:
                        row["search_error"] = f"{type(exc).__name__}: {exc}"[:500]
                        rows.append(row)
                        print(json.dumps(row), flush=True)
                        continue
                    row["mean_radius"] = float(np.mean(radii))
                    if device.type == "cuda" and time.perf_counter() - started < budget * 0.6:
                        row["radius_search_eager_s_per_sample"], eager = _search(graph, x, device, dtype, graphs=False)
                        row["radii_max_rel_diff_graph_vs_eager"] = float(np.max(np.abs(np.array(radii) - eager)
                                                                                / np.maximum(eager, 1e-12)))
                rows.append(row)
                print(json.dumps(row), flush=True)
    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "threat": "l2 frame balls", "method": "crown", "rows": rows,
            "notes": "kernels = kernels the GPU ran; launch_calls = kernel + graph launches the CPU made; replayed = "
                     "one bound call captured in a CUDA graph (verifier.cuda_graphs), as the radius search uses it",
            "elapsed_s": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--budget", type=float, default=240.0, help="seconds after which no new configuration starts")
    parser.add_argument("--dtypes", default="float64")
    parser.add_argument("--grid", help="configurations to run instead of the default grid, e.g. lstm:256:28,gru:128:28")
    parser.add_argument("--fused", action="store_true",
                        help="compare fused pull-back kernels (verifier.fused) with eager ones instead of CUDA graphs")
    parser.add_argument("--quick", action="store_true", help="with --fused: only the default rule's radius search")
    parser.add_argument("--out")
    args = parser.parse_args()
    dtypes = [getattr(torch, name) for name in args.dtypes.split(",")]
    grid = None
    if args.grid:
        grid = [(cell, int(hidden), int(steps)) for cell, hidden, steps in (item.split(":") for item in args.grid.split(","))]
    progress = Path(args.out).with_suffix(".partial.json") if args.out else None
    report = probe(torch.device(args.device), args.budget, dtypes, grid, args.fused, progress, args.quick)
    text = json.dumps(report, indent=1)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
