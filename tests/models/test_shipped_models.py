"""The models shipped in models_onnx/: the manifest describes the files as they are, the samples are
well-formed, onnxruntime reproduces the recorded accuracy, the IR reproduces onnxruntime, and the
several exports of one set of trained weights compute the same function."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import parsers
import verifier
from verifier.bounds import bound_outputs

FOLDER = Path(__file__).resolve().parents[2] / "models_onnx"
MANIFEST = json.loads((FOLDER / "manifest.json").read_text())["models"]
SHARED_WEIGHTS = "mnist_lstm_t4_h32"  # exported four ways from one set of trained weights
SHARED_EXPORTS = ("", "_dynamo", "_cellloop", "_keras")
IR_TOLERANCE = 1e-5


def samples_of(file: str) -> tuple[np.ndarray, np.ndarray]:
    data = np.load(FOLDER / file.replace(".onnx", ".samples.npz"))
    return data["x"], data["y"]


def onnxruntime_logits(file: str, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(FOLDER / file), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_manifest_lists_every_shipped_model():
    listed = {entry["file"] for entry in MANIFEST}
    assert len(listed) == len(MANIFEST)
    assert listed == {path.name for path in FOLDER.glob("*.onnx")}
    assert {f"{SHARED_WEIGHTS}{suffix}.onnx" for suffix in SHARED_EXPORTS} <= listed


@pytest.mark.parametrize("entry", MANIFEST, ids=lambda e: e["file"])
def test_file_matches_manifest(entry):
    path = FOLDER / entry["file"]
    assert path.is_file() and path.stat().st_size == entry["bytes"]
    model = onnx.load(str(path))
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == entry["opset"]
    assert sorted({node.op_type for node in model.graph.node}) == entry["ops"]
    initializers = {tensor.name for tensor in model.graph.initializer}
    (graph_input,) = [i for i in model.graph.input if i.name not in initializers]
    batch, steps, features = graph_input.type.tensor_type.shape.dim
    assert graph_input.name == "x" and batch.dim_param  # symbolic (dynamic) batch axis
    assert (steps.dim_value, features.dim_value) == (entry["T"], entry["features"])
    (graph_output,) = model.graph.output
    assert graph_output.type.tensor_type.shape.dim[1].dim_value == 10


@pytest.mark.parametrize("entry", MANIFEST, ids=lambda e: e["file"])
def test_samples_and_onnxruntime_accuracy(entry):
    x, y = samples_of(entry["file"])
    assert x.dtype == np.float32 and y.dtype == np.int64
    assert x.shape == (100, entry["T"], entry["features"]) and y.shape == (100,)
    assert 0 <= x.min() and x.max() <= 1 and set(np.unique(y)) <= set(range(10))
    logits = onnxruntime_logits(entry["file"], x)
    assert logits.shape == (100, 10) and np.isfinite(logits).all()
    accuracy = float((logits.argmax(1) == y).mean())
    assert accuracy == pytest.approx(entry["samples_accuracy"], abs=0.011)  # one near-tie may flip
    assert abs(accuracy - entry["heldout_accuracy"]) < 0.1  # 100 of the 2000 (360) held-out samples
    assert entry["heldout_accuracy"] > 0.85


@pytest.mark.parametrize("entry", MANIFEST, ids=lambda e: e["file"])
def test_ir_matches_onnxruntime(entry):
    x, _ = samples_of(entry["file"])
    expected = onnxruntime_logits(entry["file"], x)
    got = verifier.evaluate(parsers.load_onnx(FOLDER / entry["file"]), {"x": x})[0]
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= IR_TOLERANCE


def test_exports_of_the_same_weights_compute_the_same_function():
    x, y = samples_of(f"{SHARED_WEIGHTS}.onnx")
    reference = onnxruntime_logits(f"{SHARED_WEIGHTS}.onnx", x)
    for suffix in SHARED_EXPORTS[1:]:
        twin_x, twin_y = samples_of(f"{SHARED_WEIGHTS}{suffix}.onnx")
        assert np.array_equal(twin_x, x) and np.array_equal(twin_y, y)
        assert np.abs(onnxruntime_logits(f"{SHARED_WEIGHTS}{suffix}.onnx", x) - reference).max() <= 1e-5


def test_weights_file_rebuilds_the_shipped_lstm():
    """export_keras.py rebuilds the model from this file, so it must hold exactly the shipped weights."""
    weights = {k: torch.from_numpy(v) for k, v in np.load(FOLDER / f"{SHARED_WEIGHTS}.weights.npz").items()}
    lstm = torch.nn.LSTM(weights["rnn.weight_ih_l0"].shape[1], weights["rnn.weight_hh_l0"].shape[1], batch_first=True)
    head = torch.nn.Linear(weights["fc.weight"].shape[1], weights["fc.weight"].shape[0])
    lstm.load_state_dict({k.removeprefix("rnn."): v for k, v in weights.items() if k.startswith("rnn.")})
    head.load_state_dict({k.removeprefix("fc."): v for k, v in weights.items() if k.startswith("fc.")})
    x, _ = samples_of(f"{SHARED_WEIGHTS}.onnx")
    with torch.no_grad():
        rebuilt = head(lstm(torch.from_numpy(x))[0][:, -1]).numpy()
    assert np.abs(rebuilt - onnxruntime_logits(f"{SHARED_WEIGHTS}.onnx", x)).max() <= 1e-5


def test_exports_of_the_same_weights_get_the_same_bounds():
    x, _ = samples_of(f"{SHARED_WEIGHTS}.onnx")
    graphs = [parsers.load_onnx(FOLDER / f"{SHARED_WEIGHTS}{suffix}.onnx") for suffix in ("", "_dynamo", "_cellloop")]
    bounds = [bound_outputs(g, x[:5], 0.05, 2, dtype=torch.float64) for g in graphs]
    (lower, upper), (dynamo_lower, dynamo_upper), (loop_lower, loop_upper) = bounds
    # legacy and dynamo exports of nn.LSTM unroll to the same IR: identical bounds
    assert np.allclose(dynamo_lower, lower, atol=1e-9) and np.allclose(dynamo_upper, upper, atol=1e-9)
    # the cell loop is a differently arranged graph of the same function: relaxation choices may
    # differ where candidates tie, so the bounds agree closely but not to the last digit
    assert (loop_upper - loop_lower).mean() == pytest.approx((upper - lower).mean(), rel=0.02)
    assert np.all(loop_lower <= upper) and np.all(lower <= loop_upper)
