"""`popqorn certify`: the largest certified radius per sample, as a table, JSON, CSV and a plot.

Samples run in chunks (--batch-size) so a progress bar can move and an interrupted audit can be
resumed: with --resume FILE every finished sample is appended to FILE (JSON lines) and samples
already there are skipped on the next run with the same options."""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from typing import TYPE_CHECKING

import numpy as np

from verifier.commands import options
from verifier.errors import InputError

if TYPE_CHECKING:  # the engine is imported when the command runs, not when --help is asked
    from verifier.certify import SampleResult
    from verifier.threat import ThreatModel


TARGET_IS_LABEL = "label equals --target"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    options.add_certification(parser)
    parser.add_argument("--batch-size", type=int, default=16, help="samples per batched search (default 16)")
    parser.add_argument("--at", help="comma-separated radii for the certified-fraction summary")
    parser.add_argument("--json", nargs="?", const="-", metavar="PATH",
                        help="write the JSON report to PATH, or print it instead of the table when no PATH")
    parser.add_argument("--csv", metavar="PATH", help="write one row per sample")
    parser.add_argument("--plot", metavar="PNG", help=f"draw radii (and per-frame sensitivity with --per-frame); "
                                                      f"format from the name: {', '.join(options.PLOT_FORMATS)}")
    parser.add_argument("--resume", metavar="JSONL",
                        help="append finished samples here; skip samples already in it (refused if they were "
                             "recorded with other options or other sample values)")
    parser.add_argument("--attack", action="store_true",
                        help="also search counterexamples (PGD, validated by onnxruntime): the smallest radius "
                             "an attack succeeds at, an upper bound on the true minimum distortion, and the gap")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def check_outputs(args: argparse.Namespace) -> None:
    """Every file the command will write, checked before any work."""
    options.check_output_path(args.json, "--json")
    options.check_output_path(args.csv, "--csv")
    options.check_output_path(args.plot, "--plot", options.PLOT_FORMATS)
    options.check_output_path(args.resume, "--resume")


def run(args: argparse.Namespace) -> int:
    from verifier.certify import SearchOptions, certify

    check_outputs(args)
    threat = options.threat_from(args)
    device, dtype = options.engine_from(args)
    tol = options.parse_float(args.tol, "--tol")
    if not 0 < tol < 1:
        raise InputError(f"--tol must be in (0, 1), not {args.tol}")
    if args.batch_size < 1:
        raise InputError("--batch-size must be at least 1")
    at = _parse_at(args.at, threat)
    graph = options.load_graph(args)
    samples = options.load_samples(graph, args)
    _validate(graph, samples, threat, args)
    config = {"model": os.path.basename(args.model), **options.describe_threat(threat), "method": args.method,
              "target": args.target, "per_frame": args.per_frame, "tol": tol, "labels": samples.labels_source,
              "dtype": args.dtype, "output": str(args.output), "input_name": args.input_name}
    if args.resume:  # the file's content, not its name: a model retrained in place is another model
        from verifier.distributed.journal import sha256_file

        config["model_sha256"] = sha256_file(args.model)
        config.update(options.describe_optimize(args))
    selected = {samples.first_index + k: k for k in range(samples.count)}
    done = _read_resume(args.resume, config, samples, selected)
    search = SearchOptions(method=args.method, tol=tol, optimize=options.optimize_from(args))
    results: list[SampleResult] = []
    todo = [k for k in range(samples.count) if samples.first_index + k not in done]
    bar = _progress(len(todo), disabled=args.no_progress or args.json == "-")
    for chunk_start in range(0, len(todo), args.batch_size):
        chunk = todo[chunk_start:chunk_start + args.batch_size]
        x, labels = _take(samples, chunk)
        chunk_results = certify(graph, x, threat=threat, labels=labels, target=args.target,
                                per_frame=args.per_frame, options=search,
                                output=options.output_from(args), input_name=args.input_name,
                                device=device, dtype=dtype)
        _skip_target_labels(chunk_results, args.target)
        if args.attack:
            _add_attack_radii(graph, args, x, chunk_results, threat, device)
        for k, result in zip(chunk, chunk_results):
            result.index = samples.first_index + k
            results.append(result)
            _append_resume(args.resume, config, result, samples.digest(k))
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    rows = sorted([*done.values(), *(r.to_json() for r in results)], key=lambda row: row["index"])
    report = {"model": args.model, **options.describe_threat(threat), "method": args.method,
              "device": str(device), "dtype": args.dtype, "target": args.target, "labels": samples.labels_source,
              "summary": summarize(rows, at), "samples": rows}
    _warn_beyond_float32(rows)
    if args.json == "-":
        print(json.dumps(report))
    else:
        print_table(rows, report)
        if args.json:
            _write_text(args.json, json.dumps(report, indent=1))
    if args.csv:
        _write_csv(args.csv, rows)
    if args.plot:
        from verifier.plots import plot_radii  # matplotlib only when asked
        with options.writing(args.plot, "--plot"):
            plot_radii(rows, args.plot, title=f"{os.path.basename(args.model)}: {report['method']}, "
                                              f"l{report['norm']} {threat.ball} ball")
        if args.json != "-":
            print(f"plot written to {args.plot}")
    return 0


