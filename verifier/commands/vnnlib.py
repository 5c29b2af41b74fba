"""`popqorn vnnlib`: answer a VNN-LIB property (1.0 or 2.0) about an ONNX model, or a whole
VNN-COMP style instance list.

    popqorn vnnlib MODEL PROPERTY [--timeout S] [--out RESULT]
    popqorn vnnlib --instances instances.csv [--results-dir DIR] [--summary summary.csv]

Result (stdout, and --out FILE as VNN-COMP's run_instance.sh expects):
  sat      a counterexample, confirmed by onnxruntime, follows as ((X_0 v) ... (Y_0 v) ...)
  unsat    the bound engine proved no input of the box reaches the unsafe outputs
  unknown  neither, and no more splitting can help (or --max-boxes reached)
  timeout  --timeout expired first
--timeout counts from the start of the process (start-up, parsing, model loading and every
phase): the answer is out within --timeout + 1 s. Exit code 0 for every answer; non-zero only for
errors (see `popqorn --help`). --prepare only loads the model and reads the property (exit 0 when
popqorn can take the instance: VNN-COMP's prepare_instance.sh)."""

from __future__ import annotations

import argparse
import sys
import time

from verifier.commands import options
from verifier.errors import InputError, PopqornError
from verifier.vnnlib.deadline import Deadline, command_start_time
from verifier.vnnlib.instance import (
    METHODS,
    decide,
    reply_json,
    reply_of,
    result_text,
    write_result,
)
from verifier.vnnlib.reader import MAX_TERMS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("model", nargs="?", help="ONNX model file")
    parser.add_argument("property", nargs="?", help="VNN-LIB property file (1.0 or 2.0; .gz accepted)")
    options.add_input_shape(parser)
    parser.add_argument("--timeout", help="seconds, counted from the start of the process, before answering timeout")
    parser.add_argument("--out", metavar="RESULT", help="write the result file here")
    parser.add_argument("--method", default="popqorn", choices=METHODS)
    parser.add_argument("--max-boxes", type=int, default=20000, help="input boxes to bound before answering unknown")
    parser.add_argument("--max-cases", type=int, default=MAX_TERMS,
                        help=f"cap on the cases of the property's disjunctive normal form (default {MAX_TERMS:,})")
    parser.add_argument("--seed", type=options.seed_value, default=0, help="attack seed")
    options.add_threads(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--prepare", action="store_true",
                        help="only load the model and read the property (exit 0 when popqorn can take the instance)")
    parser.add_argument("--instances", metavar="CSV",
                        help="run a VNN-COMP instance list (rows: onnx,vnnlib,timeout; paths relative to the CSV)")
    parser.add_argument("--results-dir", metavar="DIR", help="with --instances: one result file per row here "
                        "(default: a 'results' folder beside the CSV)")
    parser.add_argument("--summary", metavar="CSV", help="with --instances: summary file (default DIR/summary.csv)")


def run(args: argparse.Namespace) -> int:
    started = command_start_time()
    options.startup_finished()  # models are read per instance, here or in workers: no start-up to defer
    timeout = None if args.timeout is None else options.parse_float(args.timeout, "--timeout")
    if args.max_boxes < 1 or args.max_cases < 1:
        raise InputError("--max-boxes and --max-cases must be at least 1")
    args.threads = options.threads_from(args)
    if args.instances:
        if args.model or args.property or args.out or args.prepare:
            raise PopqornError("--instances takes no MODEL/PROPERTY, --out or --prepare (each row names its own)")
        from verifier.vnnlib.instances import run_instances

        return run_instances(args, default_timeout=timeout)
    if not args.model or not args.property:
        raise PopqornError("give MODEL and PROPERTY, or --instances CSV")
    options.check_output_path(args.out, "--out")
    if args.prepare or getattr(args, "debug", False):
        return _in_process(args, started, timeout)
    from verifier.vnnlib.instances import (
        raise_reply_error,
        request_for,
        run_instance,
        worker_options,
    )

    deadline = Deadline.after(timeout, started)
    reply, worker = run_instance(None, request_for(args.model, args.property, deadline.at, worker_options(args)))
    if worker is not None:
        worker.close()
    raise_reply_error(reply)
    return _report(args, reply, started)


def _report(args: argparse.Namespace, reply: dict, started: float) -> int:
    write_result(args.out, result_text(reply))
    if reply.get("reason") and not args.json:  # stdout keeps VNN-COMP's one-word format
        vacuous = reply["reason"].startswith("the property's unsafe set is empty")
        print(f"popqorn: note: {reply['reason']}" + (": the answer holds vacuously" if vacuous else ""), file=sys.stderr)
    print(reply_json(reply, time.time() - started) if args.json else result_text(reply), end="\n" if args.json else "")
    return 0


def _in_process(args: argparse.Namespace, started: float, timeout: float | None) -> int:
    """--prepare, and --debug (tracebacks): everything in this process, deadline kept cooperatively."""
    answer, prop = decide(args.model, args.property, Deadline.after(timeout, started),
                          input_shapes=options.parse_input_shapes(args.input_shape), method=args.method,
                          max_boxes=args.max_boxes, max_cases=args.max_cases, seed=args.seed,
                          threads=args.threads, prepare_only=args.prepare)
    if args.prepare:
        if prop is None:  # the deadline passed before the property was read
            raise InputError(f"--prepare: {args.model} with {args.property} was not read within --timeout {timeout:g}s")
        print(f"ok: {args.model} with {args.property} (VNN-LIB {prop.version}, {len(prop.cases)} input boxes)")
        return 0
    return _report(args, reply_of(answer, prop), started)
