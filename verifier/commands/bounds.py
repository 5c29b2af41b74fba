"""`popqorn bounds`: certified lower/upper bounds of a model output over a perturbation set."""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from verifier.commands import options
from verifier.errors import InputError

FLOAT32_MAX = float(np.finfo(np.float32).max)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    options.add_model(parser)
    options.add_samples(parser, labels=False)
    parser.add_argument("--eps", required=True, help="perturbation radius (>= 0)")
    options.add_threat(parser)
    options.add_engine(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def run(args: argparse.Namespace) -> int:
    from verifier.bounds import bound_outputs, output_node

    eps = options.parse_float(args.eps, "--eps")
    threat = options.threat_from(args)
    device, dtype = options.engine_from(args)
    output = options.output_from(args)
    graph = options.load_graph(args)
    samples = options.load_samples(graph, args, need_labels=False)
    options.check_magnitude(eps, samples.x, args.dtype)
    started = time.perf_counter()
    lower, upper = bound_outputs(graph, samples.all_feeds(), eps, threat=threat, method=args.method,
                                 optimize=options.optimize_from(args), output=output, input_name=args.input_name,
                                 device=device, dtype=dtype)
    elapsed = time.perf_counter() - started
    if not (np.isfinite(lower).all() and np.isfinite(upper).all()):
        raise InputError(f"the bounds at --eps {eps:g} are not finite in {args.dtype} arithmetic (inf/NaN); use a "
                         f"smaller radius{' or --dtype float64' if args.dtype == 'float32' else ''}")
    graph = samples.graph or graph
    out = output_node(graph, output)
    per_sample_lower, per_sample_upper = _per_sample(lower, out.batch_axis), _per_sample(upper, out.batch_axis)
    beyond = [samples.first_index + k for k, (lo, up) in enumerate(zip(per_sample_lower, per_sample_upper))
              if max(np.abs(lo).max(initial=0), np.abs(up).max(initial=0)) > FLOAT32_MAX]
    if beyond:
        print(f"popqorn: warning: samples {beyond}: bounds beyond float32's range (up to "
              f"{max(np.abs(lower).max(), np.abs(upper).max()):.3g}); a float32 file computes inf or NaN for such "
              f"points, so the bounds hold for the exact computation, not for the file run in float32", file=sys.stderr)
    if args.json:
        print(json.dumps({
            "model": args.model, "output": out.onnx_name, "eps": eps, **options.describe_threat(threat),
            "method": args.method, "device": str(device), "dtype": args.dtype,
            "logits": out.postprocess is not None,
            "samples": [samples.first_index + k for k in range(len(per_sample_lower))],
            "lower": [row.reshape(-1).tolist() for row in per_sample_lower],
            "upper": [row.reshape(-1).tolist() for row in per_sample_upper],
            "time_s": elapsed, **({"beyond_float32": beyond} if beyond else {})}))
        return 0
    note = f" (bounds on the logits: {out.postprocess.value} dropped)" if out.postprocess else ""
    print(f"output {out.onnx_name!r}{note}; eps={eps:g} norm={threat.norm:g} ball={threat.ball} "
          f"method={args.method}; {elapsed:.3f}s")
    for k, (lo, up) in enumerate(zip(per_sample_lower, per_sample_upper)):
        print(f"sample {samples.first_index + k}:")
        for j, (a, b) in enumerate(zip(lo.reshape(-1), up.reshape(-1))):
            print(f"  [{j}] {a: .6f} .. {b: .6f}")
    return 0


def _per_sample(values: np.ndarray, batch_axis: int | None) -> list[np.ndarray]:
    if batch_axis is None:
        return [values]
    return list(np.moveaxis(values, batch_axis, 0))
