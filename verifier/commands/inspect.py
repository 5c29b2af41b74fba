"""`popqorn inspect`: what the front end found in a model — cells, inputs, outputs, IR size, and
what was folded or dropped on the way."""

from __future__ import annotations

import argparse
import json
from collections import Counter

from verifier import ir
from verifier.commands import options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="ONNX model file")
    options.add_input_shape(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def describe(graph: ir.Graph, model: str) -> dict:
    from verifier.canonical import describe_products  # torch-free
    """The inspect report as plain data (the --json contract)."""
    sizes = graph.sizes()
    return {
        "model": model, "opset": graph.opset, "producer": graph.producer,
        "inputs": [{"name": n.onnx_name, "shape": list(n.shape), "batch_axis": n.batch_axis,
                    "frame_axis": n.frame_axis, "frames": n.num_frames} for n in graph.inputs],
        "outputs": [{"name": o.onnx_name, "shape": list(o.shape), "batch_axis": o.batch_axis,
                     "size": o.size, "dropped": o.postprocess.value if o.postprocess else None} for o in graph.outputs],
        "cells": [{"name": c.name, "kind": c.kind, "direction": c.direction, "steps": c.steps,
                   "input_size": c.input_size, "hidden_size": c.hidden_size, "details": c.details} for c in graph.cells],
        "nodes": dict(Counter(type(n).__name__ for n in graph.nodes)),
        "neurons": sum(sizes[n.name] for n in graph.nodes if isinstance(n, (ir.Activation, ir.Product))),
        "products": describe_products(graph),
        "notes": list(graph.notes),
    }


def run(args: argparse.Namespace) -> int:
    graph = options.load_graph(args)
    report = describe(graph, args.model)
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{args.model}: opset {report['opset']}, producer {report['producer'] or '?'}")
    for item, node in zip(report["inputs"], graph.inputs):
        shape = ["N" if k == item["batch_axis"] else "?" if d < 0 else d for k, d in enumerate(item["shape"])]
        frames = "dynamic length" if options.unknown_axes(node) and node.frame_axis in options.unknown_axes(node) \
            else f"{item['frames']} frames"
        print(f"  input  {item['name']}: shape {shape}, batch axis {item['batch_axis']}, "
              f"frame axis {item['frame_axis']} ({frames})")
        if options.unknown_axes(node):
            print(f"         dynamic dimension(s) on axis {options.unknown_axes(node)}: taken from the samples "
                  f"(--input) or from {options.shape_hint(node)}")
    for item in report["outputs"]:
        shape = ["N" if k == item["batch_axis"] else d for k, d in enumerate(item["shape"])]
        dropped = f" ({item['dropped']} dropped: bounds are on its input)" if item["dropped"] else ""
        print(f"  output {item['name']}: shape {shape}{dropped}")
    if not report["cells"]:
        print("  cells: none recognised as recurrent nodes (an unrolled graph is verified as it is)")
    for cell in report["cells"]:
        extra = f" [{cell['details']}]" if cell["details"] else ""
        size = cell["input_size"] or "?"  # unrolled Loop/Scan bodies have no single input width
        print(f"  cell   {cell['name']}: {cell['kind']} {cell['direction']}, {cell['steps']} steps, "
              f"input {size}, hidden {cell['hidden_size']}{extra}")
    counts = ", ".join(f"{count} {kind}" for kind, count in sorted(report["nodes"].items()))
    print(f"  IR: {counts}; {report['neurons']} nonlinear neurons")
    if report["products"]:
        kinds = ", ".join(f"{kind} {count}" for kind, count in report["products"].items())
        print(f"  products (neurons, by relaxation kind): {kinds}")
    for note in report["notes"]:
        print(f"  note: {note}")
    return 0
