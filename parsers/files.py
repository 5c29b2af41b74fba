"""Reading an untrusted model file: size cap, external data confined to the model's folder and read
by popqorn itself, the opset checked against what the installed onnx knows, onnx.checker.

External data is resolved for every tensor in the file (initializers, sparse initializers, Constant
`value` and `sparse_value`, any tensor attribute, in subgraphs and functions too), so nothing is
ever opened later relative to the working directory. Nothing in the file is executed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import Message

from verifier.errors import ModelFileError

MAX_MODEL_BYTES = 512 * 1024 * 1024
_EXTERNAL_KEYS = {"location", "offset", "length", "checksum", "basepath"}


ModelSource = str | os.PathLike | bytes | onnx.ModelProto


def model_label(source: ModelSource) -> str:
    """How messages name the model: its path, or what was passed in memory."""
    if isinstance(source, onnx.ModelProto):
        return "the model (given as an onnx.ModelProto)"
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "the model (given as bytes)"
    return str(source)


def read_model(source: ModelSource, max_bytes: int = MAX_MODEL_BYTES) -> onnx.ModelProto:
    """Load and validate a model without trusting it: a file's path, the file's bytes, or an
    onnx.ModelProto (copied: the front end edits the model it reads). A model in memory has no
    folder, so tensors stored as external data are refused."""
    label, folder = model_label(source), None
    if isinstance(source, onnx.ModelProto):
        size = source.ByteSize()
        _check_size(size, label, max_bytes)
        model = onnx.ModelProto()
        model.CopyFrom(source)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        size = len(source)
        _check_size(size, label, max_bytes)
        model = _parse(lambda: onnx.load_model_from_string(bytes(source)), label)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        _check_is_file(path)
        size = path.stat().st_size
        _check_size(size, f"model file {path}", max_bytes)
        model = _parse(lambda: onnx.load(str(path), load_external_data=False), label)
        folder = path.resolve().parent
    else:
        raise ModelFileError(f"a model is a path to an .onnx file, its bytes or an onnx.ModelProto, "
                             f"not {type(source).__name__}")
    if not model.graph.node and not model.graph.output:
        raise ModelFileError(f"{label} is not an ONNX model (empty graph)")
    check_text(model, label)
    load_external_data(model, folder, max_bytes - size)
    check_opsets(model)
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise ModelFileError(f"{label} fails onnx.checker: {_one_line(exc)}{_shapeless(model, exc)}") from exc
    check_node_names(model, label)
    return model


def _shapeless(model: onnx.ModelProto, exc: Exception) -> str:
    """onnx.checker's "Field 'shape' of 'type' is required" names no value; tools that expose an
    intermediate as an extra output often declare it without a shape: say which ones."""
    if "Field 'shape' of 'type' is required" not in str(exc):
        return ""
    graph = model.graph
    names = [v.name for v in [*graph.input, *graph.output, *graph.value_info]
             if v.type.HasField("tensor_type") and not v.type.tensor_type.HasField("shape")]
    return f" (declared without a shape: {', '.join(map(repr, names[:5]))}{', ...' if len(names) > 5 else ''})" if names else ""


def check_node_names(model: onnx.ModelProto, label: str) -> None:
    """Node names are unique within each graph (the ONNX IR spec's node namespace; unnamed nodes
    aside). onnx.checker lets duplicates through but onnxruntime refuses to load such a file, so a
    certificate for it would be about a model that nothing runs."""
    bodies: list[tuple[str, list[onnx.NodeProto]]] = [("the graph", list(model.graph.node))]
    bodies += [(f"function {function.name!r}", list(function.node)) for function in model.functions]
    while bodies:
        where, nodes = bodies.pop()
        seen: set[str] = set()
        for node in nodes:
            if node.name in seen:
                raise ModelFileError(f"{label}: two nodes of {where} are named {node.name!r}; node names must be "
                                     "unique (onnxruntime refuses to load such a file)")
            if node.name:
                seen.add(node.name)
            for attr in node.attribute:
                subgraphs = ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)
                bodies += [(f"subgraph {attr.name!r} of node {node.name or node.op_type!r}", list(graph.node))
                           for graph in subgraphs]


def _check_is_file(path: Path) -> None:
    if path.is_dir():
        raise ModelFileError(f"{path} is a directory, not an ONNX model file")
    if not path.exists():
        raise ModelFileError(f"model file not found: {path}")
    if not path.is_file():
        raise ModelFileError(f"{path} is not a regular file (a device, pipe or socket); give an .onnx file")


def _check_size(size: int, what: str, max_bytes: int) -> None:
    if size > max_bytes:
        raise ModelFileError(f"{what} is {size} bytes, over the {max_bytes}-byte limit")


def _parse(load, label: str) -> onnx.ModelProto:
    try:
        return load()
    except Exception as exc:  # noqa: BLE001 - protobuf and onnx raise several untyped errors
        raise ModelFileError(f"{label} is not a readable ONNX model ({type(exc).__name__})") from exc


def check_text(model: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Every name and string attribute is UTF-8 text: protobuf hands undecodable strings (a flipped
    bit in a node name) over as bytes, which nothing downstream expects. Tensors are checked by
    their names only, so their data is never copied out."""
    stack: list = [model]
    while stack:
        message = stack.pop()
        if isinstance(message, onnx.TensorProto):
            fields = [(message.DESCRIPTOR.fields_by_name["name"], message.name)]
            stack.extend(message.external_data)
        else:
            fields = message.ListFields()
        for field, value in fields:
            values = [value] if isinstance(value, (str, bytes, Message)) else value  # repeated: a container
            if field.type == field.TYPE_MESSAGE:
                stack.extend(values)
            elif field.type == field.TYPE_STRING:
                for text in values:
                    if not isinstance(text, str):
                        raise ModelFileError(f"{path}: a {message.DESCRIPTOR.name} field {field.name!r} is not UTF-8 "
                                             f"text ({bytes(text)[:40]!r}); the file is damaged")


