"""VNN-LIB 2.0 through the `vnnlib` package (optional: `pip install vnnlib`), which parses a query
and turns it into input boxes with output polytopes A y <= b."""

from __future__ import annotations

import re

import numpy as np

from verifier.errors import InputError
from verifier.vnnlib.spec import Case, Property


def parse_v2(text: str, source: str = "<property>") -> Property:
    try:
        import vnnlib
        from vnnlib import compat
    except ImportError:
        raise InputError(f"{source} is VNN-LIB 2.0, which needs the optional package: pip install vnnlib") from None
    try:
        query = vnnlib.parse_query_string(text)
        raw_cases = compat.transform(query)
    except Exception as exc:  # the package's message carries the line and column
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        line = re.search(r"line (\d+)", message)
        raise InputError(f"{source}:{line.group(1) if line else '?'}: {message}") from None
    cases = []
    outputs = None
    for raw in raw_cases:
        box = np.array(raw.input_box, dtype=np.float64).reshape(-1, 2)
        if not np.isfinite(box).all():
            raise InputError(f"{source}: some inputs have no lower or upper bound")
        case = Case(box[:, 0].copy(), box[:, 1].copy())
        for polytope in raw.output_constraints:
            rows = np.array(polytope.coeff_matrix, dtype=np.float64)
            bounds = np.array(polytope.rhs, dtype=np.float64)
            if rows.size:
                outputs = rows.shape[1]
            case.disjuncts.append((rows, bounds, np.zeros(len(bounds), dtype=bool)))
        cases.append(case)
    if not cases:
        raise InputError(f"{source}: the query has no cases")
    declared = re.search(r"declare-output\s+\S+\s+\S+\s+\[([\d,\s]+)\]", text)
    if declared:
        outputs = int(np.prod([int(d) for d in declared.group(1).replace(",", " ").split()]))
    return Property(cases, len(cases[0].lower), outputs or 0, "2.0")
