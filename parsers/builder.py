"""Emits IR nodes with unique, readable names and small algebraic clean-ups.

Converters call these helpers instead of constructing IR nodes directly, so that sizes are
checked as the graph grows, identities are skipped, and sigmoid/tanh factors of a product are
fused into the joint form the engine bounds with 2-D planes.
"""

from __future__ import annotations

import numpy as np

from verifier import activations, ir
from verifier.canonical import canonicalize
from verifier.ir import ActivationFn


class GraphBuilder:
    def __init__(self) -> None:
        self.nodes: dict[str, ir.Node] = {}
        self.sizes: dict[str, int] = {}
        self.inputs: list[ir.Input] = []

    # -- naming -------------------------------------------------------------------------
    def unique(self, name: str) -> str:
        """`name`, or `name_k` for the next free k. One counter per base name (kept on first use)
        makes naming linear in the number of repeats: 30,000 nodes named alike cost 30,000 probes."""
        name = name.strip("/") or "node"
        if name not in self.nodes:
            return name
        counters = self.__dict__.setdefault("_next_suffix", {})
        k = counters.get(name, 1)
        while f"{name}_{k}" in self.nodes:
            k += 1
        counters[name] = k + 1
        return f"{name}_{k}"

    def _emit(self, node: ir.Node, size: int) -> str:
        self.nodes[node.name] = node
        self.sizes[node.name] = size
        return node.name

    # -- node constructors --------------------------------------------------------------
    def input(self, name: str, shape: tuple[int, ...], batch_axis: int | None,
              frame_axis: int | None, onnx_name: str) -> str:
        node = ir.Input(self.unique(name), tuple(int(d) for d in shape), batch_axis, frame_axis, onnx_name)
        self.inputs.append(node)
        return self._emit(node, node.size)

    def affine(self, x: str, weight: np.ndarray, bias: np.ndarray | None, name: str) -> str:
        """weight 2-D (out, in) applied per block of `in`; 1-D: elementwise scale."""
        weight = np.asarray(weight, dtype=np.float64)
        size = self.sizes[x]
        if weight.ndim == 2:
            out_f, in_f = weight.shape
            if size % in_f:
                raise ValueError(f"{name}: input of size {size} is not a multiple of {in_f}")
            out_size = size // in_f * out_f
        elif weight.ndim == 1:
            if weight.size == 1:
                weight = np.full(size, float(weight[0]))
            if weight.size != size:
                raise ValueError(f"{name}: scale of size {weight.size} for input of size {size}")
            out_size = size
        else:
            raise ValueError(f"{name}: weight must be 1-D or 2-D")
        if bias is not None:
            bias = np.broadcast_to(np.asarray(bias, dtype=np.float64).reshape(-1), (out_size,)).copy()
            if not bias.any():
                bias = None
        if weight.ndim == 1 and bias is None and np.all(weight == 1.0):
            return x
        producer = self.nodes[x]
        if weight.ndim == 1 and np.all(weight == 1.0) and isinstance(producer, ir.Affine):
            # a bias added to an affine map's output folds into that map
            merged = bias if producer.bias is None else producer.bias + bias
            node = ir.Affine(self.unique(name), producer.input, producer.weight, merged)
            return self._emit(node, out_size)
        return self._emit(ir.Affine(self.unique(name), x, weight, bias), out_size)

    def scale_shift(self, x: str, scale: float | np.ndarray, shift: float | np.ndarray, name: str) -> str:
        size = self.sizes[x]
        scale = np.broadcast_to(np.asarray(scale, dtype=np.float64).reshape(-1), (size,))
        return self.affine(x, scale, np.asarray(shift, dtype=np.float64), name)

    def add(self, inputs: list[str], name: str) -> str:
        if len(inputs) == 1:
            return inputs[0]
        sizes = {self.sizes[x] for x in inputs}
        if len(sizes) != 1:
            raise ValueError(f"{name}: adding vectors of sizes {sorted(sizes)}")
        return self._emit(ir.Add(self.unique(name), tuple(inputs)), sizes.pop())

    def activation(self, x: str, fn: ActivationFn, name: str) -> str:
        return self._emit(ir.Activation(self.unique(name), x, fn), self.sizes[x])

    def product(self, a: str, b: str, name: str) -> str:
        """a * b elementwise; producers of a or b that the relaxations bound jointly with a product
        (the activation table's `joint_planes`: sigmoid, tanh) are fused into it."""
        if self.sizes[a] != self.sizes[b]:
            raise ValueError(f"{name}: product of sizes {self.sizes[a]} and {self.sizes[b]}")
        left, left_fn = self._unwrap(a)
        right, right_fn = self._unwrap(b)
        node = ir.Product(self.unique(name), left, right, left_fn, right_fn)
        return self._emit(node, self.sizes[a])

    def _unwrap(self, x: str) -> tuple[str, ActivationFn | None]:
        node = self.nodes[x]
        if isinstance(node, ir.Activation) and activations.spec(node.fn).joint_planes:
            return node.input, node.fn
        return x, None

    def concat(self, inputs: list[str], name: str) -> str:
        if len(inputs) == 1:
            return inputs[0]
        return self._emit(ir.Concat(self.unique(name), tuple(inputs)), sum(self.sizes[x] for x in inputs))

    def select(self, x: str, indices: np.ndarray, name: str) -> str:
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        size = self.sizes[x]
        if indices.size and (indices.min() < 0 or indices.max() >= size):
            raise ValueError(f"{name}: index out of range for a vector of size {size}")
        if indices.size == size and np.array_equal(indices, np.arange(size)):
            return x
        return self._emit(ir.Select(self.unique(name), x, indices), indices.size)

    # -- finishing ----------------------------------------------------------------------
    def build(self, outputs: list[ir.Output], **info) -> ir.Graph:
        """Keep only nodes the outputs depend on (inputs always stay), in emission order, then write
        the graph in the canonical gate algebra (verifier.canonical), whatever the exporter wrote."""
        live = {out.node for out in outputs}
        for node in reversed(list(self.nodes.values())):
            if node.name in live:
                live.update(ir.node_inputs(node))
        kept = tuple(n for n in self.nodes.values() if n.name in live or isinstance(n, ir.Input))
        return canonicalize(ir.Graph(nodes=kept, inputs=tuple(self.inputs), outputs=tuple(outputs), **info))
