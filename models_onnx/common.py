"""Shared, numpy-only helpers for the model-building scripts in models_onnx/.

Used by both ``train_models.py`` (torch) and ``export_keras.py`` (TensorFlow,
run in a separate environment), so this module must not import either.

It provides:
  * an idx (MNIST) reader built on gzip + numpy,
  * the "image rows -> time frames" reshaping used by the sequence models,
  * the manifest (``manifest.json``) that records every shipped model, and the
    renderer that turns it into ``MODELS.md``.
"""
from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
MANIFEST_PATH = HERE / "manifest.json"
MODELS_MD_PATH = HERE / "MODELS.md"

# MNIST test set shipped in the shared data folder (not in the repo).
MNIST_DIR_CANDIDATES = [
    os.environ.get("POPQORN_MNIST_DIR", ""),
    str(REPO_ROOT / "shared" / "data" / "mnist"),
    str(REPO_ROOT.parent / "shared" / "data" / "mnist"),
    "/work/shared/data/mnist",
]
MNIST_TRAIN_COUNT = 8000  # first 8000 test-set images train, the rest (2000) are held out
N_SAMPLES = 100  # held-out samples saved next to each model
# an export must reproduce its framework's logits this closely (onnxruntime, all held-out samples)
MAX_EXPORT_DIFFERENCE = 1e-5


def _find_mnist_dir() -> Path:
    for cand in MNIST_DIR_CANDIDATES:
        if cand and (Path(cand) / "t10k-images-idx3-ubyte.gz").is_file():
            return Path(cand)
    raise FileNotFoundError(
        "MNIST test set not found; set POPQORN_MNIST_DIR to the folder holding "
        "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz"
    )


def read_idx(path: Path) -> np.ndarray:
    """Parse a (gzipped) idx file: magic = 0x00 0x00 <dtype code> <ndim>, then
    ndim big-endian uint32 sizes, then the data (big-endian)."""
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    if raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: bad idx magic")
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if raw[2] not in dtypes:
        raise ValueError(f"{path}: unknown idx element type 0x{raw[2]:02x}")
    dtype = np.dtype(dtypes[raw[2]])
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    count = int(np.prod(dims))
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=offset)
    if offset + count * dtype.itemsize != len(raw):
        raise ValueError(f"{path}: size mismatch")
    return data.reshape(dims)


