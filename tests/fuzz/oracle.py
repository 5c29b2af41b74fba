"""Answers checked where that is cheap, at the centre and at random points of the ball: against
popqorn's own exact forward pass of the model (float64: the function the bounds are about, so
they must hold to 1e-9) and against onnxruntime on the ONNX file (the ground truth, which computes
in float32: it must agree with the exact pass up to that rounding). Also: every counterexample an
attack reports lies within the radius."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

from tests.fuzz.runner import Outcome

RANDOM_POINTS = 16
EXACT_TOL = 1e-9  # relative: the bounds against the exact pass
ROUNDING_TOL = 1e-2  # relative: onnxruntime's float32 against the exact pass (big weights round a lot)


def run_onnx(model: Path, x: np.ndarray) -> np.ndarray | None:
    """The first output for the input batch `x` (in the file's input type), or None when
    onnxruntime cannot run the file (the commands may still answer: the IR is exact where
    onnxruntime is stricter)."""
    settings = ort.SessionOptions()
    settings.log_severity_level = 4
    settings.intra_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(model), settings, providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - onnxruntime's errors are untyped
        return None
    declared = session.get_inputs()[0]
    name = declared.name
    x = x.astype({"tensor(float16)": np.float16, "tensor(double)": np.float64}.get(declared.type, np.float32))
    try:
        return np.asarray(session.run(None, {name: x})[0], dtype=np.float64)
    except Exception:  # noqa: BLE001 - e.g. an initial state baked in for batch 1: one sample at a time
        pass
    try:
        return np.concatenate([np.asarray(session.run(None, {name: row[None]})[0], dtype=np.float64) for row in x])
    except Exception:  # noqa: BLE001
        return None


def run_exact(model: Path, x: np.ndarray) -> np.ndarray:
    """popqorn's exact forward pass (the IR in float64) of the first output."""
    import parsers
    import verifier

    graph = parsers.load_onnx(model)
    return np.asarray(verifier.evaluate(graph, {graph.inputs[0].onnx_name: x.astype(np.float64)})[0])


def _linf_points(x: np.ndarray, radius: float, seed: int) -> np.ndarray:
    """The centre and RANDOM_POINTS corners/interior points of the l-inf ball (every frame
    perturbed), in float64 (onnxruntime gets them rounded to float32)."""
    rng = np.random.default_rng(seed)
    x = np.asarray(x, dtype=np.float64)
    signs = rng.choice([-1.0, 1.0], size=(RANDOM_POINTS // 2, *x.shape))
    inside = rng.uniform(-1.0, 1.0, size=(RANDOM_POINTS // 2, *x.shape))
    return np.concatenate([x[None], x[None] + radius * signs, x[None] + radius * inside])


def _assert_file_agrees(exact: np.ndarray, y: np.ndarray | None, outcome: Outcome) -> None:
    if y is None:
        return
    y = y.reshape(exact.shape)
    finite = np.isfinite(y) & np.isfinite(exact)
    gap = np.abs(np.where(finite, y - exact, 0.0))
    assert (gap <= ROUNDING_TOL * (1 + np.abs(np.where(finite, exact, 0.0)))).all(), (
        f"onnxruntime and popqorn's exact pass disagree by {gap.max():g}\n{outcome.describe()}")


def assert_bounds_hold(outcome: Outcome, model: Path, x: np.ndarray, eps: float) -> int:
    """`popqorn bounds --json` (l-inf, frame ball, all frames) contains the exact outputs at the
    centre and at random points of the ball, where onnxruntime agrees up to float32 rounding; `x`
    holds every sample of the file. Returns the number of values compared."""
    report = json.loads(outcome.stdout)
    if report["logits"]:  # a trailing softmax was dropped: the bounds are on its input
        return 0
    x = x[np.asarray(report["samples"])]  # indices into the file (--start/--limit)
    points = _linf_points(x, eps, seed=0)  # (points, samples, ...): all through one pass
    flat = points.reshape(-1, *x.shape[1:])
    exact = run_exact(model, flat).reshape(len(flat), -1)
    _assert_file_agrees(exact, run_onnx(model, flat), outcome)
    lower = np.tile(np.asarray(report["lower"]), (len(points), 1))
    upper = np.tile(np.asarray(report["upper"]), (len(points), 1))
    slack = EXACT_TOL * (1.0 + np.abs(exact))
    broken = (exact < lower - slack) | (exact > upper + slack)
    assert not broken.any(), (f"unsound bounds: the model gives {exact[broken][:4]} outside "
                              f"[{lower[broken][:4]}, {upper[broken][:4]}]\n{outcome.describe()}")
    return exact.size


def assert_radii_hold(outcome: Outcome, model: Path, x: np.ndarray) -> int:
    """`popqorn certify --json` (l-inf, frame ball): at random points of each certified ball (radius
    shrunk by 1e-6) the exact prediction is the label (ties aside), and onnxruntime agrees up to
    float32 rounding. Returns the number of points checked."""
    report = json.loads(outcome.stdout)
    checked = 0
    for row in report["samples"]:
        radius = row.get("radius") or 0.0
        if row.get("misclassified") or row.get("skipped") or radius <= 0:
            continue
        points = _linf_points(x[row["index"]], radius * (1 - 1e-6), seed=row["index"])
        exact = run_exact(model, points).reshape(len(points), -1)
        _assert_file_agrees(exact, run_onnx(model, points), outcome)
        lead = exact.max(axis=1) - exact[:, row["label"]]
        wrong = lead > EXACT_TOL * (1 + np.abs(exact).max(axis=1))
        assert not wrong.any(), (f"sample {row['index']}: certified radius {radius:g} but the model predicts "
                                 f"{exact.argmax(axis=1)}\n{outcome.describe()}")
        checked += len(points)
    return checked


def assert_counterexamples_within(outcome: Outcome, eps: float) -> int:
    """`popqorn attack --json`: every counterexample found lies within the radius."""
    report = json.loads(outcome.stdout)
    found = [row for row in report["samples"] if row["found"]]
    for row in found:
        assert row["distance"] <= eps * (1 + 1e-6) + 1e-12, f"counterexample outside the ball: {row}\n{outcome.describe()}"
    return len(found)
