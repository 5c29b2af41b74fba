"""Helpers for the Loop/Scan tests: the onnx wheel's backend node cases turned into models, and
small hand-made recurrent networks written as Loop and Scan."""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


@dataclass
class BackendCase:
    name: str
    node: onnx.NodeProto
    inputs: list
    outputs: list
    opset_imports: list = field(default_factory=list)
    input_type_protos: list | None = None

    @property
    def has_sequences(self) -> bool:
        return any(isinstance(v, list) for v in [*self.inputs, *self.outputs])


def backend_cases(module_name: str) -> list[BackendCase]:
    """Every `expect(...)` call of `onnx.backend.test.case.node.<module_name>`, captured."""
    module = importlib.import_module(f"onnx.backend.test.case.node.{module_name}")
    found: list[BackendCase] = []

    def expect(node, inputs, outputs, name, **kwargs):
        tensors = lambda values: [v if isinstance(v, list) else np.asarray(v) for v in values]
        found.append(BackendCase(name, node, tensors(inputs), tensors(outputs), kwargs.get("opset_imports") or [],
                                 kwargs.get("input_type_protos")))

    original = module.expect
    module.expect = expect
    try:
        for _, case in inspect.getmembers(module, inspect.isclass):
            for attribute in vars(case):
                if attribute.startswith("export"):
                    getattr(case, attribute)()
    finally:
        module.expect = original
    return found


def _const_node(name: str, value, type_proto: onnx.TypeProto | None) -> list[onnx.NodeProto]:
    """Nodes that produce a constant value, sequences and optionals included."""
    if isinstance(value, np.ndarray):
        return [helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value))]
    elem_type = TensorProto.FLOAT
    items = [np.asarray(v, dtype=np.float32) for v in value]
    nodes = [helper.make_node("Constant", [], [f"{name}_item{k}"], value=numpy_helper.from_array(v))
             for k, v in enumerate(items)]
    optional = type_proto is not None and type_proto.HasField("optional_type")
    seq_name = f"{name}_seq" if optional else name
    if items:
        nodes.append(helper.make_node("SequenceConstruct", [f"{name}_item{k}" for k in range(len(items))], [seq_name]))
    else:
        nodes.append(helper.make_node("SequenceEmpty", [], [seq_name], dtype=elem_type))
    if optional:
        nodes.append(helper.make_node("Optional", [seq_name], [name]))
    return nodes


def case_model(case: BackendCase, keep_inputs: set[str]) -> onnx.ModelProto:
    """The case's node as a model whose graph inputs are `keep_inputs`; every other input of the
    node becomes a constant (a Constant node, or nodes building the sequence/optional)."""
    names = [n for n in case.node.input]
    nodes: list[onnx.NodeProto] = []
    graph_inputs = []
    values = iter(case.inputs)
    for k, name in enumerate(names):
        if not name:
            continue
        value = next(values)
        if name in keep_inputs:
            array = np.asarray(value)
            graph_inputs.append(helper.make_tensor_value_info(
                name, helper.np_dtype_to_tensor_dtype(array.dtype), array.shape))
        else:
            proto = case.input_type_protos[k] if case.input_type_protos and k < len(case.input_type_protos) else None
            nodes.extend(_const_node(name, value, proto))
    outputs = []
    for name, value in zip(case.node.output, case.outputs):
        if isinstance(value, np.ndarray):
            outputs.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype), value.shape))
        else:
            outputs.append(helper.make_tensor_sequence_value_info(name, TensorProto.FLOAT, None))
    graph = helper.make_graph([*nodes, case.node], case.name, graph_inputs, outputs)
    opsets = case.opset_imports or [helper.make_opsetid("", onnx.defs.onnx_opset_version())]
    return helper.make_model(graph, opset_imports=opsets)


def float_inputs(case: BackendCase) -> dict[str, np.ndarray]:
    """The case's floating-point inputs: what popqorn treats as perturbable."""
    named = zip([n for n in case.node.input if n], case.inputs)
    return {n: v for n, v in named if isinstance(v, np.ndarray) and np.issubdtype(v.dtype, np.floating)}


# -- hand-made recurrent networks ------------------------------------------------------------

