"""`popqorn check`: the IR's exact forward pass against onnxruntime on the original file."""

from __future__ import annotations

import argparse
import json

import numpy as np

from verifier import ir
from verifier.commands import options
from verifier.errors import InputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="ONNX model file")
    parser.add_argument("--samples", type=int, default=8,
                        help=f"random samples per input (default 8, at most {MAX_SAMPLES})")
    parser.add_argument("--seed", type=options.seed_value, default=0)
    parser.add_argument("--tol", default="1e-5", help="absolute difference accepted (default 1e-5)")
    parser.add_argument("--rtol", default="1e-6",
                        help="plus this much of |onnxruntime's value| (default 1e-6: float32 rounding of large "
                             "outputs, e.g. ReLU cells' logits of 40 differ by ~1e-5)")
    parser.add_argument("--input", help="check on these samples instead: .npy (single-input model) or .npz with 'x' "
                                        "and every other model input under its name; dynamic dimensions are taken "
                                        "from them")
    options.add_input_shape(parser)
    options.add_threads(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")


MAX_SAMPLES = 10_000


def random_feeds(graph: ir.Graph, count: int, seed: int) -> dict[str, np.ndarray]:
    """Uniform [0, 1) inputs in every input's own layout, `count` samples on its batch axis."""
    options.require_shapes(graph, "for random inputs")
    total = sum(count * node.size for node in graph.inputs)
    if total > options.MAX_SAMPLE_ELEMENTS:
        raise InputError(f"--samples {count}: {total:,} random values, more than the "
                         f"{options.MAX_SAMPLE_ELEMENTS:,} popqorn generates; use fewer samples")
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


def within_tolerance(expected: np.ndarray, got: np.ndarray, tol: float, rtol: float) -> bool:
    """|expected - got| <= tol + rtol * |expected| everywhere (NaN on both sides agrees)."""
    expected = np.asarray(expected, dtype=np.float64)
    if expected.shape != np.shape(got):
        return False
    difference = np.abs(expected - got)
    both_nan = np.isnan(expected) & np.isnan(got)
    return bool(np.all(both_nan | (difference <= tol + rtol * np.abs(expected))))


def _read_inputs(graph: ir.Graph, path: str) -> dict[str, np.ndarray]:
    """The samples of a --input file for every model input, as float32 (what onnxruntime takes):
    a .npy for a single-input model, else an .npz with 'x' (or the input's name) and the others
    by name."""
    from verifier.commands.arrays import list_members, read_arrays
    from verifier.commands.samples import as_real, check_layout

    names = [node.onnx_name for node in graph.inputs]
    data = read_arrays(path, "input", keys=list(dict.fromkeys([*names, "x"])))
    if not isinstance(data, dict):
        if len(names) != 1:
            raise InputError(f"the model takes inputs {names}: give an .npz with one array per input name")
        data = {names[0]: data}
    elif names[0] not in data and "x" in data:
        data[names[0]] = data.pop("x")
    missing = ["x" if name == names[0] else name for name in names if name not in data]
    if missing:
        raise InputError(f"{path} has arrays {list_members(path)}; an .npz input needs "
                         f"{', '.join(repr(name) for name in missing)} (one array per model input, by name)")
    return {node.onnx_name: cast_within_range(check_layout(node, as_real(data[node.onnx_name], f"{path}: {node.onnx_name!r}"),
                                                           f"{path}: {node.onnx_name!r}"), np.float32,
                                              f"{path}: {node.onnx_name!r}")
            for node in graph.inputs}


def cast_within_range(array: np.ndarray, dtype, what: str) -> np.ndarray:
    """`array` as `dtype`; finite values beyond that type's range are refused (they would become
    inf, and the comparison would be about other inputs than the file's)."""
    if np.issubdtype(dtype, np.integer):  # an input read as a constant, e.g. sequence_lens
        info = np.iinfo(dtype)
        if not (np.all(np.isfinite(array)) and np.all(array == np.round(array))
                and np.all((array >= info.min) & (array <= info.max))):
            raise InputError(f"{what} must hold whole numbers within the range of {np.dtype(dtype).name}, "
                             "the file's type for it")
        return array.astype(dtype)
    finite = np.abs(array[np.isfinite(array)])
    limit = float(np.finfo(dtype).max)
    if finite.size and float(finite.max()) > limit:
        raise InputError(f"{what} holds values up to {float(finite.max()):g}, beyond the range of "
                         f"{np.dtype(dtype).name} (at most {limit:g}) that the model is fed")
    return array.astype(dtype)


def run(args: argparse.Namespace) -> int:
    import verifier
    from verifier.onnx_runtime import OnnxModel

    tol = options.parse_float(args.tol, "--tol")
    rtol = options.parse_float(args.rtol, "--rtol")
    if not 1 <= args.samples <= MAX_SAMPLES:
        raise InputError(f"--samples must be between 1 and {MAX_SAMPLES}, not {args.samples}")
    threads = options.apply_threads(args)
    graph = options.load_graph(args)
    feeds = _read_inputs(graph, args.input) if args.input else random_feeds(graph, args.samples, args.seed)
    model = OnnxModel(args.model, threads=threads)
    # both sides see the values the file takes (e.g. rounded to float16 for a float16 input)
    if not args.input:
        for name in feeds:
            if np.issubdtype(model.feed_dtype(name), np.integer):
                raise InputError(f"input {name!r} is an integer input (e.g. sequence lengths), which random values "
                                 "cannot stand for: give the samples with --input (an .npz holding it by name)")
    feeds = {name: cast_within_range(value, model.feed_dtype(name), f"input {name!r}") for name, value in feeds.items()}
    got = verifier.evaluate(graph, {name: value.astype(np.float64) for name, value in feeds.items()})
    concrete, _ = graph.specialize(feeds)  # the loaded graph lists no outputs while dimensions are open
    expected = model.run(graph, feeds, list(concrete.outputs))
    rows = []
    for out, e, g in zip(concrete.outputs, expected, got):
        rows.append({"output": out.onnx_name, "shape": list(np.shape(e)), "max_abs_diff": max_difference(e, g)})
        rows[-1]["ok"] = within_tolerance(e, g, tol, rtol)
    ok = all(row["ok"] for row in rows)
    worst = max((row for row in rows if not row["ok"]), key=lambda row: row["max_abs_diff"], default=None)
    if args.json:
        print(json.dumps({"model": args.model, "ok": ok, "tol": tol, "rtol": rtol, "outputs": rows}))
    else:
        for row in rows:
            print(f"{row['output']}: shape {row['shape']}, max |IR - onnxruntime| = {row['max_abs_diff']:.3g}"
                  f" {'ok' if row['ok'] else 'MISMATCH'}")
        print("check passed" if ok else
              f"check FAILED: output {worst['output']!r} differs by {worst['max_abs_diff']:.3g} "
              f"(> {tol:g} + {rtol:g} * |value|)")
    return 0 if ok else 1
