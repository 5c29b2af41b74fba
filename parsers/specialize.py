"""Graphs whose IR depends on the feeds: symbolic dimensions and constants fed as inputs.

A dynamic time axis can only be unrolled once its length is known, and LSTM weights fed as graph
inputs (every ONNX conformance case does it) can only be used once their values are. For such
models `load_onnx` returns a graph that lists the inputs (unknown dimensions written -1, batch
axis 1) and whose `specializer` builds the concrete graph from the feeds, as onnxruntime's
`run(None, feeds)` would take them:

- every missing dimension is read from the fed array (a dimension name shared by several inputs
  must agree);
- inputs a converter needs as constants are taken at their fed values — identical on every batch
  row, or the input has no batch axis — folded into the graph and dropped from its inputs, so
  bounds and certificates hold them fixed at exactly those values;
- one graph per concrete shape and folded values is kept (a small LRU cache).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import numpy as np

from parsers.builder import GraphBuilder
from parsers.context import clean_name
from parsers.errors import ConstantRequired
from parsers.inputs import DeclaredInput
from parsers.loader import Conversion
from verifier import ir
from verifier.errors import InputError

CACHE_SIZE = 4


def symbolic_graph(conversion: Conversion, declared: list[DeclaredInput], fold: set[str],
                   uses: dict[str, ConstantRequired] | None = None) -> ir.Graph:
    """The placeholder graph: inputs only, no outputs, and the specializer."""
    builder = GraphBuilder()
    for item in declared:
        builder.input(clean_name(item.onnx_name), item.template(), item.batch_axis, item.frame_axis, item.onnx_name)
    notes = []
    open_dims = {item.onnx_name: [item.dims[k] for k in item.unknown_axes] for item in declared if item.unknown_axes}
    if open_dims:
        notes.append(f"dynamic dimensions {open_dims}: the IR is built for the shapes of the feeds")
    if fold:
        notes.append(f"inputs {sorted(fold)} are used as constants: bound from the feeds and held fixed")
    specializer = Specializer(conversion, declared, fold, uses or {})
    return ir.Graph(nodes=tuple(builder.inputs), inputs=tuple(builder.inputs), outputs=(), notes=tuple(notes),
                    opset=conversion.opset, producer=conversion.producer, specializer=specializer)


def bind_shapes(graph: ir.Graph, shapes: Mapping[str, Sequence[int]]) -> ir.Graph:
    """The concrete graph for these full input shapes (batch included), without feeds: for a
    command that knows shapes (--input-shape) but has no samples yet. Graphs without a specializer
    come back unchanged; a graph that needs input values (constants fed as inputs) is refused."""
    if graph.specializer is None:
        return graph
    if not isinstance(graph.specializer, Specializer):
        raise InputError("this graph's specializer was not made by parsers.load_onnx")
    return graph.specializer.for_shapes(shapes)


class Specializer:
    """Callable feeds -> concrete ir.Graph, set as `ir.Graph.specializer` by the loader."""

    def __init__(self, conversion: Conversion, declared: list[DeclaredInput], fold: set[str],
                 uses: dict[str, ConstantRequired]) -> None:
        self.conversion, self.declared = conversion, declared
        self.fold, self.uses = set(fold), dict(uses)
        self.cache: OrderedDict[tuple, ir.Graph] = OrderedDict()

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> ir.Graph:
        known = [d.onnx_name for d in self.declared]
        unknown = sorted(set(feeds) - set(known))
        if unknown:
            raise InputError(f"inputs do not match the model: unknown {unknown}; the model takes {known}")
        shapes = self._shapes(feeds)
        return self._graph(shapes, feeds)

    def for_shapes(self, shapes: Mapping[str, Sequence[int]]) -> ir.Graph:
        known = {d.onnx_name for d in self.declared}
        unknown = sorted(set(shapes) - known)
        if unknown:
            raise InputError(f"shapes given for {unknown}, but the model's inputs are {sorted(known)}")
        stand_ins = {}
        for name, shape in shapes.items():
            try:
                dims = tuple(int(d) for d in shape)
            except (TypeError, ValueError):
                raise InputError(f"input {name!r}: shape {shape!r} is not a tuple of integers") from None
            if any(d < 0 for d in dims):
                raise InputError(f"input {name!r}: shape {dims} has a negative dimension")
            stand_ins[name] = np.broadcast_to(np.zeros((), np.float32), dims)  # no memory: shapes only
        held = sorted(self.fold & set(stand_ins))
        if held:
            raise InputError(f"inputs {held} are used as constants; their values are needed, not only their shapes")
        return self(stand_ins)

    # -- binding ------------------------------------------------------------------------
    def _shapes(self, feeds: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
        symbols: dict[str, tuple[int, str]] = {}
        shapes = {}
        for item in self.declared:
            name = item.onnx_name
            if name not in feeds:
                if name in self.fold:
                    raise InputError(f"input {name!r} is used as a constant{self._where(name)}; pass its value "
                                     "in the feeds (it is held fixed at that value)")
                if item.unknown_axes:
                    dims = [item.dims[k] for k in item.unknown_axes]
                    raise InputError(f"input {name!r} has dynamic dimension(s) {dims} on axis {item.unknown_axes}; "
                                     f"pass it in the feeds, or give its full shape (--input-shape {name}=d0,d1,...)")
                shapes[name] = item.template()
                continue
            shapes[name] = self._shape_of(item, np.shape(feeds[name]), symbols)
        return shapes

    def _shape_of(self, item: DeclaredInput, shape: tuple[int, ...], symbols: dict) -> tuple[int, ...]:
        name = item.onnx_name
        expected = tuple("N" if k == item.batch_axis else d for k, d in enumerate(item.dims))
        if len(shape) != len(item.dims):
            raise InputError(f"input {name!r} has shape {tuple(shape)} ({len(shape)} axes); the model expects "
                             f"{len(item.dims)} axes {expected}")
        for k, (size, dim) in enumerate(zip(shape, item.dims)):
            if k == item.batch_axis:
                continue
            if size < 1:
                raise InputError(f"input {name!r}: axis {k} has size {size}")
            if isinstance(dim, int) and size != dim:
                raise InputError(f"input {name!r}: axis {k} has size {size}; the model expects {dim} "
                                 f"(shape {expected})")
            if isinstance(dim, str) and dim != "?":
                first = symbols.setdefault(dim, (size, name))
                if first[0] != size:
                    raise InputError(f"input {name!r}: axis {k} ({dim!r}) has size {size}, but {dim!r} is {first[0]} "
                                     f"in input {first[1]!r}")
        concrete = tuple(1 if k == item.batch_axis else int(s) for k, s in enumerate(shape))
        count = int(np.prod(concrete, dtype=np.float64))
        limit = self.conversion.budget.max_elements
        if count > limit:
            raise InputError(f"input {name!r} has {count:,} elements per sample, over the limit max_elements="
                             f"{limit:,} (raise it with load_onnx(..., max_elements=...))")
        return concrete

    def _constant(self, name: str, value) -> np.ndarray:
        """The fed value of an input held fixed: one batch row, the same for every sample."""
        item = next(d for d in self.declared if d.onnx_name == name)
        array = np.asarray(value)
        if array.dtype.kind not in "fiub":
            raise InputError(f"input {name!r} has dtype {array.dtype}; a numeric array is required")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise InputError(f"input {name!r} contains NaN or infinite values")
        if item.batch_axis is not None and array.shape[item.batch_axis] != 1:
            first = np.take(array, [0], axis=item.batch_axis)
            if not np.array_equal(np.broadcast_to(first, array.shape), array):
                raise InputError(f"input {name!r} is used as a constant{self._where(name)} and must be the same for "
                                 f"every sample in a batch, but it differs along its batch axis {item.batch_axis} (certify and "
                                 "audit take such samples one at a time with --batch-size 1)")
            array = first
        return array

    def _where(self, name: str) -> str:
        need = self.uses.get(name)
        return f" ({need.what} of {need.op_type} node {need.node_name!r})" if need else ""

    # -- building -----------------------------------------------------------------------
    def _graph(self, shapes: dict[str, tuple[int, ...]], feeds: Mapping[str, np.ndarray]) -> ir.Graph:
        for _ in range(len(self.declared) + 1):
            constants = {name: self._constant(name, feeds[name]) for name in sorted(self.fold)}
            key = (tuple(sorted(shapes.items())),
                   tuple((n, v.dtype.str, v.shape, hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest())
                         for n, v in constants.items()))
            if key in self.cache:
                self.cache.move_to_end(key)
                return self.cache[key]
            try:
                graph = self.conversion.build(self.declared, shapes, constants)
            except ConstantRequired as need:
                if need.input_name in self.fold:
                    raise RuntimeError(f"input {need.input_name!r} was folded but is still symbolic") from need
                self.conversion.check_foldable(need, self.declared)
                self.fold.add(need.input_name)
                self.uses[need.input_name] = need
                if need.input_name not in feeds:
                    raise InputError(f"input {need.input_name!r} is used as a constant{self._where(need.input_name)}; "
                                     "pass its value in the feeds (it is held fixed at that value)") from None
                continue
            self.cache[key] = graph
            while len(self.cache) > CACHE_SIZE:
                self.cache.popitem(last=False)
            return graph
        raise RuntimeError("the set of inputs used as constants did not settle")
