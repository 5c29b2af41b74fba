"""Train and export the small sequence classifiers shipped in models_onnx/ (CPU, fixed seeds).

    python models_onnx/train_models.py            # all models, ~15 s on 2 CPU cores

Sequence-MNIST in the spirit of the POPQORN paper (image rows grouped into T frames), trained on
the first 8000 images of the MNIST *test set* (../shared/data/mnist, or $POPQORN_MNIST_DIR) with
the last 2000 held out, plus scikit-learn's bundled 8x8 digits (rows as frames). Every export is
checked against torch with onnxruntime, and its held-out accuracy measured with onnxruntime.
The LSTM T=4 model is also exported with the dynamo exporter and as a Python loop over
nn.LSTMCell, so the same weights exist as several different ONNX graphs.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (numpy-only helpers shared with export_keras.py)

HERE = common.HERE
PRODUCER = "train_models.py"
MAX_EXPORT_DIFFERENCE = common.MAX_EXPORT_DIFFERENCE


class SequenceClassifier(torch.nn.Module):
    """nn.LSTM / nn.GRU / nn.RNN over [batch, T, F], a linear head on the last step's output."""

    def __init__(self, cell: str, features: int, hidden: int, classes: int = 10) -> None:
        super().__init__()
        make = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU,
                "rnn_tanh": lambda f, h, **k: torch.nn.RNN(f, h, nonlinearity="tanh", **k),
                "rnn_relu": lambda f, h, **k: torch.nn.RNN(f, h, nonlinearity="relu", **k)}[cell]
        self.rnn = make(features, hidden, batch_first=True)
        self.fc = torch.nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(x)
        return self.fc(y[:, -1])


class LSTMCellLoop(torch.nn.Module):
    """The same LSTM written as a Python loop over nn.LSTMCell (a different ONNX graph)."""

    def __init__(self, trained: SequenceClassifier) -> None:
        super().__init__()
        lstm = trained.rnn
        self.hidden = lstm.hidden_size
        self.cell = torch.nn.LSTMCell(lstm.input_size, lstm.hidden_size)
        with torch.no_grad():
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(self.cell, name).copy_(getattr(lstm, f"{name}_l0"))
        self.fc = trained.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.zeros(x.shape[0], self.hidden)
        c = torch.zeros(x.shape[0], self.hidden)
        for t in range(x.shape[1]):
            h, c = self.cell(x[:, t], (h, c))
        return self.fc(h)


def train(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, seed: int) -> None:
    torch.manual_seed(seed)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(xs))
        for start in range(0, len(xs), 64):
            batch = order[start:start + 64]
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xs[batch]), ys[batch])
            loss.backward()
            optimizer.step()
    model.eval()


