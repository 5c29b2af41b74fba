"""Shared pieces of the fuzz suite: one warm command worker for the whole session (under the
memory cap), and the tiny models with their samples and a property that the mutated inputs are
measured against.

POPQORN_FUZZ_SCALE=N (default 1) generates N times as many seeded cases of the randomised
classes (damaged bytes, random op chains, flag mixes, token soups) for a longer exhaustive run."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.fuzz import generate
from tests.fuzz.oracle import run_onnx
from tests.fuzz.runner import Worker


def scale() -> int:
    return max(1, int(os.environ.get("POPQORN_FUZZ_SCALE", "1") or 1))


@dataclass
class Tiny:
    """Files for the tiny models: `models[cell]` (RNN/GRU/LSTM), samples `x` (and on disk `x.npy`,
    `samples.npz` with the LSTM's own predictions as labels), a 1.0 property `property`."""

    folder: Path
    models: dict[str, Path]
    x: np.ndarray
    x_npy: Path
    samples: Path
    property: Path


@pytest.fixture(scope="session")
def popqorn():
    worker = Worker()
    yield worker
    worker.close()


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Tiny:
    folder = tmp_path_factory.mktemp("fuzz_tiny")
    models = {cell: generate.save(generate.recurrent_model(cell), folder / f"{cell.lower()}.onnx")
              for cell in generate.GATES}
    x = generate.samples(2)
    np.save(folder / "x.npy", x)
    labels = run_onnx(models["LSTM"], x).argmax(axis=1)
    np.savez(folder / "samples.npz", x=x, y=labels)
    inputs = generate.STEPS * generate.FEATURES
    prop = folder / "property.vnnlib"
    prop.write_text(generate.vnnlib_header(inputs, generate.CLASSES) + generate.vnnlib_box(inputs)
                    + "(assert (>= Y_1 Y_0))\n")
    return Tiny(folder, models, x, folder / "x.npy", folder / "samples.npz", prop)
