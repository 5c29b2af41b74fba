"""One module per op family; importing them registers their converters."""

from parsers.ops import comparison, control_flow, elementwise, linear, movement, recurrent  # noqa: F401
