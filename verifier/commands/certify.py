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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    options.add_model(parser)
    options.add_samples(parser)
    options.add_threat(parser)
    options.add_engine(parser)
    parser.add_argument("--target", type=int, help="certify against this class only (default: all other classes)")
    parser.add_argument("--per-frame", action="store_true", help="also the radius when only frame t is perturbed, for every t")
    parser.add_argument("--tol", default="1e-3", help="relative tolerance of the radius search (default 1e-3)")
    parser.add_argument("--batch-size", type=int, default=16, help="samples per batched search (default 16)")
    parser.add_argument("--at", help="comma-separated radii for the certified-fraction summary")
    parser.add_argument("--json", nargs="?", const="-", metavar="PATH",
                        help="write the JSON report to PATH, or print it instead of the table when no PATH")
    parser.add_argument("--csv", metavar="PATH", help="write one row per sample")
    parser.add_argument("--plot", metavar="PNG", help="draw radii (and per-frame sensitivity with --per-frame)")
    parser.add_argument("--resume", metavar="JSONL", help="append finished samples here; skip samples already in it")
    parser.add_argument("--attack", action="store_true",
                        help="also search counterexamples (PGD, validated by onnxruntime): the smallest radius "
                             "an attack succeeds at, an upper bound on the true minimum distortion, and the gap")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from verifier.certify import SearchOptions, certify

    graph = options.load_graph(args)
    samples = options.load_samples(graph, args)
    threat = options.threat_from(args)
    device, dtype = options.engine_from(args)
    tol = options.parse_float(args.tol, "--tol")
    if not 0 < tol < 1:
        raise InputError(f"--tol must be in (0, 1), not {args.tol}")
    if args.batch_size < 1:
        raise InputError("--batch-size must be at least 1")
    at = _parse_at(args.at, threat)
    _validate(graph, samples, threat, args)
    config = {"model": os.path.basename(args.model), **options.describe_threat(threat), "method": args.method,
              "target": args.target, "per_frame": args.per_frame, "tol": tol}
    done = _read_resume(args.resume, config)
    search = SearchOptions(method=args.method, tol=tol)
    results: list[SampleResult] = []
    todo = [k for k in range(samples.count) if samples.first_index + k not in done]
    bar = _progress(len(todo), disabled=args.no_progress or args.json == "-")
    for chunk_start in range(0, len(todo), args.batch_size):
        chunk = todo[chunk_start:chunk_start + args.batch_size]
        x, labels = _take(samples, chunk)
        chunk_results = certify(graph, x, threat.norm, labels=labels, target=args.target, ball=threat.ball,
                                frames=threat.frames, per_frame=args.per_frame, options=search,
                                output=options.output_from(args), input_name=args.input_name,
                                device=device, dtype=dtype)
        if args.attack:
            _add_attack_radii(graph, args, x, chunk_results, threat, device)
        for k, result in zip(chunk, chunk_results):
            result.index = samples.first_index + k
            results.append(result)
            _append_resume(args.resume, config, result)
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    rows = sorted([*done.values(), *(r.to_json() for r in results)], key=lambda row: row["index"])
    report = {"model": args.model, **options.describe_threat(threat), "method": args.method,
              "device": str(device), "dtype": args.dtype, "target": args.target,
              "summary": summarize(rows, at), "samples": rows}
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
        plot_radii(rows, args.plot, title=f"{os.path.basename(args.model)}: {report['method']}, "
                                          f"l{report['norm']} {threat.ball} ball")
        if args.json != "-":
            print(f"plot written to {args.plot}")
    return 0


