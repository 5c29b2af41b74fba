"""Writing local-robustness properties in either syntax (for tests, benchmarks and users who
want VNN-LIB files for their own samples).

Numbers are written positionally with the shortest digits that read back to the same float64
(VNN-LIB 2.0's grammar has no exponent notation), so both syntaxes describe exactly one box."""

from __future__ import annotations

import numpy as np


def number(value: float) -> str:
    return np.format_float_positional(float(value), unique=True, trim="0")


def robustness_property(lower: np.ndarray, upper: np.ndarray, label: int, classes: int, *, version: str = "2.0",
                        input_shape: tuple[int, ...] | None = None, element_type: str = "float32") -> str:
    """Inputs in [lower, upper] (flat, C order) where some class other than `label` scores at
    least as high as `label`: `unsat` means the box is robust."""
    lower, upper = np.asarray(lower, dtype=np.float64).reshape(-1), np.asarray(upper, dtype=np.float64).reshape(-1)
    others = [j for j in range(classes) if j != label]
    if version == "1.0":
        lines = [f"(declare-const X_{i} Real)" for i in range(lower.size)]
        lines += [f"(declare-const Y_{j} Real)" for j in range(classes)]
        x, y = (lambda i: f"X_{i}"), (lambda j: f"Y_{j}")
    else:
        shape = tuple(input_shape) if input_shape is not None else (lower.size,)
        if int(np.prod(shape)) != lower.size:
            raise ValueError(f"input shape {shape} does not hold {lower.size} elements")
        dims = ",".join(str(d) for d in shape)
        lines = ["(vnnlib-version <2.0>)", "(declare-network f",
                 f"  (declare-input X {element_type} [{dims}])", f"  (declare-output Y {element_type} [{classes}])", ")"]
        x = lambda i: "X[" + ",".join(str(k) for k in np.unravel_index(i, shape)) + "]"
        y = lambda j: f"Y[{j}]"
    for i in range(lower.size):
        lines.append(f"(assert (>= {x(i)} {number(lower[i])}))")
        lines.append(f"(assert (<= {x(i)} {number(upper[i])}))")
    lines.append("(assert (or " + " ".join(f"(and (>= {y(j)} {y(label)}))" for j in others) + "))")
    return "\n".join(lines) + "\n"
