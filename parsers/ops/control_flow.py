"""ONNX Loop (with a provably constant trip count and condition) and Scan, unrolled into IR nodes.

This is how tf2onnx writes Keras GRU / SimpleRNN and masked LSTMs: the weights travel as loop
state or outer-scope captures, the input is read through captures. Each iteration converts the
body with the same op registry in a fresh scope whose outer scopes stay visible; the iteration
number is a constant, so counters, conditions and index arithmetic fold away. Anything that would
make the unrolling depend on input values is refused, naming the node and the reason.
"""

from __future__ import annotations

import numpy as np
import onnx

from parsers.budget import body_cost
from parsers.context import Context, node_label
from parsers.errors import Refusal
from parsers.files import tensor_value
from parsers.registry import converter
from parsers.values import Sym, Value
from parsers.walk import convert_nodes
from verifier.ir import CellInfo

MAX_ITERATIONS = 10000


def _run_body(ctx: Context, body: onnx.GraphProto, bindings: list[Value], prefix: str) -> list[Value]:
    """Convert one iteration of a subgraph with its inputs bound; returns its outputs."""
    ctx.meter.spend(len(body.node))
    ctx.scopes.append({})
    saved_prefix = ctx.scope_prefix
    ctx.scope_prefix = prefix
    try:
        for graph_input, value in zip(body.input, bindings):
            ctx.bind(graph_input.name, value)
        for initializer in body.initializer:
            ctx.bind(initializer.name, tensor_value(initializer, ctx.meter.budget.max_elements, "initializer"))
        convert_nodes(ctx, list(body.node))
        return [ctx.lookup(out.name) for out in body.output]
    finally:
        ctx.scope_prefix = saved_prefix
        ctx.scopes.pop()


def _stack(ctx: Context, parts: list[Value], axis: int, name: str) -> Value:
    """Stack per-iteration values along a new axis (constants stay constants)."""
    if all(not isinstance(p, Sym) for p in parts):
        return np.stack([np.asarray(p) for p in parts], axis=axis)
    like = next(p for p in parts if isinstance(p, Sym))
    shapes = {tuple(p.shape) if isinstance(p, Sym) else np.shape(p) for p in parts}
    if len(shapes) != 1:
        raise Refusal(f"scan outputs change shape between iterations: {sorted(shapes)}")
    nodes = [p.node if isinstance(p, Sym) else ctx.materialize(np.asarray(p, dtype=np.float64), like).node for p in parts]
    joined = ctx.builder.concat(nodes, f"{name}/stack")
    shape = (len(parts), *like.shape)
    ids = np.moveaxis(np.arange(int(np.prod(shape))).reshape(shape), 0, axis)
    batch_axes = {p.batch_axis for p in parts if isinstance(p, Sym) and p.batch_axis is not None}
    if len(batch_axes) > 1:
        raise Refusal(f"scan outputs move their batch axis between iterations: {sorted(batch_axes)}")
    batch = batch_axes.pop() if batch_axes else None
    batch = None if batch is None else batch + (1 if batch >= axis else 0)
    return Sym(ctx.builder.select(joined, ids.reshape(-1), f"{name}/order"), ids.shape, batch)


def _slice(ctx: Context, value: Value, axis: int, index: int, name: str) -> Value:
    """value[..., index, ...] along `axis` (the axis removed)."""
    if not isinstance(value, Sym):
        return np.take(np.asarray(value), index, axis=axis)
    if value.batch_axis == axis:
        raise Refusal("scanning over the batch axis is not supported")
    ids = np.take(np.arange(value.size).reshape(value.shape), index, axis=axis)
    batch = value.batch_axis
    batch = None if batch is None else batch - (1 if batch > axis else 0)
    return Sym(ctx.builder.select(value.node, ids.reshape(-1), name), ids.shape, batch)


def _constant_bool(value: Value | None, default: bool = True) -> bool | None:
    """The truth value of a loop condition, or None when it depends on the input."""
    if value is None:
        return default
    if isinstance(value, Sym):
        return None
    return bool(np.asarray(value).reshape(-1)[0])


