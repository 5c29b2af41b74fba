"""ONNX front end: untrusted model file -> one-sample IR (verifier.ir.Graph).

The namespace is lazy (PEP 562): `import parsers` loads nothing until a name is used, and the front
end never imports torch or onnxruntime (only numpy, onnx, verifier.ir and verifier.errors)."""

from __future__ import annotations

import importlib
from typing import Any

POPQORN_FRONT_END = True  # lets the CLI tell this package from another one named `parsers`

_PUBLIC = {
    "load_onnx": "parsers.loader",
    "convert_model": "parsers.loader",
    "read_model": "parsers.files",
    "bind_shapes": "parsers.specialize",
    "Budget": "parsers.budget",
    "ModelFileError": "verifier.errors",
    "UnsupportedOperator": "verifier.errors",
    "InputError": "verifier.errors",
}

__all__ = ["Budget", "InputError", "ModelFileError", "UnsupportedOperator", "bind_shapes", "convert_model",
           "load_onnx", "read_model"]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'parsers' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
