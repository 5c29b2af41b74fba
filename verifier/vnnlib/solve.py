"""Deciding a VNN-LIB property, cheapest evidence first.

1. One bound pass over every input box (milliseconds): many properties are decided here.
2. A short attack (PGD inside the box) on the boxes the bounds left open.
3. While time remains, alternate: split the worst open boxes and bound the halves (checking each
   new centre with onnxruntime), then attack the worst open boxes again; attacks get about as much
   time as bounding, so neither phase can starve the other.

Never `sat` without a counterexample onnxruntime confirms on the ONNX file (as float32 inputs
inside the box); never `unsat` without a bound proof for every piece of every input box.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from verifier import forward, ir
from verifier.attack import pgd
from verifier.bounds import Batch, bound_linear_box, output_node
from verifier.errors import InputError
from verifier.onnx_runtime import OnnxModel
from verifier.threat import ThreatModel
from verifier.vnnlib.deadline import Deadline, Timeout
from verifier.vnnlib.model import concrete_graph, input_dtype, open_model, output_index
from verifier.vnnlib.spec import Case, Property

BATCH_BOXES = 32  # boxes per bound call
ATTACK_BOXES = 16  # boxes attacked together
FIRST_ATTACK_STEPS = 30
ATTACK_STEPS = 20
ATTACK_RESTARTS = 2
STRICT_SLACK = 1e-6  # the attack aims this far inside strict output constraints


@dataclass
class Answer:
    status: str  # "sat" | "unsat" | "unknown" | "timeout"
    x: np.ndarray | None = None
    y: np.ndarray | None = None
    boxes: int = 0  # input boxes bounded
    time_s: float = 0.0
    phases: dict = field(default_factory=dict)  # seconds spent bounding / attacking / checking centres
    reason: str = ""

    def result_text(self) -> str:
        """The result file VNN-COMP's run_instance.sh expects (verifier.vnnlib.instance.result_text)."""
        from verifier.vnnlib.instance import reply_of, result_text

        return result_text(reply_of(self, None))


@dataclass
class _Box:
    lower: np.ndarray
    upper: np.ndarray
    case: int
    alive: np.ndarray  # disjuncts of the case not yet refuted on this box (or an ancestor)
    score: float = -math.inf  # min over alive disjuncts of their best row's lower bound (< 0: open)


class _Rows:
    """A case's output constraints flattened: rows (R, out), bounds (R,), owner disjunct (R,)."""

    def __init__(self, case: Case) -> None:
        self.count = len(case.disjuncts)
        self.rows = np.concatenate([a for a, _, _ in case.disjuncts]) if case.disjuncts else np.zeros((0, 0))
        self.bounds = np.concatenate([b for _, b, _ in case.disjuncts]) if case.disjuncts else np.zeros(0)
        self.strict = np.concatenate([s for _, _, s in case.disjuncts]) if case.disjuncts else np.zeros(0, bool)
        self.owner = np.concatenate([np.full(len(b), k) for k, (_, b, _) in enumerate(case.disjuncts)]).astype(
            np.int64) if case.disjuncts else np.zeros(0, np.int64)

    def satisfied(self, y: np.ndarray) -> np.ndarray:
        """Which disjuncts the output vectors y (K, out) satisfy: (K, count)."""
        values = y @ self.rows.T - self.bounds if len(self.bounds) else np.zeros((len(y), 0))
        holds = np.where(self.strict, values < 0, values <= 0)
        result = np.ones((len(y), self.count), dtype=bool)
        for k in range(self.count):
            result[:, k] = holds[:, self.owner == k].all(axis=1)
        return result


