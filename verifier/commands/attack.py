"""`popqorn attack`: search for counterexamples within a radius (PGD with restarts); every one
reported has been re-run through onnxruntime on the model file."""

from __future__ import annotations

import argparse
import json

import numpy as np

from verifier.commands import options
from verifier.errors import InputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    options.add_model(parser)
    options.add_samples(parser)
    parser.add_argument("--eps", required=True, help="perturbation radius (>= 0)")
    options.add_threat(parser)
    parser.add_argument("--target", type=int,
                        help="look for inputs where this class scores above the label (the margin that certify "
                             "--target bounds; another class may still be the prediction)")
    parser.add_argument("--steps", type=int, default=100, help="PGD steps (default 100)")
    parser.add_argument("--restarts", type=int, default=5, help="random restarts (default 5)")
    parser.add_argument("--seed", type=options.seed_value, default=0)
    options.add_device(parser)
    options.add_threads(parser)
    parser.add_argument("--out", metavar="ADV.npy", help="write the counterexamples found, stacked in the model's layout "
                                                        "in sample order (JSON: each sample's out_row, null if none)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


MAX_STEPS = 100_000


def run(args: argparse.Namespace) -> int:
    import torch

    from verifier import forward
    from verifier.attack import find_counterexamples
    from verifier.bounds import make_batch, output_node
    from verifier.onnx_runtime import OnnxModel, to_model_layout

    options.check_output_path(args.out, "--out", (".npy",))
    eps = options.parse_float(args.eps, "--eps")
    threat = options.threat_from(args)
    if not (1 <= args.steps <= MAX_STEPS and 1 <= args.restarts <= MAX_STEPS):
        raise InputError(f"--steps and --restarts must be between 1 and {MAX_STEPS}")
    threads = options.apply_threads(args)
    device = options.device_from(args)
    graph = options.load_graph(args)
    samples = options.load_samples(graph, args)
    model = OnnxModel(args.model, threads=threads)
    model.input_dtype(samples.input_name)  # a non-real input is refused before any work
    options.check_magnitude(eps, samples.x, "float64")
    model_dtype = np.dtype(model.input_dtype(samples.input_name)).name
    largest = float(np.abs(samples.x[np.isfinite(samples.x)]).max(initial=0))  # NaN/inf are refused by name below
    if np.isfinite(np.finfo(model_dtype).max) and eps + largest > np.finfo(model_dtype).max:
        raise InputError(f"--eps {eps:g}: the perturbed inputs would overflow the model's {model_dtype} input")
    feeds = samples.all_feeds()
    batch = make_batch(graph, feeds, input_name=args.input_name, device=device, dtype=torch.float64)
    if isinstance(feeds, dict):
        model.hold(graph, feeds)  # inputs the engine folded as constants still go to onnxruntime
    graph = batch.graph
    out = output_node(graph, options.output_from(args))
    threat.frame_mask(batch.node)
    with torch.no_grad():
        logits = forward.run(graph, batch.feeds())[out.node]
    classes = logits.shape[1]
    predicted = logits.argmax(1).cpu().numpy()
    if samples.labels is None:
        labels = predicted
    else:
        labels = options.check_labels(samples.labels, batch.size, classes)
    if args.target is not None:
        options.check_labels([args.target], 1, classes, what="--target")
    result = find_counterexamples(graph, model, batch, labels, np.full(batch.size, eps), threat,
                                  output=out, target=args.target, steps=args.steps, restarts=args.restarts, seed=args.seed)
    found = result.found & (predicted == labels)  # misclassified samples need no attack
    rows = []
    out_rows = np.cumsum(found) - 1  # the row of ADV.npy that holds sample k's counterexample
    for k in range(batch.size):
        distance = distance_in(batch.node, result.adversarial[k] - batch.center[k].cpu().numpy(), threat)
        rows.append({"index": samples.first_index + k, "label": int(labels[k]), "predicted": int(predicted[k]),
                     "misclassified": bool(predicted[k] != labels[k]), "found": bool(found[k]),
                     "distance": distance if found[k] else None,
                     "out_row": int(out_rows[k]) if found[k] and args.out else None})
        if args.target is not None and labels[k] == args.target == predicted[k]:
            rows[-1]["skipped"] = "label equals --target"
    if args.out:
        with options.writing(args.out, "--out"):
            np.save(args.out, to_model_layout(batch.node, result.adversarial[found]))
    if args.json:
        print(json.dumps({"model": args.model, "eps": eps, **options.describe_threat(threat), "target": args.target,
                          "labels": samples.labels_source, "found": int(found.sum()), "samples": rows, "out": args.out}))
        return 0
    if samples.labels is None:
        print("labels: the model's own predictions (no labels given)")
    for row in rows:
        state = "skipped (label equals --target)" if row.get("skipped") else "misclassified" if row["misclassified"] else (
            f"COUNTEREXAMPLE (distance {row['distance']:.4g})" if row["found"] else "none found")
        print(f"sample {row['index']}: label {row['label']}: {state}")
    print(f"{int(found.sum())} of {batch.size} samples have a counterexample at eps={eps:g} "
          f"(validated by onnxruntime){'; written to ' + args.out if args.out and found.any() else ''}")
    return 0


def distance_in(node, delta: np.ndarray, threat) -> float:
    """The radius at which `delta` lies on the threat model's boundary: the largest per-frame norm
    (frame balls) or the norm over all frames (sequence ball)."""
    if threat.ball == "sequence":
        return float(np.linalg.norm(delta.reshape(-1), ord=threat.norm))
    frame_of = node.frame_of_element()
    return float(max(np.linalg.norm(delta[frame_of == t], ord=threat.norm) for t in range(node.num_frames)))
