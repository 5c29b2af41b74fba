"""`load_onnx`: an untrusted ONNX file in, a one-sample IR graph out.

When every input shape is known the graph is built at once. When some are not (a dynamic time
axis) or when a converter needs the value of a graph input (weights fed as inputs), the graph
returned only lists the inputs and carries a `specializer` (see `parsers.specialize`): the
concrete graph is built from the feeds, at evaluate/bounds/certify time.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx

from parsers import ops  # noqa: F401  (registers the converters)
from parsers.budget import Budget
from parsers.builder import GraphBuilder
from parsers.context import Context, clean_name
from parsers.contrib import expand_contrib_ops
from parsers.errors import BatchLayoutError, ConstantRequired, ConverterBug
from parsers.files import (
    MAX_MODEL_BYTES,
    ModelSource,
    check_opsets,
    check_types,
    model_label,
    read_model,
    tensor_value,
)
from parsers.inputs import DeclaredInput, declare_inputs
from parsers.precision import check_precision
from parsers.values import Sym
from parsers.walk import convert_nodes
from verifier import ir
from verifier.errors import InputError, ModelFileError, UnsupportedOperator

MAX_AXIS_TRIALS = 16


def load_onnx(path: ModelSource, input_shapes: dict[str, tuple[int, ...]] | None = None,
              batch_axes: dict[str, int | None] | None = None,
              frame_axes: dict[str, int | None] | None = None,
              max_bytes: int = MAX_MODEL_BYTES, *, max_nodes: int = Budget.max_nodes,
              max_unrolled: int = Budget.max_unrolled, max_elements: int = Budget.max_elements) -> ir.Graph:
    """Parse an ONNX model (a file's path, its bytes or an onnx.ModelProto) into a one-sample IR graph.

    input_shapes: full shapes (batch included) for inputs whose non-batch dims are dynamic; without
    them such a graph is built per feed shape (its `specializer` is set).
    batch_axes / frame_axes: override the inferred batch and time axis of an input.
    max_nodes / max_unrolled / max_elements: resource budgets (see parsers.budget.Budget).
    """
    try:
        budget = Budget(max_nodes, max_unrolled, max_elements)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    model = read_model(path, max_bytes)
    try:
        graph = convert_model(model, input_shapes, batch_axes, frame_axes, budget=budget)
    except (UnsupportedOperator, ConverterBug):
        # a converter that trips over the file (weights of the wrong rank or type) often meets a
        # file ONNX itself rejects: then the file is malformed, not the operator unsupported
        check_types(model, model_label(path))
        raise
    check_types(model, model_label(path))  # after the converter, whose refusals name the node and the cause
    return graph


def default_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    raise ModelFileError("model imports no default-domain opset")


def convert_model(model: onnx.ModelProto, input_shapes=None, batch_axes=None, frame_axes=None, *,
                  budget: Budget | None = None) -> ir.Graph:
    from parsers.specialize import (
        symbolic_graph,  # the specializer builds through this module
    )

    check_opsets(model)
    model = expand_contrib_ops(model)  # onnxruntime's fused nodes, as the default-domain nodes they fuse
    conversion = Conversion(model, budget or Budget())
    check_precision(model, conversion.opset)
    declared = declare_inputs(model.graph, conversion.opset, input_shapes, batch_axes, frame_axes,
                              conversion.budget.max_elements)
    fold = {d.onnx_name for d in declared if d.constant_only}
    if fold or any(d.unknown_axes for d in declared):
        return symbolic_graph(conversion, declared, fold)
    try:
        return conversion.build_with_axis_search(declared)
    except ConstantRequired as need:
        conversion.check_foldable(need, declared)
        return symbolic_graph(conversion, declared, {need.input_name}, {need.input_name: need})


class Conversion:
    """One model's conversion: what does not change between builds (initializers, trailing
    softmax), and `build`, which unrolls the graph for concrete input shapes."""

    def __init__(self, model: onnx.ModelProto, budget: Budget) -> None:
        self.model, self.budget = model, budget
        self.opset = default_opset(model)
        graph = model.graph
        self.initializers = {t.name: tensor_value(t, budget.max_elements, "initializer") for t in graph.initializer}
        for sparse in graph.sparse_initializer:
            self.initializers[sparse.values.name] = tensor_value(sparse, budget.max_elements, "sparse initializer")
        self.trailing = _trailing_softmax(graph)
        version = model.producer_version if model.producer_version not in ("", "None") else ""
        self.producer = f"{model.producer_name} {version}".strip()

    def check_foldable(self, need: ConstantRequired, declared: list[DeclaredInput]) -> None:
        """Only inputs that are not the perturbed sequence can be held fixed at their fed values."""
        item = next(d for d in declared if d.onnx_name == need.input_name)
        if not item.constant_only and (item.frame_axis is not None or len(declared) == 1):
            raise UnsupportedOperator(need.op_type, self.opset, need.node_name,
                                      f"{need.what} must be a constant, but it is the model input "
                                      f"{need.input_name!r}, the one popqorn perturbs")

    def build(self, declared: list[DeclaredInput], shapes: dict[str, tuple[int, ...]],
              constants: dict[str, np.ndarray]) -> ir.Graph:
        """The IR for concrete per-sample input shapes (batch axis 1); inputs in `constants` are
        folded in at their given values instead of being graph inputs."""
        graph = self.model.graph
        builder = GraphBuilder()
        ctx = Context(builder, self.opset, self.budget,
                      {entry.domain: entry.version for entry in self.model.opset_import})
        for name, value in self.initializers.items():
            ctx.bind(name, value)
        for item in declared:
            if item.onnx_name in constants:
                ctx.bind(item.onnx_name, constants[item.onnx_name])
                continue
            shape = shapes[item.onnx_name]
            node = builder.input(clean_name(item.onnx_name), shape, item.batch_axis, item.frame_axis, item.onnx_name)
            ctx.bind(item.onnx_name, Sym(node, shape, item.batch_axis))
        if constants:
            ctx.notes.append(f"inputs {sorted(constants)} are used as constants: bound from the feeds and held fixed")
        convert_nodes(ctx, list(graph.node), skip={n.name for n, _ in self.trailing.values()})
        outputs = []
        for info in graph.output:
            post, axis, source = None, -1, info.name
            if info.name in self.trailing:
                node, post = self.trailing[info.name]
                source = node.input[0]
                axis = next((a.i for a in node.attribute if a.name == "axis"), -1 if self.opset >= 13 else 1)
                ctx.notes.append(f"dropped trailing {node.op_type} on output {info.name!r} (argmax-invariant); "
                                 "bounds are on its input")
            value = ctx.lookup(source)
            if not isinstance(value, Sym):
                raise ModelFileError(f"output {info.name!r} does not depend on any input")
            batch_axis = value.batch_axis
            if batch_axis is None and any(item.batch_axis is not None and item.onnx_name not in constants
                                          for item in declared):
                batch_axis = _declared_batch_axis(info, value.shape)
            outputs.append(ir.Output(info.name, value.node, value.shape, batch_axis, post, axis))
        return builder.build(outputs, cells=tuple(ctx.cells), notes=tuple(ctx.notes), opset=self.opset,
                             producer=self.producer)

    def build_with_axis_search(self, declared: list[DeclaredInput]) -> ir.Graph:
        """Fixed-shape exports (dynamo without dynamic_shapes) say nothing about which axis is the
        batch. The guess is axis 0; when that mixes samples somewhere (a BatchLayoutError), the
        other axes of the guessed inputs are tried, and the first consistent graph wins."""
        guessed = [k for k, d in enumerate(declared) if not d.evidence and len(d.dims) >= 2]
        first_error: BatchLayoutError | None = None
        for trial in itertools.islice(_axis_trials(declared, guessed), MAX_AXIS_TRIALS):
            try:
                graph = self.build(trial, {d.onnx_name: d.template() for d in trial}, {})
            except BatchLayoutError as exc:
                first_error = first_error or exc
                continue
            moved = [f"{d.onnx_name!r}: {d.batch_axis}" for d, old in zip(trial, declared) if d.batch_axis != old.batch_axis]
            if not moved:
                return graph
            note = (f"batch axis inferred from the graph (fixed-shape export): {', '.join(moved)}; "
                    "axis 0 would mix samples")
            return ir.Graph(graph.nodes, graph.inputs, graph.outputs, graph.cells, (*graph.notes, note),
                            graph.opset, graph.producer)
        assert first_error is not None
        raise first_error


def _axis_trials(declared: list[DeclaredInput], guessed: list[int]):
    """The declared axes first, then other batch axes for the guessed inputs, fewest changes first."""
    choices = []
    for k in guessed:
        item = declared[k]
        others = [a for a in range(len(item.dims) - 1) if a != item.batch_axis]
        choices.append([item.batch_axis, *others])
    combos = sorted(itertools.product(*choices), key=lambda combo: sum(c != choices[i][0] for i, c in enumerate(combo)))
    for combo in combos:
        trial = list(declared)
        for k, axis in zip(guessed, combo):
            if axis != declared[k].batch_axis:
                trial[k] = declared[k].with_axes(axis)
        yield trial


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


def _declared_batch_axis(info: onnx.ValueInfoProto, shape: tuple[int, ...]) -> int | None:
    """The batch axis of an output whose converters lost it, from the file's declaration: its only
    dynamic dimension that is 1 for one sample. A Reshape(-1, F) merges batch and time (tf.keras
    writes Dense on 3-D inputs and TimeDistributed so) and a later one splits them again; each
    sample's IR is exact, only the output's layout was unknown. `check` runs the file batched, so a
    model that mixes samples through the merged axis shows as a mismatch."""
    tensor = info.type.tensor_type
    dims = list(tensor.shape.dim) if tensor.HasField("shape") else []
    if len(dims) != len(shape):
        return None
    candidates = [k for k, d in enumerate(dims) if not d.HasField("dim_value") and shape[k] == 1]
    return candidates[0] if len(candidates) == 1 else None
