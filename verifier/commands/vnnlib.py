"""`popqorn vnnlib`: answer a VNN-LIB property (1.0 or 2.0) about an ONNX model.

Result (stdout, and --out FILE as VNN-COMP's run_instance.sh expects):
  sat      a counterexample, confirmed by onnxruntime, follows as ((X_0 v) ... (Y_0 v) ...)
  unsat    the bound engine proved no input of the box reaches the unsafe outputs
  unknown  neither, and no more splitting can help (or --max-boxes reached)
  timeout  --timeout expired first
Exit code 0 for every answer; non-zero only for errors (see `popqorn --help`)."""

from __future__ import annotations

import argparse
import json

from verifier.bounds import METHODS
from verifier.commands import options
from verifier.errors import InputError
from verifier.vnnlib import read_property
from verifier.vnnlib.solve import solve


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("model", help="ONNX model file")
    parser.add_argument("property", help="VNN-LIB property file (1.0 or 2.0)")
    options.add_input_shape(parser)
    parser.add_argument("--timeout", help="seconds before answering timeout")
    parser.add_argument("--out", metavar="RESULT", help="write the result file here")
    parser.add_argument("--method", default="popqorn", choices=[m for m in METHODS if m != "ibp"] + ["ibp"])
    parser.add_argument("--max-boxes", type=int, default=20000, help="input boxes to bound before answering unknown")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    timeout = None if args.timeout is None else options.parse_float(args.timeout, "--timeout")
    if args.max_boxes < 1:
        raise InputError("--max-boxes must be at least 1")
    graph = options.load_graph(args)
    prop = read_property(args.property)
    answer = solve(graph, args.model, prop, timeout=timeout, method=args.method, max_boxes=args.max_boxes)
    text = answer.result_text()
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text)
    if args.json:
        print(json.dumps({"result": answer.status, "version": prop.version, "boxes": answer.boxes,
                          "time_s": answer.time_s, "counterexample": None if answer.x is None else
                          {"x": answer.x.tolist(), "y": answer.y.tolist()}}))
    else:
        print(text, end="")
    return 0
