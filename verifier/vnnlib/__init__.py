"""VNN-LIB properties: ONNX + a property file in, sat / unsat / unknown / timeout out.

A property describes the *unsafe* set (VNN-COMP convention): inputs in a box whose outputs satisfy
one of several conjunctions of linear inequalities. VNN-LIB 1.0 (`declare-const X_i Real`) and 2.0
(`declare-network` with typed tensors) are read by one reader (verifier.vnnlib.reader) into the
same `Property`, so a property means the same in either syntax."""

from verifier.vnnlib.spec import Case, Property, read_property

__all__ = ["Case", "Property", "read_property"]