class Solver:
    def __init__(self, graph: ir.Graph, model: OnnxModel, prop: Property, deadline: Deadline, method: str,
                 max_boxes: int, seed: int) -> None:
        self.graph, self.model, self.prop, self.deadline = graph, model, prop, deadline
        self.method, self.max_boxes, self.seed = method, max_boxes, seed
        self.node = graph.inputs[0]
        self.out = _output(graph, prop)
        self.rows = [_Rows(case) for case in prop.cases]
        self.input_dtype = input_dtype(model, self.node.onnx_name)
        self.bounded = 0
        self.stuck = 0
        self.spent = {"bound_s": 0.0, "attack_s": 0.0, "check_s": 0.0}
        self.per_box_s = None  # measured cost of bounding one box (in a batch)
        self.per_step_s = None  # measured cost of one attack step for one box and restart
        self.counter = itertools.count()

    # ---- the schedule ---------------------------------------------------------------------
    def run(self) -> Answer:
        """The schedule of the module docstring. Input boxes not bounded yet (properties with
        many cases) are bounded a batch per round, between attacks, before any box is split."""
        pending = [_Box(case.lower.copy(), case.upper.copy(), k, np.ones(len(case.disjuncts), dtype=bool))
                   for k, case in enumerate(self.prop.cases)]
        heap: list = []
        attacks = 0
        while pending or heap:
            if self.bounded >= self.max_boxes:
                return self._answer("unknown", f"--max-boxes {self.max_boxes} bounded without a decision")
            if pending:
                count = self._affordable(BATCH_BOXES, self.per_box_s or 0.0)
                chunk, pending = pending[:count], pending[count:]
            else:
                count = self._affordable(BATCH_BOXES // 2, 2 * (self.per_box_s or 0.0))
                chunk = self._split([heapq.heappop(heap)[2] for _ in range(min(count, len(heap)))])
            found = self._bound_and_push(chunk, heap)
            if found is not None:
                return found
            if heap and (attacks == 0 or self.spent["attack_s"] <= self.spent["bound_s"]):
                found = self._attack([entry[2] for entry in heapq.nsmallest(ATTACK_BOXES, heap)],
                                     FIRST_ATTACK_STEPS if attacks == 0 else ATTACK_STEPS, attacks)
                attacks += 1
                if found is not None:
                    return found
        if self.stuck:
            return self._answer("unknown", f"{self.stuck} boxes shrank to points the bounds cannot decide")
        return self._answer("unsat")

    def _affordable(self, wanted: int, cost_each: float) -> int:
        """How many units of work fit before the deadline (at least one; Timeout if none does)."""
        remaining = self.deadline.remaining()
        if remaining <= 0:
            raise Timeout()
        if cost_each <= 0:
            return wanted
        return max(1, min(wanted, int(remaining / cost_each)))

    def _answer(self, status: str, reason: str = "", x=None, y=None) -> Answer:
        return Answer(status, x, y, self.bounded, 0.0, dict(self.spent), reason)

    # ---- bounds ---------------------------------------------------------------------------
    def _bound_and_push(self, boxes: list[_Box], heap: list) -> Answer | None:
        """Bound the boxes; push the open ones; check their centres. A counterexample or None."""
        for start in range(0, len(boxes), BATCH_BOXES):
            chunk = boxes[start:start + BATCH_BOXES]
            self.deadline.check()
            begin = time.perf_counter()
            self._bound(chunk)
            elapsed = time.perf_counter() - begin
            self.spent["bound_s"] += elapsed
            self.per_box_s = elapsed / len(chunk)
            self.bounded += len(chunk)
            for box in chunk:
                if not box.alive.any():
                    continue
                if (box.upper <= box.lower).all():
                    self.stuck += 1  # a point: only its own value can decide it (checked below)
                else:
                    heapq.heappush(heap, (box.score, next(self.counter), box))
            # refuted boxes' centres too: the bounds are for the exact function, and where
            # onnxruntime's float32 rounding puts a centre in the unsafe set (a point box exactly
            # at a threshold), that is a counterexample any checker accepts, not an unsat
            found = self._check_centres(chunk)
            if found is not None:
                return found
        return None

    def _bound(self, boxes: list[_Box]) -> None:
        """Refute disjuncts per box: a disjunct is refuted when one of its rows is certified
        violated (lower bound of a.y - b > 0, or >= 0 for a strict row)."""
        widest = max(len(self.rows[b.case].bounds) for b in boxes)
        outputs = self.out.size
        spec = np.zeros((len(boxes), max(widest, 1), outputs))
        offset = np.zeros((len(boxes), max(widest, 1)))
        for i, box in enumerate(boxes):
            rows = self.rows[box.case]
            spec[i, :len(rows.bounds)] = rows.rows
            offset[i, :len(rows.bounds)] = -rows.bounds
        values = bound_linear_box(self.graph, np.stack([b.lower for b in boxes]), np.stack([b.upper for b in boxes]),
                                  spec, offset=offset, method=self.method)
        for i, box in enumerate(boxes):
            rows = self.rows[box.case]
            row_values = values[i, :len(rows.bounds)]
            certified = np.where(rows.strict, row_values >= 0, row_values > 0)
            best = np.full(rows.count, -np.inf)
            np.maximum.at(best, rows.owner, np.where(np.isfinite(row_values), row_values, -np.inf))
            refuted = np.zeros(rows.count, dtype=bool)
            np.logical_or.at(refuted, rows.owner, certified)
            box.alive = box.alive & ~refuted
            box.score = float(best[box.alive].min()) if box.alive.any() else math.inf

    def _split(self, boxes: list[_Box]) -> list[_Box]:
        """Halve each box along the input with the largest |gradient| x width of the attack
        objective at its centre (the widest input when the gradient gives no preference)."""
        lower = np.stack([b.lower for b in boxes])
        upper = np.stack([b.upper for b in boxes])
        width, centre = upper - lower, (lower + upper) / 2
        x = torch.tensor(centre, dtype=torch.float64, requires_grad=True)
        with torch.enable_grad():
            outputs = forward.run(self.graph, {self.node.name: x})[self.out.node]
            value = self._objective(boxes)(outputs)
            value = torch.where(torch.isfinite(value), value, torch.zeros_like(value)).sum()
            gradient = torch.autograd.grad(value, x)[0].numpy() if value.requires_grad else np.zeros_like(centre)
        score = np.abs(gradient) * width
        usable = np.isfinite(score).all(axis=1) & (score.max(axis=1) > 0)
        dims = np.where(usable, np.argmax(np.where(np.isfinite(score), score, 0), axis=1), np.argmax(width, axis=1))
        children = []
        for box, dim, middle in zip(boxes, dims, centre[np.arange(len(boxes)), dims]):
            left_upper, right_lower = box.upper.copy(), box.lower.copy()
            left_upper[dim], right_lower[dim] = middle, middle
            children += [_Box(box.lower, left_upper, box.case, box.alive.copy()),
                         _Box(right_lower, box.upper, box.case, box.alive.copy())]
        return children

    # ---- attacks --------------------------------------------------------------------------
    def _objective(self, boxes: list[_Box]):
        """outputs (K, out) -> (K,): min over alive disjuncts of max over rows of a.y - b
        (+ slack on strict rows); <= 0 means the output is in the unsafe set."""
        widest = max(max(len(self.rows[b.case].bounds) for b in boxes), 1)
        most = max(max(self.rows[b.case].count for b in boxes), 1)
        rows_t = torch.zeros(len(boxes), widest, self.out.size, dtype=torch.float64)
        bounds_t = torch.zeros(len(boxes), widest, dtype=torch.float64)
        member = torch.zeros(len(boxes), most, widest, dtype=torch.bool)
        alive = torch.zeros(len(boxes), most, dtype=torch.bool)
        for i, box in enumerate(boxes):
            rows = self.rows[box.case]
            count = len(rows.bounds)
            rows_t[i, :count] = torch.as_tensor(rows.rows)
            bounds_t[i, :count] = torch.as_tensor(rows.bounds - np.where(rows.strict, STRICT_SLACK, 0.0))
            member[i, torch.as_tensor(rows.owner), torch.arange(count)] = True
            alive[i, :rows.count] = torch.as_tensor(box.alive)

        def objective(outputs: torch.Tensor) -> torch.Tensor:
            values = torch.einsum("kro,ko->kr", rows_t, outputs.double()) - bounds_t
            per_disjunct = torch.where(member, values[:, None, :], -math.inf).amax(-1)
            per_disjunct = torch.where(alive, per_disjunct, math.inf)
            return per_disjunct.amin(-1)

        return objective

    def _attack(self, boxes: list[_Box], steps: int, round_: int) -> Answer | None:
        """PGD inside each box on the objective above; candidates confirmed by onnxruntime."""
        if self.per_step_s is not None:
            steps = min(steps, self._affordable(steps, self.per_step_s * len(boxes) * ATTACK_RESTARTS))
        else:
            self.deadline.check()
        lower = np.stack([b.lower for b in boxes])
        upper = np.stack([b.upper for b in boxes])
        centre = (lower + upper) / 2
        begin = time.perf_counter()
        batch = Batch(self.graph, self.node, torch.as_tensor(centre), {})
        radius = torch.as_tensor((upper - lower).max(axis=1) / 2)
        best, _ = pgd(self.graph, batch, radius, ThreatModel(math.inf, "sequence"), self._objective(boxes),
                      output_node=self.out.node, steps=steps, restarts=ATTACK_RESTARTS, seed=self.seed + round_,
                      box=(torch.as_tensor(lower), torch.as_tensor(upper)))
        elapsed = time.perf_counter() - begin
        self.spent["attack_s"] += elapsed
        self.per_step_s = elapsed / (steps * len(boxes) * ATTACK_RESTARTS)
        return self._confirm(best.detach().cpu().numpy(), boxes)

    def _check_centres(self, boxes: list[_Box]) -> Answer | None:
        if not boxes:
            return None
        begin = time.perf_counter()
        found = self._confirm(np.stack([(b.lower + b.upper) / 2 for b in boxes]), boxes)
        self.spent["check_s"] += time.perf_counter() - begin
        return found

    def _confirm(self, points: np.ndarray, boxes: list[_Box]) -> Answer | None:
        """The first point that, as the model's input dtype inside its case's box, onnxruntime
        confirms in the unsafe set."""
        candidates, owners = [], []
        for point, box in zip(points, boxes):
            x = _representable(point, self.prop.cases[box.case], self.input_dtype)
            if x is not None:
                candidates.append(x)
                owners.append(box.case)
        if not candidates:
            return None
        x = np.stack(candidates)
        y = self.model.outputs(self.graph, {self.node.name: x}, self.out)
        for k, case in enumerate(owners):
            if self.rows[case].satisfied(y[k:k + 1]).any():
                # onnxruntime's last bits depend on the batch (measured: 1-2 ulp on an RNN between
                # batch 1 and 2), and a checker runs the counterexample alone: so must we
                alone = self.model.outputs(self.graph, {self.node.name: x[k:k + 1]}, self.out)
                if self.rows[case].satisfied(alone).any():
                    return self._answer("sat", x=x[k], y=alone[0])
        return None


def _representable(point: np.ndarray, case: Case, dtype) -> np.ndarray | None:
    """`point` moved to the nearest values of the model's input dtype inside the case's box (as
    float64), or None when the box holds no such value on some input."""
    x = np.clip(point, case.lower, case.upper).astype(dtype)
    low = np.where(case.lower_open, x <= case.lower, x < case.lower)
    x = np.where(low, np.nextafter(x, np.array(np.inf, dtype=dtype)), x)
    high = np.where(case.upper_open, x >= case.upper, x > case.upper)
    x = np.where(high, np.nextafter(x, np.array(-np.inf, dtype=dtype)), x)
    x = x.astype(np.float64)
    return x if case.contains(x[None])[0] else None


def _output(graph: ir.Graph, prop: Property) -> ir.Output:
    out = output_node(graph, output_index(graph, prop))
    if prop.outputs != out.size:
        raise InputError(f"the property declares {prop.outputs} outputs; the model's output "
                         f"{out.onnx_name!r} has {out.size} elements")
    if out.postprocess is not None:
        _check_order_only(out, prop)
    return out


def _check_order_only(out: ir.Output, prop: Property) -> None:
    """The bounds leave out a trailing (log-)softmax, so only constraints it preserves are
    allowed: comparisons of two outputs of one softmax group (Y_i >= Y_j); after log-softmax any
    row whose coefficients sum to zero within a group."""
    axis = out.postprocess_axis % len(out.shape)
    positions = np.unravel_index(np.arange(out.size), out.shape)
    group = np.ravel_multi_index([p if k != axis else np.zeros_like(p) for k, p in enumerate(positions)], out.shape)
    log = out.postprocess is ir.Postprocess.LOG_SOFTMAX
    for case in prop.cases:
        for rows, bounds, _ in case.disjuncts:
            for row, bound in zip(rows, bounds):
                used = np.flatnonzero(row)
                same_group = len(set(group[used].tolist())) <= 1
                if log:
                    ok = same_group and abs(row[used].sum()) <= 1e-12 * np.abs(row).sum()
                else:
                    ok = same_group and bound == 0 and len(used) == 2 and row[used].sum() == 0
                if not ok:
                    raise InputError(
                        f"the model's output {out.onnx_name!r} ends in {out.postprocess.value}, which the bounds leave "
                        f"out (it keeps the order of the outputs); this property constrains it in a way "
                        f"{out.postprocess.value} does not preserve (only comparisons such as Y_i >= Y_j are supported)")


def solve(graph: ir.Graph, model_path: str, prop: Property, *, timeout: float | None = None,
          deadline: Deadline | None = None, method: str = "popqorn", max_boxes: int = 20000, seed: int = 0,
          model: OnnxModel | None = None) -> Answer:
    """sat / unsat / unknown / timeout for `prop` on the model (see the module docstring).
    `deadline` (absolute) or `timeout` (seconds from now) bound the whole call."""
    start = time.perf_counter()
    deadline = deadline or Deadline.after(timeout)
    if not prop.cases:
        return Answer("unsat", reason=f"the property's unsafe set is empty ({prop.why_empty})",
                      time_s=time.perf_counter() - start)
    model = model or open_model(model_path)
    graph = concrete_graph(graph, prop)
    solver = Solver(graph, model, prop, deadline, method, max_boxes, seed)
    try:
        answer = solver.run()
    except Timeout:
        answer = solver._answer("timeout")
    answer.time_s = time.perf_counter() - start
    return answer