def check_types(model: onnx.ModelProto, path: str | os.PathLike) -> None:
    """ONNX's own type and shape inference, strict: an input of one float type feeding weights of
    another, integer weights in a MatMul, an output declared as a string... onnxruntime refuses such
    a file, so a bound about it would describe no model that runs."""
    try:
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as exc:  # noqa: BLE001 - onnx raises several untyped errors here
        raise ModelFileError(f"{path} fails ONNX type and shape inference: {_one_line(exc)}") from None


_UNDEFINED_INPUT = re.compile(r"(Nodes in a graph must be topologically sorted, )?however input '(?P<tensor>.*)' "
                              r"of node: name: (?P<node>.*) OpType: (?P<op>\S+) is not output of any previous nodes\.?")


def _one_line(exc: Exception, limit: int = 400) -> str:
    """onnx's message on one line: it spreads one sentence over several (the node that reads an
    undefined tensor is named on the second), and the CLI prints one line."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = _UNDEFINED_INPUT.sub(lambda m: f"node {m['node']!r} ({m['op']}) reads {m['tensor']!r}, which no graph "
                                          "input, initializer or earlier node defines (nodes must be in topological order)", text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_opsets(model: onnx.ModelProto) -> None:
    """An opset newer than the installed onnx knows would be read with older semantics: refuse."""
    known = onnx.defs.onnx_opset_version()
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx") and entry.version > known:
            raise ModelFileError(f"the model imports opset {entry.version} of the default domain; the installed "
                                 f"onnx {onnx.__version__} knows opsets up to {known}")


def all_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto in the model, wherever it sits."""
    graphs: list[onnx.GraphProto] = [model.graph]
    graphs += [info.initialization for info in model.training_info]
    graphs += [info.algorithm for info in model.training_info]
    nodes: list[onnx.NodeProto] = [node for function in model.functions for node in function.node]
    while graphs or nodes:
        if graphs:
            graph = graphs.pop()
            yield from graph.initializer
            for sparse in graph.sparse_initializer:
                yield sparse.values
                yield sparse.indices
            nodes.extend(graph.node)
            continue
        node = nodes.pop()
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("sparse_tensor"):
                yield attr.sparse_tensor.values
                yield attr.sparse_tensor.indices
            for sparse in attr.sparse_tensors:
                yield sparse.values
                yield sparse.indices
            if attr.HasField("g"):
                graphs.append(attr.g)
            graphs.extend(attr.graphs)


