"""Deciding a VNN-LIB property: falsify first (PGD in the box, confirmed by onnxruntime), then
prove with the bound engine, splitting the input box while time remains.

Never `sat` without a counterexample onnxruntime confirms; never `unsat` without a bound proof for
every piece of every input box."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from verifier import forward, ir
from verifier.attack import pgd
from verifier.bounds import Batch, bound_linear_box, output_node, perturbed_input
from verifier.errors import InputError
from verifier.onnx_runtime import OnnxModel
from verifier.threat import ThreatModel
from verifier.vnnlib.spec import Case, Property

BATCH_BOXES = 32


@dataclass
class Answer:
    status: str  # "sat" | "unsat" | "unknown" | "timeout"
    x: np.ndarray | None = None
    y: np.ndarray | None = None
    boxes: int = 0  # input boxes bounded
    time_s: float = 0.0

    def result_text(self) -> str:
        """The result file VNN-COMP's run_instance.sh expects."""
        if self.status != "sat":
            return self.status + "\n"
        pairs = [f"(X_{k} {v!r})" for k, v in enumerate(self.x.tolist())]
        pairs += [f"(Y_{k} {v!r})" for k, v in enumerate(self.y.tolist())]
        return "sat\n(" + "\n ".join(pairs) + ")\n"


class _Clock:
    def __init__(self, timeout: float | None) -> None:
        self.start = time.perf_counter()
        self.deadline = math.inf if timeout is None else self.start + timeout

    def expired(self) -> bool:
        return time.perf_counter() >= self.deadline

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def _satisfies(y: np.ndarray, disjunct) -> bool:
    rows, bounds, strict = disjunct
    if rows.size == 0:
        return True
    values = rows @ y - bounds
    return bool(np.all(np.where(strict, values < 0, values <= 0)))


def solve(graph: ir.Graph, model_path: str, prop: Property, *, timeout: float | None = None, method: str = "popqorn",
          max_boxes: int = 20000, output_index: int = 0, seed: int = 0) -> Answer:
    clock = _Clock(timeout)
    node = perturbed_input(graph, None)
    if len(graph.inputs) != 1:
        raise InputError("VNN-LIB properties are supported for single-input models only")
    out = output_node(graph, output_index)
    if prop.inputs != node.size:
        raise InputError(f"the property declares {prop.inputs} inputs; the model's input has {node.size} elements")
    if prop.outputs and prop.outputs != out.size:
        raise InputError(f"the property declares {prop.outputs} outputs; the model's output has {out.size} elements")
    model = OnnxModel(model_path)
    answer = _falsify(graph, model, node, out, prop.cases, clock, seed)
    if answer is not None:
        answer.time_s = clock.elapsed()
        return answer
    if clock.expired():
        return Answer("timeout", time_s=clock.elapsed())
    status, boxes = _prove(graph, model, node, out, prop.cases, clock, method, max_boxes)
    if isinstance(status, Answer):
        status.boxes, status.time_s = boxes, clock.elapsed()
        return status
    return Answer(status, boxes=boxes, time_s=clock.elapsed())


def _confirm(graph, model: OnnxModel, node, out, points: np.ndarray, case: Case, disjunct) -> Answer | None:
    """The first point (clamped into the box) onnxruntime confirms as a counterexample."""
    points = np.clip(points, case.lower, case.upper)
    outputs = model.outputs(graph, {node.name: points}, out)
    for x, y in zip(points, outputs):
        if _satisfies(y, disjunct):
            return Answer("sat", x=x, y=y)
    return None


def _falsify(graph, model, node, out, cases: list[Case], clock: _Clock, seed: int) -> Answer | None:
    for case in cases:
        for disjunct in case.disjuncts:
            if clock.expired():
                return None
            rows, bounds, strict = disjunct
            centre = (case.lower + case.upper) / 2
            if rows.size == 0:  # no output condition: every input of the box is a counterexample
                return _confirm(graph, model, node, out, centre[None], case, disjunct)
            rows_t, bounds_t = torch.as_tensor(rows), torch.as_tensor(bounds)
            slack = torch.as_tensor(np.where(strict, 1e-6, 0.0))

            def objective(outputs: torch.Tensor) -> torch.Tensor:
                return (outputs @ rows_t.T - bounds_t + slack).max(1).values

            batch = Batch(graph, node, torch.as_tensor(centre[None]), {})
            radius = torch.tensor([float((case.upper - case.lower).max() / 2)], dtype=torch.float64)
            box = (torch.as_tensor(case.lower[None]), torch.as_tensor(case.upper[None]))
            best, _ = pgd(graph, batch, radius, ThreatModel(math.inf, "sequence"), objective, output_node=out.node,
                          steps=50, restarts=4, seed=seed, box=box)
            found = _confirm(graph, model, node, out, best.detach().numpy(), case, disjunct)
            if found is not None:
                return found
    return None


def _prove(graph, model, node, out, cases: list[Case], clock: _Clock, method: str, max_boxes: int):
    """Refute every disjunct on every box, splitting boxes that stay undecided."""
    bounded = 0
    for case in cases:
        rows = [d for d in case.disjuncts]
        spec = np.concatenate([r for r, _, _ in rows])
        offset = -np.concatenate([b for _, b, _ in rows])
        owner = np.concatenate([np.full(len(b), k) for k, (_, b, _) in enumerate(rows)])
        widths = np.maximum(case.upper - case.lower, 0)
        scale = np.where(widths > 0, widths, 1.0)
        queue = [(case.lower.copy(), case.upper.copy())]
        while queue:
            if clock.expired():
                return "timeout", bounded
            if bounded >= max_boxes:
                return "unknown", bounded
            chunk, queue = queue[:BATCH_BOXES], queue[BATCH_BOXES:]
            lower = np.stack([c[0] for c in chunk])
            upper = np.stack([c[1] for c in chunk])
            values = bound_linear_box(graph, lower, upper, spec, offset=offset, method=method)
            bounded += len(chunk)
            # a disjunct is refuted on a box when one of its rows is certified positive there
            refuted = np.stack([(values[:, owner == k] > 0).any(axis=1) for k in range(len(rows))], axis=1)
            open_boxes = ~refuted.all(axis=1)
            if not open_boxes.any():
                continue
            # cheap falsification on the open boxes' centres before splitting them
            centres = (lower[open_boxes] + upper[open_boxes]) / 2
            with torch.no_grad():
                ir_out = forward.run(graph, {node.name: torch.as_tensor(centres)})[out.node].numpy()
            for k, disjunct in enumerate(rows):
                hits = [j for j, y in enumerate(ir_out) if _satisfies(y, disjunct)]
                if hits:
                    found = _confirm(graph, model, node, out, centres[hits], case, disjunct)
                    if found is not None:
                        return found, bounded
            for low, high in zip(lower[open_boxes], upper[open_boxes]):
                dim = int(np.argmax((high - low) / scale))
                if high[dim] - low[dim] <= 0:
                    return "unknown", bounded  # nothing left to split: the relaxation cannot decide
                middle = (low[dim] + high[dim]) / 2
                left_high, right_low = high.copy(), low.copy()
                left_high[dim], right_low[dim] = middle, middle
                queue += [(low, left_high), (right_low, high)]
    return "unsat", bounded
