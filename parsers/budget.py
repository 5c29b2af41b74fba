"""Resource budgets of one conversion, checked before the work is done.

Model files come from third parties: a declared T = 10^6, nested 10^4-step loops or a
ConstantOfShape of 10^12 elements must end in a one-line refusal, not a hang or a memory blow-up.
Every unrolling (LSTM/GRU/RNN, Loop, Scan) estimates its cost first and is refused when the
estimate does not fit what is left; every tensor the front end computes is sized before numpy
allocates it. The knobs are keyword arguments of `parsers.load_onnx`; messages name them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx

from verifier.errors import ModelFileError


@dataclass(frozen=True)
class Budget:
    """max_nodes: IR nodes in the converted graph. max_unrolled: total unrolled work, summed over
    every recurrent layer (steps x hidden width x directions) and every Loop/Scan (iterations x
    ONNX nodes in the body, nested loops multiplied). max_elements: elements of any single tensor
    the front end materialises (inputs, constants, folded results, data-movement index arrays)."""

    max_nodes: int = 200_000
    max_unrolled: int = 1_000_000
    max_elements: int = 10_000_000

    def __post_init__(self) -> None:
        for name in ("max_nodes", "max_unrolled", "max_elements"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")


class Meter:
    """What one conversion has spent so far, against its Budget."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.unrolled = 0

    def reserve(self, amount: int, where: str) -> None:
        """Refuse before unrolling when an estimated `amount` more work does not fit."""
        if self.unrolled + amount > self.budget.max_unrolled:
            raise ModelFileError(f"{where} would unroll about {amount:,} steps x width (already {self.unrolled:,}), "
                                 f"over the limit max_unrolled={self.budget.max_unrolled:,} "
                                 "(raise it with load_onnx(..., max_unrolled=...))")

    def spend(self, amount: int) -> None:
        self.unrolled += amount

    def charge_unrolled(self, amount: int, where: str) -> None:
        """Reserve and book work whose size is known exactly (a recurrent layer: steps x width)."""
        self.reserve(amount, where)
        self.spend(amount)

    def check_nodes(self, current: int, expected: int, where: str) -> None:
        if current + expected > self.budget.max_nodes:
            raise ModelFileError(f"{where} would bring the IR to about {current + expected:,} nodes, over the limit "
                                 f"max_nodes={self.budget.max_nodes:,} (raise it with load_onnx(..., max_nodes=...))")

    def check_elements(self, count: int, what: str) -> None:
        if count > self.budget.max_elements:
            raise ModelFileError(f"{what} has {count:,} elements, over the limit max_elements="
                                 f"{self.budget.max_elements:,} (raise it with load_onnx(..., max_elements=...))")


def body_cost(graph: onnx.GraphProto, outer: Callable[[str], np.ndarray | None] = lambda name: None) -> int:
    """ONNX nodes converted for one run of `graph`, nested loops multiplied by their trip count
    when it is a known constant (of the body or, through `outer`, of an enclosing scope);
    otherwise counted once: the inner loop checks itself before it unrolls."""
    known: dict[str, np.ndarray] = {}
    for tensor in graph.initializer:
        if _small(tensor.dims):
            known[tensor.name] = onnx.numpy_helper.to_array(tensor)
    cost = 0
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and _small(attr.t.dims):
                    known[node.output[0]] = onnx.numpy_helper.to_array(attr.t)
        cost += 1
        if node.op_type not in ("Loop", "Scan", "If"):
            continue
        resolve = lambda name, known=known: known[name] if name in known else outer(name)
        inner = max((body_cost(attr.g, resolve) for attr in node.attribute if attr.type == onnx.AttributeProto.GRAPH),
                    default=0)
        trips = resolve(node.input[0]) if node.op_type == "Loop" and node.input and node.input[0] else None
        count = 1 if trips is None or np.size(trips) != 1 else int(np.clip(np.asarray(trips).reshape(-1)[0], 0, 2**40))
        cost += count * inner
    return cost


def _small(dims) -> bool:
    return int(np.prod(list(dims), dtype=np.int64)) <= 16
