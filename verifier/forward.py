"""Exact forward pass of the IR over a batch of samples: the reference the bounds must contain,
and what `popqorn check` compares with onnxruntime."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from verifier import ir
from verifier.errors import InputError
from verifier.rules import rule


def run(graph: ir.Graph, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
    """Values of every node, each (batch, size), from per-sample flat inputs keyed by IR name."""
    values: dict[str, Tensor] = dict(inputs)
    for node in graph.nodes:
        if not isinstance(node, ir.Input):
            values[node.name] = rule(node).forward(node, values)
    return values


def flatten_feeds(graph: ir.Graph, feeds: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
    """Check feeds against the graph and turn each into (batch, size) per-sample vectors."""
    expected = {node.onnx_name for node in graph.inputs}
    unknown = sorted(set(feeds) - expected)
    missing = sorted(expected - set(feeds))
    if unknown or missing:
        raise InputError(f"inputs do not match the model: missing {missing}, unknown {unknown}; "
                         f"the model takes {sorted(expected)}")
    flat, batch = {}, None
    for node in graph.inputs:
        array = np.asarray(feeds[node.onnx_name])
        if not np.issubdtype(array.dtype, np.floating):
            raise InputError(f"input {node.onnx_name!r} has dtype {array.dtype}; a float array is required")
        if array.ndim != len(node.shape) or any(
                d != e for k, (d, e) in enumerate(zip(array.shape, node.shape)) if k != node.batch_axis):
            want = tuple("N" if k == node.batch_axis else d for k, d in enumerate(node.shape))
            raise InputError(f"input {node.onnx_name!r} has shape {array.shape}; the model expects {want}")
        if not np.isfinite(array).all():
            raise InputError(f"input {node.onnx_name!r} contains NaN or infinite values")
        rows = array.shape[node.batch_axis] if node.batch_axis is not None else 1
        if node.batch_axis is not None:
            array = np.moveaxis(array, node.batch_axis, 0)
        flat[node.name] = array.reshape(rows, -1)
        batch = rows if batch in (None, 1) else batch
        if rows not in (1, batch):
            raise InputError(f"inputs disagree on the batch size ({rows} vs {batch})")
    batch = batch or 1
    return {k: np.broadcast_to(v, (batch, v.shape[1])) for k, v in flat.items()}, batch


def unflatten_output(out: ir.Output, values: Tensor) -> np.ndarray:
    """(batch, size) per-sample vectors -> the ONNX output tensor, post-processing applied."""
    batch = values.shape[0]
    tensor = values
    if out.batch_axis is not None:
        per_sample = [d for k, d in enumerate(out.shape) if k != out.batch_axis]
        tensor = torch.movedim(values.reshape(batch, *per_sample), 0, out.batch_axis)
    else:
        if batch != 1:
            raise InputError(f"output {out.onnx_name!r} has no batch axis; evaluate one sample at a time")
        tensor = values.reshape(out.shape)
    if out.postprocess is ir.Postprocess.SOFTMAX:
        tensor = torch.softmax(tensor, dim=out.postprocess_axis)
    elif out.postprocess is ir.Postprocess.LOG_SOFTMAX:
        tensor = torch.log_softmax(tensor, dim=out.postprocess_axis)
    return tensor.detach().cpu().numpy()


def evaluate(graph: ir.Graph, feeds: dict[str, np.ndarray], device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float64) -> list[np.ndarray]:
    """Outputs of the model for `feeds`, like onnxruntime's InferenceSession.run(None, feeds); a
    single-input model also takes the array itself."""
    from verifier.bounds import resolve_device, resolve_dtype
    from verifier.errors import InputError

    ir.require_graph(graph, "evaluate")
    if not isinstance(feeds, dict):
        if len(graph.inputs) != 1 or not hasattr(feeds, "shape"):
            names = [n.onnx_name for n in graph.inputs]
            raise InputError(f"feeds must be a dict of arrays keyed by input name ({names}), not {type(feeds).__name__}")
        feeds = {graph.inputs[0].onnx_name: feeds}
    device, dtype = resolve_device(device), resolve_dtype(dtype)
    graph, feeds = graph.specialize(feeds)
    flat, _ = flatten_feeds(graph, feeds)
    inputs = {k: torch.as_tensor(np.array(v, dtype=np.float64), dtype=dtype, device=device) for k, v in flat.items()}
    with torch.no_grad():
        values = run(graph, inputs)
    results = [unflatten_output(out, values[out.node]) for out in graph.outputs]
    return [r.astype(np.float32) if dtype == torch.float32 else r for r in results]
