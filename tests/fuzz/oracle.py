"""Answers checked against onnxruntime on the ONNX file (the ground truth), where that is cheap:
bounds must contain the outputs at the centre and at random points of the ball, a certified
radius must leave the prediction unchanged at random points inside it, and every counterexample
an attack reports must lie within the radius."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

from tests.fuzz.runner import Outcome

RANDOM_POINTS = 16


def run_onnx(model: Path, x: np.ndarray) -> np.ndarray | None:
    """The first output for the input batch `x` (float32), or None when onnxruntime cannot run
    the file (the commands may still answer: the IR is exact where onnxruntime is stricter)."""
    settings = ort.SessionOptions()
    settings.log_severity_level = 4
    settings.intra_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(model), settings, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return np.asarray(session.run(None, {name: x.astype(np.float32)})[0], dtype=np.float64)
    except Exception:  # noqa: BLE001 - onnxruntime's errors are untyped
        return None


def _linf_points(x: np.ndarray, radius: float, seed: int) -> np.ndarray:
    """The centre and RANDOM_POINTS corners/interior points of the l-inf ball (every frame perturbed)."""
    rng = np.random.default_rng(seed)
    signs = rng.choice([-1.0, 1.0], size=(RANDOM_POINTS // 2, *x.shape))
    inside = rng.uniform(-1.0, 1.0, size=(RANDOM_POINTS // 2, *x.shape))
    return np.concatenate([x[None], x[None] + radius * signs, x[None] + radius * inside])


def assert_bounds_hold(outcome: Outcome, model: Path, x: np.ndarray, eps: float, rel_tol: float = 1e-4) -> int:
    """`popqorn bounds --json` (l-inf, frame ball, all frames) contains onnxruntime's outputs at the
    centre and at random points of the ball; `x` holds every sample of the file. Returns the number
    of values compared."""
    report = json.loads(outcome.stdout)
    if report["logits"]:  # a trailing softmax was dropped: the bounds are on its input
        return 0
    lower, upper = np.asarray(report["lower"]), np.asarray(report["upper"])
    x = x[np.asarray(report["samples"])]  # indices into the file (--start/--limit)
    compared = 0
    for points in _linf_points(x, eps, seed=0):
        y = run_onnx(model, points)
        if y is None:
            return compared
        y = y.reshape(len(points), -1)
        finite = np.isfinite(y)
        slack = rel_tol * (1.0 + np.abs(np.where(finite, y, 0.0)))
        broken = finite & ((y < lower - slack) | (y > upper + slack))
        assert not broken.any(), (f"unsound bounds: onnxruntime gives {y[broken][:4]} outside "
                                  f"[{lower[broken][:4]}, {upper[broken][:4]}]\n{outcome.describe()}")
        compared += int(finite.sum())
    return compared


def assert_radii_hold(outcome: Outcome, model: Path, x: np.ndarray) -> int:
    """`popqorn certify --json` (l-inf, frame ball): at random points of each certified ball (radius
    shrunk by 1e-6) onnxruntime's prediction is the label. Returns the number of points checked."""
    report = json.loads(outcome.stdout)
    checked = 0
    for row in report["samples"]:
        radius = row.get("radius") or 0.0
        if row.get("misclassified") or row.get("skipped") or radius <= 0:
            continue
        points = _linf_points(x[row["index"]], radius * (1 - 1e-6), seed=row["index"])
        y = run_onnx(model, points)
        if y is None:
            return checked
        y = y.reshape(len(points), -1)
        y = y[np.isfinite(y).all(axis=1)]  # float32 overflow in the file: no class to compare (see check)
        predictions = y.argmax(axis=1)
        assert (predictions == row["label"]).all(), (f"sample {row['index']}: certified radius {radius:g} but "
                                                     f"onnxruntime predicts {predictions}\n{outcome.describe()}")
        checked += len(y)
    return checked


def assert_counterexamples_within(outcome: Outcome, eps: float) -> int:
    """`popqorn attack --json`: every counterexample found lies within the radius."""
    report = json.loads(outcome.stdout)
    found = [row for row in report["samples"] if row["found"]]
    for row in found:
        assert row["distance"] <= eps * (1 + 1e-6) + 1e-12, f"counterexample outside the ball: {row}\n{outcome.describe()}"
    return len(found)