def _refuse_non_tensors(ctx: Context, node: onnx.NodeProto, body: onnx.GraphProto, inputs: list) -> None:
    """Sequence and optional values have no place in the IR: refuse them before unrolling."""
    for info in [*body.input, *body.output]:
        if info.type.HasField("sequence_type") or info.type.HasField("optional_type"):
            raise ctx.unsupported(node, f"body value {info.name!r} is a sequence/optional; only tensors are unrolled")
    if any(x is not None and not isinstance(x, Sym) and np.asarray(x).dtype == object for x in inputs):
        raise ctx.unsupported(node, "an input is a sequence/optional; only tensors are unrolled")


def _charge(ctx: Context, node: onnx.NodeProto, body: onnx.GraphProto, iterations: int, kind: str) -> None:
    """Refuse before unrolling when iterations x body size does not fit the budget (nested loops
    with constant trip counts multiply, so two 10^4-step loops are refused at once)."""
    where = f"{kind} node {node_label(node)!r} ({iterations:,} iterations)"
    cost = iterations * max(body_cost(body, lambda name: _known_constant(ctx, name)), 1)
    ctx.meter.reserve(cost, where)


def _known_constant(ctx: Context, name: str) -> np.ndarray | None:
    try:
        value = ctx.lookup(name)
    except KeyError:
        return None
    return None if isinstance(value, Sym) else np.asarray(value)


def _shape(value: Value) -> tuple[int, ...]:
    return value.shape if isinstance(value, Sym) else np.shape(value)


@converter("Loop", since=1, attributes=("body",))
def loop(node: onnx.NodeProto, inputs: list, ctx: Context) -> list[Value]:
    """Unroll while the trip count and the condition are constants; refuse otherwise."""
    body = ctx.attrs(node)["body"]
    _refuse_non_tensors(ctx, node, body, inputs)
    padded = list(inputs) + [None] * (2 - len(inputs))
    trip_count, condition, carried = padded[0], padded[1], list(padded[2:])
    if isinstance(trip_count, Sym):
        raise ctx.unsupported(node, "the trip count depends on the input; only constant trip counts can be unrolled")
    if trip_count is None and condition is None:
        raise ctx.unsupported(node, "a loop without trip count or condition never ends")
    going = _constant_bool(condition)
    if going is None:
        raise ctx.unsupported(node, "the loop condition depends on the input")
    limit = None if trip_count is None else int(np.asarray(trip_count).reshape(-1)[0])
    if condition is None and limit is not None and limit > MAX_ITERATIONS:
        raise ctx.unsupported(node, f"a trip count of {limit:,} without a condition; popqorn unrolls at most "
                                    f"{MAX_ITERATIONS:,} iterations per loop")
    label = ctx.prefix
    _charge(ctx, node, body, min(MAX_ITERATIONS, max(limit, 0)) if limit is not None else 1, "Loop")
    n_scan = len(body.output) - 1 - len(carried)
    scans: list[list[Value]] = []
    iteration = 0
    while going and (limit is None or iteration < limit):
        if iteration == MAX_ITERATIONS:  # a while-loop with a huge trip count may still stop early
            raise ctx.unsupported(node, f"the loop did not stop within the {MAX_ITERATIONS} iterations popqorn unrolls")
        outputs = _run_body(ctx, body, [np.array(iteration, dtype=np.int64), np.array(True), *carried],
                            f"{label}/iter{iteration}/")
        going = _constant_bool(outputs[0])
        if going is None:
            raise ctx.unsupported(node, f"the loop condition depends on the input (iteration {iteration})")
        carried = outputs[1:1 + len(carried)]
        scans.append(outputs[1 + len(carried):])
        iteration += 1
    if not scans and n_scan:
        raise ctx.unsupported(node, "a loop with scan outputs that runs zero times")
    stacked = [_stack(ctx, [s[k] for s in scans], 0, f"{label}/scan{k}") for k in range(n_scan)]
    sizes = [v.shape[-1] for v in carried if isinstance(v, Sym) and v.rank]
    folded = sum(not isinstance(v, Sym) for v in carried)
    ctx.notes.append(f"Loop {label!r} unrolled into {iteration} iterations; {folded} of {len(carried)} "
                     "loop-carried values are constants (folded)")
    ctx.cells.append(CellInfo(name=label, kind="Loop", direction="forward", steps=iteration, input_size=0,
                              hidden_size=max(sizes, default=0),
                              details=f"{len(carried)} loop-carried values, {n_scan} scan outputs"))
    return [*carried, *stacked]


