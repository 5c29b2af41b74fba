"""`popqorn audit`: `certify` over a whole sample file on Ray workers, into a resumable journal.

The samples are cut into batches (--batch-size, in order, as `certify` cuts them) and certified on
--workers Ray actors, each holding the parsed graph; every finished batch is appended to --out
(JSON lines, fsync'd), and the same table, summary, JSON, CSV and plot as `certify` follow. Rerunning
the same command resumes from --out. Without Ray installed the batches run in this process."""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import time

from verifier.commands import options
from verifier.errors import InputError

INSTALL_HINT = 'pip install ".[distributed]" (or pip install ray)'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    options.add_certification(parser)
    parser.add_argument("--out", required=True, metavar="JSONL",
                        help="journal of results, one JSON line per sample; rerun the same command to resume it")
    parser.add_argument("--workers", type=int, default=2, help="Ray workers, each holding the parsed model, sent once (default 2)")
    parser.add_argument("--address", help="join this Ray cluster (ray://HOST:10001, or auto for the one started on "
                                          "this machine by `ray start`); default: a local Ray started for this audit")
    parser.add_argument("--gpus-per-worker", type=float, default=0.0,
                        help="GPUs reserved per worker (e.g. 1, or 0.5 to share); workers then run on cuda (default 0)")
    actions = parser._option_string_actions  # the shared engine options, reworded for workers
    actions["--device"].help = "cpu, cuda or cuda:N on every worker (default: cuda with --gpus-per-worker, else cpu)"
    actions["--threads"].help = "torch threads per worker (default 1; 0 = one per core)"
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

    threads = options.threads_from(args)  # per worker; default 1
    options.dtype_for_method(args)
    for flag, value, least in (("--workers", args.workers, 1), ("--batch-size", args.batch_size, 1),
                               ("--gpus-per-worker", args.gpus_per_worker, 0)):
        if value < least:
            raise InputError(f"{flag} must be at least {least}, not {value:g}")
    if args.device is not None and not re.fullmatch(r"(cpu|cuda)(:\d+)?", args.device.strip()):
        raise InputError(f"--device must be cpu, cuda or cuda:N, not {args.device!r}")
    for path, flag, suffixes in ((args.out, "--out", None), (args.json, "--json", None), (args.csv, "--csv", None),
                                 (args.plot, "--plot", options.PLOT_FORMATS)):
        options.check_output_path(path, flag, suffixes)
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
    finite = {name: np.nan_to_num(array, nan=0.0, posinf=0.0, neginf=0.0) for name, array in samples.others.items()}
    _validate(graph, dataclasses.replace(samples, x=np.nan_to_num(samples.x, nan=0.0, posinf=0.0, neginf=0.0),
                                         others=finite), threat, args)
    device = args.device.strip() if args.device else ("cuda" if args.gpus_per_worker > 0 else "cpu")
    job = AuditJob(norm=threat.norm, ball=threat.ball, frames=threat.frames, per_frame=args.per_frame,
                   target=args.target, method=args.method, tol=tol, output=options.output_from(args),
                   input_name=args.input_name, device=device, dtype=args.dtype, domain=threat.domain,
                   optimize=options.optimize_from(args))
    config = {"model": os.path.basename(args.model), "model_sha256": sha256_file(args.model),
              "samples_sha256": sha256_arrays(whole.x, whole.labels, *(whole.others[k] for k in sorted(whole.others))),
              "samples_total": whole.count, "labels": whole.labels_source,
              **options.describe_threat(threat), "method": args.method, "target": args.target,
              "per_frame": args.per_frame, "tol": tol, "dtype": args.dtype, "output": str(args.output),
              "input_name": args.input_name, **options.describe_optimize(args)}
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

    clock = _Clock()

    def record(rows: list[dict]) -> None:
        journal.append(rows)
        clock.finished(rows)
        if bar is not None:
            bar.update(len(rows))

    try:
        if shards:
            clock.backend = _execute(graph, job, shards, lambda shard: _take(samples, shard.positions), record, args,
                                     threads)
    finally:
        if bar is not None:
            bar.close()
        journal.close()
    rows = [journal.rows[index] for index in selected]
    _report(args, threat, device, samples.labels_source, at, rows, clock.describe(args.workers, threads))
    return 1 if any("error" in row for row in rows) else 0


