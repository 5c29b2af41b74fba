"""The models shipped in models_onnx/: files present, samples well-formed, onnxruntime accuracy on
the saved samples consistent with the manifest, and the IR reproducing onnxruntime exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

import parsers
import verifier
from verifier.bounds import bound_outputs

FOLDER = Path(__file__).resolve().parents[2] / "models_onnx"
MANIFEST = json.loads((FOLDER / "manifest.json").read_text())["models"]


@pytest.mark.parametrize("entry", MANIFEST, ids=lambda e: e["file"])
def test_model_samples_and_accuracy(entry):
    path = FOLDER / entry["file"]
    samples = np.load(path.with_suffix(".samples.npz"))
    x, y = samples["x"], samples["y"]
    assert x.dtype == np.float32 and y.dtype == np.int64
    assert x.shape == (100, entry["T"], entry["features"]) and y.shape == (100,)
    assert 0 <= x.min() and x.max() <= 1
    logits = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    assert logits.shape == (100, 10)
    accuracy = float((logits.argmax(1) == y).mean())
    assert entry["heldout_accuracy"] > 0.85
    assert abs(accuracy - entry["heldout_accuracy"]) < 0.1  # 100 of the held-out samples


@pytest.mark.parametrize("entry", MANIFEST, ids=lambda e: e["file"])
def test_ir_matches_onnxruntime(entry):
    path = FOLDER / entry["file"]
    x = np.load(path.with_suffix(".samples.npz"))["x"]
    expected = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    got = verifier.evaluate(parsers.load_onnx(path), {"x": x})[0]
    assert np.abs(got - expected).max() <= 1e-5


def test_exports_of_the_same_weights_agree():
    x = np.load(FOLDER / "mnist_lstm_t4_h32.samples.npz")["x"][:5]
    graphs = [parsers.load_onnx(FOLDER / f"mnist_lstm_t4_h32{suffix}.onnx") for suffix in ("", "_dynamo", "_cellloop")]
    bounds = [bound_outputs(g, x, 0.05, 2, dtype=torch.float64) for g in graphs]
    (lower, upper), (dynamo_lower, dynamo_upper), (loop_lower, loop_upper) = bounds
    # legacy and dynamo exports of nn.LSTM unroll to the same IR: identical bounds
    assert np.allclose(dynamo_lower, lower, atol=1e-9) and np.allclose(dynamo_upper, upper, atol=1e-9)
    # the cell loop is a differently arranged graph of the same function: relaxation choices may
    # differ where candidates tie, so the bounds agree closely but not to the last digit
    assert (loop_upper - loop_lower).mean() == pytest.approx((upper - lower).mean(), rel=0.02)
    assert np.all(loop_lower <= upper) and np.all(lower <= loop_upper)
