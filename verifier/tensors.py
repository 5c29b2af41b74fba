"""Constants of the IR (numpy arrays) as torch tensors, converted once per dtype and device."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

_CONSTANTS: dict[tuple[int, torch.dtype, torch.device], tuple[np.ndarray, Tensor]] = {}


def constant(array: np.ndarray, like: Tensor) -> Tensor:
    """A weight or bias as a tensor of `like`'s dtype/device, converted once per array: the
    bisection builds many propagators over the same graph."""
    key = (id(array), like.dtype, like.device)
    cached = _CONSTANTS.get(key)
    if cached is None or cached[0] is not array:
        if len(_CONSTANTS) > 20000:
            _CONSTANTS.clear()
        with torch.inference_mode(False):  # usable later by autograd (attacks) too
            cached = (array, torch.tensor(np.asarray(array), dtype=like.dtype, device=like.device))
        _CONSTANTS[key] = cached
    return cached[1]
