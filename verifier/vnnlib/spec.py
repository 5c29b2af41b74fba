"""The property representation shared by both syntaxes, and the dispatch between them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from verifier.errors import InputError


@dataclass
class Case:
    """Inputs in [lower, upper] (flat, C order) whose outputs y satisfy, for some k,
    A_k @ y <= b_k (row-wise; rows flagged strict need < instead)."""

    lower: np.ndarray
    upper: np.ndarray
    disjuncts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)  # (A, b, strict)


@dataclass
class Property:
    cases: list[Case]
    inputs: int
    outputs: int
    version: str


def read_property(path: str | Path) -> Property:
    """Read a VNN-LIB file (1.0 or 2.0, told apart by its declarations)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"property file not found: {path}")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read property file {path}: {exc}") from None
    if "declare-network" in text or "vnnlib-version" in text:
        from verifier.vnnlib.v2 import parse_v2

        return parse_v2(text, str(path))
    from verifier.vnnlib.reader import parse_v1

    return parse_v1(text, str(path))
