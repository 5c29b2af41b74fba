"""One module per op family; importing them registers their converters."""

from parsers.ops import elementwise, linear, movement  # noqa: F401