def _warn_beyond_float32(rows: list[dict]) -> None:
    overflowing = [row for row in rows if "beyond_float32" in row]
    if overflowing:
        print(f"popqorn: warning: samples {[row['index'] for row in overflowing]}: the model's exact values at the "
              f"sample exceed float32's range (up to {max(row['beyond_float32'] for row in overflowing):.3g}); a "
              "float32 file computes inf or NaN there, so these certificates hold for the exact computation, not "
              "for the file run in float32", file=sys.stderr)


def _skip_target_labels(results: list[SampleResult], target: int | None) -> None:
    """A sample whose label (and prediction) is the --target class has nothing to certify against
    that class: it is skipped with a reason, not counted as misclassified or certified."""
    if target is None:
        return
    for result in results:
        if result.label == target and result.predicted == target:
            result.misclassified = False
            result.radius = None
            result.per_frame_radius = None
            result.extra["skipped"] = TARGET_IS_LABEL


def _add_attack_radii(graph, args: argparse.Namespace, x, results: list[SampleResult], threat: ThreatModel, device) -> None:
    """Per sample: the smallest radius at which a validated counterexample was found, and the
    certified/attack gap. A counterexample below the certified radius would be a soundness bug:
    it is flagged, never hidden."""
    import torch

    from verifier.attack import attack_radius
    from verifier.bounds import make_batch, output_node
    from verifier.onnx_runtime import OnnxModel

    correct = [k for k, r in enumerate(results) if not r.misclassified and r.radius is not None]
    if not correct:
        return
    batch = make_batch(graph, x, input_name=args.input_name, device=device, dtype=torch.float64)
    out = output_node(batch.graph, options.output_from(args))
    batch = batch.select(torch.as_tensor(correct, device=batch.center.device))
    labels = np.array([results[k].label for k in correct])
    certified = np.array([results[k].radius for k in correct])
    model = OnnxModel(args.model, threads=options.threads_from(args))
    if isinstance(x, dict):
        model.hold(graph, x)  # inputs the engine folded as constants still go to onnxruntime
    radii = attack_radius(batch.graph, model, batch, labels, threat, output=out, target=args.target,
                          start=float(max(certified.mean() * 1.5, 1e-3)))
    for k, radius, bound in zip(correct, radii, certified):
        finite = bool(np.isfinite(radius))
        results[k].extra["attack_radius"] = float(radius) if finite else None
        results[k].extra["gap"] = float(bound / radius) if finite and radius > 0 else None
        if finite and radius < bound:
            results[k].extra["unsound"] = True
            print(f"popqorn: warning: sample {results[k].index}: counterexample at {radius:g} below the certified "
                  f"radius {bound:g} -- please report this bug", file=sys.stderr)


