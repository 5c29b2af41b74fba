"""Graph inputs as the model declares them: element type, dimensions (known or symbolic), and
where the batch and time axes are.

The batch axis is taken, in this order, from the caller (`batch_axes`), from the recurrent op
that reads the input (also through Transpose/Slice/Identity/Cast, as dynamo writes it), from a
symbolic dimension named like a batch, and otherwise guessed as axis 0 (`evidence=False`: the
loader may then try the other axes when the guess mixes samples)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import onnx

from verifier.errors import InputError, ModelFileError

RECURRENT = {"LSTM", "GRU", "RNN"}
FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
INTEGER_TYPES = {onnx.TensorProto.INT8, onnx.TensorProto.INT16, onnx.TensorProto.INT32, onnx.TensorProto.INT64,
                 onnx.TensorProto.UINT8, onnx.TensorProto.UINT16, onnx.TensorProto.UINT32, onnx.TensorProto.UINT64}
_BATCH_NAME = re.compile(r"batch|^n$|^b$|unk__|^s0$", re.IGNORECASE)
_SEQUENCE_LENS = 4  # input slot of sequence_lens in LSTM/GRU/RNN
_WEIGHT_SLOTS = {1, 2, 3, 7}  # W, R, B, P: no batch axis
_PASS_THROUGH = {"Identity", "Cast", "Slice", "Transpose"}

Axes = tuple[int | None, int | None]


@dataclass(frozen=True)
class DeclaredInput:
    """One graph input. `dims` holds ints and, for dimensions the model leaves open, their names
    ("?" when unnamed). `constant_only`: an integer input read only as sequence_lens, bound from
    the feeds and never perturbed."""

    onnx_name: str
    dims: tuple[int | str, ...]
    batch_axis: int | None
    frame_axis: int | None
    evidence: bool
    constant_only: bool = False

    @property
    def unknown_axes(self) -> list[int]:
        return [k for k, d in enumerate(self.dims) if isinstance(d, str) and k != self.batch_axis]

    def template(self) -> tuple[int, ...]:
        """The IR shape: batch axis 1, unknown dimensions -1."""
        return tuple(1 if k == self.batch_axis else (-1 if isinstance(d, str) else int(d))
                     for k, d in enumerate(self.dims))

    def with_axes(self, batch_axis: int | None) -> DeclaredInput:
        frame = self.frame_axis
        if frame is not None and frame == batch_axis:
            frame = next((k for k in range(len(self.dims)) if k != batch_axis), None) if len(self.dims) >= 3 else None
        return DeclaredInput(self.onnx_name, self.dims, batch_axis, frame, True, self.constant_only)


def declared_dims(info: onnx.ValueInfoProto) -> tuple[int | str, ...] | None:
    """The declared dimensions, or None when the input declares no shape at all."""
    tensor = info.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim)


def _uses(graph: onnx.GraphProto, name: str) -> list[tuple[onnx.NodeProto, int]]:
    return [(node, slot) for node in graph.node for slot, used in enumerate(node.input) if used == name]


def _attr(node: onnx.NodeProto, name: str, default):
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def consumer_axes(graph: onnx.GraphProto, name: str, rank: int, opset: int, depth: int = 4) -> Axes | None:
    """(batch_axis, frame_axis) when a recurrent op or a Scan (opset 9 on) reads `name`, directly or
    through a few axis-preserving ops (Transpose maps the axes through its permutation)."""
    for node, slot in _uses(graph, name):
        if node.op_type == "Scan" and opset >= 9:
            count = _attr(node, "num_scan_inputs", 0)
            position = slot - (len(node.input) - count)
            if position >= 0 and rank:
                axes = list(_attr(node, "scan_input_axes", []) or [0] * count)
                frame = (axes[position] if position < len(axes) else 0) % rank
                batch = None if rank <= 1 else (1 if frame == 0 else 0)
                return batch, frame
        if node.op_type in RECURRENT:
            layout = _attr(node, "layout", 0)
            if slot == 0:
                return (1, 0) if layout == 0 else (0, 1)
            if slot in (5, 6):
                return (1, None) if layout == 0 else (0, None)
            if slot == _SEQUENCE_LENS:
                return 0, None
            if slot in _WEIGHT_SLOTS:
                return None, None
        if node.op_type in _PASS_THROUGH and slot == 0 and depth > 0:
            found = consumer_axes(graph, node.output[0], rank, opset, depth - 1)
            if found is None:
                continue
            if node.op_type != "Transpose":
                return found
            perm = list(_attr(node, "perm", []) or range(rank - 1, -1, -1))
            if len(perm) != rank:
                continue
            return tuple(None if a is None else int(perm[a]) for a in found)  # type: ignore[return-value]
    return None


def _guessed_axes(dims: tuple[int | str, ...]) -> tuple[int, int | None, bool]:
    symbolic = [k for k, d in enumerate(dims) if isinstance(d, str)]
    named = [k for k in symbolic if _BATCH_NAME.search(dims[k])]
    batch = (named or symbolic or [0])[0]
    others = [k for k in range(len(dims)) if k != batch]
    return batch, (others[0] if len(dims) >= 3 else None), bool(named or symbolic)


def _element_type(graph: onnx.GraphProto, info: onnx.ValueInfoProto) -> bool:
    """True for float inputs, False for integer inputs read only as sequence_lens; refuses the rest.
    An input that only drives a Loop's trip count or condition goes on to the Loop converter, which
    refuses it naming the node (input-dependent control flow)."""
    elem = info.type.tensor_type.elem_type
    uses = _uses(graph, info.name)
    if elem in FLOAT_TYPES or (uses and all(n.op_type == "Loop" and s in (0, 1) for n, s in uses)):
        return True
    type_name = onnx.TensorProto.DataType.Name(elem) if elem in onnx.TensorProto.DataType.values() else str(elem)
    if elem in INTEGER_TYPES and uses and all(n.op_type in RECURRENT and s == _SEQUENCE_LENS for n, s in uses):
        return False
    raise InputError(f"model input {info.name!r} has element type {type_name}; popqorn verifies real-valued "
                     "(float) inputs only (integer inputs are accepted only as sequence_lens)")


def declare_inputs(graph: onnx.GraphProto, opset: int, input_shapes: dict | None, batch_axes: dict | None,
                   frame_axes: dict | None, max_elements: int) -> list[DeclaredInput]:
    """Every non-initializer graph input, checked and with its axes."""
    initializers = {t.name for t in graph.initializer} | {t.values.name for t in graph.sparse_initializer}
    input_shapes, batch_axes, frame_axes = input_shapes or {}, batch_axes or {}, frame_axes or {}
    declared = []
    for info in graph.input:
        if info.name in initializers:
            continue
        if not info.type.HasField("tensor_type"):
            raise ModelFileError(f"graph input {info.name!r} is not a tensor")
        is_float = _element_type(graph, info)
        dims = declared_dims(info)
        if dims is None and info.name not in input_shapes:
            raise InputError(f"input {info.name!r} declares no shape; give its full shape "
                             f"(load_onnx(input_shapes=...), --input-shape {info.name}=d0,d1,...)")
        dims = dims if dims is not None else tuple("?" for _ in input_shapes[info.name])
        found = consumer_axes(graph, info.name, len(dims), opset)
        batch, frame, evidence = _guessed_axes(dims) if dims else (None, None, True)
        if found is not None:
            (batch, frame), evidence = found, True
        if info.name in batch_axes:
            batch, evidence = batch_axes[info.name], True
            if frame is not None and frame == batch:
                frame = next((k for k in range(len(dims)) if k != batch), None) if len(dims) >= 3 else None
        if info.name in frame_axes:
            frame = frame_axes[info.name]
        for axis, what in ((batch, "batch"), (frame, "frame")):
            if axis is not None and not 0 <= axis < len(dims):
                raise InputError(f"input {info.name!r}: {what} axis {axis} is out of range for rank {len(dims)}")
        if info.name in input_shapes:
            dims = _given_shape(info.name, dims, input_shapes[info.name], batch)
        if not is_float:
            batch, frame = (batch if batch is not None and batch < len(dims) else None), None
        negative = [k for k, d in enumerate(dims) if isinstance(d, int) and d < 0]
        if negative:  # only a file can say so (input_shapes are checked): no valid ONNX dimension is negative
            raise ModelFileError(f"input {info.name!r} declares shape {tuple(dims)}: axis {negative[0]} has the "
                                 f"negative length {dims[negative[0]]}; the file is malformed")
        empty = [k for k, d in enumerate(dims) if isinstance(d, int) and d < 1 and k != batch]
        if empty:
            raise InputError(f"input {info.name!r} declares shape {tuple(dims)}: axis {empty[0]} is empty "
                             "(dimension 0); popqorn needs at least one element on every axis")
        item = DeclaredInput(info.name, dims, batch, frame, evidence, constant_only=not is_float)
        known = [d for k, d in enumerate(item.template()) if d > 0]
        count = int(np.prod(known, dtype=np.float64))
        if count > max_elements:
            raise InputError(f"input {info.name!r} has {count:,} elements per sample, over the limit max_elements="
                             f"{max_elements:,} (raise it with load_onnx(..., max_elements=...))")
        declared.append(item)
    return declared


def _given_shape(name: str, dims: tuple, given, batch: int | None) -> tuple[int | str, ...]:
    try:
        shape = tuple(int(d) for d in given)
    except (TypeError, ValueError):
        raise InputError(f"input {name!r}: shape {given!r} is not a tuple of integers") from None
    if len(shape) != len(dims) or any(g < 1 for g in shape) or any(
            isinstance(d, int) and d != g and k != batch for k, (d, g) in enumerate(zip(dims, shape))):
        raise InputError(f"input {name!r}: shape {shape} does not fit the model's {tuple(dims)}")
    # the batch size stays as given: the batch axis may still be a guess that the axis search of a
    # fixed-shape export moves (template() sets whichever axis it settles on to 1)
    return shape
