"""Exact forward of every IR activation on torch tensors (used by evaluate and attacks)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from verifier.ir import Act, ActivationFn

_FORWARD: dict[Act, Callable[[Tensor, ActivationFn], Tensor]] = {
    Act.SIGMOID: lambda x, f: torch.sigmoid(x),
    Act.TANH: lambda x, f: torch.tanh(x),
    Act.RELU: lambda x, f: torch.relu(x),
    Act.LEAKY_RELU: lambda x, f: torch.where(x >= 0, x, f.alpha * x),
    Act.CLIP: lambda x, f: torch.clamp(x, min=f.alpha, max=f.beta),
    Act.ELU: lambda x, f: torch.where(x >= 0, x, f.alpha * torch.expm1(x)),
    Act.SOFTPLUS: lambda x, f: torch.nn.functional.softplus(x),
    Act.SOFTSIGN: lambda x, f: x / (1 + x.abs()),
    Act.THRESHOLDED_RELU: lambda x, f: torch.where(x > f.alpha, x, torch.zeros_like(x)),
}


def apply(fn: ActivationFn | None, x: Tensor) -> Tensor:
    return x if fn is None else _FORWARD[fn.kind](x, fn)