def _validate(graph, samples: options.Samples, threat: ThreatModel, args: argparse.Namespace) -> None:
    """Refuse bad inputs before any work starts (and before a progress bar is drawn): values,
    frames, labels and --target, on the graph specialised to the samples."""
    from verifier import forward
    from verifier.bounds import output_node, perturbed_input

    concrete = samples.graph or graph
    feeds = {samples.input_name: samples.x, **samples.others}
    taken = {n.onnx_name for n in concrete.inputs}
    forward.flatten_feeds(concrete, {name: value for name, value in feeds.items() if name in taken})
    options.check_magnitude(0.0, samples.x, args.dtype, flag="--input")
    threat.frame_mask(perturbed_input(concrete, args.input_name))
    classes = concrete.sizes()[output_node(concrete, options.output_from(args)).node]
    if samples.labels is not None:
        options.check_labels(samples.labels, samples.count, classes)
    if args.target is not None:
        options.check_labels([args.target], 1, classes, what="--target")


def summarize(rows: list[dict], at: list[float]) -> dict:
    """Radii statistics over the certified samples; misclassified samples count as not certified
    at any radius, skipped ones (label equals --target) are left out of the fractions."""
    counted = [row for row in rows if not row.get("skipped")]
    radii = np.array([row["radius"] for row in counted if not row["misclassified"]], dtype=np.float64)
    summary = {"samples": len(rows), "misclassified": sum(row["misclassified"] for row in rows),
               "mean_radius": float(radii.mean()) if radii.size else 0.0,
               "min_radius": float(radii.min()) if radii.size else 0.0,
               "median_radius": float(np.median(radii)) if radii.size else 0.0,
               "certified_fraction": {f"{eps:g}": (float((radii >= eps).sum() / len(counted)) if counted else 0.0)
                                      for eps in at},
               "mean_time_s": float(np.mean([row["time_s"] for row in rows])) if rows else 0.0}
    if len(counted) < len(rows):
        summary["skipped"] = len(rows) - len(counted)
    gaps = [row["gap"] for row in rows if row.get("gap") is not None]
    if any("attack_radius" in row for row in rows):
        summary["mean_gap"] = float(np.mean(gaps)) if gaps else None
        summary["attacked"] = sum(row.get("attack_radius") is not None for row in rows)
    return summary


LABEL_SOURCES = {"predicted": "the model's own predictions (no labels given)", "given": "given"}


def print_table(rows: list[dict], report: dict) -> None:
    per_frame = any("per_frame_radius" in row for row in rows)
    header = f"{'sample':>6} {'label':>5} {'pred':>4} {'radius':>10} {'time_s':>7}"
    if any("attack_radius" in row for row in rows):
        header += f" {'attack':>10}"
    if per_frame:
        header += "  per-frame radius (frame 0..T-1)"
    labels = LABEL_SOURCES.get(report.get("labels"), report.get("labels"))
    domain = report.get("domain")
    domain_text = "" if domain is None else (f", domain [{domain['low']:g}, {domain['high']:g}]"
                                             if isinstance(domain, dict) else f", domain {domain}")
    print(f"popqorn certify: {report['model']} | norm {report['norm']}, {report['ball']} ball, frames "
          f"{report['frames']}{domain_text}, method {report['method']}, {report['device']}"
          + (f" | target {report['target']}" if report.get("target") is not None else "")
          + (f" | labels: {labels}" if labels else ""))
    print(header)
    for row in rows:
        radius = "skipped" if row.get("skipped") else "misclass." if row["misclassified"] else f"{row['radius']:.5f}"
        radius = f">={radius}" if row.get("capped") else radius
        line = f"{row['index']:>6} {row['label']:>5} {row['predicted']:>4} {radius:>10} {row['time_s']:>7.3f}"
        if "attack_radius" in row:
            attack = "-" if row["attack_radius"] is None else f"{row['attack_radius']:.5f}"
            line += f" {attack:>10}"
        if per_frame and "per_frame_radius" in row:
            from verifier.certify import MAX_RADIUS
            line += "  " + " ".join(f">={MAX_RADIUS:g}" if r >= MAX_RADIUS else f"{r:.4f}" for r in row["per_frame_radius"])
        print(line)
    s = report["summary"]
    fractions = ", ".join(f"{v:.0%} at eps={k}" for k, v in s["certified_fraction"].items())
    if "mean_gap" in s and s["mean_gap"] is not None:
        print(f"attack: counterexamples (validated by onnxruntime) for {s['attacked']} samples; mean certified/attack "
              f"radius ratio {s['mean_gap']:.3f} (1 = tight)")
    capped = [row["index"] for row in rows if row.get("capped")]
    if capped:
        from verifier.certify import MAX_RADIUS
        print(f"note: samples {capped} reached the search's cap (radius >= {MAX_RADIUS:g}): their margins hardly "
              "depend on the input (saturated activations); the radius shown is certified, the largest is not sought")
    skipped = f", {s['skipped']} skipped ({TARGET_IS_LABEL})" if s.get("skipped") else ""
    print(f"summary: {s['samples']} samples, {s['misclassified']} misclassified{skipped}; radius mean "
          f"{s['mean_radius']:.5f}, median {s['median_radius']:.5f}, min {s['min_radius']:.5f}; certified {fractions}; "
          f"{s['mean_time_s']:.3f}s per sample")