class _Clock:
    """Throughput of this run. Start-up (Ray, workers, model shipping) is the time to the first
    finished batch less that batch's own compute time (its rows' time_s), so the rate after
    start-up is what a longer audit approaches."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.startup: float | None = None
        self.count = 0
        self.backend = None

    def finished(self, rows: list[dict]) -> None:
        self.count += len(rows)
        if self.startup is None:
            compute = sum(row.get("time_s", 0.0) for row in rows)
            self.startup = max(0.0, time.perf_counter() - self.started - compute)

    def describe(self, workers: int, threads: int) -> dict:
        wall = time.perf_counter() - self.started
        info = {"backend": self.backend, "workers": workers if self.backend == "ray" else 1,
                "threads_per_worker": threads, "computed": self.count, "wall_s": round(wall, 3),
                "samples_per_s": round(self.count / wall, 3) if self.count else None}
        if self.startup is not None and wall > self.startup:
            info["startup_s"] = round(self.startup, 3)
            info["samples_per_s_after_startup"] = round(self.count / (wall - self.startup), 3)
        return info


def _execute(graph, job, shards, take, record, args: argparse.Namespace, threads: int) -> str:
    """On Ray when it imports (returns "ray"); otherwise in this process, saying how to get Ray."""
    try:
        import ray  # noqa: F401
    except ImportError as exc:
        if args.address:
            raise InputError(f"--address needs Ray, which cannot be imported ({exc}): {INSTALL_HINT}") from None
        print(f"popqorn: Ray is not available ({exc}); auditing in this process with one worker. "
              f"For Ray workers: {INSTALL_HINT}", file=sys.stderr)
        return _in_process(graph, job, shards, take, record, args, threads)
    if job.device.startswith("cuda") and args.gpus_per_worker <= 0:
        raise InputError("--device cuda on Ray workers needs --gpus-per-worker (e.g. 1, or 0.5 to share a GPU)")
    from verifier.distributed.ray_pool import (
        GraphNotPortable,
        check_portable,
        run_on_ray,
    )
    try:
        check_portable(graph)
    except GraphNotPortable as exc:  # a front-end limitation, said loudly; the results are the same
        if args.address:
            raise InputError(f"this model's parsed graph cannot be sent to Ray workers ({exc})") from None
        print(f"popqorn: warning: this model's parsed graph cannot be sent to Ray workers ({exc}); "
              f"auditing in this process with one worker", file=sys.stderr)
        return _in_process(graph, job, shards, take, record, args, threads)
    run_on_ray(graph, job, shards, take, record, workers=args.workers, threads=threads,
               gpus_per_worker=args.gpus_per_worker, address=args.address)
    return "ray"


def _in_process(graph, job, shards, take, record, args: argparse.Namespace, threads: int) -> str:
    from verifier.distributed.worker import run_in_process

    options.device_from(args)  # here the GPU, if asked for, must be in this machine
    run_in_process(graph, job, shards, take, record, threads)
    return "in-process"


def _report(args: argparse.Namespace, threat, device: str, labels: str, at: list[float], rows: list[dict],
            run: dict) -> None:
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
              "dtype": args.dtype, "target": args.target, "labels": labels, "summary": {**summarize(certified, at), "errors": len(errors)},
              "samples": certified, "errors": errors, "journal": args.out, "run": run}
    if args.json == "-":
        print(json.dumps(report))
    else:
        print_table(certified, report)
        for row in errors:
            print(f"error: sample {row['index']}: {row['error']}")
        if errors:
            print(f"{len(errors)} of {len(rows)} samples failed (recorded in {args.out}; --retry-errors redoes them)")
        print(_describe_run(run, len(rows), args.out))
        if args.json:
            _write_text(args.json, json.dumps(report, indent=1))
    if args.csv:
        _write_csv(args.csv, certified)
    if args.plot:
        from verifier.plots import plot_radii  # matplotlib only when asked
        with options.writing(args.plot, "--plot"):
            plot_radii(certified, args.plot, title=f"{os.path.basename(args.model)}: {args.method}, "
                                                   f"l{report['norm']} {threat.ball} ball")
        if args.json != "-":
            print(f"plot written to {args.plot}")


def _describe_run(run: dict, total: int, journal: str) -> str:
    if not run["computed"]:
        return f"audit: all {total} samples were already in {journal}; nothing computed"
    where = f"on {run['workers']} Ray worker(s)" if run["backend"] == "ray" else "in this process"
    line = (f"audit: {run['computed']} of {total} samples computed in {run['wall_s']:.1f}s {where}, "
            f"{run['threads_per_worker']} thread(s) each: {run['samples_per_s']:.2f} samples/s")
    if "samples_per_s_after_startup" in run:
        line += f" ({run['samples_per_s_after_startup']:.2f} samples/s after {run['startup_s']:.1f}s of start-up)"
    return line + f"; journal {journal}"
