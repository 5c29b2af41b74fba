"""One ONNX node as a model, run by onnxruntime and by the IR: the harness of the per-converter
tests (one test module per converter module, mirroring parsers/ops/)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import parsers
import verifier

TOLERANCE = 1e-5


def node_model(node: onnx.NodeProto, feeds: dict[str, np.ndarray], constants: dict[str, np.ndarray] | None = None,
               opset: int = 17, batch_axes: dict[str, int | None] | None = None,
               extra_nodes: tuple[onnx.NodeProto, ...] = ()) -> onnx.ModelProto:
    """Graph inputs `feeds` (their batch axis symbolic), initializers `constants`, the node (after
    `extra_nodes`); outputs typed from onnxruntime's results on `feeds` (any rank/type is fine)."""
    constants = constants or {}
    batch_axes = batch_axes or {}
    inputs = []
    for name, array in feeds.items():
        axis = batch_axes.get(name, 0)
        dims = ["N" if k == axis else d for k, d in enumerate(array.shape)]
        inputs.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(array.dtype), dims))
    initializers = [numpy_helper.from_array(np.asarray(v), k) for k, v in constants.items()]
    nodes = [*extra_nodes, node]
    names = [o for o in node.output if o]
    types = _output_types(nodes, inputs, names, initializers, opset, feeds)
    outputs = [helper.make_tensor_value_info(o, elem, [f"{o}_{k}" for k in range(rank)])
               for o, (elem, rank) in zip(names, types)]
    model = helper.make_model(helper.make_graph(nodes, "one_node", inputs, outputs, initializers),
                              opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _output_types(nodes, inputs, names, initializers, opset, feeds) -> list[tuple[int, int]]:
    """(element type, rank) of each output: from onnx shape inference, else from an onnxruntime run,
    else a placeholder (refusal tests only need a well-formed model)."""
    def model(outputs):
        return helper.make_model(helper.make_graph(nodes, "probe", inputs, outputs, initializers),
                                 opset_imports=[helper.make_opsetid("", opset)])

    untyped = [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in names]
    try:
        inferred = {v.name: v.type.tensor_type for v in onnx.shape_inference.infer_shapes(model(untyped)).graph.output}
    except Exception:  # noqa: BLE001  (inference may fail on what onnxruntime runs)
        inferred = {}
    types = []
    for o in names:
        tensor = inferred.get(o)
        known = tensor is not None and tensor.elem_type and tensor.HasField("shape")
        types.append((tensor.elem_type, len(tensor.shape.dim)) if known else None)
    if all(types):
        return types
    try:
        shapeless = [helper.make_value_info(o, helper.make_tensor_type_proto(t[0] if t else TensorProto.FLOAT, None))
                     for o, t in zip(names, types)]
        results = ort.InferenceSession(model(shapeless).SerializeToString(),
                                       providers=["CPUExecutionProvider"]).run(None, feeds)
        return [(helper.np_dtype_to_tensor_dtype(np.asarray(r).dtype), np.ndim(r)) for r in results]
    except Exception:  # noqa: BLE001  (onnxruntime refuses the node: a refusal test, any type will do)
        return [t or (TensorProto.FLOAT, 1) for t in types]


def check_node(tmp_path: Path, node: onnx.NodeProto, feeds: dict[str, np.ndarray],
               constants: dict[str, np.ndarray] | None = None, opset: int = 17,
               batch_axes: dict[str, int | None] | None = None, extra_nodes: tuple[onnx.NodeProto, ...] = (),
               **load_options) -> list[np.ndarray]:
    """The IR's outputs equal onnxruntime's on `feeds` (within 1e-5); returns them."""
    path = tmp_path / f"{node.op_type}.onnx"
    onnx.save(node_model(node, feeds, constants, opset, batch_axes, extra_nodes), path)
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    graph = parsers.load_onnx(path, batch_axes=batch_axes, **load_options)
    got = verifier.evaluate(graph, feeds)
    assert len(got) == len(expected)
    for e, g in zip(expected, got):
        assert np.shape(e) == np.shape(g), (np.shape(e), np.shape(g))
        assert np.abs(np.asarray(e, dtype=np.float64) - g).max(initial=0.0) <= TOLERANCE
    return got


def save_node(tmp_path: Path, node: onnx.NodeProto, feeds: dict[str, np.ndarray],
              constants: dict[str, np.ndarray] | None = None, opset: int = 17,
              extra_nodes: tuple[onnx.NodeProto, ...] = (), batch_axes: dict[str, int | None] | None = None) -> Path:
    path = tmp_path / f"{node.op_type}.onnx"
    onnx.save(node_model(node, feeds, constants, opset, batch_axes, extra_nodes), path)
    return path


def sample(*shape: int, seed: int = 0, low: float = -2.0, high: float = 2.0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(low, high, shape).astype(np.float32)
