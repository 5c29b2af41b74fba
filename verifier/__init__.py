"""popqorn engine: ONNX-agnostic bounds, certification and search over the IR."""

from verifier.errors import InputError, ModelFileError, PopqornError, UnsupportedOperator
from verifier.forward import evaluate

__all__ = ["evaluate", "PopqornError", "InputError", "ModelFileError", "UnsupportedOperator"]
