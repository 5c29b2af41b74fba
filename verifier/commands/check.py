"""`popqorn check`: the IR's exact forward pass against onnxruntime on the original file."""

from __future__ import annotations

import argparse
import json

import numpy as np
import onnxruntime as ort

import verifier
from verifier import ir
from verifier.commands import options
from verifier.errors import InputError, ModelFileError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="ONNX model file")
    parser.add_argument("--samples", type=int, default=8, help="random samples per input (default 8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tol", default="1e-5", help="largest absolute difference accepted (default 1e-5)")
    parser.add_argument("--input", help="check on these samples instead (.npy, or .npz with x) for a single-input model")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def random_feeds(graph: ir.Graph, count: int, seed: int) -> dict[str, np.ndarray]:
    """Uniform [0, 1) inputs in every input's own layout, `count` samples on its batch axis."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for node in graph.inputs:
        shape = tuple(count if k == node.batch_axis else d for k, d in enumerate(node.shape))
        feeds[node.onnx_name] = rng.uniform(0, 1, shape).astype(np.float32)
    return feeds


def run(args: argparse.Namespace) -> int:
    graph = options.load_graph(args.model)
    tol = options.parse_float(args.tol, "--tol")
    if args.samples < 1:
        raise InputError("--samples must be at least 1")
    if args.input:
        if len(graph.inputs) != 1:
            raise InputError("--input works for single-input models; the model takes "
                             f"{[n.onnx_name for n in graph.inputs]}")
        data = np.load(args.input, allow_pickle=False) if args.input.endswith((".npy", ".npz")) else None
        if data is None:
            raise InputError(f"{args.input}: expected a .npy or .npz file")
        x = data["x"] if isinstance(data, np.lib.npyio.NpzFile) else data
        feeds = {graph.inputs[0].onnx_name: np.asarray(x, dtype=np.float32)}
    else:
        feeds = random_feeds(graph, args.samples, args.seed)
    try:
        session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
        expected = session.run(None, feeds)
    except Exception as exc:
        raise ModelFileError(f"onnxruntime cannot run {args.model}: {str(exc).splitlines()[0]}") from None
    got = verifier.evaluate(graph, feeds)
    rows = []
    for out, e, g in zip(graph.outputs, expected, got):
        difference = float(np.abs(np.asarray(e, dtype=np.float64) - g).max()) if np.size(e) else 0.0
        rows.append({"output": out.onnx_name, "shape": list(np.shape(e)), "max_abs_diff": difference,
                     "ok": bool(np.shape(e) == np.shape(g) and difference <= tol)})
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
