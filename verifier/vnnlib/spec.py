"""The property representation shared by both syntaxes, and reading it from a file."""

from __future__ import annotations

import gzip
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from verifier.errors import InputError

MAX_PROPERTY_BYTES = 1 << 30  # 1 GiB of property text (after decompressing a .gz)


@dataclass
class Case:
    """Inputs in [lower, upper] (flat, C order; `*_open` marks strict bounds) whose outputs y
    satisfy, for some k, A_k @ y <= b_k row-wise (rows flagged strict need < instead)."""

    lower: np.ndarray
    upper: np.ndarray
    disjuncts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)  # (A, b, strict)
    lower_open: np.ndarray | None = None
    upper_open: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.lower_open is None:
            self.lower_open = np.zeros(self.lower.shape, dtype=bool)
        if self.upper_open is None:
            self.upper_open = np.zeros(self.upper.shape, dtype=bool)

    def contains(self, x: np.ndarray) -> np.ndarray:
        """Which rows of x (batch, n) lie in the box, strict bounds honoured."""
        above = np.where(self.lower_open, x > self.lower, x >= self.lower)
        below = np.where(self.upper_open, x < self.upper, x <= self.upper)
        return (above & below).all(axis=-1)


@dataclass
class Property:
    """The unsafe set: the union of the cases. No cases means the unsafe set is empty."""

    cases: list[Case]
    inputs: int
    outputs: int
    version: str
    input_shape: tuple[int, ...] | None = None  # 2.0 declarations carry a shape
    input_name: str | None = None  # 2.0: the ONNX names, when declared
    output_name: str | None = None
    why_empty: str = "every input box is empty"  # said when there are no cases


def _lines(path: Path):
    """The file's lines, decompressing .gz, refusing more than MAX_PROPERTY_BYTES of text. A
    leading UTF-8 byte order mark (Windows editors write one) is no part of the text."""
    opener = gzip.open if path.suffix == ".gz" else open
    total = 0
    with opener(path, "rb") as raw, io.TextIOWrapper(raw, encoding="utf-8-sig", errors="strict", newline=None) as text:
        while True:
            line = text.readline(MAX_PROPERTY_BYTES + 1 - total)
            if not line:
                return
            total += len(line)
            if total > MAX_PROPERTY_BYTES:
                raise InputError(f"property file {path} is larger than {MAX_PROPERTY_BYTES >> 20} MiB of text")
            yield line


def read_property(path: str | Path, deadline=None, max_terms: int | None = None) -> Property:
    """Read a VNN-LIB file (1.0 or 2.0, told apart by its first declaration; `.gz` accepted)."""
    from verifier.vnnlib.deadline import Deadline
    from verifier.vnnlib.reader import MAX_TERMS, Reader

    path = Path(path)
    if path.is_dir():
        raise InputError(f"property file {path} is a folder, not a file")
    if not path.is_file():
        raise InputError(f"property file not found: {path}")
    reader = Reader(str(path), deadline or Deadline(None), max_terms or MAX_TERMS)
    try:
        return reader.read(_lines(path))
    except (OSError, UnicodeDecodeError, EOFError, gzip.BadGzipFile) as exc:
        raise InputError(f"cannot read property file {path}: {type(exc).__name__}: {exc}") from None