def _add_attack_radii(graph, args: argparse.Namespace, x, results: list[SampleResult], threat: ThreatModel, device) -> None:
    """Per sample: the smallest radius at which a validated counterexample was found, and the
    certified/attack gap. A counterexample below the certified radius would be a soundness bug:
    it is flagged, never hidden."""
    import torch

    from verifier.attack import attack_radius
    from verifier.bounds import make_batch, output_node
    from verifier.onnx_runtime import OnnxModel

    correct = [k for k, r in enumerate(results) if not r.misclassified]
    if not correct:
        return
    out = output_node(graph, options.output_from(args))
    batch = make_batch(graph, x, input_name=args.input_name, device=device, dtype=torch.float64)
    batch = batch.select(torch.as_tensor(correct, device=batch.center.device))
    labels = np.array([results[k].label for k in correct])
    certified = np.array([results[k].radius for k in correct])
    radii = attack_radius(graph, OnnxModel(args.model), batch, labels, threat, output=out, target=args.target,
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
    """Refuse bad inputs before any work starts (and before a progress bar is drawn)."""
    from verifier import forward
    from verifier.bounds import output_node, perturbed_input

    node = perturbed_input(graph, args.input_name)
    if len(graph.inputs) == 1:
        forward.flatten_feeds(graph, {node.onnx_name: samples.x})
    threat.frame_mask(node)
    classes = graph.sizes()[output_node(graph, options.output_from(args)).node]
    for name, values in (("label", samples.labels), ("target", None if args.target is None else [args.target])):
        if values is None:
            continue
        values = np.asarray(values)
        if not np.issubdtype(values.dtype, np.integer) and not np.all(np.mod(values, 1) == 0):
            raise InputError(f"{name}s must be integers")
        bad = values[(values < 0) | (values >= classes)]
        if bad.size:
            raise InputError(f"{name} {int(bad[0])} out of range: the model has {classes} classes (0..{classes - 1})")


def summarize(rows: list[dict], at: list[float]) -> dict:
    radii = np.array([row["radius"] for row in rows if not row["misclassified"]], dtype=np.float64)
    summary = {"samples": len(rows), "misclassified": sum(row["misclassified"] for row in rows),
               "mean_radius": float(radii.mean()) if radii.size else 0.0,
               "min_radius": float(radii.min()) if radii.size else 0.0,
               "median_radius": float(np.median(radii)) if radii.size else 0.0,
               "certified_fraction": {f"{eps:g}": (float((radii >= eps).sum() / len(rows)) if rows else 0.0)
                                      for eps in at},
               "mean_time_s": float(np.mean([row["time_s"] for row in rows])) if rows else 0.0}
    gaps = [row["gap"] for row in rows if row.get("gap") is not None]
    if any("attack_radius" in row for row in rows):
        summary["mean_gap"] = float(np.mean(gaps)) if gaps else None
        summary["attacked"] = sum(row.get("attack_radius") is not None for row in rows)
    return summary


def print_table(rows: list[dict], report: dict) -> None:
    per_frame = any("per_frame_radius" in row for row in rows)
    header = f"{'sample':>6} {'label':>5} {'pred':>4} {'radius':>10} {'time_s':>7}"
    if any("attack_radius" in row for row in rows):
        header += f" {'attack':>10}"
    if per_frame:
        header += "  per-frame radius (frame 0..T-1)"
    print(f"popqorn certify: {report['model']} | norm {report['norm']}, {report['ball']} ball, frames "
          f"{report['frames']}, method {report['method']}, {report['device']}")
    print(header)
    for row in rows:
        radius = "misclass." if row["misclassified"] else f"{row['radius']:.5f}"
        line = f"{row['index']:>6} {row['label']:>5} {row['predicted']:>4} {radius:>10} {row['time_s']:>7.3f}"
        if "attack_radius" in row:
            attack = "-" if row["attack_radius"] is None else f"{row['attack_radius']:.5f}"
            line += f" {attack:>10}"
        if per_frame and "per_frame_radius" in row:
            line += "  " + " ".join(f"{r:.4f}" for r in row["per_frame_radius"])
        print(line)
    s = report["summary"]
    fractions = ", ".join(f"{v:.0%} at eps={k}" for k, v in s["certified_fraction"].items())
    if "mean_gap" in s and s["mean_gap"] is not None:
        print(f"attack: counterexamples (validated by onnxruntime) for {s['attacked']} samples; mean certified/attack "
              f"radius ratio {s['mean_gap']:.3f} (1 = tight)")
    print(f"summary: {s['samples']} samples, {s['misclassified']} misclassified; radius mean {s['mean_radius']:.5f}, "
          f"median {s['median_radius']:.5f}, min {s['min_radius']:.5f}; certified {fractions}; "
          f"{s['mean_time_s']:.3f}s per sample")


def _parse_at(text: str | None, threat: ThreatModel) -> list[float]:
    if text is None:
        return {1.0: [0.1, 0.5, 1.0], 2.0: [0.05, 0.1, 0.2]}.get(threat.norm, [0.005, 0.01, 0.02])
    return [options.parse_float(part, "--at") for part in text.split(",") if part.strip()]


def _take(samples: options.Samples, chunk: list[int]) -> tuple[np.ndarray, np.ndarray | None]:
    if samples.batch_axis is None:
        return samples.x, samples.labels
    x = np.take(samples.x, chunk, axis=samples.batch_axis)
    return x, None if samples.labels is None else samples.labels[chunk]


def _read_resume(path: str | None, config: dict) -> dict[int, dict]:
    """Rows already finished under the same configuration, keyed by sample index."""
    if not path or not os.path.exists(path):
        return {}
    done: dict[int, dict] = {}
    with open(path) as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                raise InputError(f"{path}:{number}: not a JSON line written by --resume") from None
            if entry.get("config") != config:
                raise InputError(f"{path}:{number} was written with different options "
                                 f"({entry.get('config')}); use another --resume file")
            done[entry["result"]["index"]] = entry["result"]
    return done


def _append_resume(path: str | None, config: dict, result: SampleResult) -> None:
    if not path:
        return
    with open(path, "a") as handle:
        handle.write(json.dumps({"config": config, "result": result.to_json()}) + "\n")


def _write_text(path: str, text: str) -> None:
    with open(path, "w") as handle:
        handle.write(text + "\n")


def _write_csv(path: str, rows: list[dict]) -> None:
    frames = max((len(row.get("per_frame_radius", [])) for row in rows), default=0)
    columns = ["index", "label", "predicted", "radius", "misclassified", "time_s"]
    extra = sorted({key for row in rows for key in row} - set(columns) - {"per_frame_radius"})
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns + extra + [f"radius_frame_{t}" for t in range(frames)])
        for row in rows:
            per_frame = row.get("per_frame_radius", [])
            writer.writerow([row[c] for c in columns] + [row.get(c, "") for c in extra]
                            + per_frame + [""] * (frames - len(per_frame)))


def _progress(total: int, disabled: bool):
    if disabled or total <= 1:
        return None
    from tqdm import tqdm
    return tqdm(total=total, unit="sample", file=sys.stderr, leave=False, dynamic_ncols=True)


