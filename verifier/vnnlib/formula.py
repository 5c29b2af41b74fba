"""Linear terms and Boolean formulas of a VNN-LIB assert, in disjunctive normal form.

Everything here walks trees with `sexpr.fold` (no recursion), and the size of the disjunctive
normal form is computed *before* it is built, so `(and (or a b) ... 40 times)` is refused with
the number of cases instead of 2^40 work. Constants must be finite numbers: `nan`, `inf` or
`1e400` are refused with their line, never read as a silent bound.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from verifier.vnnlib.deadline import Deadline
from verifier.vnnlib.sexpr import error, fold

NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?", re.ASCII)
NOT_FINITE = re.compile(r"[-+]?(?:nan|inf|infinity)", re.IGNORECASE)
COMPARISONS = {"<=", ">=", "<", ">", "=", "==", "!="}
CONNECTIVES = {"and", "or"}
ARITHMETIC = {"+", "-", "*", "/"}
SATURATE = 1 << 62  # sizes above this are all "too many"

# symbol text -> ("X" | "Y", flat index); raises InputError for unknown names
Resolver = Callable[[str, int], tuple[str, int]]


@dataclass(frozen=True, slots=True)
class Atom:
    """sum_i x_i*X_i + sum_j y_j*Y_j + constant <= 0 (< 0 when strict)."""

    x: dict
    y: dict
    constant: float
    strict: bool
    line: int


@dataclass(frozen=True, slots=True)
class Formula:
    """kind: "atom" (payload Atom), "and"/"or" (payload list of Formula), "true"/"false".
    terms/atoms: size of its disjunctive normal form (saturated at SATURATE)."""

    kind: str
    payload: object
    terms: int
    atoms: int
    line: int


TRUE = Formula("true", None, 1, 0, 0)
FALSE = Formula("false", None, 0, 0, 0)


def parse_number(text: str, source: str, line: int) -> float | None:
    """The finite value of a numeric literal; None when `text` is no number at all. Only ASCII
    decimal literals are numbers (Python's float() also reads 1_000 and non-ASCII digits, which no
    VNN-LIB writer means). A nonzero literal that rounds to zero is refused: (< Y_0 1e-400) read
    as (< Y_0 0) would drop the outputs Y_0 = 0 from the unsafe set."""
    if NOT_FINITE.fullmatch(text):
        raise error(source, line, f"constant {text!r} is not a finite number")
    if not NUMBER.fullmatch(text):
        return None
    value = float(text)
    if not math.isfinite(value):
        raise error(source, line, f"constant {text!r} is not a finite number")
    if value == 0 and re.search(r"[1-9]", re.split(r"[eE]", text)[0]):
        raise error(source, line, f"constant {text!r} underflows to zero in float64")
    return value


def linear(expression: tuple, resolve: Resolver, source: str, deadline: Deadline) -> tuple[dict, dict, float]:
    """An arithmetic term -> (X coefficients, Y coefficients, constant)."""

    def children(node: tuple) -> list:
        value, line = node
        if not isinstance(value, list):
            return []
        if not value or isinstance(value[0][0], list) or value[0][0] not in ARITHMETIC:
            head = "()" if not value else value[0][0] if not isinstance(value[0][0], list) else "(...)"
            raise error(source, line, f"unsupported operator {head!r} in a linear term (+, -, *, / only)")
        if len(value) < 2:
            raise error(source, line, f"'{value[0][0]}' needs arguments")
        return value[1:]

    def combine(node: tuple, parts: list) -> tuple[dict, dict, float]:
        value, line = node
        if not isinstance(value, list):
            number = parse_number(value, source, line)
            if number is not None:
                return {}, {}, number
            kind, index = resolve(value, line)
            return ({index: 1.0}, {}, 0.0) if kind == "X" else ({}, {index: 1.0}, 0.0)
        operator = value[0][0]
        if operator == "+":
            return _sum(parts)
        if operator == "-":
            if len(parts) == 1:
                return _scale(parts[0], -1.0)
            return _sum([parts[0]] + [_scale(p, -1.0) for p in parts[1:]])
        constants = [p[2] for p in parts if not p[0] and not p[1]]
        variables = [p for p in parts if p[0] or p[1]]
        if operator == "/":
            if len(parts) != 2 or parts[1][0] or parts[1][1]:
                raise error(source, line, "'/' must divide by a constant")
            if parts[1][2] == 0:
                raise error(source, line, "division by zero")
            x, y, c = parts[0]
            d = parts[1][2]
            quotient = {k: v / d for k, v in x.items()}, {k: v / d for k, v in y.items()}, c / d
            return _no_underflow(parts[0], quotient, source, line)
        if len(variables) > 1:
            raise error(source, line, "product of two variables is not linear")
        factor = math.prod(constants)
        if factor == 0 and all(constants):
            raise error(source, line, "a product of nonzero constants underflows to zero in float64")
        if not variables:
            return {}, {}, factor
        scaled = _scale(variables[0], factor)
        return _no_underflow(variables[0], scaled, source, line) if factor != 0 else scaled

    if not isinstance(expression[0], list):  # a number or a variable: no tree to walk
        return combine(expression, [])
    return fold(expression, children, combine, deadline)


def _scale(part: tuple[dict, dict, float], factor: float) -> tuple[dict, dict, float]:
    x, y, c = part
    return {k: factor * v for k, v in x.items()}, {k: factor * v for k, v in y.items()}, factor * c


def _no_underflow(before: tuple[dict, dict, float], after: tuple[dict, dict, float], source: str,
                  line: int) -> tuple[dict, dict, float]:
    """A nonzero coefficient or constant that a product or quotient rounds to zero changes the
    constraint: (< (* 1e-200 (* 1e-200 Y_0)) 0) would read as the constant 0 < 0, false, and make
    the property vacuously unsat although Y_0 < 0 may be reachable. Refused instead."""
    for old, new in ((before[0], after[0]), (before[1], after[1])):
        if any(v != 0 and new[k] == 0 for k, v in old.items()):
            raise error(source, line, "a coefficient underflows to zero in float64")
    if before[2] != 0 and after[2] == 0:
        raise error(source, line, "a constant underflows to zero in float64")
    return after


def _sum(parts: list) -> tuple[dict, dict, float]:
    """Sum in place into the largest part (small-to-large: linear-logarithmic on deep chains)."""
    parts = sorted(parts, key=lambda p: len(p[0]) + len(p[1]), reverse=True)
    x, y, c = parts[0]
    for px, py, pc in parts[1:]:
        for k, v in px.items():
            x[k] = x.get(k, 0.0) + v
        for k, v in py.items():
            y[k] = y.get(k, 0.0) + v
        c += pc
    return x, y, c


def formula(expression: tuple, resolve: Resolver, source: str, deadline: Deadline,
            max_terms: int, max_atoms: int) -> Formula:
    """A Boolean assert body -> Formula, nested and/or flattened, sizes checked against the caps."""

    def children(node: tuple) -> list:
        value, line = node
        if not isinstance(value, list) or not value or isinstance(value[0][0], list):
            raise error(source, line, "expected a formula such as (<= X_0 1.0), (and ...) or (or ...)")
        head = value[0][0]
        if head in CONNECTIVES:
            return value[1:]
        if head in COMPARISONS:
            return []
        raise error(source, line, f"unsupported construct {head!r} (expected and, or, <=, >=, <, >, =, ==, !=)")

    def combine(node: tuple, parts: list) -> Formula:
        value, line = node
        head = value[0][0]
        if head in CONNECTIVES:
            result = _connective(head, parts, line)
        else:
            result = _comparison(value, line, resolve, source, deadline)
        if result.terms > max_terms or result.atoms > max_atoms:
            terms = "more than 10^18" if result.terms >= SATURATE else f"{result.terms:,}"
            raise error(source, line, f"the property expands to {terms} cases ({result.atoms:,} constraints) in "
                        f"disjunctive normal form; the caps are {max_terms:,} cases and {max_atoms:,} "
                        f"constraints (--max-cases)")
        return result

    return fold(expression, children, combine, deadline)


def _comparison(value: list, line: int, resolve: Resolver, source: str, deadline: Deadline) -> Formula:
    head = value[0][0]
    if len(value) != 3:
        raise error(source, line, f"'{head}' takes two arguments")
    lx, ly, lc = linear(value[1], resolve, source, deadline)
    rx, ry, rc = linear(value[2], resolve, source, deadline)
    difference = _sum([(lx, ly, lc), _scale((rx, ry, rc), -1.0)])  # lhs - rhs
    if head in ("<=", "<"):
        return _atom(difference, 1.0, head == "<", line, source)  # lhs - rhs <= 0
    if head in (">=", ">"):
        return _atom(difference, -1.0, head == ">", line, source)  # rhs - lhs <= 0
    strict = head == "!="
    parts = [_atom(difference, 1.0, strict, line, source), _atom(difference, -1.0, strict, line, source)]
    return _connective("or" if strict else "and", parts, line)


def _atom(linear_part: tuple[dict, dict, float], sign: float, strict: bool, line: int, source: str) -> Formula:
    x, y, constant = linear_part
    x = {k: sign * v for k, v in x.items() if v != 0}
    y = {k: sign * v for k, v in y.items() if v != 0}
    constant = sign * constant
    if not math.isfinite(constant + sum(map(abs, x.values())) + sum(map(abs, y.values()))):
        raise error(source, line, "a coefficient or constant overflows to infinity")
    if not x and not y:  # a constant comparison
        holds = constant < 0 if strict else constant <= 0
        return TRUE if holds else FALSE
    return Formula("atom", Atom(x, y, constant, strict, line), 1, 1, line)


def _connective(head: str, parts: list[Formula], line: int) -> Formula:
    """and/or of parts, flattened. The largest same-kind part's list is reused in place (parts are
    fresh fold results), so a chain of n nested and/or costs O(n log n), not O(n^2)."""
    same = [p for p in parts if p.kind == head]
    base = max(same, key=lambda p: len(p.payload)) if same else None
    flat: list[Formula] = base.payload if base is not None else []
    terms, atoms = (base.terms, base.atoms) if base is not None else ((1, 0) if head == "and" else (0, 0))
    for part in parts:
        if part is base:
            continue
        if head == "and" and part.kind == "false" or head == "or" and part.kind == "true":
            return part
        if part.kind in ("true", "false"):
            continue
        flat.extend(part.payload if part.kind == head else [part])
        terms, atoms = _combine_sizes(head, terms, atoms, part.terms, part.atoms)
    if not flat:
        return TRUE if head == "and" else FALSE
    if len(flat) == 1:
        return flat[0]
    return Formula(head, flat, terms, atoms, line)


def _combine_sizes(head: str, terms: int, atoms: int, more_terms: int, more_atoms: int) -> tuple[int, int]:
    """DNF size of (a head b) from the sizes of a and b (both operations are associative)."""
    if head == "or":
        return min(terms + more_terms, SATURATE), min(atoms + more_atoms, SATURATE)
    return min(terms * more_terms, SATURATE), min(atoms * more_terms + more_atoms * terms, SATURATE)


def conjoin(parts: list[Formula], line: int = 0) -> Formula:
    """The conjunction of several asserts' formulas (sizes checked by the caller)."""
    return _connective("and", parts, line)


def disjunctive_normal_form(root: Formula, deadline: Deadline) -> list[list[Atom]]:
    """Terms (lists of atoms) of a formula whose size has been checked against the caps."""

    def children(node: Formula) -> list:
        return node.payload if node.kind in CONNECTIVES else []

    def combine(node: Formula, parts: list) -> list[list[Atom]]:
        if node.kind == "atom":
            return [[node.payload]]
        if node.kind in ("true", "false"):
            return [[]] if node.kind == "true" else []
        if node.kind == "or":
            return [term for part in parts for term in part]
        common = [atom for part in parts if len(part) == 1 for atom in part[0]]  # single-term children
        terms = [common]
        for part in parts:
            if len(part) != 1:
                terms = [t + p for t in terms for p in part]
                deadline.check()
        return terms

    return fold(root, children, combine, deadline)