def _init(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def rnn_weights(rng: np.random.Generator, features: int, hidden: int) -> dict[str, np.ndarray]:
    return {"W": rng.uniform(-0.8, 0.8, (features, hidden)).astype(np.float32),
            "R": rng.uniform(-0.8, 0.8, (hidden, hidden)).astype(np.float32),
            "b": rng.uniform(-0.5, 0.5, (hidden,)).astype(np.float32)}


def loop_rnn(weights: dict[str, np.ndarray], steps: int, batch: int, weights_as_state: bool,
             with_condition: bool = True, trip_from_input: bool = False) -> onnx.ModelProto:
    """h_t = tanh(x_t W + h_{t-1} R + b) over x [T, N, F] as a Loop: x read through an outer-scope
    capture with Gather(iteration), R either captured or carried as loop state (tf2onnx does both);
    outputs the last h and the stacked h_t (a scan output)."""
    features, hidden = weights["W"].shape
    state_names = ["h_in", "R_in"] if weights_as_state else ["h_in"]
    body_nodes = [
        helper.make_node("Gather", ["x", "iteration"], ["x_t"], axis=0),
        helper.make_node("MatMul", ["x_t", "W"], ["xw"]),
        helper.make_node("MatMul", ["h_in", "R_in" if weights_as_state else "R"], ["hr"]),
        helper.make_node("Add", ["xw", "hr"], ["pre0"]),
        helper.make_node("Add", ["pre0", "b"], ["pre"]),
        helper.make_node("Tanh", ["pre"], ["h_out"]),
        helper.make_node("Identity", ["condition_in"], ["condition_out"]),
        helper.make_node("Identity", ["h_out"], ["h_scan"]),
    ]
    body_outputs = ["condition_out", "h_out"]
    if weights_as_state:
        body_nodes.append(helper.make_node("Identity", ["R_in"], ["R_out"]))
        body_outputs.append("R_out")
    body_outputs.append("h_scan")
    float_info = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
    body = helper.make_graph(
        body_nodes, "body",
        [helper.make_tensor_value_info("iteration", TensorProto.INT64, []),
         helper.make_tensor_value_info("condition_in", TensorProto.BOOL, []),
         *[float_info(n) for n in state_names]],
        [helper.make_tensor_value_info("condition_out", TensorProto.BOOL, []),
         *[float_info(n) for n in body_outputs[1:]]])
    nodes = []
    if trip_from_input:  # trip count = int(x[0, 0, 0]): it depends on the input's values
        nodes = [helper.make_node("Gather", ["x", "zero"], ["x_0"], axis=0),
                 helper.make_node("Gather", ["x_0", "zero"], ["x_00"], axis=0),
                 helper.make_node("Gather", ["x_00", "zero"], ["x_000"], axis=0),
                 helper.make_node("Cast", ["x_000"], ["trips"], to=TensorProto.INT64)]
    loop_inputs = ["trips" if trip_from_input else "trip_count", "keep_going" if with_condition else "", "h0"]
    loop_inputs += ["R"] if weights_as_state else []
    loop_outputs = ["h_last"] + (["R_last"] if weights_as_state else []) + ["h_all"]
    loop = helper.make_node("Loop", loop_inputs, loop_outputs, name="rnn_loop", body=body)
    inits = [_init("trip_count", np.array(steps, np.int64)), _init("keep_going", np.array(True)),
             _init("zero", np.array(0, np.int64)),
             _init("h0", np.zeros((batch, hidden), np.float32)),
             *[_init(k, v) for k, v in weights.items()]]
    graph = helper.make_graph(
        [*nodes, loop], "loop_rnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [steps, batch, features])],
        [helper.make_tensor_value_info("h_last", TensorProto.FLOAT, [batch, hidden]),
         helper.make_tensor_value_info("h_all", TensorProto.FLOAT, [steps, batch, hidden])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def scan_rnn(weights: dict[str, np.ndarray], steps: int, batch: int, input_axis: int = 0, input_direction: int = 0,
             output_axis: int = 0, output_direction: int = 0) -> onnx.ModelProto:
    """The same RNN as a Scan over x (time on `input_axis`), with the attributes set as given."""
    features, hidden = weights["W"].shape
    body = helper.make_graph(
        [helper.make_node("MatMul", ["x_t", "W"], ["xw"]),
         helper.make_node("MatMul", ["h_in", "R"], ["hr"]),
         helper.make_node("Sum", ["xw", "hr", "b"], ["pre"]),
         helper.make_node("Sigmoid", ["pre"], ["gate"]),
         helper.make_node("Tanh", ["pre"], ["candidate"]),
         helper.make_node("Mul", ["gate", "candidate"], ["h_out"]),
         helper.make_node("Identity", ["h_out"], ["h_scan"])],
        "body",
        [helper.make_tensor_value_info("h_in", TensorProto.FLOAT, [batch, hidden]),
         helper.make_tensor_value_info("x_t", TensorProto.FLOAT, [batch, features])],
        [helper.make_tensor_value_info("h_out", TensorProto.FLOAT, [batch, hidden]),
         helper.make_tensor_value_info("h_scan", TensorProto.FLOAT, [batch, hidden])])
    scan = helper.make_node("Scan", ["h0", "x"], ["h_last", "h_all"], name="rnn_scan", body=body, num_scan_inputs=1,
                            scan_input_axes=[input_axis], scan_input_directions=[input_direction],
                            scan_output_axes=[output_axis], scan_output_directions=[output_direction])
    x_shape = [batch, features]
    x_shape.insert(input_axis % 3, steps)
    out_shape = [batch, hidden]
    out_shape.insert(output_axis % 3, steps)
    inits = [_init("h0", np.zeros((batch, hidden), np.float32)), *[_init(k, v) for k, v in weights.items()]]
    graph = helper.make_graph(
        [scan], "scan_rnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("h_last", TensorProto.FLOAT, [batch, hidden]),
         helper.make_tensor_value_info("h_all", TensorProto.FLOAT, out_shape)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def while_loop(stop: int | None, input_dependent_stop: bool = False) -> onnx.ModelProto:
    """h <- tanh(h + x) while `iteration + 1 < stop`, with the largest int64 as trip count (how
    while-loops are written). With input_dependent_stop the condition is h[:, 0] < 100 instead."""
    body_nodes = [helper.make_node("Add", ["h_in", "x"], ["pre"]), helper.make_node("Tanh", ["pre"], ["h_out"])]
    if input_dependent_stop:
        body_nodes += [helper.make_node("Gather", ["h_out", "zero"], ["first"], axis=1),
                       helper.make_node("Less", ["first", "hundred"], ["condition_out"])]
    else:
        body_nodes += [helper.make_node("Add", ["iteration", "one"], ["next"]),
                       helper.make_node("Less", ["next", "stop"], ["condition_out"])]
    body = helper.make_graph(
        body_nodes, "body",
        [helper.make_tensor_value_info("iteration", TensorProto.INT64, []),
         helper.make_tensor_value_info("condition_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_in", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("condition_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_out", TensorProto.FLOAT, None)])
    loop = helper.make_node("Loop", ["trip_count", "keep_going", "h0"], ["h_last"], name="while", body=body)
    inits = [_init("trip_count", np.array(np.iinfo(np.int64).max, np.int64)), _init("keep_going", np.array(True)),
             _init("h0", np.zeros((1, 3), np.float32)), _init("one", np.array(1, np.int64)),
             _init("stop", np.array(stop or 0, np.int64)),
             _init("zero", np.array(0, np.int64)), _init("hundred", np.array(100, np.float32))]
    graph = helper.make_graph([loop], "while", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
                              [helper.make_tensor_value_info("h_last", TensorProto.FLOAT, ["batch", 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def nested_loops(outer: int, inner: int) -> onnx.ModelProto:
    """h <- tanh(h W + x) repeated inner times inside a loop run outer times; W and x captured
    from two scopes out."""
    def loop_body(nodes: list[onnx.NodeProto], name: str) -> onnx.GraphProto:
        return helper.make_graph(
            nodes + [helper.make_node("Identity", [f"{name}_cond_in"], [f"{name}_cond_out"])], name,
            [helper.make_tensor_value_info(f"{name}_i", TensorProto.INT64, []),
             helper.make_tensor_value_info(f"{name}_cond_in", TensorProto.BOOL, []),
             helper.make_tensor_value_info(f"{name}_h_in", TensorProto.FLOAT, None)],
            [helper.make_tensor_value_info(f"{name}_cond_out", TensorProto.BOOL, []),
             helper.make_tensor_value_info(f"{name}_h_out", TensorProto.FLOAT, None)])

    inner_body = loop_body([helper.make_node("MatMul", ["inner_h_in", "W"], ["hw"]),
                            helper.make_node("Add", ["hw", "x"], ["pre"]),
                            helper.make_node("Tanh", ["pre"], ["inner_h_out"], name="cell")], "inner")
    outer_body = loop_body([helper.make_node("Loop", ["inner_trips", "", "outer_h_in"], ["outer_h_out"],
                                             name="inner", body=inner_body)], "outer")
    loop = helper.make_node("Loop", ["outer_trips", "", "h0"], ["h_last"], name="outer", body=outer_body)
    rng = np.random.default_rng(7)
    inits = [_init("outer_trips", np.array(outer, np.int64)), _init("inner_trips", np.array(inner, np.int64)),
             _init("h0", np.zeros((1, 3), np.float32)), _init("W", rng.uniform(-1, 1, (3, 3)).astype(np.float32))]
    graph = helper.make_graph([loop], "nested", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
                              [helper.make_tensor_value_info("h_last", TensorProto.FLOAT, ["batch", 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
