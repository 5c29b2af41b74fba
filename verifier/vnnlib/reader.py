"""One reader for VNN-LIB 1.0 and 2.0, so one property has one meaning in either syntax.

    1.0 (VNN-COMP):  (declare-const X_0 Real) ... (assert (<= X_0 0.5))
                     (assert (or (and (>= Y_0 Y_1)) (and (<= Y_0 -3.0) (>= Y_1 2.0))))
    2.0:             (vnnlib-version <2.0>)
                     (declare-network f (declare-input X float32 [1,8,8]) (declare-output Y real [10]))
                     (assert (<= X[0,0,0] 0.5)) (assert (or (>= Y[1] Y[0]) (== Y[2] 1.0)))

The asserts are conjoined. Bounds on single inputs in top-level conjunctions go straight into the
shared input box (one-line asserts take a regex fast path: 10^6 of them parse in seconds); the
remaining disjunctions are expanded to disjunctive normal form after their size is checked
against the caps. Each term becomes an input box and a conjunction of linear output constraints;
terms with the same box form one Case. Anything outside this fragment is an error naming its line.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

import numpy as np

from verifier.errors import InputError
from verifier.vnnlib import formula as fm
from verifier.vnnlib.deadline import Deadline
from verifier.vnnlib.sexpr import error, expressions
from verifier.vnnlib.spec import Case, Property

SYMBOL_V1 = re.compile(r"([XY])_(\d+)", re.ASCII)
ELEMENT_V2 = re.compile(r"([A-Za-z_][\w.]*)\s*(?:\[([^\]]*)\])?")
SHAPE = re.compile(r"\[\s*((?:\d+\s*(?:,\s*\d+\s*)*)?)\]")
NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
FAST_V1 = re.compile(rf"\s*\(\s*assert\s*\(\s*(<=|>=)\s+([XY])_(\d+)\s+({NUM})\s*\)\s*\)\s*(?:;.*)?", re.ASCII)
FAST_V2 = re.compile(rf"\s*\(\s*assert\s*\(\s*(<=|>=)\s+([A-Za-z_][\w.]*)\s*\[([\d,\s]+)\]\s+({NUM})\s*\)\s*\)\s*(?:;.*)?", re.ASCII)
FLOAT_TYPES = {"real", "float16", "float32", "float64", "bfloat16", "float8e4m3fn", "float8e5m2", "float8e4m3fnuz",
               "float8e5m2fnuz", "float4e2m1"}
IGNORED_V1 = {"set-logic", "set-info", "set-option", "check-sat", "get-model", "exit"}
MAX_TERMS = 100_000
MAX_ATOMS = 10_000_000


class _Tensor:
    def __init__(self, kind: str, name: str, shape: tuple[int, ...], onnx_name: str | None) -> None:
        self.kind, self.name, self.shape, self.onnx_name = kind, name, shape, onnx_name
        self.size = int(np.prod(shape, dtype=np.int64))


class Reader:
    """Reads one property file, command by command (see module docstring)."""

    def __init__(self, source: str, deadline: Deadline, max_terms: int = MAX_TERMS, max_atoms: int = MAX_ATOMS) -> None:
        self.source, self.deadline = source, deadline
        self.max_terms, self.max_atoms = max_terms, max_atoms
        self.version: str | None = None
        self.declared_v1: dict[str, set[int]] = {"X": set(), "Y": set()}
        self.tensors: dict[str, _Tensor] = {}  # 2.0 declarations by name
        self.lower: dict[int, tuple[float, bool]] = {}  # shared input box: index -> (bound, open)
        self.upper: dict[int, tuple[float, bool]] = {}
        self.output_atoms: list[fm.Atom] = []  # conjoined output constraints
        self.output_bounds: list[tuple[int, float, float]] = []  # conjoined (j, sign, b): sign*Y_j <= b
        self.disjunctions: list[fm.Formula] = []
        self.empty_line: int | None = None  # a constant-false assert: the unsafe set is empty
        self.saw_assert = False

    # ---- the file -------------------------------------------------------------------------
    def read(self, lines: Iterable[str]) -> Property:
        for value, line in expressions(lines, self.source, self.deadline, self._fast_line):
            self._command(value, line)
        return self._finish()

    def _command(self, value: list, line: int) -> None:
        if not value or isinstance(value[0][0], list):
            raise error(self.source, line, "expected a command such as (declare-const ...) or (assert ...)")
        command = value[0][0]
        if command == "assert":
            if len(value) != 2:
                raise error(self.source, line, "assert takes one formula")
            if self.version is None:
                raise error(self.source, line, "assert before any declaration")
            self.saw_assert = True
            self._assert(fm.formula(value[1], self._resolve, self.source, self.deadline, self.max_terms,
                                    self.max_atoms), line)
        elif command == "vnnlib-version":
            self._version(value, line)
        elif command == "declare-network":
            self._network(value, line)
        elif command == "declare-const":
            self._declare_v1(value, line)
        elif command in IGNORED_V1 and self.version != "2.0":
            return
        else:
            raise error(self.source, line, f"unsupported command {command!r}")

    # ---- declarations ---------------------------------------------------------------------
    def _declare_v1(self, value: list, line: int) -> None:
        if self.version == "2.0":
            raise error(self.source, line, "declare-const is VNN-LIB 1.0; this file declared version 2.0")
        self.version = "1.0"
        if len(value) != 3 or isinstance(value[1][0], list) or value[2][0] != "Real":
            raise error(self.source, line, "declare-const needs a name and the sort Real")
        match = SYMBOL_V1.fullmatch(value[1][0])
        if not match:
            raise error(self.source, line, f"variables must be named X_i or Y_j, not {value[1][0]!r}")
        index = int(match.group(2))
        if index >= 1 << 31:
            raise error(self.source, line, f"index of {value[1][0]} is too large")
        if index in self.declared_v1[match.group(1)]:
            raise error(self.source, line, f"{value[1][0]} is declared twice")
        self.declared_v1[match.group(1)].add(index)

    def _version(self, value: list, line: int) -> None:
        if self.version is not None or self.saw_assert:
            raise error(self.source, line, "vnnlib-version must be the first command")
        text = value[1][0] if len(value) == 2 and not isinstance(value[1][0], list) else ""
        match = re.fullmatch(r"<(\d+)\.(\d+)>", text)
        if not match or match.group(1) != "2":
            raise error(self.source, line, f"unsupported VNN-LIB version {text or '?'} (popqorn reads 1.0 and 2.x)")
        self.version = "2.0"

    def _network(self, value: list, line: int) -> None:
        if self.version != "2.0":
            raise error(self.source, line, "declare-network needs (vnnlib-version <2.0>) first")
        if any(t.kind for t in self.tensors.values()):
            raise error(self.source, line, "queries over several networks are not supported")
        if len(value) < 2 or isinstance(value[1][0], list):
            raise error(self.source, line, "declare-network needs a name")
        for item, item_line in value[2:]:
            if not isinstance(item, list) or not item or isinstance(item[0][0], list):
                raise error(self.source, item_line, "expected (declare-input ...) or (declare-output ...)")
            head = item[0][0]
            if head in ("equal-to", "isomorphic-to"):
                raise error(self.source, item_line, f"{head}: queries over several networks are not supported")
            if head == "declare-hidden":
                raise error(self.source, item_line, "constraints on hidden nodes are not supported")
            if head not in ("declare-input", "declare-output"):
                raise error(self.source, item_line, f"unsupported declaration {head!r}")
            self._tensor("X" if head == "declare-input" else "Y", item, item_line)
        kinds = [t.kind for t in self.tensors.values()]
        for kind, what in (("X", "input"), ("Y", "output")):
            if kinds.count(kind) != 1:
                raise error(self.source, line, f"the network must declare exactly one {what} tensor "
                            f"(found {kinds.count(kind)}); several are not supported")

    def _tensor(self, kind: str, item: list, line: int) -> None:
        words = [w for w, _ in item[1:]]
        if any(isinstance(w, list) for w in words) or len(words) < 2:
            raise error(self.source, line, f"{item[0][0]} needs a name, an element type and a shape")
        name, rest = words[0], " ".join(words[1:])
        match = re.fullmatch(r"([A-Za-z_][\w]*)\s*(\[[^\]]*\])\s*(\"[^\"]*\")?", rest)
        if not match or not ELEMENT_V2.fullmatch(name) or "[" in name:
            raise error(self.source, line, f"cannot read declaration {item[0][0]} {' '.join(words)}")
        element_type, shape_text, onnx_name = match.groups()
        if element_type not in FLOAT_TYPES:
            raise error(self.source, line, f"element type {element_type!r} of {name} is not supported "
                        f"(real or a floating-point type)")
        shape_match = SHAPE.fullmatch(shape_text)
        if not shape_match:
            raise error(self.source, line, f"cannot read the shape {shape_text} of {name}")
        shape = tuple(int(d) for d in shape_match.group(1).replace(",", " ").split())
        if any(d < 1 for d in shape) or math.prod(shape) >= 1 << 31:
            raise error(self.source, line, f"shape {shape_text} of {name} is empty or too large")
        if name in self.tensors:
            raise error(self.source, line, f"{name} is declared twice")
        self.tensors[name] = _Tensor(kind, name, shape, onnx_name.strip('"') if onnx_name else None)

    # ---- variables ------------------------------------------------------------------------
    def _resolve(self, text: str, line: int) -> tuple[str, int]:
        if self.version == "1.0":
            match = SYMBOL_V1.fullmatch(text)
            if not match:
                raise error(self.source, line, f"unknown symbol {text!r}")
            kind, index = match.group(1), int(match.group(2))
            if index not in self.declared_v1[kind]:
                raise error(self.source, line, f"{text} is not declared")
            return kind, index
        match = ELEMENT_V2.fullmatch(text)
        tensor = self.tensors.get(match.group(1)) if match else None
        if tensor is None:
            raise error(self.source, line, f"unknown symbol {text!r}")
        if match.group(2) is None:
            if tensor.shape:
                raise error(self.source, line, f"{tensor.name} has shape {list(tensor.shape)}: index it as {tensor.name}[...]")
            return tensor.kind, 0
        try:
            index = tuple(int(i) for i in match.group(2).replace(",", " ").split())
        except ValueError:
            raise error(self.source, line, f"cannot read the indices of {text!r}") from None
        if len(index) != len(tensor.shape) or any(not 0 <= i < d for i, d in zip(index, tensor.shape)):
            raise error(self.source, line, f"{text} is out of range: {tensor.name} has shape {list(tensor.shape)}")
        return tensor.kind, int(np.ravel_multi_index(index, tensor.shape)) if tensor.shape else 0

    # ---- asserts --------------------------------------------------------------------------
    def _fast_line(self, text: str, number: int) -> bool:
        """`(assert (<= X_3 0.5))` and its 2.0 twin without building any tree; anything unusual
        falls back to the general path (which also produces the error messages)."""
        if self.version is None or "assert" not in text:
            return False
        match = (FAST_V1 if self.version == "1.0" else FAST_V2).fullmatch(text.rstrip("\r\n"))
        if not match:
            return False
        operator, name, index_text, number_text = match.groups()
        value = float(number_text)
        if not math.isfinite(value) or value == 0 and re.search(r"[1-9]", re.split(r"[eE]", number_text)[0]):
            return False  # the general path refuses it, naming the line
        if self.version == "1.0":
            kind, index = name, int(index_text)
            if index not in self.declared_v1[kind]:
                return False
        else:
            tensor = self.tensors.get(name)
            try:
                index_tuple = tuple(int(i) for i in index_text.replace(",", " ").split())
            except ValueError:
                return False
            if tensor is None or len(index_tuple) != len(tensor.shape) or any(
                    not 0 <= i < d for i, d in zip(index_tuple, tensor.shape)):
                return False
            kind, index = tensor.kind, int(np.ravel_multi_index(index_tuple, tensor.shape))
        self.saw_assert = True
        if kind == "X":
            self._bound(index, value, operator == "<=", False)
        else:
            sign = 1.0 if operator == "<=" else -1.0
            self.output_bounds.append((index, sign, sign * value))
        return True

    def _bound(self, index: int, value: float, is_upper: bool, is_open: bool) -> None:
        side = self.upper if is_upper else self.lower
        old = side.get(index)
        tighter = old is None or (value < old[0] if is_upper else value > old[0]) or (value == old[0] and is_open)
        if tighter:
            side[index] = (value, is_open)

    def _assert(self, formula: fm.Formula, line: int) -> None:
        parts = formula.payload if formula.kind == "and" else [formula]
        if formula.kind == "false":
            self.empty_line = self.empty_line or formula.line or line or -1
        for part in parts:
            if part.kind == "atom":
                self._conjoined_atom(part.payload)
            elif part.kind == "or":
                self.disjunctions.append(part)

    def _conjoined_atom(self, atom: fm.Atom) -> None:
        if atom.x and atom.y:
            raise error(self.source, atom.line, "constraints mixing inputs and outputs are not supported")
        if atom.y:
            self.output_atoms.append(atom)
            return
        if len(atom.x) != 1:
            raise error(self.source, atom.line, "input constraints must bound one input by a constant")
        (index, coefficient), = atom.x.items()
        self._bound(index, -atom.constant / coefficient, coefficient > 0, atom.strict)

    # ---- the property ---------------------------------------------------------------------
    def _finish(self) -> Property:
        if self.version is None:
            raise InputError(f"{self.source}: no declarations (VNN-LIB 1.0 declare-const or 2.0 vnnlib-version)")
        inputs, outputs, input_shape, output_name, input_name = self._sizes()
        if self.empty_line is not None:
            where = f"on line {self.empty_line}" if self.empty_line > 0 else "in the property"
            return Property([], inputs, outputs, self.version, input_shape, input_name, output_name,
                            why_empty=f"an assert {where} is always false")
        root = fm.conjoin(self.disjunctions)
        if root.terms > self.max_terms or root.atoms > self.max_atoms:
            terms = "more than 10^18" if root.terms >= fm.SATURATE else f"{root.terms:,}"
            raise InputError(f"{self.source}: the asserts together expand to {terms} cases in disjunctive normal "
                             f"form; the cap is {self.max_terms:,} cases and {self.max_atoms:,} constraints (--max-cases)")
        terms = fm.disjunctive_normal_form(root, self.deadline)
        base_lower = np.full(inputs, -np.inf)
        base_upper = np.full(inputs, np.inf)
        lower_open = np.zeros(inputs, dtype=bool)
        upper_open = np.zeros(inputs, dtype=bool)
        for index, (value, is_open) in self.lower.items():
            base_lower[index], lower_open[index] = value, is_open
        for index, (value, is_open) in self.upper.items():
            base_upper[index], upper_open[index] = value, is_open
        base_rows = self._rows(self.output_atoms, outputs)
        if self.output_bounds:
            index, sign, bound = (np.array(column) for column in zip(*self.output_bounds))
            simple = np.zeros((len(index), outputs))
            simple[np.arange(len(index)), index.astype(np.int64)] = sign
            base_rows = (np.concatenate([base_rows[0], simple]), np.concatenate([base_rows[1], bound]),
                         np.concatenate([base_rows[2], np.zeros(len(index), dtype=bool)]))
        base_box_empty = (base_lower > base_upper).any() or ((base_lower == base_upper) & (lower_open | upper_open)).any()
        base_finite = bool(np.isfinite(base_lower).all() and np.isfinite(base_upper).all())
        cases: dict[bytes, Case] = {}
        for number, term in enumerate(terms):
            if number % 1024 == 0:
                self.deadline.check()
            lower, upper = base_lower, base_upper
            low_open, up_open = lower_open, upper_open
            output_atoms = []
            with_inputs = any(a.x for a in term)
            if with_inputs:
                lower, upper, low_open, up_open = lower.copy(), upper.copy(), low_open.copy(), up_open.copy()
            elif base_box_empty:
                continue
            for atom in term:
                if atom.x and atom.y:
                    raise error(self.source, atom.line, "constraints mixing inputs and outputs are not supported")
                if atom.y:
                    output_atoms.append(atom)
                    continue
                if len(atom.x) != 1:
                    raise error(self.source, atom.line, "input constraints must bound one input by a constant")
                (index, coefficient), = atom.x.items()
                value, is_upper = -atom.constant / coefficient, coefficient > 0
                bounds, flags = (upper, up_open) if is_upper else (lower, low_open)
                if (value < bounds[index]) if is_upper else (value > bounds[index]):
                    bounds[index], flags[index] = value, atom.strict
                elif value == bounds[index]:
                    flags[index] |= atom.strict
            if with_inputs and ((lower > upper).any() or ((lower == upper) & (low_open | up_open)).any()):
                continue  # an empty box
            if (with_inputs or not base_finite) and not (np.isfinite(lower).all() and np.isfinite(upper).all()):
                missing = np.flatnonzero(~(np.isfinite(lower) & np.isfinite(upper)))[:5].tolist()
                declared = "" if input_shape is None else f" of the declared input shape {list(input_shape)}"
                raise InputError(f"{self.source}: inputs {missing} (flat indices{declared}) have no lower or "
                                 "upper bound")
            key = (lower.tobytes() + upper.tobytes() + low_open.tobytes() + up_open.tobytes()) if with_inputs else b""
            case = cases.get(key)
            if case is None:
                case = cases[key] = Case(lower, upper, lower_open=low_open, upper_open=up_open)
            if not output_atoms:
                case.disjuncts.append(base_rows)
                continue
            rows, bounds, strict = self._rows(output_atoms, outputs)
            case.disjuncts.append((np.concatenate([base_rows[0], rows]), np.concatenate([base_rows[1], bounds]),
                                   np.concatenate([base_rows[2], strict])))
        return Property(list(cases.values()), inputs, outputs, self.version, input_shape, input_name, output_name)

    def _sizes(self):
        if self.version == "1.0":
            for kind, what in (("X", "inputs X_i"), ("Y", "outputs Y_j")):
                indices = self.declared_v1[kind]
                if not indices:
                    raise InputError(f"{self.source}: no {what} declared")
                if max(indices) != len(indices) - 1:
                    raise InputError(f"{self.source}: {what} must be numbered 0..n-1 without gaps")
            return len(self.declared_v1["X"]), len(self.declared_v1["Y"]), None, None, None
        if not self.tensors:
            raise InputError(f"{self.source}: no declare-network")
        x = next(t for t in self.tensors.values() if t.kind == "X")
        y = next(t for t in self.tensors.values() if t.kind == "Y")
        return x.size, y.size, x.shape, y.onnx_name, x.onnx_name

    def _rows(self, atoms: list[fm.Atom], outputs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows = np.zeros((len(atoms), outputs))
        for k, atom in enumerate(atoms):
            for index, coefficient in atom.y.items():
                rows[k, index] = coefficient
        return rows, np.array([-a.constant for a in atoms], dtype=np.float64), np.array([a.strict for a in atoms], dtype=bool)


def parse_text(text: str, source: str = "<property>", deadline: Deadline | None = None,
               max_terms: int = MAX_TERMS, max_atoms: int = MAX_ATOMS) -> Property:
    """Read a property given as text (either syntax)."""
    return Reader(source, deadline or Deadline(None), max_terms, max_atoms).read(text.removeprefix("\ufeff").splitlines())


def parse_v1(text: str, source: str = "<property>") -> Property:
    """Kept for callers of the 1.0-only reader: the same reader (it reads both syntaxes)."""
    return parse_text(text, source)