def load_external_data(model: onnx.ModelProto, folder: Path | None, max_bytes: int) -> None:
    """Read every tensor's external data into the model, after checking where it points (folder
    None: a model given in memory, which has no folder to read from)."""
    total = 0
    for tensor in all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        if folder is None:
            raise ModelFileError(f"tensor {tensor.name or '(unnamed)'!r} keeps its data in an external file; load "
                                 "the model from its path so that the file can be found")
        data = _read_external(tensor, folder, max_bytes - total)
        total += len(data)
        tensor.raw_data = data
        tensor.data_location = onnx.TensorProto.DEFAULT
        del tensor.external_data[:]


def _read_external(tensor: onnx.TensorProto, folder: Path, budget: int) -> bytes:
    name = tensor.name or "(unnamed)"
    info = {entry.key: entry.value for entry in tensor.external_data}
    unknown = sorted(set(info) - _EXTERNAL_KEYS)
    if unknown:
        raise ModelFileError(f"tensor {name!r} has unknown external data keys {unknown}")
    location = info.get("location", "")
    target = (folder / location).resolve() if location else folder
    if not location or folder not in target.parents or not target.is_file():
        raise ModelFileError(f"tensor {name!r} refers to external data outside the model's folder or missing: "
                             f"{location!r}")
    size = target.stat().st_size
    offset = _non_negative(info.get("offset", "0"), "offset", name)
    length = _non_negative(info["length"], "length", name) if "length" in info else size - offset
    if offset > size or offset + length > size:
        raise ModelFileError(f"tensor {name!r}: external data offset {offset} + length {length} is past the end "
                             f"of {location!r} ({size} bytes)")
    if length > budget:
        raise ModelFileError("model with external data exceeds the byte limit of the model file (max_bytes)")
    with open(target, "rb") as handle:
        handle.seek(offset)
        return handle.read(length)


def _non_negative(text: str, what: str, name: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ModelFileError(f"tensor {name!r}: external data {what} {text!r} is not an integer") from None
    if value < 0:
        raise ModelFileError(f"tensor {name!r}: external data {what} {value} is negative")
    return value


def tensor_value(tensor: onnx.TensorProto | onnx.SparseTensorProto, max_elements: int, kind: str):
    """A tensor of the file as a numpy array: sized before it is read, readable, and finite."""
    sparse = isinstance(tensor, onnx.SparseTensorProto)
    name = tensor.values.name if sparse else tensor.name
    dims = list(tensor.dims)
    count = int(np.prod(dims, dtype=np.float64)) if dims else 1
    if count > max_elements:
        raise ModelFileError(f"{kind} {name!r} has {count:,} elements, over the limit max_elements={max_elements:,} "
                             "(raise it with load_onnx(..., max_elements=...))")
    try:
        value = _sparse_to_dense(tensor) if sparse else onnx.numpy_helper.to_array(tensor)
    except Exception as exc:  # noqa: BLE001  (whatever a malformed tensor raises, the file is at fault)
        raise ModelFileError(f"{kind} {name!r} cannot be read: {type(exc).__name__}: {exc}") from None
    if value.dtype.kind in "fc" and not np.isfinite(value).all():
        raise ModelFileError(f"{kind} {name!r} contains NaN or infinite values")
    return value


def _sparse_to_dense(tensor: onnx.SparseTensorProto) -> np.ndarray:
    values = onnx.numpy_helper.to_array(tensor.values).reshape(-1)
    indices = onnx.numpy_helper.to_array(tensor.indices).astype(np.int64)
    dims = tuple(tensor.dims)
    dense = np.zeros(dims, dtype=values.dtype)
    flat_indices = indices.reshape(-1) if indices.ndim == 1 else np.ravel_multi_index(tuple(indices.T), dims)
    if flat_indices.size != values.size or (flat_indices.size and (flat_indices.min() < 0 or flat_indices.max() >= dense.size)):
        raise ValueError("sparse indices do not match the values or the shape")
    dense.reshape(-1)[flat_indices] = values
    return dense
