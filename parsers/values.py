"""What an ONNX tensor is while the graph is being converted: a constant or a symbolic vector.

A symbolic tensor is one sample's value: the ONNX tensor with its batch axis set to 1, stored
flat (C order) in an IR node. Setting the batch size to 1 keeps the flattening identical with
or without the batch axis, so every op converter reasons about ordinary shapes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Sym:
    node: str
    shape: tuple[int, ...]
    batch_axis: int | None

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def rank(self) -> int:
        return len(self.shape)


Value = Sym | np.ndarray


def is_const(value: Value) -> bool:
    return isinstance(value, np.ndarray)
