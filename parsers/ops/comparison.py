"""Comparisons and logic on input-dependent values are refused with the reason spelled out.

They appear when a model's control flow depends on its input (Keras Masking: a frame equal to the
mask value is skipped). A perturbation can move an input onto or off the mask value, so the
computation itself changes inside the threat model; popqorn verifies fixed computations only.
Comparisons of constants (shape arithmetic, loop counters) are folded before reaching here."""

from __future__ import annotations

from parsers.registry import converter

REASON = ("compares values that depend on the model input (e.g. Keras Masking), so the computation "
          "changes with the input; popqorn verifies fixed computations only (export without masking)")


def _refuse(node, inputs, ctx):
    raise ctx.unsupported(node, REASON)


for _op in ("Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Not", "And", "Or", "Xor"):
    converter(_op, since=1)(_refuse)
