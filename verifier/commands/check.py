"""`popqorn check`: the IR's exact forward pass against onnxruntime on the original file."""

from __future__ import annotations

import argparse
import json

import numpy as np

from verifier import ir
from verifier.commands import options
from verifier.errors import InputError, ModelFileError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="ONNX model file")
    parser.add_argument("--samples", type=int, default=8, help="random samples per input (default 8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tol", default="1e-5", help="largest absolute difference accepted (default 1e-5)")
    parser.add_argument("--input", help="check on these samples instead (.npy, or .npz with x) for a single-input model")
    options.add_input_shape(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def random_feeds(graph: ir.Graph, count: int, seed: int) -> dict[str, np.ndarray]:
    """Uniform [0, 1) inputs in every input's own layout, `count` samples on its batch axis."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for node in graph.inputs:
        shape = tuple(count if k == node.batch_axis else d for k, d in enumerate(node.shape))
        feeds[node.onnx_name] = rng.uniform(0, 1, shape).astype(np.float32)
    return feeds


def max_difference(expected: np.ndarray, got: np.ndarray) -> float:
    """Largest absolute difference; a shape mismatch or a NaN on one side only counts as infinite."""
    expected = np.asarray(expected, dtype=np.float64)
    if expected.shape != np.shape(got):
        return float("inf")
    if expected.size == 0:
        return 0.0
    difference = np.abs(expected - got)
    both_nan = np.isnan(expected) & np.isnan(got)
    return float(np.where(both_nan, 0.0, np.where(np.isnan(difference), np.inf, difference)).max())


def _read_input(graph: ir.Graph, path: str) -> np.ndarray:
    """The samples of a --input file for a single-input model, as float32 (what onnxruntime takes)."""
    if len(graph.inputs) != 1:
        raise InputError(f"--input works for single-input models; the model takes {[n.onnx_name for n in graph.inputs]}")
    if not path.endswith((".npy", ".npz")):
        raise InputError(f"{path}: expected a .npy or .npz file")
    data = options._read_array(path, "input")
    if isinstance(data, dict):
        if "x" not in data:
            raise InputError(f"{path} has arrays {sorted(data)}; an .npz input needs 'x'")
        data = data["x"]
    if not np.issubdtype(data.dtype, np.number):
        raise InputError(f"input {path} has dtype {data.dtype}; numbers are required")
    return np.asarray(data, dtype=np.float32)


def run(args: argparse.Namespace) -> int:
    import onnxruntime as ort

    import verifier

    graph = options.load_graph(args)
    tol = options.parse_float(args.tol, "--tol")
    if args.samples < 1:
        raise InputError("--samples must be at least 1")
    if args.input:
        feeds = {graph.inputs[0].onnx_name: _read_input(graph, args.input)}
    else:
        feeds = random_feeds(graph, args.samples, args.seed)
    got = verifier.evaluate(graph, feeds)  # first: it names what is wrong with the feeds
    try:
        session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
        expected = session.run([o.onnx_name for o in graph.outputs], feeds)
    except Exception as exc:
        raise ModelFileError(f"onnxruntime cannot run {args.model}: {str(exc).splitlines()[0]}") from None
    rows = []
    for out, e, g in zip(graph.outputs, expected, got):
        rows.append({"output": out.onnx_name, "shape": list(np.shape(e)), "max_abs_diff": max_difference(e, g)})
        rows[-1]["ok"] = rows[-1]["max_abs_diff"] <= tol
    ok = all(row["ok"] for row in rows)
    worst = max(rows, key=lambda row: row["max_abs_diff"])
    if args.json:
        print(json.dumps({"model": args.model, "ok": ok, "tol": tol, "outputs": rows}))
    else:
        for row in rows:
            print(f"{row['output']}: shape {row['shape']}, max |IR - onnxruntime| = {row['max_abs_diff']:.3g}"
                  f" {'ok' if row['ok'] else 'MISMATCH'}")
        print("check passed" if ok else
              f"check FAILED: output {worst['output']!r} differs by {worst['max_abs_diff']:.3g} (> {tol:g})")
    return 0 if ok else 1