@converter("Scan", since=8, attributes=("body", "num_scan_inputs", "directions"))
def scan_8(node: onnx.NodeProto, inputs: list, ctx: Context) -> list[Value]:
    raise ctx.unsupported(node, "Scan-8 (batched, with sequence_lens) is not supported; export with opset 9 or later")


def _axes(ctx: Context, node: onnx.NodeProto, attrs: dict, name: str, count: int) -> list[int]:
    values = list(attrs.get(name) or [0] * count)
    if len(values) != count:
        raise ctx.unsupported(node, f"{name} has {len(values)} entries for {count} values")
    return [int(v) for v in values]


@converter("Scan", since=9, attributes=("body", "num_scan_inputs", "scan_input_axes", "scan_input_directions",
                                        "scan_output_axes", "scan_output_directions"))
def scan(node: onnx.NodeProto, inputs: list, ctx: Context) -> list[Value]:
    """Unroll over the scan axis, honouring input/output axes and directions."""
    attrs = ctx.attrs(node)
    body = attrs["body"]
    _refuse_non_tensors(ctx, node, body, inputs)
    count = int(attrs["num_scan_inputs"])
    states, sequences = list(inputs[:len(inputs) - count]), list(inputs[len(inputs) - count:])
    n_out = len(body.output) - len(states)
    in_axes = _axes(ctx, node, attrs, "scan_input_axes", count)
    in_directions = _axes(ctx, node, attrs, "scan_input_directions", count)
    out_axes = _axes(ctx, node, attrs, "scan_output_axes", n_out)
    out_directions = _axes(ctx, node, attrs, "scan_output_directions", n_out)
    for k, (value, axis) in enumerate(zip(sequences, in_axes)):
        if not -len(_shape(value)) <= axis < len(_shape(value)):
            raise ctx.unsupported(node, f"scan_input_axes[{k}] = {axis} is out of range for rank {len(_shape(value))}")
        if isinstance(value, Sym) and value.batch_axis == axis % value.rank:
            raise ctx.unsupported(node, f"scan input {k} is scanned over its batch axis")
    in_axes = [a % len(_shape(v)) for a, v in zip(in_axes, sequences)]
    lengths = {_shape(v)[a] for v, a in zip(sequences, in_axes)}
    if len(lengths) != 1:
        raise ctx.unsupported(node, f"scan inputs of different lengths {sorted(lengths)}")
    length = lengths.pop()
    if length == 0:
        raise ctx.unsupported(node, "a scan over zero steps")
    label = ctx.prefix
    _charge(ctx, node, body, length, "Scan")
    ctx.meter.check_nodes(len(ctx.builder.nodes), length * sum(isinstance(v, Sym) for v in sequences),
                          f"Scan node {node_label(node)!r} ({length:,} steps)")
    per_step: list[list[Value]] = []
    for step in range(length):
        slices = [_slice(ctx, v, a, length - 1 - step if d else step, f"{label}/t{step}/in{k}")
                  for k, (v, a, d) in enumerate(zip(sequences, in_axes, in_directions))]
        outputs = _run_body(ctx, body, [*states, *slices], f"{label}/t{step}/")
        states = outputs[:len(states)]
        per_step.append(outputs[len(states):])
    results = []
    for k in range(n_out):
        parts = [s[k] for s in per_step]
        if out_directions[k]:
            parts = parts[::-1]
        rank = len(_shape(parts[0])) + 1
        if not -rank <= out_axes[k] < rank:
            raise ctx.unsupported(node, f"scan_output_axes[{k}] = {out_axes[k]} is out of range for rank {rank}")
        results.append(_stack(ctx, parts, out_axes[k] % rank, f"{label}/out{k}"))
    sizes = [v.shape[-1] for v in states if isinstance(v, Sym) and v.rank]
    ctx.notes.append(f"Scan {label!r} unrolled into {length} steps")
    ctx.cells.append(CellInfo(name=label, kind="Scan", direction="reverse" if any(in_directions) else "forward",
                              steps=length, input_size=0, hidden_size=max(sizes, default=0),
                              details=f"{len(states)} states, {count} scan inputs, {n_out} scan outputs"))
    return [*states, *results]
