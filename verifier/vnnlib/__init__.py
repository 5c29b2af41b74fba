"""VNN-LIB properties: ONNX + a property file in, sat / unsat / unknown / timeout out.

A property describes the *unsafe* set (VNN-COMP convention): inputs in a box whose outputs satisfy
one of several conjunctions of linear inequalities. Both VNN-LIB 1.0 (`declare-const X_i Real`,
our own reader) and 2.0 (the `vnnlib` package, optional) are read into the same `Property`."""

from verifier.vnnlib.spec import Case, Property, read_property

__all__ = ["Case", "Property", "read_property"]
