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
    parser.add_argument("--target", type=int, help="look for inputs classified as this class")
    parser.add_argument("--steps", type=int, default=100, help="PGD steps (default 100)")
    parser.add_argument("--restarts", type=int, default=5, help="random restarts (default 5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", help="torch device (default: cuda when present)")
    parser.add_argument("--out", metavar="ADV.npy", help="write the counterexamples found, stacked in the model's layout")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    import torch

    from verifier import forward
    from verifier.attack import find_counterexamples
    from verifier.bounds import make_batch, output_node, resolve_device
    from verifier.onnx_runtime import OnnxModel, to_model_layout

    graph = options.load_graph(args)
    samples = options.load_samples(graph, args)
    eps = options.parse_float(args.eps, "--eps")
    threat = options.threat_from(args)
    if args.steps < 1 or args.restarts < 1:
        raise InputError("--steps and --restarts must be at least 1")
    out = output_node(graph, options.output_from(args))
    batch = make_batch(graph, samples.x, input_name=args.input_name, device=resolve_device(args.device),
                       dtype=torch.float64)
    threat.frame_mask(batch.node)
    with torch.no_grad():
        logits = forward.run(graph, batch.feeds())[out.node]
    classes = logits.shape[1]
    predicted = logits.argmax(1).cpu().numpy()
    labels = predicted if samples.labels is None else np.asarray(samples.labels, dtype=np.int64)
    if ((labels < 0) | (labels >= classes)).any() or (args.target is not None and not 0 <= args.target < classes):
        raise InputError(f"labels and --target must be classes 0..{classes - 1}")
    result = find_counterexamples(graph, OnnxModel(args.model), batch, labels, np.full(batch.size, eps), threat,
                                  output=out, target=args.target, steps=args.steps, restarts=args.restarts, seed=args.seed)
    found = result.found & (predicted == labels)  # misclassified samples need no attack
    rows = []
    for k in range(batch.size):
        distance = distance_in(batch.node, result.adversarial[k] - batch.center[k].cpu().numpy(), threat)
        rows.append({"index": samples.first_index + k, "label": int(labels[k]), "predicted": int(predicted[k]),
                     "misclassified": bool(predicted[k] != labels[k]), "found": bool(found[k]),
                     "distance": distance if found[k] else None})
    if args.out:
        np.save(args.out, to_model_layout(batch.node, result.adversarial[found]))
    if args.json:
        print(json.dumps({"model": args.model, "eps": eps, **options.describe_threat(threat), "target": args.target,
                          "found": int(found.sum()), "samples": rows, "out": args.out}))
        return 0
    for row in rows:
        state = "misclassified" if row["misclassified"] else (
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
