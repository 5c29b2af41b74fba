"""The model side of an instance, without the engine (so `--prepare` stays light): onnxruntime
on the file, and the IR graph made concrete for the property's flat input."""

from __future__ import annotations

import math

import numpy as np

from verifier import ir
from verifier.errors import InputError
from verifier.onnx_runtime import OnnxModel
from verifier.vnnlib.spec import Property


def open_model(path: str, threads: int = 1) -> OnnxModel:
    """onnxruntime on the model file, with `threads` intra-op threads where OnnxModel takes them."""
    try:
        return OnnxModel(path, threads=threads)
    except TypeError:  # an OnnxModel without the threads option
        return OnnxModel(path)


def input_dtype(model: OnnxModel, onnx_name: str) -> type:
    """The numpy type onnxruntime is fed for this input (counterexamples are exact in it)."""
    kinds = {i.name: i.type for i in model.session.get_inputs()}
    dtypes = {"tensor(double)": np.float64, "tensor(float16)": np.float16}
    return dtypes.get(kinds.get(onnx_name, ""), np.float32)


def concrete_graph(graph: ir.Graph, prop: Property) -> ir.Graph:
    """The graph for one flat input of prop.inputs elements. When the model's input has dynamic
    dimensions (the graph has a `specializer`; such dimensions are negative in Input.shape), the
    batch axis is bound to 1 and the one other open axis to whatever makes the element count
    match (or to the 2.0 declared shape, when that has the model's rank)."""
    if len(graph.inputs) != 1:
        raise InputError(f"VNN-LIB properties are supported for single-input models only; this model takes "
                         f"{[n.onnx_name for n in graph.inputs]}")
    node = graph.inputs[0]
    if graph.specializer is not None:
        shape = _bind_shape(node, prop)
        graph, _ = graph.specialize({node.onnx_name: np.zeros(shape, dtype=np.float32)})
        node = graph.inputs[0]
    if prop.inputs != node.size:
        raise InputError(f"the property declares {prop.inputs} inputs; the model's input {node.onnx_name!r} "
                         f"has {node.size} elements")
    return graph


def _bind_shape(node: ir.Input, prop: Property) -> tuple[int, ...]:
    shape = [1 if k == node.batch_axis else int(d) for k, d in enumerate(node.shape)]
    open_axes = [k for k, d in enumerate(shape) if d < 1]
    if open_axes and prop.input_shape is not None and len(prop.input_shape) == len(shape):
        for k in open_axes:
            shape[k] = prop.input_shape[k]
        open_axes = []
    if len(open_axes) > 1:
        raise InputError(f"the model's input {node.onnx_name!r} has several dynamic dimensions {list(node.shape)}; "
                         f"give its shape with --input-shape")
    if open_axes:
        known = math.prod(d for k, d in enumerate(shape) if k != open_axes[0])
        if known <= 0 or prop.inputs % known:
            raise InputError(f"the property's {prop.inputs} inputs do not fit the model's input shape {list(node.shape)}")
        shape[open_axes[0]] = prop.inputs // known
    return tuple(shape)


def output_index(graph: ir.Graph, prop: Property) -> int:
    """Which model output the property's Y is: the one its 2.0 declaration names, else the first.
    A name no output has is refused when the model has several outputs (checking the wrong one
    silently would answer another question); with one output it is taken (exporters rename
    outputs: tf2onnx calls PyTorch's 'logits' 'dense')."""
    names = [o.onnx_name for o in graph.outputs]
    if prop.output_name in names:
        return names.index(prop.output_name)
    if prop.output_name is not None and len(names) > 1:
        raise InputError(f"the property's output is declared as {prop.output_name!r}; the model's outputs are {names}")
    return 0


BOX_LIMIT = float(np.sqrt(np.finfo(np.float64).max))  # beyond it, widths and products of bounds overflow


def check_instance(graph: ir.Graph, prop: Property) -> None:
    """What the solver would refuse later, refused while preparing (so `--prepare` answers for the
    instance): an output count that does not match, or input bounds too large for the arithmetic."""
    names = [o.onnx_name for o in graph.outputs]
    if not names:
        raise InputError("the model has no outputs to check the property against")
    out = graph.outputs[output_index(graph, prop)]
    if prop.outputs != out.size:
        raise InputError(f"the property declares {prop.outputs} outputs; the model's output "
                         f"{out.onnx_name!r} has {out.size} elements")
    largest = max((float(np.abs(bound).max(initial=0.0)) for case in prop.cases for bound in (case.lower, case.upper)),
                  default=0.0)
    if largest > BOX_LIMIT:
        raise InputError(f"the property bounds inputs at up to {largest:g}, too large for bound arithmetic "
                         f"(at most {BOX_LIMIT:.2g})")
