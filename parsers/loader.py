"""`load_onnx`: an untrusted ONNX file in, a one-sample IR graph out."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import onnx
from onnx import external_data_helper, numpy_helper

from parsers import ops  # noqa: F401  (registers the converters)
from parsers.builder import GraphBuilder
from parsers.context import Context, clean_name
from parsers.values import Sym
from parsers.walk import convert_nodes
from verifier import ir
from verifier.errors import InputError, ModelFileError

MAX_MODEL_BYTES = 512 * 1024 * 1024
_RECURRENT = {"LSTM", "GRU", "RNN"}
_BATCH_NAME = re.compile(r"batch|^n$|^b$|^N$|^B$|unk__|^s0$", re.IGNORECASE)


def read_model(path: str | os.PathLike, max_bytes: int = MAX_MODEL_BYTES) -> onnx.ModelProto:
    """Load and validate a model file without trusting it: size cap, external data confined
    to the model's folder, onnx.checker. Nothing in the file is executed."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    size = path.stat().st_size
    if size > max_bytes:
        raise ModelFileError(f"model file {path} is {size} bytes, over the {max_bytes}-byte limit")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ModelFileError(f"{path} is not a readable ONNX model ({type(exc).__name__})") from exc
    if not model.graph.node and not model.graph.output:
        raise ModelFileError(f"{path} is not an ONNX model (empty graph)")
    folder = path.resolve().parent
    external = [t for t in external_data_helper._get_all_tensors(model)
                if t.data_location == onnx.TensorProto.EXTERNAL]
    total = size
    for tensor in external:
        info = {e.key: e.value for e in tensor.external_data}
        target = (folder / info.get("location", "")).resolve()
        if folder not in target.parents or not target.is_file():
            raise ModelFileError(f"tensor {tensor.name!r} refers to external data outside the model's "
                                 f"folder or missing: {info.get('location')!r}")
        total += target.stat().st_size
        if total > max_bytes:
            raise ModelFileError(f"model with external data exceeds the {max_bytes}-byte limit")
    if external:
        external_data_helper.load_external_data_for_model(model, str(folder))
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(f"{path} fails onnx.checker: {first}") from exc
    return model


def default_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    raise ModelFileError("model imports no default-domain opset")


def _declared_dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    dims = []
    for d in value_info.type.tensor_type.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?"))
    return dims


def _axes_from_consumers(graph: onnx.GraphProto, name: str) -> tuple[int, int | None] | None:
    """(batch_axis, frame_axis) when a recurrent op reads the input directly."""
    for node in graph.node:
        if node.op_type == "Scan" and name in node.input:
            count = next((a.i for a in node.attribute if a.name == "num_scan_inputs"), 0)
            slot = list(node.input).index(name) - (len(node.input) - count)
            if slot >= 0:  # a scanned sequence: frames along the scan axis, batch on another
                axes = next((list(a.ints) for a in node.attribute if a.name == "scan_input_axes"), [0] * count)
                rank = len(_declared_dims(next(i for i in graph.input if i.name == name))) or 3
                frame = (axes[slot] if axes else 0) % rank
                return (1 if frame == 0 else 0), frame
        if node.op_type not in _RECURRENT or name not in node.input:
            continue
        layout = next((a.i for a in node.attribute if a.name == "layout"), 0)
        slot = list(node.input).index(name)
        if slot == 0:
            return (1, 0) if layout == 0 else (0, 1)
        if slot in (5, 6):  # initial_h / initial_c: [dirs, batch, hidden] or [batch, dirs, hidden]
            return (1, None) if layout == 0 else (0, None)
    return None


def _input_axes(graph: onnx.GraphProto, info: onnx.ValueInfoProto, dims: list) -> tuple[int | None, int | None]:
    rank = len(dims)
    if rank == 0:
        return None, None
    found = _axes_from_consumers(graph, info.name)
    if found:
        return found
    symbolic = [k for k, d in enumerate(dims) if isinstance(d, str)]
    named = [k for k in symbolic if _BATCH_NAME.search(dims[k])]
    batch = (named or symbolic or [0])[0]
    others = [k for k in range(rank) if k != batch]
    frame = others[0] if rank >= 3 else None
    return batch, frame