def export(model: torch.nn.Module, path: Path, example: np.ndarray, dynamo: bool = False) -> None:
    args = (torch.from_numpy(example[:2]),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            program = torch.onnx.export(model, args, dynamo=True, input_names=["x"], output_names=["logits"],
                                        dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
            program.save(str(path), external_data=False)
            strip_node_metadata(path)
        else:
            torch.onnx.export(model, args, str(path), dynamo=False, opset_version=17, input_names=["x"],
                              output_names=["logits"], dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})


def strip_node_metadata(path: Path) -> None:
    """The dynamo exporter stores a Python stack trace per node, with this machine's absolute paths:
    drop it so the shipped file is reproducible anywhere and leaks no local paths."""
    model = onnx.load(str(path))
    for node in model.graph.node:
        del node.metadata_props[:]
    onnx.save(model, str(path))


def verify_and_measure(model: torch.nn.Module, path: Path, x: np.ndarray, y: np.ndarray) -> dict:
    """onnxruntime must agree with torch; returns the held-out accuracy measured by onnxruntime (all
    held-out samples and the shipped first N_SAMPLES) and the largest onnxruntime-torch gap."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"x": x})[0]
    with torch.no_grad():
        reference = model(torch.from_numpy(x)).numpy()
    difference = float(np.abs(logits - reference).max())
    if difference > MAX_EXPORT_DIFFERENCE:
        raise SystemExit(f"{path.name}: onnxruntime differs from torch by {difference:.2e}")
    correct = logits.argmax(1) == y
    return {"heldout_accuracy": float(correct.mean()), "samples_accuracy": float(correct[:common.N_SAMPLES].mean()),
            "max_abs_diff_vs_torch": difference}


def entry(path: Path, cell: str, x: np.ndarray, hidden: int, exporter: str, measured: dict, note: str = "") -> dict:
    """One manifest record: what the file is, how it was made, and what it measured."""
    summary = common.onnx_summary(path)
    return {"file": path.name, "cell": cell, "T": int(x.shape[1]), "features": int(x.shape[2]), "hidden": hidden,
            "exporter": exporter, "opset": summary["opset"], **measured, "bytes": summary["bytes"],
            "ops": summary["ops"], "note": note,
            "versions": {"torch": torch.__version__.split("+")[0], "onnxruntime": ort.__version__}}


def report(name: str, measured: dict) -> None:
    print(f"{name}: held-out accuracy {measured['heldout_accuracy']:.4f}, "
          f"onnxruntime vs torch {measured['max_abs_diff_vs_torch']:.1e}", flush=True)


def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # ships with scikit-learn, no download

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)  # [1797, 8, 8]: rows are frames
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    train_count = int(0.8 * len(x))
    return x[order[:train_count]], y[order[:train_count]], x[order[train_count:]], y[order[train_count:]]


def main() -> None:
    torch.set_num_threads(2)
    entries = []
    mnist = {steps: common.mnist_split(steps) for steps in (4, 7)}
    plan = [("mnist_lstm_t4_h32", "lstm", 4, 32, 4), ("mnist_lstm_t7_h32", "lstm", 7, 32, 4),
            ("mnist_gru_t4_h32", "gru", 4, 32, 4), ("mnist_rnn_tanh_t4_h32", "rnn_tanh", 4, 32, 4),
            ("mnist_rnn_relu_t4_h32", "rnn_relu", 4, 32, 4)]
    for seed, (name, cell, steps, hidden, epochs) in enumerate(plan):
        x_train, y_train, x_held, y_held = mnist[steps]
        torch.manual_seed(seed)
        model = SequenceClassifier(cell, x_train.shape[2], hidden)
        train(model, x_train, y_train, epochs, seed)
        path = HERE / f"{name}.onnx"
        export(model, path, x_held)
        measured = verify_and_measure(model, path, x_held, y_held)
        common.save_samples(path, x_held, y_held)
        entries.append(entry(path, cell, x_held, hidden, "torch legacy (dynamo=False)", measured))
        report(name, measured)
        if name == "mnist_lstm_t4_h32":
            for suffix, variant, dynamo, note in (
                    ("_dynamo", model, True, "same weights as mnist_lstm_t4_h32, torch dynamo exporter"),
                    ("_cellloop", LSTMCellLoop(model).eval(), False, "same weights as mnist_lstm_t4_h32, a loop over nn.LSTMCell")):
                twin = HERE / f"{name}{suffix}.onnx"
                export(variant, twin, x_held, dynamo=dynamo)
                twin_measured = verify_and_measure(variant, twin, x_held, y_held)
                common.save_samples(twin, x_held, y_held)
                exporter = "torch dynamo" if dynamo else "torch legacy (dynamo=False)"
                entries.append(entry(twin, cell, x_held, hidden, exporter, twin_measured, note))
                report(twin.stem, twin_measured)
            np.savez(HERE / f"{name}.weights.npz", **{k: v.detach().numpy() for k, v in model.state_dict().items()})
    x_train, y_train, x_held, y_held = digits_split()
    for seed, cell in enumerate(("lstm", "gru"), start=10):
        name = f"digits_{cell}_t8_h16"
        torch.manual_seed(seed)
        model = SequenceClassifier(cell, 8, 16)
        train(model, x_train, y_train, 30, seed)
        path = HERE / f"{name}.onnx"
        export(model, path, x_held)
        measured = verify_and_measure(model, path, x_held, y_held)
        common.save_samples(path, x_held, y_held)
        entries.append(entry(path, cell, x_held, 16, "torch legacy (dynamo=False)", measured,
                             "scikit-learn digits, rows as frames"))
        report(name, measured)
    common.update_manifest(entries, PRODUCER)


if __name__ == "__main__":
    main()
