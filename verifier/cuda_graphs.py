"""Bound calls replayed from a CUDA graph: one launch instead of tens of thousands.

A bound call of a recurrent network is thousands of small tensor operations; on a GPU each is a
kernel launch of ~5-15 µs of CPU time, so the GPU idles (an LSTM with H=128, T=28 made ~68,000
launches per call). The engine's bound computation never reads a device value on the host (the
regions read their flags when built; row indices are written as unit matrices in place), so for a
fixed batch, spec and threat model the whole call can be captured once and replayed for every ε the
radius search tries: the radii are the only input that changes, copied into the captured tensor.

Replay computes exactly what the captured call computed, with the new radii (the same kernels on
the same shapes), so a replayed bound is the engine's bound; `tests/verifier/test_cuda_graphs.py`
checks on CPU that the captured function reads nothing back from the device, and the GPU probe
(`benchmarks/gpu_probe.py`) compares replayed and direct bounds on the device.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
from torch import Tensor


class ReplayedBounds:
    """Bounds for a fixed batch whose radii change between calls, captured in a CUDA graph on
    first use and replayed after. `build(eps)` sets up everything that reads the host (regions,
    checks) around the tensor `eps` that replays will fill, and returns the function computing the
    bounds from it. The caller checks new radii (finite, >= 0): the replay cannot refuse them."""

    def __init__(self, build: Callable[[Tensor], Callable[[], Tensor]], eps: Tensor) -> None:
        if eps.device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        self.eps = eps.clone()
        self.compute = build(self.eps)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.output: Tensor | None = None
        self.failed: str | None = None  # why capturing failed, if it did

    def __call__(self, eps: Tensor) -> Tensor:
        self.eps.copy_(eps)
        if self.failed is not None:
            with torch.no_grad():
                return self.compute()
        if self.graph is None:
            try:
                return self._capture()
            except RuntimeError as exc:  # the same bounds, computed directly (slower), and said so
                self.failed = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                print(f"popqorn: warning: CUDA graph capture failed ({self.failed}); bounding without it "
                      f"(POPQORN_CUDA_GRAPHS=0 skips the attempt)", file=sys.stderr)
                self.graph = None
                with torch.no_grad():
                    return self.compute()
        self.graph.replay()
        return self.output.clone()

    def _capture(self) -> Tensor:
        """One direct call on a side stream (as torch requires before a capture; it creates the
        constants, tangent tables and cuBLAS workspaces outside the capture), whose bounds are this
        call's answer, then the capture (which records the kernels without running them)."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():
            first = self.compute()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.no_grad():
            self.output = self.compute()
        self.graph = graph
        return first


# rows x (widest node)^2 above which an eager bound call keeps the GPU busy anyway, measured on an
# H200 (benchmarks/results/gpu_probe_h200.json): replay won 2.3x at LSTM H=32 (32 x 128^2) and 1.2-1.8x
# at H=128 (32 x 512^2) but lost at H=256 (32 x 1024^2: 0.68-0.88x), where the direct search also
# gains from leaving decided rows out of later calls while a captured call keeps its shape. With
# fused pull-backs (verifier.fused) the GPU has less to do, and replay won at H=256 too: radius search
# 0.81 -> 0.62 s per sample (benchmarks/results/gpu_fused_h200.json).
WORK_LIMIT = 16 * 2**20


def usable(device: torch.device, rows: int, widest: int) -> bool:
    """Whether to replay bound calls from CUDA graphs: on CUDA devices, for launch-bound sizes
    (rows x widest^2 <= WORK_LIMIT) and wherever pull-backs are fused; POPQORN_CUDA_GRAPHS=1
    always, =0 never."""
    import os

    from verifier import fused

    setting = os.environ.get("POPQORN_CUDA_GRAPHS", "auto")
    if device.type != "cuda" or setting == "0":
        return False
    return setting == "1" or rows * widest ** 2 <= WORK_LIMIT or fused.wanted(device, rows, widest)
