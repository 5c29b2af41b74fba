"""`popqorn audit`: `certify` over a whole sample file on Ray workers, into a resumable journal.

The samples are cut into batches (--batch-size, in order, as `certify` cuts them) and certified on
--workers Ray actors, each holding the parsed graph; every finished batch is appended to --out
(JSON lines, fsync'd), and the same table, summary, JSON, CSV and plot as `certify` follow. Rerunning
the same command resumes from --out. Without Ray installed the batches run in this process."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from verifier.commands import options
from verifier.errors import InputError

INSTALL_HINT = 'pip install ".[distributed]" (or pip install ray)'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    options.add_model(parser)
    options.add_samples(parser)
    options.add_threat(parser)
    options.add_engine(parser)
    parser.add_argument("--target", type=int, help="certify against this class only (default: all other classes)")
    parser.add_argument("--per-frame", action="store_true", help="also the radius when only frame t is perturbed, for every t")
    parser.add_argument("--tol", default="1e-3", help="relative tolerance of the radius search (default 1e-3)")
    parser.add_argument("--out", required=True, metavar="JSONL",
                        help="journal of results, one JSON line per sample; rerun the same command to resume it")
    parser.add_argument("--workers", type=int, default=2, help="Ray workers, each loading the model once (default 2)")
    parser.add_argument("--address", help="join this Ray cluster (ray://HOST:10001, or auto for the one started on "
                                          "this machine by `ray start`); default: a local Ray started for this audit")
    parser.add_argument("--gpus-per-worker", type=float, default=0.0,
                        help="GPUs reserved per worker (e.g. 1, or 0.5 to share); workers then run on cuda (default 0)")
    if "--threads" not in parser._option_string_actions:  # the shared engine options may define it
        parser.add_argument("--threads", type=int, help="torch threads per worker (default 1)")
    parser.set_defaults(threads=None)
    parser.add_argument("--batch-size", type=int, default=16,
                        help="samples per task, searched together (default 16, as certify)")
    parser.add_argument("--retry-errors", action="store_true", help="redo samples the journal records as errors")
    parser.add_argument("--at", help="comma-separated radii for the certified-fraction summary")
    parser.add_argument("--json", nargs="?", const="-", metavar="PATH",
                        help="write the JSON report to PATH, or print it instead of the table when no PATH")
    parser.add_argument("--csv", metavar="PATH", help="write one row per certified sample")
    parser.add_argument("--plot", metavar="PNG", help="draw radii (and per-frame sensitivity with --per-frame)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from verifier.commands.certify import _parse_at, _progress, _take, _validate
    from verifier.distributed.journal import Journal, sha256_arrays, sha256_file
    from verifier.distributed.worker import AuditJob, Shard

    threads = 1 if args.threads is None else args.threads
    for flag, value, least in (("--workers", args.workers, 1), ("--batch-size", args.batch_size, 1),
                               ("--threads", threads, 1), ("--gpus-per-worker", args.gpus_per_worker, 0)):
        if value < least:
            raise InputError(f"{flag} must be at least {least}, not {value:g}")
    graph = options.load_graph(args)
    samples = options.load_samples(graph, args)
    whole = samples if (args.start, args.limit) == (0, None) else \
        options.load_samples(graph, argparse.Namespace(**{**vars(args), "start": 0, "limit": None}))
    threat = options.threat_from(args)
    tol = options.parse_float(args.tol, "--tol")
    if not 0 < tol < 1:
        raise InputError(f"--tol must be in (0, 1), not {args.tol}")
    at = _parse_at(args.at, threat)
    # shapes, frames, labels and target are checked for all samples up front; a NaN stays a per-sample error
    _validate(graph, dataclasses.replace(samples, x=np.nan_to_num(samples.x)), threat, args)
    device = args.device or ("cuda" if args.gpus_per_worker > 0 else "cpu")
    job = AuditJob(norm=threat.norm, ball=threat.ball, frames=threat.frames, per_frame=args.per_frame,
                   target=args.target, method=args.method, tol=tol, output=options.output_from(args),
                   input_name=args.input_name, device=device, dtype=args.dtype)
    config = {"model": os.path.basename(args.model), "model_sha256": sha256_file(args.model),
              "samples_sha256": sha256_arrays(whole.x, whole.labels), "samples_total": whole.count,
              "labels": "model prediction" if whole.labels is None else "given",
              **options.describe_threat(threat), "method": args.method, "target": args.target,
              "per_frame": args.per_frame, "tol": tol, "dtype": args.dtype, "output": str(args.output),
              "input_name": args.input_name}
    journal = Journal.open(args.out, config, extra_header={"input": args.input})
    if journal.dropped_torn_line:
        print(f"popqorn: warning: {args.out} ended in an incomplete line (an interrupted write); "
              f"it was dropped and its samples are redone", file=sys.stderr)
    selected = [samples.first_index + k for k in range(samples.count)]
    done = {index for index, row in journal.rows.items() if not (args.retry_errors and "error" in row)}
    todo = [k for k in range(samples.count) if samples.first_index + k not in done]
    shards = [Shard([samples.first_index + k for k in chunk], chunk)
              for chunk in (todo[s:s + args.batch_size] for s in range(0, len(todo), args.batch_size))]
    bar = _progress(len(selected), disabled=args.no_progress or args.json == "-")
    if bar is not None:
        bar.update(len(selected) - len(todo))

    def record(rows: list[dict]) -> None:
        journal.append(rows)
        if bar is not None:
            bar.update(len(rows))

    try:
        if shards:
            _execute(graph, job, shards, lambda shard: _take(samples, shard.positions), record, args, threads)
    finally:
        if bar is not None:
            bar.close()
        journal.close()
    rows = [journal.rows[index] for index in selected]
    _report(args, threat, device, at, rows)
    return 1 if any("error" in row for row in rows) else 0


def _execute(graph, job, shards, take, record, args: argparse.Namespace, threads: int) -> None:
    """On Ray when it imports; otherwise in this process, saying how to get Ray."""
    try:
        import ray  # noqa: F401
    except ImportError as exc:
        if args.address:
            raise InputError(f"--address needs Ray, which cannot be imported ({exc}): {INSTALL_HINT}") from None
        print(f"popqorn: Ray is not available ({exc}); auditing in this process with one worker. "
              f"For Ray workers: {INSTALL_HINT}", file=sys.stderr)
        from verifier.distributed.worker import run_in_process
        run_in_process(graph, job, shards, take, record, threads)
        return
    if job.device.startswith("cuda") and args.gpus_per_worker <= 0:
        raise InputError("--device cuda on Ray workers needs --gpus-per-worker (e.g. 1, or 0.5 to share a GPU)")
    from verifier.distributed.ray_pool import run_on_ray
    run_on_ray(graph, job, shards, take, record, workers=args.workers, threads=threads,
               gpus_per_worker=args.gpus_per_worker, address=args.address)


def _report(args: argparse.Namespace, threat, device: str, at: list[float], rows: list[dict]) -> None:
    """certify's table, summary, JSON, CSV and plot over the certified samples; errors listed after."""
    import json

    from verifier.commands.certify import (
        _write_csv,
        _write_text,
        print_table,
        summarize,
    )

    certified = [row for row in rows if "error" not in row]
    errors = [row for row in rows if "error" in row]
    report = {"model": args.model, **options.describe_threat(threat), "method": args.method, "device": device,
              "dtype": args.dtype, "target": args.target, "summary": {**summarize(certified, at), "errors": len(errors)},
              "samples": certified, "errors": errors, "journal": args.out}
    if args.json == "-":
        print(json.dumps(report))
    else:
        print_table(certified, report)
        for row in errors:
            print(f"error: sample {row['index']}: {row['error']}")
        if errors:
            print(f"{len(errors)} of {len(rows)} samples failed (recorded in {args.out}; --retry-errors redoes them)")
        if args.json:
            _write_text(args.json, json.dumps(report, indent=1))
    if args.csv:
        _write_csv(args.csv, certified)
    if args.plot:
        from verifier.plots import plot_radii  # matplotlib only when asked
        plot_radii(certified, args.plot, title=f"{os.path.basename(args.model)}: {args.method}, "
                                               f"l{report['norm']} {threat.ball} ball")
        if args.json != "-":
            print(f"plot written to {args.plot}")
