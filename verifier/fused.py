"""The pull-back arithmetic of activations and products, eager or fused into a few GPU kernels.

Why: on a GPU, a large model's bound call is bound by memory traffic, not by arithmetic. Pulling a
(batch, rows, n) coefficient tensor back through a product's planes in eager torch reads or writes
it ~18 times (a clamp, four products, two sums, two matrix-vector products); an LSTM with H=256 and
T=28 spent ~1.6 of its ~1.9 s of GPU time per bound call there (the matrix products need ~0.3 s).
`torch.compile` fuses each pull-back into one pass over the coefficients. It is the same
arithmetic, so the bounds agree with the eager ones to float rounding (a sum's order may differ).

Used on CUDA devices for large bound calls, where compiling (~20-60 s, once per process and shape
family) pays off; eager elsewhere, and always where gradients flow (the optimised mode).
POPQORN_FUSED=1 forces fusing (any device: CPU compiles through a C++ compiler), =0 disables it.
A compile failure warns on stderr and falls back to the eager kernels: never a different bound.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from verifier.propagation import LineForm, PlaneForm


def _batched_matrix_vector(a: Tensor) -> bool:
    """Whether sum_n a[b, r, n] v[b, n] should be a batched matrix-vector product rather than a
    product and a sum: on a CPU, torch's float64 batched product ran 2-3x slower than the two
    elementwise passes for a batch of 10-70 rows of 64-784 columns (one sample is one fast
    matrix-vector product); on a GPU it is one kernel instead of two."""
    return a.shape[0] == 1 or a.device.type != "cpu"


def _shared_or_rowwise_sum(a: Tensor, per_neuron: Tensor) -> Tensor:
    """sum_n a[b, r, n] * v[b, ., n] -> (batch, rows); a matrix-vector product when v is shared."""
    if per_neuron.shape[1] == 1 and _batched_matrix_vector(a):
        return torch.matmul(a, per_neuron.transpose(1, 2)).squeeze(-1)
    return (a * per_neuron).sum(-1)


def eager_line(a: Tensor, slope: Tensor, slope_gap: Tensor, intercept: Tensor, intercept_gap: Tensor
               ) -> tuple[Tensor, Tensor]:
    """Coefficients on an activation's input and the constant of its lines, for lower-bound rows a
    (negative coefficients take the upper line: lower + gap)."""
    negative = a.clamp(max=0)
    return (a * slope + negative * slope_gap,
            _shared_or_rowwise_sum(a, intercept) + _shared_or_rowwise_sum(negative, intercept_gap))


def eager_plane(a: Tensor, x: Tensor, x_gap: Tensor, y: Tensor, y_gap: Tensor, const: Tensor, const_gap: Tensor
                ) -> tuple[Tensor, Tensor, Tensor]:
    """Coefficients on a product's two factors and the constant of its planes (see eager_line)."""
    negative = a.clamp(max=0)
    return (a * x + negative * x_gap, a * y + negative * y_gap,
            _shared_or_rowwise_sum(a, const) + _shared_or_rowwise_sum(negative, const_gap))


def _fusable_line(a: Tensor, slope: Tensor, slope_gap: Tensor, intercept: Tensor, intercept_gap: Tensor
                  ) -> tuple[Tensor, Tensor]:
    negative = a.clamp(max=0)
    return a * slope + negative * slope_gap, (a * intercept + negative * intercept_gap).sum(-1)


def _fusable_plane(a: Tensor, x: Tensor, x_gap: Tensor, y: Tensor, y_gap: Tensor, const: Tensor, const_gap: Tensor
                   ) -> tuple[Tensor, Tensor, Tensor]:
    negative = a.clamp(max=0)
    return a * x + negative * x_gap, a * y + negative * y_gap, (a * const + negative * const_gap).sum(-1)


def eager_dot(a: Tensor, vector: Tensor) -> Tensor:
    """sum_n a[b, r, n] * vector[b, n] -> (batch, rows): an input's centre term."""
    if _batched_matrix_vector(a):
        return torch.matmul(a, vector.unsqueeze(-1)).squeeze(-1)
    return (a * vector.unsqueeze(1)).sum(-1)