def load_onnx(path: str | os.PathLike, input_shapes: dict[str, tuple[int, ...]] | None = None,
              batch_axes: dict[str, int | None] | None = None,
              frame_axes: dict[str, int | None] | None = None,
              max_bytes: int = MAX_MODEL_BYTES) -> ir.Graph:
    """Parse an ONNX model into a one-sample IR graph.

    input_shapes: full shapes (batch included) for inputs whose non-batch dims are dynamic.
    batch_axes / frame_axes: override the inferred batch and time axis of an input.
    """
    model = read_model(path, max_bytes)
    return convert_model(model, input_shapes, batch_axes, frame_axes)


def convert_model(model: onnx.ModelProto, input_shapes=None, batch_axes=None, frame_axes=None) -> ir.Graph:
    graph = model.graph
    opset = default_opset(model)
    builder = GraphBuilder()
    ctx = Context(builder, opset)
    initializer_names = set()
    for tensor in graph.initializer:
        ctx.bind(tensor.name, numpy_helper.to_array(tensor))
        initializer_names.add(tensor.name)
    for node in graph.node:  # Constant nodes may also sit in sparse_initializer; handled by folding
        pass
    input_shapes = input_shapes or {}
    for info in graph.input:
        if info.name in initializer_names:
            continue
        if not info.type.HasField("tensor_type"):
            raise ModelFileError(f"graph input {info.name!r} is not a tensor")
        dims = _declared_dims(info)
        batch, frame = _input_axes(graph, info, dims)
        if batch_axes and info.name in batch_axes:
            batch = batch_axes[info.name]
        if frame_axes and info.name in frame_axes:
            frame = frame_axes[info.name]
        if info.name in input_shapes:
            given = tuple(int(d) for d in input_shapes[info.name])
            if len(given) != len(dims) or any(isinstance(d, int) and d != g and k != batch
                                              for k, (d, g) in enumerate(zip(dims, given))):
                raise InputError(f"input {info.name!r}: shape {given} does not fit the model's {tuple(dims)}")
            dims = list(given)
        unknown = [k for k, d in enumerate(dims) if isinstance(d, str) and k != batch]
        if unknown:
            raise InputError(f"input {info.name!r} has dynamic dimension(s) {[dims[k] for k in unknown]} "
                             f"on axis {unknown}; give the input's full shape (e.g. from a sample file)")
        shape = tuple(1 if k == batch else int(d) for k, d in enumerate(dims))
        node = builder.input(clean_name(info.name), shape, batch, frame, info.name)
        ctx.bind(info.name, Sym(node, shape, batch))

    trailing = _trailing_softmax(graph)
    convert_nodes(ctx, list(graph.node), skip={n.name for n, _ in trailing.values()})
    outputs = []
    for info in graph.output:
        post, axis, source = None, -1, info.name
        if info.name in trailing:
            node, post = trailing[info.name]
            source = node.input[0]
            axis = next((a.i for a in node.attribute if a.name == "axis"), -1 if opset >= 13 else 1)
            ctx.notes.append(f"dropped trailing {node.op_type} on output {info.name!r} (argmax-invariant); "
                             "bounds are on its input")
        value = ctx.lookup(source)
        if not isinstance(value, Sym):
            raise ModelFileError(f"output {info.name!r} does not depend on any input")
        outputs.append(ir.Output(info.name, value.node, value.shape, value.batch_axis, post, axis))
    version = model.producer_version if model.producer_version not in ("", "None") else ""
    producer = f"{model.producer_name} {version}".strip()
    return builder.build(outputs, cells=tuple(ctx.cells), notes=tuple(ctx.notes), opset=opset, producer=producer)


def _trailing_softmax(graph: onnx.GraphProto) -> dict[str, tuple[onnx.NodeProto, ir.Postprocess]]:
    """Softmax/LogSoftmax nodes whose output is a graph output and nothing else reads."""
    outputs = {o.name for o in graph.output}
    consumed = {name for node in graph.node for name in node.input}
    kinds = {"Softmax": ir.Postprocess.SOFTMAX, "LogSoftmax": ir.Postprocess.LOG_SOFTMAX}
    found = {}
    for k, node in enumerate(graph.node):
        if node.op_type in kinds and node.output[0] in outputs and node.output[0] not in consumed:
            if not node.name:
                node.name = f"{node.op_type}_{k}"
            found[node.output[0]] = (node, kinds[node.op_type])
    return found
