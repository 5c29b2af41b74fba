"""The VNN-LIB reader: one meaning for a property in 1.0 and 2.0 syntax (and the same as the
official `vnnlib` package where that one is right), and hostile files refused or read in linear
time: deep nesting, exponential disjunctive normal forms, NaN/inf constants, 10^5 asserts."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pytest

from verifier.errors import InputError
from verifier.vnnlib import read_property, spec
from verifier.vnnlib.deadline import Deadline, Timeout
from verifier.vnnlib.reader import parse_text

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "vnnlib"

V1_HEAD = "(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"
V1_BOX = "(assert (<= X_0 1.0))\n(assert (>= X_0 0.0))\n(assert (<= X_1 1.0))\n(assert (>= X_1 0.0))\n"
V1 = V1_HEAD + V1_BOX  # lines 1-8
V2 = ("(vnnlib-version <2.0>)\n(declare-network f\n  (declare-input X float32 [2])\n  (declare-output Y float32 [2])\n)\n"
      "(assert (<= X[0] 1.0))\n(assert (>= X[0] 0.0))\n(assert (<= X[1] 1.0))\n(assert (>= X[1] 0.0))\n")  # lines 1-9


def same(a, b) -> None:
    assert (a.inputs, a.outputs, len(a.cases)) == (b.inputs, b.outputs, len(b.cases))
    for p, q in zip(a.cases, b.cases):
        for name in ("lower", "upper", "lower_open", "upper_open"):
            assert np.array_equal(getattr(p, name), getattr(q, name)), name
        assert len(p.disjuncts) == len(q.disjuncts)
        for (rows_p, bounds_p, strict_p), (rows_q, bounds_q, strict_q) in zip(p.disjuncts, q.disjuncts):
            assert np.array_equal(rows_p, rows_q) and np.array_equal(bounds_p, bounds_q)
            assert np.array_equal(strict_p, strict_q)


def test_fixture_pairs_read_the_same():
    for name in ("robust", "fragile"):
        first, second = (read_property(FIXTURES / f"digits_lstm_{name}_v{v}.vnnlib") for v in (1, 2))
        assert (first.version, second.version) == ("1.0", "2.0")
        same(first, second)
        (case,) = first.cases
        assert first.inputs == 64 and len(case.disjuncts) == 9
        rows, bounds, _ = case.disjuncts[0]  # "Y_1 >= Y_0" as an unsafe row: Y_0 - Y_1 <= 0
        assert rows.tolist() == [[1.0, -1.0] + [0.0] * 8] and bounds.tolist() == [0.0]


# (VNN-LIB 1.0 body, VNN-LIB 2.0 body over X [2,3] / Y [2]): every construct both syntaxes share
PAIRS = [
    ("(assert (or (and (>= Y_0 Y_1) (<= Y_0 3.5)) (and (< (- Y_1 (* 2 Y_0)) -1.25))))",
     "(assert (or (and (>= Y[0] Y[1]) (<= Y[0] 3.5)) (and (< (- Y[1] (* 2.0 Y[0])) -1.25))))"),
    ("(assert (= (+ Y_0 Y_1) 0.5))", "(assert (== (+ Y[0] Y[1]) 0.5))"),
    ("(assert (or (< Y_0 0.25) (> Y_0 0.25)))", "(assert (!= Y[0] 0.25))"),
    ("(assert (<= (/ Y_1 4) (- 0.5)))", "(assert (<= (/ Y [1] 4.0) (- 0.5)))"),
    ("(assert (or (and (< X_5 0.5) (> Y_0 1.0)) (and (>= X_5 0.5) (> Y_1 1.0))))",
     "(assert (or (and (< X[1,2] 0.5) (> Y[0] 1.0)) (and (>= X[1,2] 0.5) (> Y[1] 1.0))))"),
]


@pytest.mark.parametrize("body_v1, body_v2", PAIRS)
@pytest.mark.parametrize("element_type", ["float32", "real"])
def test_both_syntaxes_mean_the_same(body_v1, body_v2, element_type):
    box_v1 = "".join(f"(assert (>= X_{i} {i / 10}))\n(assert (<= X_{i} 1.0))\n" for i in range(6))
    box_v2 = "".join(f"(assert (>= X[{i // 3},{i % 3}] {i / 10}))\n(assert (<= X[{i // 3},{i % 3}] 1.0))\n" for i in range(6))
    v1 = "".join(f"(declare-const X_{i} Real)\n" for i in range(6)) + "(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"
    v2 = (f"; comment\n(vnnlib-version <2.0>)\n(declare-network net\n  (declare-input X {element_type} [2,3] \"x\")\n"
          f"  (declare-output Y {element_type} [2] \"logits\") ; the logits\n)\n")
    first = parse_text(v1 + box_v1 + body_v1)
    second = parse_text(v2 + box_v2 + body_v2)
    same(first, second)
    assert second.input_shape == (2, 3) and (second.input_name, second.output_name) == ("x", "logits")


def test_strict_and_equality_semantics():
    prop = parse_text(V1 + "(assert (or (= Y_0 2.0) (< Y_1 -1.0)))\n(assert (> X_1 0.5))\n")
    (case,) = prop.cases
    assert case.lower[1] == 0.5 and case.lower_open.tolist() == [False, True]
    (rows_eq, bounds_eq, strict_eq), (rows_lt, bounds_lt, strict_lt) = case.disjuncts
    assert rows_eq.tolist() == [[1, 0], [-1, 0]] and bounds_eq.tolist() == [2.0, -2.0] and not strict_eq.any()
    assert rows_lt.tolist() == [[0, 1]] and bounds_lt.tolist() == [-1.0] and strict_lt.all()
    assert case.contains(np.array([[0.5, 0.5], [0.5, 0.75]])).tolist() == [False, True]


def test_official_package_agrees_on_a_2_0_property():
    vnnlib = pytest.importorskip("vnnlib")
    from vnnlib import compat

    text = ("(vnnlib-version <2.0>)\n(declare-network f\n (declare-input X real [2,2])\n (declare-output Y real [3])\n)\n"
            + "".join(f"(assert (<= X[{i},{j}] {0.5 + i}))\n(assert (>= X[{i},{j}] -{0.25 * j}))\n"
                      for i in range(2) for j in range(2))
            + "(assert (or (and (>= Y[1] Y[0]) (<= (+ Y[2] (* -2.0 Y[0])) 1.5)) (and (<= (- Y[1] Y[2]) -0.5))))\n")
    mine = parse_text(text)
    (theirs,) = compat.transform(vnnlib.parse_query_string(text))
    box = np.array(theirs.input_box)
    (case,) = mine.cases
    assert np.array_equal(box[:, 0], case.lower) and np.array_equal(box[:, 1], case.upper)
    for polytope, (rows, bounds, _) in zip(theirs.output_constraints, case.disjuncts, strict=True):
        assert np.array_equal(np.array(polytope.coeff_matrix), rows) and np.array_equal(np.array(polytope.rhs), bounds)


def test_gzipped_property(tmp_path):
    path = tmp_path / "p.vnnlib.gz"
    path.write_bytes(gzip.compress((V1 + "(assert (<= Y_0 Y_1))\n").encode()))
    assert read_property(path).cases[0].disjuncts[0][0].tolist() == [[1.0, -1.0]]


# ---- hostile and broken files ---------------------------------------------------------------------
def test_deep_nesting_is_no_recursion():
    depth = 100_000
    nested = parse_text(V1 + "(assert " + "(and " * depth + "(<= Y_0 1.0)" + ")" * depth + ")\n")
    assert nested.cases[0].disjuncts[0][1].tolist() == [1.0]
    terms = depth // 5  # arithmetic nests the same way (fewer levels: each is costlier)
    sums = parse_text(V1 + "(assert (<= " + "(+ 0.5 " * terms + "Y_0" + ")" * terms + " 1.0))\n")
    assert sums.cases[0].disjuncts[0][0].tolist() == [[1.0, 0.0]]
    assert sums.cases[0].disjuncts[0][1][0] == pytest.approx(1.0 - 0.5 * terms)
    with pytest.raises(InputError, match=r":9: unbalanced parentheses"):
        parse_text(V1 + "(assert " + "(" * depth)
    with pytest.raises(InputError, match=r":9: expected a formula"):
        parse_text(V1 + "(assert " + "(" * depth + ")" * depth + ")")


def test_exponential_disjunctive_normal_form_is_refused_before_expansion():
    ors = " ".join(f"(or (<= Y_0 {i}.0) (>= Y_1 {i}.0))" for i in range(40))
    with pytest.raises(InputError, match=r":9: the property expands to 1,099,511,627,776 cases .*--max-cases"):
        parse_text(V1 + f"(assert (and {ors}))\n")
    asserts = "".join(f"(assert (or (<= Y_0 {i}.0) (>= Y_1 {i}.0)))\n" for i in range(40))
    with pytest.raises(InputError, match=r"expand to 1,099,511,627,776 cases"):
        parse_text(V1 + asserts)
    prop = parse_text(V1 + "".join(f"(assert (or (<= Y_0 {i}.0) (>= Y_1 {i}.0)))\n" for i in range(10)))
    assert len(prop.cases[0].disjuncts) == 1024  # under the cap: expanded


@pytest.mark.parametrize("constant", ["nan", "NaN", "inf", "-inf", "+Infinity", "1e400", "-1e999"])
def test_non_finite_constants_are_refused_with_their_line(constant):
    with pytest.raises(InputError, match=rf":9: constant '{re.escape(constant)}' is not a finite number"):
        parse_text(V1 + f"(assert (<= X_1 {constant}))\n(assert (<= Y_0 1.0))\n")
    with pytest.raises(InputError, match=rf":11: constant '{re.escape(constant)}'"):
        parse_text(V2 + f"(assert (or (<= Y[0] 1.0)\n (>= Y[1] {constant})))\n")


def test_overflowing_arithmetic_is_refused():
    with pytest.raises(InputError, match=r":9: .*overflows"):
        parse_text(V1 + "(assert (<= Y_0 (* 1e300 1e300)))\n")


@pytest.mark.parametrize("fast", [True, False])
def test_many_asserts_parse_in_one_pass(fast):
    count = 100_000 if fast else 20_000  # one-line bounds take a regex fast path
    line = "(assert (<= X_0 {v}))\n" if fast else "(assert (<= (+ X_0 0.0) {v}))\n"
    text = V1_HEAD + "(assert (>= X_0 -1.0))\n(assert (>= X_1 0.0))\n(assert (<= X_1 1.0))\n"
    text += "".join(line.format(v=1.0 + (k % 1000)) for k in range(count)) + "(assert (<= Y_0 0.0))\n"
    (case,) = parse_text(text).cases
    assert case.lower.tolist() == [-1.0, 0.0] and case.upper.tolist() == [1.0, 1.0]


def test_parsing_keeps_the_deadline(tmp_path):
    path = tmp_path / "big.vnnlib"
    path.write_text(V1 + "(assert (<= X_0 1.0))\n" * 50_000)
    with pytest.raises(Timeout):
        read_property(path, Deadline.after(0.0))


def test_size_cap(tmp_path, monkeypatch):
    monkeypatch.setattr(spec, "MAX_PROPERTY_BYTES", 1000)
    path = tmp_path / "long.vnnlib"
    path.write_text(V1 + "(assert (<= X_0 1.0))\n" * 100)
    with pytest.raises(InputError, match="larger than"):
        read_property(path)


@pytest.mark.parametrize("text, line, message", [
    (V1 + "(assert (<= X_0 1.0)\n", 9, "never closed"),
    (V1 + "(assert (<= X_0 Z_3))\n", 9, "unknown symbol 'Z_3'"),
    (V1 + "(assert (<= (* Y_0 X_0) 1.0))\n", 9, "not linear"),
    (V1 + "(assert (<= X_0 Y_0))\n", 9, "mixing inputs and outputs"),
    (V1 + "(assert (<= (+ X_0 X_1) 1.0))\n", 9, "bound one input"),
    (V1 + "(assert (ite Y_0 1 2))\n", 9, "unsupported construct 'ite'"),
    (V1 + "(assert (>= Y_7 0.0))\n", 9, "Y_7 is not declared"),
    (V1 + "(assert (<= (/ Y_0 0) 1.0))\n", 9, "division by zero"),
    (V1 + "(assert (<= Y_0 1.0) (<= Y_1 1.0))\n", 9, "one formula"),
    (V1 + "(frobnicate)\n", 9, "unsupported command"),
    (V1 + ")\n", 9, r"unexpected '\)'"),
    ("(declare-const X_0 Int)\n", 1, "sort Real"),
    ("(declare-const A_0 Real)\n", 1, "X_i or Y_j"),
    (V1_HEAD + "(declare-const X_1 Real)\n", 5, "X_1 is declared twice"),
    (V2 + "(assert (<= X[2] 1.0))\n", 10, "out of range"),
    (V2 + "(assert (<= X 1.0))\n", 10, "index it as X"),
    (V2 + "(declare-const X_0 Real)\n", 10, "declare-const is VNN-LIB 1.0"),
    ("(vnnlib-version <3.0>)\n", 1, "unsupported VNN-LIB version <3.0>"),
    ("(vnnlib-version <2.0>)\n(declare-network f\n (declare-input X int8 [2])\n (declare-output Y real [2]))\n", 3,
     "element type 'int8'"),
    (("(vnnlib-version <2.0>)\n(declare-network f\n (declare-input X real [2])\n (declare-hidden H real [2] \"h\")\n"
     " (declare-output Y real [2]))\n"), 4, "hidden nodes"),
    (("(vnnlib-version <2.0>)\n(declare-network f\n (declare-input X real [2])\n (declare-input Z real [2])\n"
     " (declare-output Y real [2]))\n"), 2, "exactly one input"),
    (("(vnnlib-version <2.0>)\n(declare-network f\n (declare-input X real [2])\n (declare-output Y real [2]))\n"
     "(declare-network g\n (declare-input A real [2])\n (declare-output B real [2]))\n"), 5, "several networks"),
])
def test_malformed_files_name_the_line(text, line, message):
    with pytest.raises(InputError, match=rf"p.vnnlib:{line}: .*{message}"):
        parse_text(text, "p.vnnlib")


def test_inputs_without_bounds_are_refused():
    with pytest.raises(InputError, match=r"inputs \[2, 3\] \(flat indices of the declared input shape \[2, 2\]\) have no"):
        parse_text(V2.replace("[2])", "[2, 2])", 1).replace("X[0]", "X[0,0]").replace("X[1]", "X[0,1]"))
    with pytest.raises(InputError, match=r"inputs \[1\] \(flat indices\) have no lower or upper bound"):
        parse_text(V1_HEAD + "(assert (<= X_0 1.0))\n(assert (>= X_0 0.0))\n(assert (<= X_1 1.0))\n(assert (<= Y_0 1.0))\n")
