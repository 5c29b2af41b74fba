"""popqorn engine: ONNX-agnostic bounds, certification and search over the IR."""

from verifier.errors import InputError, ModelFileError, PopqornError, UnsupportedOperator
from verifier.forward import evaluate
from verifier.bounds import bound_linear_box, bound_outputs  # noqa: E402
from verifier.certify import SampleResult, SearchOptions, certify  # noqa: E402

__all__ = ["evaluate", "bound_outputs", "bound_linear_box", "certify", "SampleResult", "SearchOptions",
           "PopqornError", "InputError", "ModelFileError", "UnsupportedOperator"]
