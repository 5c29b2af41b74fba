"""The bound methods users choose between, as a typed value (torch-free, so the CLI can list them).

  crown    CROWN: activation lines + CROWN's fixed McCormick pair for every product (the default:
           as tight as auto_LiRPA's CROWN, deterministic, cheapest of the linear methods)
  popqorn  POPQORN's joint 2-D planes for the LSTM/GRU gate products where they are closer to the
           surface than McCormick at the box centre (tighter on gated cells, ~2-3x the time)
  ibp      interval bound propagation only (fast, loose)
  alpha    CROWN's intermediate bounds, then the final back-substitution's relaxations optimised per
           margin row by gradient ascent (alpha-CROWN's idea; verifier.optimize): tighter, ~10-30x
           the time of crown
"""

from __future__ import annotations

from verifier.threat import Word


class Method(Word):
    CROWN = "crown"
    POPQORN = "popqorn"
    IBP = "ibp"
    ALPHA = "alpha"


DEFAULT_METHOD = Method.CROWN
METHODS = tuple(m.value for m in Method)


_ALIASES = {"alpha-crown": "alpha", "alpha_crown": "alpha", "α-crown": "alpha", "optimized": "alpha"}


def parse_method(value: Method | str) -> Method:
    if isinstance(value, str):
        value = _ALIASES.get(value.strip().lower(), value)
    return Method.parse(value, "method")
