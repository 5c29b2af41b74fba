"""One instance (model + property + timeout) from files to an answer, inside one deadline.

Shared by `popqorn vnnlib MODEL PROPERTY` and the workers of `popqorn vnnlib --instances`: the
property is parsed and the model loaded under the same deadline as the search, so a hostile file
cannot run past it either."""

from __future__ import annotations

import json
import os
import time

from verifier.vnnlib.deadline import Deadline, Timeout
from verifier.vnnlib.reader import MAX_TERMS

SAFETY_S = 0.15  # cooperative work stops this long before the deadline, leaving time to answer
METHODS = ("popqorn", "crown", "ibp")  # as verifier.bounds.METHODS, without importing the engine


def decide(model_path: str, property_path: str, deadline: Deadline, *, input_shapes: dict | None = None,
           method: str = "popqorn", max_boxes: int = 20000, max_cases: int = MAX_TERMS, seed: int = 0,
           threads: int = 1, prepare_only: bool = False):
    """(Answer, Property) for one instance; Answer("timeout") when the deadline passes first.
    PopqornError for files popqorn cannot take (the caller reports them). `threads` for torch
    and onnxruntime (1 by default: the engine's tensors are small, and more threads mostly wait
    on each other; on a loaded machine 2 threads made one bound pass 20x slower)."""
    import parsers
    from verifier.vnnlib.model import check_instance, concrete_graph, open_model
    from verifier.vnnlib.spec import read_property

    begin = time.perf_counter()
    work = Deadline(None if deadline.at is None else deadline.at - SAFETY_S)
    prop = None
    try:
        prop = read_property(property_path, work, max_cases)
        work.check()
        graph = parsers.load_onnx(model_path, input_shapes=input_shapes or None)
        model = open_model(model_path, threads)
        check_instance(concrete_graph(graph, prop), prop)
        if prepare_only:
            return None, prop
        import torch

        from verifier.vnnlib.solve import solve

        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        work.check()
        answer = solve(graph, model_path, prop, deadline=work, method=method, max_boxes=max_boxes, seed=seed,
                       model=model)
    except Timeout:
        from verifier.vnnlib.solve import Answer

        answer = Answer("timeout")
    answer.time_s = time.perf_counter() - begin
    return answer, prop


def reply_of(answer, prop) -> dict:
    """An answer as the plain dict the worker sends back (also used in-process)."""
    return {"result": answer.status, "version": None if prop is None else prop.version, "boxes": answer.boxes,
            "reason": answer.reason, "phases": {k: round(v, 4) for k, v in answer.phases.items()},
            "x": None if answer.x is None else answer.x.tolist(), "y": None if answer.y is None else answer.y.tolist()}


def result_text(reply: dict) -> str:
    """The result file VNN-COMP's run_instance.sh expects: the answer word, and for `sat` the
    counterexample ((X_0 v) ... (Y_0 v) ...) with every value exact (shortest float64 repr)."""
    if reply["result"] != "sat":
        return reply["result"] + "\n"
    pairs = [f"(X_{k} {v!r})" for k, v in enumerate(reply["x"])] + [f"(Y_{k} {v!r})" for k, v in enumerate(reply["y"])]
    return "sat\n(" + "\n ".join(pairs) + ")\n"


def reply_json(reply: dict, wall_s: float) -> str:
    """`popqorn vnnlib --json`: result, version, boxes, time_s (since the process started), reason,
    phases (seconds bounding / attacking / checking centres), counterexample {x, y} or null."""
    return json.dumps({"result": reply["result"], "version": reply.get("version"), "boxes": reply.get("boxes", 0),
                       "time_s": round(wall_s, 4), "reason": reply.get("reason", ""), "phases": reply.get("phases", {}),
                       "counterexample": None if reply.get("x") is None else {"x": reply["x"], "y": reply["y"]}})


def write_result(path: str | None, text: str) -> None:
    """Write the result file whole (a reader never sees half of it)."""
    if not path:
        return
    partial = f"{path}.partial{os.getpid()}"
    with open(partial, "w") as handle:
        handle.write(text)
    os.replace(partial, path)
