"""The original ONNX file run by onnxruntime: the ground truth every counterexample is checked on
before popqorn reports it (the IR is exact, but a counterexample is a claim about the file)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from verifier import ir
from verifier.errors import ModelFileError


def to_model_layout(node: ir.Input, flat: np.ndarray) -> np.ndarray:
    """(batch, size) per-sample vectors -> the input tensor in the model's own layout."""
    batch = flat.shape[0]
    if node.batch_axis is None:
        if batch != 1:
            raise ValueError(f"input {node.onnx_name!r} has no batch axis; one sample at a time")
        return flat.reshape(node.shape)
    per_sample = [d for k, d in enumerate(node.shape) if k != node.batch_axis]
    return np.moveaxis(flat.reshape(batch, *per_sample), 0, node.batch_axis)


class OnnxModel:
    """onnxruntime session on the model file, fed and read in the IR's per-sample flat form."""

    def __init__(self, path: str) -> None:
        try:
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelFileError(f"onnxruntime cannot load {path}: {str(exc).splitlines()[0]}") from None
        self.input_types = {i.name: i.type for i in self.session.get_inputs()}

    def outputs(self, graph: ir.Graph, flat_inputs: dict[str, np.ndarray], output: ir.Output) -> np.ndarray:
        """(batch, output size) outputs of the file for per-sample flat inputs keyed by IR input name."""
        feeds = {}
        for node in graph.inputs:
            dtype = np.float64 if self.input_types.get(node.onnx_name) == "tensor(double)" else np.float32
            feeds[node.onnx_name] = to_model_layout(node, np.asarray(flat_inputs[node.name])).astype(dtype)
        names = [o.name for o in self.session.get_outputs()]
        value = self.session.run([output.onnx_name], feeds)[0] if output.onnx_name in names else None
        if value is None:
            raise ModelFileError(f"onnxruntime does not produce output {output.onnx_name!r}")
        value = np.asarray(value, dtype=np.float64)
        if output.batch_axis is None:
            return value.reshape(1, -1)
        return np.moveaxis(value, output.batch_axis, 0).reshape(value.shape[output.batch_axis], -1)
