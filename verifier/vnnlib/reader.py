"""A reader for VNN-LIB 1.0, the syntax of the VNN-COMP benchmarks:

    (declare-const X_0 Real)            ; inputs X_i, outputs Y_j
    (assert (<= X_0 0.5))               ; input bounds
    (assert (or (and (>= Y_0 Y_1)) (and (<= Y_0 -3.0) (>= Y_1 2.0))))

The asserts are conjoined and brought to disjunctive normal form; each term splits into bounds on
X (a box) and linear inequalities over Y. Terms with the same box form one Case. Anything outside
this fragment is an error naming its line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import product

import numpy as np

from verifier.errors import InputError
from verifier.vnnlib.spec import Case, Property

TOKEN = re.compile(r"\(|\)|[^\s()]+")
SYMBOL = re.compile(r"^([XY])_(\d+)$")
COMPARISONS = {"<=", ">=", "<", ">", "="}


@dataclass(frozen=True)
class Atom:
    """coefficients·(x, y) + constant <= 0 (or < 0 when strict); x and y as dicts index -> coefficient."""

    x: tuple[tuple[int, float], ...]
    y: tuple[tuple[int, float], ...]
    constant: float
    strict: bool
    line: int


class _Reader:
    def __init__(self, text: str, source: str) -> None:
        self.source = source
        self.tokens = []
        for number, line in enumerate(text.splitlines(), 1):
            code = line.split(";", 1)[0]
            self.tokens += [(token, number) for token in TOKEN.findall(code)]
        self.position = 0

    def error(self, line: int, message: str) -> InputError:
        return InputError(f"{self.source}:{line}: {message}")

    def expressions(self) -> list:
        result = []
        while self.position < len(self.tokens):
            result.append(self._expression())
        return result

    def _expression(self):
        token, line = self.tokens[self.position]
        self.position += 1
        if token == ")":
            raise self.error(line, "unexpected ')'")
        if token != "(":
            return (token, line)
        items = []
        while True:
            if self.position >= len(self.tokens):
                raise self.error(line, "unbalanced parentheses: '(' never closed")
            if self.tokens[self.position][0] == ")":
                self.position += 1
                return (items, line)
            items.append(self._expression())


def _linear(reader: _Reader, expression, line: int) -> tuple[dict, dict, float]:
    """A linear term -> (x coefficients, y coefficients, constant)."""
    value, where = expression
    if not isinstance(value, list):
        match = SYMBOL.match(value)
        if match:
            kind, index = match.group(1), int(match.group(2))
            return ({index: 1.0}, {}, 0.0) if kind == "X" else ({}, {index: 1.0}, 0.0)
        try:
            return {}, {}, float(value)
        except ValueError:
            raise reader.error(where, f"unknown symbol {value!r}") from None
    if not value or isinstance(value[0][0], list):
        raise reader.error(where, "expected an operator")
    operator, arguments = value[0][0], value[1:]
    parts = [_linear(reader, a, where) for a in arguments]
    if operator == "+":
        return _combine(parts, [1.0] * len(parts))
    if operator == "-":
        if len(parts) == 1:
            return _combine(parts, [-1.0])
        return _combine(parts, [1.0] + [-1.0] * (len(parts) - 1))
    if operator == "*":
        constants = [p for p in parts if not p[0] and not p[1]]
        variables = [p for p in parts if p[0] or p[1]]
        if len(variables) > 1:
            raise reader.error(where, "product of two variables is not linear")
        factor = float(np.prod([c[2] for c in constants]))
        if not variables:
            return {}, {}, factor
        return _combine(variables, [factor])
    raise reader.error(where, f"unsupported operator {operator!r} in a linear term")


def _combine(parts, weights) -> tuple[dict, dict, float]:
    x, y, constant = {}, {}, 0.0
    for (px, py, pc), w in zip(parts, weights):
        for k, v in px.items():
            x[k] = x.get(k, 0.0) + w * v
        for k, v in py.items():
            y[k] = y.get(k, 0.0) + w * v
        constant += w * pc
    return x, y, constant


def _dnf(reader: _Reader, expression) -> list[list[Atom]]:
    """Formula -> list of conjunctions (lists of atoms)."""
    value, line = expression
    if not isinstance(value, list) or not value:
        raise reader.error(line, "expected a formula")
    head = value[0][0]
    if head == "and":
        terms = [[]]
        for part in value[1:]:
            terms = [a + b for a, b in product(terms, _dnf(reader, part))]
        return terms
    if head == "or":
        return [term for part in value[1:] for term in _dnf(reader, part)]
    if head in COMPARISONS:
        if len(value) != 3:
            raise reader.error(line, f"'{head}' takes two arguments")
        lx, ly, lc = _linear(reader, value[1], line)
        rx, ry, rc = _linear(reader, value[2], line)
        difference = _combine([(lx, ly, lc), (rx, ry, rc)], [1.0, -1.0])  # lhs - rhs
        if head in ("<=", "<"):
            return [[_atom(difference, 1.0, head == "<", line)]]
        if head in (">=", ">"):
            return [[_atom(difference, -1.0, head == ">", line)]]
        return [[_atom(difference, 1.0, False, line), _atom(difference, -1.0, False, line)]]
    raise reader.error(line, f"unsupported construct {head!r} (VNN-LIB 1.0: and, or, <=, >=, <, >, =)")


def _atom(linear, sign: float, strict: bool, line: int) -> Atom:
    x, y, constant = linear
    return Atom(tuple(sorted((k, sign * v) for k, v in x.items() if v)),
                tuple(sorted((k, sign * v) for k, v in y.items() if v)), sign * constant, strict, line)


def parse_v1(text: str, source: str = "<property>") -> Property:
    reader = _Reader(text, source)
    inputs: set[int] = set()
    outputs: set[int] = set()
    formula = [[]]
    for value, line in reader.expressions():
        if not isinstance(value, list) or not value or isinstance(value[0][0], list):
            raise reader.error(line, "expected a command such as (declare-const ...) or (assert ...)")
        command = value[0][0]
        if command == "declare-const":
            if len(value) != 3 or value[2][0] not in ("Real", "Int"):
                raise reader.error(line, "declare-const needs a name and the sort Real")
            match = SYMBOL.match(value[1][0])
            if not match:
                raise reader.error(line, f"variables must be named X_i or Y_j, not {value[1][0]!r}")
            (inputs if match.group(1) == "X" else outputs).add(int(match.group(2)))
        elif command == "assert":
            if len(value) != 2:
                raise reader.error(line, "assert takes one formula")
            formula = [a + b for a, b in product(formula, _dnf(reader, value[1]))]
        elif command in ("set-logic", "set-info", "check-sat", "get-model", "exit"):
            continue
        else:
            raise reader.error(line, f"unsupported command {command!r}")
    if not inputs or not outputs:
        raise InputError(f"{source}: no X_i / Y_j declared")
    if sorted(inputs) != list(range(len(inputs))) or sorted(outputs) != list(range(len(outputs))):
        raise InputError(f"{source}: X_i and Y_j must be numbered 0..n-1 without gaps")
    return Property(_cases(reader, formula, len(inputs), len(outputs)), len(inputs), len(outputs), "1.0")


def _cases(reader: _Reader, terms: list[list[Atom]], n_inputs: int, n_outputs: int) -> list[Case]:
    cases: dict[bytes, Case] = {}
    for term in terms:
        lower, upper = np.full(n_inputs, -np.inf), np.full(n_inputs, np.inf)
        rows, bounds, strict = [], [], []
        for atom in term:
            if atom.x and atom.y:
                raise reader.error(atom.line, "constraints mixing X and Y are not supported")
            if atom.x:
                if len(atom.x) != 1:
                    raise reader.error(atom.line, "input constraints must bound one X_i by a constant")
                (index, coefficient), = atom.x
                _check(reader, index, n_inputs, "X", atom.line)
                limit = -atom.constant / coefficient  # coefficient*x + constant <= 0
                if coefficient > 0:
                    upper[index] = min(upper[index], limit)
                else:
                    lower[index] = max(lower[index], limit)
            elif atom.y:
                row = np.zeros(n_outputs)
                for index, coefficient in atom.y:
                    _check(reader, index, n_outputs, "Y", atom.line)
                    row[index] = coefficient
                rows.append(row)
                bounds.append(-atom.constant)
                strict.append(atom.strict)
            elif atom.constant > 0 or (atom.strict and atom.constant == 0):
                rows = None  # a constant false atom: this term is empty
                break
        if rows is None:
            continue
        if not np.isfinite(lower).all() or not np.isfinite(upper).all():
            missing = np.flatnonzero(~(np.isfinite(lower) & np.isfinite(upper)))[:5].tolist()
            raise InputError(f"{reader.source}: inputs {missing} have no lower or upper bound")
        if (lower > upper).any():
            continue  # empty box
        key = lower.tobytes() + upper.tobytes()
        case = cases.setdefault(key, Case(lower, upper))
        case.disjuncts.append((np.array(rows).reshape(-1, n_outputs), np.array(bounds), np.array(strict, dtype=bool)))
    return list(cases.values())


def _check(reader: _Reader, index: int, count: int, kind: str, line: int) -> None:
    if index >= count:
        raise reader.error(line, f"{kind}_{index} is not declared")
