"""popqorn engine: ONNX-agnostic bounds, certification and search over the IR.

The package namespace is lazy (PEP 562): `import verifier` or `from verifier import ir, errors`
imports neither torch nor onnxruntime, so the front end, `popqorn --help` and `inspect` stay light.
The public API below is imported on first use."""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

_PUBLIC = {
    "evaluate": "verifier.forward",
    "bound_outputs": "verifier.bounds",
    "bound_linear_box": "verifier.bounds",
    "certify": "verifier.certify",
    "SampleResult": "verifier.certify",
    "SearchOptions": "verifier.certify",
    "ThreatModel": "verifier.threat",
    "PopqornError": "verifier.errors",
    "InputError": "verifier.errors",
    "ModelFileError": "verifier.errors",
    "UnsupportedOperator": "verifier.errors",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'verifier' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))


class _Namespace(types.ModuleType):
    """Importing the submodule verifier.certify binds it as an attribute of this package, which
    would shadow the public function `verifier.certify`; keep the function."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _PUBLIC and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Namespace
