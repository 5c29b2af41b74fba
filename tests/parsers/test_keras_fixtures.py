"""Keras models exported through tf2onnx (committed files, see tests/fixtures/keras/README.md):
the IR must match onnxruntime and Keras itself; masking, whose computation depends on the input,
is refused with its reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import parsers
import verifier
from verifier.errors import UnsupportedOperator

FOLDER = Path(__file__).resolve().parents[1] / "fixtures" / "keras"
SUPPORTED = ["lstm", "gru_reset_after", "gru_reset_before", "simple_rnn", "bidirectional_lstm", "stacked_lstm",
             "lstm_go_backwards"]


@pytest.mark.parametrize("name", SUPPORTED)
def test_keras_export_matches_onnxruntime_and_keras(name):
    data = np.load(FOLDER / f"{name}.npz")
    graph = parsers.load_onnx(FOLDER / f"{name}.onnx")
    got = verifier.evaluate(graph, {"x": data["x"]})[0]
    expected = ort.InferenceSession(str(FOLDER / f"{name}.onnx")).run(None, {"x": data["x"]})[0]
    assert np.abs(got - expected).max() <= 1e-5
    assert np.abs(got - data["y"]).max() <= 1e-5
    assert graph.cells, "the recurrent structure should be reported"


def test_loop_exports_are_reported_as_loops():
    graph = parsers.load_onnx(FOLDER / "gru_reset_after.onnx")
    (cell,) = graph.cells
    assert cell.kind == "Loop" and cell.steps == 5


def test_masking_is_refused_with_its_reason():
    with pytest.raises(UnsupportedOperator, match="depend on the model input"):
        parsers.load_onnx(FOLDER / "masking_lstm.onnx")
