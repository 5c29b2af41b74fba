"""ONNX front end: untrusted model file -> one-sample IR (verifier.ir.Graph)."""

from parsers.loader import convert_model, load_onnx, read_model
from verifier.errors import ModelFileError, UnsupportedOperator

__all__ = ["load_onnx", "convert_model", "read_model", "ModelFileError", "UnsupportedOperator"]
