"""Rebuild the trained mnist_lstm_t4_h32 in Keras and export it with tf2onnx: the same weights as
the torch exports, written by another framework and converter.

    python -m venv /tmp/tfenv && /tmp/tfenv/bin/pip install tensorflow-cpu tf2onnx onnxruntime
    /tmp/tfenv/bin/python models_onnx/export_keras.py     # after train_models.py

TensorFlow is not a project dependency; the exported file is committed.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import tensorflow as tf
import tf2onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

HERE = common.HERE
SOURCE = "mnist_lstm_t4_h32"
TARGET = f"{SOURCE}_keras"


def main() -> None:
    weights = np.load(HERE / f"{SOURCE}.weights.npz")
    hidden = weights["rnn.weight_hh_l0"].shape[1]
    features = weights["rnn.weight_ih_l0"].shape[1]
    inputs = tf.keras.Input((4, features), name="x")
    lstm = tf.keras.layers.LSTM(hidden)
    dense = tf.keras.layers.Dense(10)
    model = tf.keras.Model(inputs, dense(lstm(inputs)))
    # torch gate order i, f, g, o is Keras' i, f, c, o; Keras has one bias (torch's two summed)
    lstm.set_weights([weights["rnn.weight_ih_l0"].T, weights["rnn.weight_hh_l0"].T,
                      weights["rnn.bias_ih_l0"] + weights["rnn.bias_hh_l0"]])
    dense.set_weights([weights["fc.weight"].T, weights["fc.bias"]])
    path = HERE / f"{TARGET}.onnx"
    tf2onnx.convert.from_keras(model, input_signature=(tf.TensorSpec((None, 4, features), tf.float32, name="x"),),
                               opset=17, output_path=str(path))
    _, _, x_held, y_held = common.mnist_split(4)
    keras_out = model(x_held).numpy()
    onnx_out = ort.InferenceSession(str(path)).run(None, {"x": x_held})[0]
    torch_out = ort.InferenceSession(str(HERE / f"{SOURCE}.onnx")).run(None, {"x": x_held})[0]
    differences = {}
    for name, value in (("keras", keras_out), ("torch", torch_out)):
        differences[f"max_abs_diff_vs_{name}"] = difference = float(np.abs(onnx_out - value).max())
        print(f"{TARGET}.onnx vs {name}: max |diff| = {difference:.2e}")
        if difference > common.MAX_EXPORT_DIFFERENCE:
            raise SystemExit("the Keras export does not reproduce the trained model")
    shutil.copy(HERE / f"{SOURCE}.samples.npz", HERE / f"{TARGET}.samples.npz")
    correct = onnx_out.argmax(1) == y_held
    accuracy = float(correct.mean())
    summary = common.onnx_summary(path)
    common.update_manifest([{
        "file": path.name, "cell": "lstm", "T": 4, "features": features, "hidden": hidden,
        "exporter": "Keras + tf2onnx", "opset": summary["opset"], "heldout_accuracy": accuracy,
        "samples_accuracy": float(correct[:common.N_SAMPLES].mean()), **differences,
        "bytes": summary["bytes"], "ops": summary["ops"],
        "note": f"same weights as {SOURCE}, rebuilt in Keras and converted with tf2onnx",
        "versions": {"tensorflow": tf.__version__, "tf2onnx": tf2onnx.__version__}}], "export_keras.py")
    print(f"{TARGET}: held-out accuracy {accuracy:.4f}")


if __name__ == "__main__":
    main()