def _fusable_dot(a: Tensor, vector: Tensor) -> Tensor:
    # one read of a; cuBLAS's batched float64 matrix-vector product ran at ~5 % of the H200's
    # memory bandwidth on these shapes (373 ms of a 1.2 s LSTM bound call)
    return (a * vector.unsqueeze(1)).sum(-1)


@dataclass
class PullBacks:
    """The pull-back kernels a backward pass uses."""

    name: str
    line_kernel: Callable[..., tuple[Tensor, Tensor]]
    plane_kernel: Callable[..., tuple[Tensor, Tensor, Tensor]]
    dot: Callable[[Tensor, Tensor], Tensor]

    def line(self, a: Tensor, form: LineForm) -> tuple[Tensor, Tensor]:
        return self.line_kernel(a, form.slope, form.slope_gap, form.intercept, form.intercept_gap)

    def plane(self, a: Tensor, form: PlaneForm) -> tuple[Tensor, Tensor, Tensor]:
        return self.plane_kernel(a, form.x, form.x_gap, form.y, form.y_gap, form.const, form.const_gap)


EAGER = PullBacks("eager", eager_line, eager_plane, eager_dot)


class _Compiled:
    """A torch.compile'd kernel that falls back, once and with a warning, to its eager twin."""

    def __init__(self, fusable: Callable, eager: Callable) -> None:
        self.fusable, self.eager = fusable, eager
        self.compiled: Callable | None = None
        self.failed = False

    def __call__(self, *args: Tensor):
        if self.failed:
            return self.eager(*args)
        if self.compiled is None:
            self.compiled = torch.compile(self.fusable, dynamic=True, fullgraph=True)
        try:
            return self.compiled(*args)
        except Exception as exc:  # noqa: BLE001 - any compiler failure: the same bounds, eagerly
            self.failed = True
            first = str(exc).splitlines()[0] if str(exc) else ""
            print(f"popqorn: warning: fusing the pull-back kernels failed ({type(exc).__name__}: {first[:200]}); "
                  f"bounding without it (POPQORN_FUSED=0 skips the attempt)", file=sys.stderr)
            return self.eager(*args)


_FUSED: PullBacks | None = None

# rows x (widest node)^2 from which fused kernels are used on CUDA by default. Measured on an H200
# (benchmarks/results/gpu_fused_h200.json, LSTM T=28, batch 32): fused kernels took a bound call's GPU
# time from 479 to 278 ms at H=128 (32 x 512^2) and from 1908 to 1174 ms at H=256; compiling costs
# ~15 s once per process (less with inductor's on-disk cache), so small calls stay eager.
WORK_FLOOR = 4 * 2**20


def fused() -> PullBacks:
    """The compiled kernels (one set per process: compiled once per shape family)."""
    global _FUSED
    if _FUSED is None:
        _FUSED = PullBacks("fused", _Compiled(_fusable_line, eager_line), _Compiled(_fusable_plane, eager_plane),
                           _Compiled(_fusable_dot, eager_dot))
    return _FUSED


def wanted(device: torch.device, rows: int, widest: int) -> bool:
    """Whether bound calls of this size fuse their pull-backs: on CUDA above WORK_FLOOR when triton
    (inductor's GPU code generator) is installed; POPQORN_FUSED=1 always, =0 never."""
    setting = os.environ.get("POPQORN_FUSED", "auto")
    if setting in ("0", "1"):
        return setting == "1"
    if device.type != "cuda" or rows * widest ** 2 <= WORK_FLOOR:
        return False
    import importlib.util

    return importlib.util.find_spec("triton") is not None


def pull_backs_for(device: torch.device, rows: int, widest: int) -> PullBacks:
    """The kernels for a bound call of this size (see wanted)."""
    return fused() if wanted(device, rows, widest) else EAGER