def load_mnist_test() -> tuple[np.ndarray, np.ndarray]:
    """Return (images float32 [10000, 28, 28] in [0, 1], labels int64 [10000])."""
    d = _find_mnist_dir()
    images = read_idx(d / "t10k-images-idx3-ubyte.gz").astype(np.float32) / 255.0
    labels = read_idx(d / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
    if images.shape != (10000, 28, 28) or labels.shape != (10000,):
        raise ValueError(f"{d}: expected the 10000-image MNIST test set, got {images.shape} / {labels.shape}")
    return images, labels


def mnist_frames(images: np.ndarray, T: int) -> np.ndarray:
    """[N, 28, 28] -> [N, T, (28 // T) * 28]: consecutive image rows grouped
    into one time frame (T=4: 7 rows = 196 features; T=7: 4 rows = 112)."""
    if 28 % T:
        raise ValueError("T must divide 28")
    n = images.shape[0]
    return np.ascontiguousarray(images.reshape(n, T, (28 // T) * 28), dtype=np.float32)


def mnist_split(T: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_held, y_held) for the sequence-MNIST task with T frames."""
    images, labels = load_mnist_test()
    x = mnist_frames(images, T)
    k = MNIST_TRAIN_COUNT
    return x[:k], labels[:k], x[k:], labels[k:]


def save_samples(onnx_path: Path, x_held: np.ndarray, y_held: np.ndarray, n: int = N_SAMPLES) -> Path:
    """Write ``<model>.samples.npz`` (x float32 [n, T, F], y int64 [n])."""
    out = onnx_path.parent / (onnx_path.stem + ".samples.npz")
    np.savez_compressed(
        out,
        x=np.ascontiguousarray(x_held[:n], dtype=np.float32),
        y=np.ascontiguousarray(y_held[:n], dtype=np.int64),
    )
    return out


def onnx_summary(path: Path) -> dict:
    """Opset and op types (including those inside Loop/Scan/If bodies)."""
    import onnx

    model = onnx.load(str(path))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    ops: set[str] = set()

    def walk(graph):
        for node in graph.node:
            ops.add(node.op_type)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for g in attr.graphs:
                        walk(g)

    walk(model.graph)
    for fn in model.functions:  # local functions (dynamo exporter may emit some)
        for node in fn.node:
            ops.add(node.op_type)
    return {"opset": opset, "ops": sorted(ops), "bytes": path.stat().st_size}


# --------------------------------------------------------------------------
# manifest + MODELS.md
# --------------------------------------------------------------------------

def load_manifest() -> list[dict]:
    """The current manifest's model records (empty before the first run)."""
    if MANIFEST_PATH.is_file():
        return json.loads(MANIFEST_PATH.read_text())["models"]
    return []


def update_manifest(entries: list[dict], producer: str) -> None:
    """Replace every manifest entry written by ``producer`` with ``entries``
    (keeps the other script's entries), then re-render MODELS.md."""
    kept = [e for e in load_manifest() if e.get("producer") != producer]
    for e in entries:
        e["producer"] = producer
    models = kept + entries
    order = {"train_models.py": 0, "export_keras.py": 1}
    models.sort(key=lambda e: (order.get(e["producer"], 9), e["file"]))
    MANIFEST_PATH.write_text(json.dumps({"models": models}, indent=1) + "\n")
    render_models_md(models)


COMMANDS = {
    "train_models.py": "python models_onnx/train_models.py",
    "export_keras.py": "python models_onnx/export_keras.py   # needs: pip install tensorflow-cpu tf2onnx (separate venv)",
}


def render_models_md(models: list[dict]) -> None:
    lines = [
        "# Shipped ONNX models",
        "",
        "Small sequence classifiers used to exercise the verifier. Every model maps",
        "`x` float32 `[batch, T, F]` (batch axis dynamic, named `batch`; T fixed) to",
        "`logits` float32 `[batch, 10]` (no softmax). The head is a single linear",
        "layer on the last hidden state. Inputs are pixels scaled to [0, 1].",
        "",
        "Next to every `<model>.onnx` is `<model>.samples.npz` with `x` (float32,",
        "the first 100 held-out samples, `[100, T, F]`) and `y` (int64 labels).",
        "`manifest.json` holds the same information as this table in machine-readable form",
        "(plus the op types used in each graph).",
        "",
        "Data:",
        "* `mnist_*`: MNIST *test set* (10 000 images). The first 8000 images are the",
        "  training set, the last 2000 are held out. An image's 28 rows are grouped",
        "  into T frames: T=4 -> 7 rows = 196 features/frame, T=7 -> 4 rows = 112.",
        "* `digits_*`: scikit-learn's bundled 8x8 digits (1797 images, /16), each",
        "  image row is one frame (T=8, 8 features); seeded 80/20 split",
        "  (1437 train / 360 held out).",
        "",
        "Held-out accuracy is measured with onnxruntime on the exported file, on all",
        "held-out samples (2000 for MNIST, 360 for digits).",
        "",
        "| file | cell | T | features | hidden | exporter | opset | held-out acc. | size | regenerate |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for e in models:
        lines.append(
            "| `{file}` | {cell} | {T} | {features} | {hidden} | {exporter} | {opset} | {acc:.2%} | {kb:.0f} KB | `{cmd}` |".format(
                file=e["file"],
                cell=e["cell"],
                T=e["T"],
                features=e["features"],
                hidden=e["hidden"],
                exporter=e["exporter"],
                opset=e["opset"],
                acc=e["heldout_accuracy"],
                kb=e["bytes"] / 1024,
                cmd=COMMANDS[e["producer"]].split("   #")[0],
            )
        )
    lines += [
        "",
        "## Notes per model",
        "",
    ]
    for e in models:
        note = e.get("note")
        ops = ", ".join(e.get("ops", []))
        lines.append(f"* `{e['file']}` - ops: {ops}." + (f" {note}" if note else ""))
    lines += [
        "",
        "## Regenerating",
        "",
        "```sh",
        "pip install scikit-learn            # only for the digits model; not a runtime dependency",
        "python models_onnx/train_models.py  # torch models (CPU, fixed seeds, ~15 s on 2 cores)",
        "",
        "# Keras model (TensorFlow is not a project dependency; use a separate venv):",
        "python -m venv /tmp/tfenv && /tmp/tfenv/bin/pip install tensorflow-cpu tf2onnx onnxruntime",
        "/tmp/tfenv/bin/python models_onnx/export_keras.py  # reads mnist_lstm_t4_h32.weights.npz, so run train_models.py first",
        "```",
        "",
        "Both scripts check every exported file against the framework's own outputs",
        f"with onnxruntime (max abs diff <= {MAX_EXPORT_DIFFERENCE:.0e} on all held-out samples) and fail otherwise;".replace("e-0", "e-"),
        "`manifest.json` records the measured gap (`max_abs_diff_vs_*`) and the accuracy on the",
        "shipped samples (`samples_accuracy`), which `tests/models/test_shipped_models.py` re-checks.",
        "The dynamo export's per-node stack traces (local absolute paths) are stripped, so",
        "re-running train_models.py reproduces its committed files byte for byte on the same",
        "versions (tf2onnx names some constants afresh on each run: the Keras file's function is stable).",
    ]
    extra = [e for e in models if e.get("versions")]
    if extra:
        lines += ["", "Versions used for the committed files:", ""]
        seen = set()
        for e in extra:
            v = json.dumps(e["versions"], sort_keys=True)
            if v in seen:
                continue
            seen.add(v)
            lines.append("* " + ", ".join(f"{k} {val}" for k, val in sorted(e["versions"].items())) + f" ({e['producer']})")
    MODELS_MD_PATH.write_text("\n".join(lines) + "\n")
