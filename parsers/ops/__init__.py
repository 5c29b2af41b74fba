"""One module per op family; importing them registers their converters."""

from parsers.ops import (  # noqa: F401
    comparison,
    control_flow,
    elementwise,
    linear,
    movement,
    normalization,
    recurrent,
    reduce,
)
