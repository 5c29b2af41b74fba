"""The original ONNX file run by onnxruntime: the ground truth every counterexample is checked on
before popqorn reports it (the IR is exact, but a counterexample is a claim about the file).

Exports with the batch size baked in (e.g. torch's dynamo exporter without dynamic shapes) accept
only that many samples per run; samples are then fed in chunks of the model's own batch (the last
chunk padded by repeating its last sample, the padding dropped from the outputs)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from verifier import ir
from verifier.errors import InputError, ModelFileError

# ONNX element types onnxruntime is fed with, for real-valued inputs
INPUT_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16}
# integer inputs are never perturbed, but a model may read one as a constant (e.g. sequence_lens)
INTEGER_DTYPES = {"tensor(int32)": np.int32, "tensor(int64)": np.int64}


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

    def __init__(self, path: str, threads: int | None = None) -> None:
        settings = ort.SessionOptions()
        settings.log_severity_level = 4  # its errors are reported as one line below, not logged too
        if threads:
            settings.intra_op_num_threads = threads
            settings.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), settings, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if "layout_ == 0" in first:  # its CPU kernels of LSTM/GRU/RNN implement layout 0 only
                raise ModelFileError(
                    f"onnxruntime cannot run {path}: a recurrent node has layout=1, which onnxruntime does not "
                    "implement. popqorn converts it (certify without --attack, and bounds work), but this command runs "
                    "the file in onnxruntime; to check, attack or answer VNN-LIB, export with layout 0 (batch on "
                    "axis 1)") from None
            raise ModelFileError(f"onnxruntime cannot load {path}: {first}") from None
        self.path = str(path)
        self.declared = {i.name: (i.type, list(i.shape)) for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.held: dict[str, tuple[np.ndarray, int | None]] = {}

    def hold(self, graph: ir.Graph, feeds: dict[str, np.ndarray]) -> None:
        """Values for file inputs that `graph` (the loaded, unspecialised graph) lists but the
        engine's graph no longer takes: constants folded from the feeds, e.g. weights fed as
        inputs. Folded inputs are identical on every batch row, so one row is kept and repeated
        to each run's batch size."""
        for node in graph.inputs:
            if node.onnx_name in feeds and node.onnx_name in self.declared:
                value = np.asarray(feeds[node.onnx_name])
                dtype = INPUT_DTYPES.get(self.declared[node.onnx_name][0])
                value = value if dtype is None else value.astype(dtype)
                if node.batch_axis is not None:
                    value = np.take(value, [0], axis=node.batch_axis)
                self.held[node.onnx_name] = (value, node.batch_axis)

    def input_dtype(self, onnx_name: str) -> type:
        """The numpy type the file takes for this input; non-real inputs are refused."""
        kind = self.declared.get(onnx_name, ("tensor(float)", []))[0]
        if kind not in INPUT_DTYPES:
            raise InputError(f"input {onnx_name!r} of {self.path} has element type {kind}; popqorn feeds "
                             f"real-valued inputs ({', '.join(INPUT_DTYPES)})")
        return INPUT_DTYPES[kind]

    def feed_dtype(self, onnx_name: str) -> type:
        """The numpy type a held (not perturbed) input is fed as: a real type, or an integer one."""
        kind = self.declared.get(onnx_name, ("tensor(float)", []))[0]
        return INTEGER_DTYPES[kind] if kind in INTEGER_DTYPES else self.input_dtype(onnx_name)

    def fixed_batch(self, graph: ir.Graph) -> int | None:
        """The batch size baked into the file (None when its batch axes are dynamic)."""
        sizes = set()
        for node in graph.inputs:
            dims = self.declared.get(node.onnx_name, (None, []))[1]
            if node.batch_axis is not None and node.batch_axis < len(dims) and isinstance(dims[node.batch_axis], int):
                sizes.add(dims[node.batch_axis])
        if len(sizes) > 1:
            raise ModelFileError(f"{self.path}: its inputs fix different batch sizes {sorted(sizes)}")
        return next(iter(sizes), None)

    def rounded(self, node: ir.Input, flat: np.ndarray) -> np.ndarray:
        """Per-sample vectors rounded to the file's input precision, as float64: the exact point
        onnxruntime will see (a counterexample is validated and reported at this point)."""
        return np.asarray(flat, dtype=np.float64).astype(self.input_dtype(node.onnx_name)).astype(np.float64)

    def run(self, graph: ir.Graph, feeds: dict[str, np.ndarray], outputs: list[ir.Output]) -> list[np.ndarray]:
        """`outputs` of the file for feeds in the model's layout (keyed by ONNX name), run in chunks
        of the model's fixed batch when it has one."""
        missing = [out.onnx_name for out in outputs if out.onnx_name not in self.output_names]
        if missing:
            raise ModelFileError(f"onnxruntime does not produce output(s) {missing}")
        feeds = {name: np.asarray(value).astype(self.feed_dtype(name)) for name, value in feeds.items()}
        axes = {node.onnx_name: node.batch_axis for node in graph.inputs if node.onnx_name in feeds}
        batched = [name for name, axis in axes.items() if axis is not None]
        count = feeds[batched[0]].shape[axes[batched[0]]] if batched else 1
        for name, (value, axis) in self.held.items():
            if name not in feeds:
                feeds[name] = value if axis is None else np.repeat(value, count, axis=axis)
                axes[name] = axis
                batched += [] if axis is None else [name]
        fixed = self.fixed_batch(graph)
        if fixed is None or not batched or count == fixed:
            return self._run(feeds, outputs)
        pieces = []
        for start in range(0, count, fixed):
            rows = np.minimum(np.arange(start, start + fixed), count - 1)  # pad with the last sample
            chunk = dict(feeds)
            for name in batched:
                chunk[name] = np.take(feeds[name], rows, axis=axes[name])
            kept = min(fixed, count - start)
            pieces.append([value if out.batch_axis is None else np.take(value, np.arange(kept), axis=out.batch_axis)
                           for out, value in zip(outputs, self._run(chunk, outputs))])
        # an output without a batch axis (a batch-1 export that squeezed it) gets one row per chunk
        return [np.stack([piece[k] for piece in pieces]) if out.batch_axis is None
                else np.concatenate([piece[k] for piece in pieces], axis=out.batch_axis)
                for k, out in enumerate(outputs)]

    def _run(self, feeds: dict[str, np.ndarray], outputs: list[ir.Output]) -> list[np.ndarray]:
        try:
            return self.session.run([out.onnx_name for out in outputs], feeds)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors
            raise ModelFileError(f"onnxruntime cannot run {self.path}: {str(exc).splitlines()[0]}") from None

    def outputs(self, graph: ir.Graph, flat_inputs: dict[str, np.ndarray], output: ir.Output) -> np.ndarray:
        """(batch, output size) outputs of the file for per-sample flat inputs keyed by IR input name."""
        feeds = {node.onnx_name: to_model_layout(node, np.asarray(flat_inputs[node.name])) for node in graph.inputs}
        value = np.asarray(self.run(graph, feeds, [output])[0], dtype=np.float64)
        if output.batch_axis is None:
            return value.reshape(-1, output.size)
        return np.moveaxis(value, output.batch_axis, 0).reshape(value.shape[output.batch_axis], -1)