def _parse_at(text: str | None, threat: ThreatModel) -> list[float]:
    if text is None:
        return {1.0: [0.1, 0.5, 1.0], 2.0: [0.05, 0.1, 0.2]}.get(threat.norm, [0.005, 0.01, 0.02])
    return [options.parse_float(part, "--at") for part in text.split(",") if part.strip()]


def _take(samples: options.Samples, chunk: list[int]) -> tuple[np.ndarray | dict[str, np.ndarray], np.ndarray | None]:
    """The samples at these positions (an array, or every model input by name for multi-input
    models) and their labels."""
    return samples.feeds(chunk), None if samples.labels is None else samples.labels[chunk]


def _read_resume(path: str | None, config: dict, samples: options.Samples, selected: dict[int, int]) -> dict[int, dict]:
    """Rows already finished under the same configuration for the selected samples, keyed by
    sample index. Rows recorded for other sample values (a changed --input) are refused."""
    if not path or not os.path.exists(path):
        return {}
    if not os.path.isfile(path):
        raise InputError(f"--resume {path}: not a regular file")
    done: dict[int, dict] = {}
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                entry = json.loads(line)
            except (json.JSONDecodeError, RecursionError):
                raise InputError(f"{where}: not a JSON line written by --resume") from None
            result = entry.get("result") if isinstance(entry, dict) else None
            if not isinstance(result, dict) or not isinstance(entry.get("config"), dict) \
                    or not isinstance(result.get("index"), int) or isinstance(result.get("index"), bool):
                raise InputError(f"{where}: not a --resume entry (expected an object with 'config' and a "
                                 f"'result' holding an integer 'index')")
            if entry["config"] != config:
                raise InputError(f"{where} was written with different options "
                                 f"({entry['config']}); use another --resume file")
            position = selected.get(result["index"])
            if position is None:
                continue  # outside --start/--limit: not part of this report
            if entry.get("sample_sha256") != samples.digest(position):
                raise InputError(f"{where}: sample {result['index']} was recorded for different sample values "
                                 f"(the --input or labels changed); use another --resume file")
            done[result["index"]] = result
    return done


def _append_resume(path: str | None, config: dict, result: SampleResult, digest: str) -> None:
    if not path:
        return
    with options.writing(path, "--resume"), open(path, "a") as handle:
        handle.write(json.dumps({"config": config, "sample_sha256": digest, "result": result.to_json()}) + "\n")


def _write_text(path: str, text: str, flag: str = "--json") -> None:
    with options.writing(path, flag), open(path, "w") as handle:
        handle.write(text + "\n")


def _write_csv(path: str, rows: list[dict]) -> None:
    frames = max((len(row.get("per_frame_radius") or []) for row in rows), default=0)
    columns = ["index", "label", "predicted", "radius", "misclassified", "time_s"]
    extra = sorted({key for row in rows for key in row} - set(columns) - {"per_frame_radius"})
    with options.writing(path, "--csv"), open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns + extra + [f"radius_frame_{t}" for t in range(frames)])
        for row in rows:
            per_frame = row.get("per_frame_radius") or []
            writer.writerow(["" if row[c] is None else row[c] for c in columns] + [row.get(c, "") for c in extra]
                            + per_frame + [""] * (frames - len(per_frame)))


def _progress(total: int, disabled: bool):
    if disabled or total <= 1:
        return None
    from tqdm import tqdm
    return tqdm(total=total, unit="sample", file=sys.stderr, leave=False, dynamic_ncols=True)
