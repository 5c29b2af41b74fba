"""The bound methods users choose between, as a typed value (torch-free, so the CLI can list them).

  crown    CROWN: activation lines + CROWN's fixed McCormick pair for every product (the default:
           as tight as auto_LiRPA's CROWN, deterministic, cheapest of the linear methods)
  popqorn  POPQORN's joint 2-D planes for the LSTM/GRU gate products where they are closer to the
           surface than McCormick at the box centre (tighter on gated cells, ~2-3x the time)
  ibp      interval bound propagation only (fast, loose)
"""

from __future__ import annotations

from verifier.threat import Word


class Method(Word):
    CROWN = "crown"
    POPQORN = "popqorn"
    IBP = "ibp"


DEFAULT_METHOD = Method.CROWN
METHODS = tuple(m.value for m in Method)


def parse_method(value: Method | str) -> Method:
    return Method.parse(value, "method")
