"""Property text from other tools that the reader once read wrongly or silently (vnnlib sweep):
numbers that underflow to zero, characters no token takes, Python-only number spellings, a byte
order mark, a term whose box is unbounded, a folder given as the property, instance lists with a
byte order mark or in another encoding."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from verifier.errors import InputError
from verifier.vnnlib import read_property
from verifier.vnnlib.instances import read_instances
from verifier.vnnlib.model import output_index
from verifier.vnnlib.reader import parse_text

V1 = ("(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"
      "(assert (>= X_0 0))\n(assert (<= X_0 1))\n(assert (>= X_1 0))\n(assert (<= X_1 1))\n")


@pytest.mark.parametrize("body, message", [
    # read as the constant 0 < 0 (false), this made the property vacuously unsat although Y_0 < 0 was reachable
    ("(assert (< (* 1e-200 (* 1e-200 Y_0)) 0))", "coefficient underflows to zero"),
    ("(assert (< (/ (/ Y_0 1e200) 1e200) 0))", "coefficient underflows to zero"),
    ("(assert (< Y_0 (* 1e-200 1e-200)))", "underflows to zero"),
    ("(assert (< Y_0 1e-400))", "constant '1e-400' underflows to zero"),
    ("(assert (<= Y_0 -1e-400))", "constant '-1e-400' underflows to zero"),  # the one-line fast path
])
def test_numbers_that_underflow_to_zero_are_refused(body, message):
    with pytest.raises(InputError, match=message) as caught:
        parse_text(V1 + body, "p.vnnlib")
    assert str(caught.value).startswith("p.vnnlib:9:")


def test_zero_itself_is_no_underflow():
    assert parse_text(V1 + "(assert (<= (* 0 X_0) -1))").cases == []  # 0 <= -1: the unsafe set is empty
    (case,) = parse_text(V1 + "(assert (<= (+ Y_0 (* 0.0 Y_1)) 0e5))").cases
    assert case.disjuncts[0][0].tolist() == [[1.0, 0.0]] and case.disjuncts[0][1].tolist() == [0.0]


@pytest.mark.parametrize("body, stray", [
    ('(assert (<= Y_0 "Y_1))', '"'),  # the quote was skipped: read as Y_0 <= Y_1
    ("(assert (<= Y_0 ] Y_1))", "]"),
    ("(assert (<= Y_0 [ Y_1))", "["),
    ("(assert (<= Y_0] Y_1))", "]"),
])
def test_characters_no_token_takes_are_refused(body, stray):
    with pytest.raises(InputError, match=rf"p.vnnlib:9: unexpected '{re.escape(stray)}'"):
        parse_text(V1 + body, "p.vnnlib")


@pytest.mark.parametrize("number", ["1_000", "\u0661", "\uff11.5"])
def test_only_ascii_decimal_literals_are_numbers(number):
    with pytest.raises(InputError, match="unknown symbol"):  # float() reads all three
        parse_text(V1 + f"(assert (<= Y_0 {number}))")
    with pytest.raises(InputError, match="unknown symbol"):
        parse_text(V1 + f"(assert (<= X_0 {number}))\n(assert (<= Y_0 Y_1))")


def test_a_byte_order_mark_is_no_part_of_the_text(tmp_path):
    text = V1 + "(assert (<= Y_0 Y_1))\n"
    path = tmp_path / "bom.vnnlib"
    path.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    expected = parse_text(text).cases[0]
    for prop in (read_property(path), parse_text("\ufeff" + text)):
        (case,) = prop.cases
        assert case.lower.tolist() == expected.lower.tolist() and case.upper.tolist() == expected.upper.tolist()
        assert case.disjuncts[0][0].tolist() == [[1.0, -1.0]]


def test_a_term_without_input_bounds_over_an_unbounded_input_is_refused_by_the_reader():
    declarations = V1.replace("(assert (>= X_0 0))\n(assert (<= X_0 1))\n", "")
    with pytest.raises(InputError, match=r"inputs \[0\] .* no lower or upper bound"):  # was a Case over (-inf, inf)
        parse_text(declarations + "(assert (or (and (>= X_0 0) (<= X_0 1) (<= Y_0 Y_1)) (<= Y_0 0)))")


def test_a_folder_is_not_called_missing(tmp_path):
    with pytest.raises(InputError, match="is a folder, not a file"):
        read_property(tmp_path)


def test_an_output_name_no_output_has_is_refused_when_the_model_has_several():
    prop = parse_text("(vnnlib-version <2.0>)\n(declare-network f (declare-input X real [1] \"x\") "
                      "(declare-output Y real [2] \"probs\"))\n(assert (>= X[0] 0))\n(assert (<= X[0] 1))\n"
                      "(assert (<= Y[0] Y[1]))\n")
    two = SimpleNamespace(outputs=[SimpleNamespace(onnx_name="logits"), SimpleNamespace(onnx_name="hidden")])
    with pytest.raises(InputError, match=r"declared as 'probs'; the model's outputs are \['logits', 'hidden'\]"):
        output_index(two, prop)
    two.outputs[1].onnx_name = "probs"
    assert output_index(two, prop) == 1
    assert output_index(SimpleNamespace(outputs=[SimpleNamespace(onnx_name="dense")]), prop) == 0  # renamed by an exporter


def test_instance_lists_with_a_byte_order_mark_or_another_encoding(tmp_path):
    path = tmp_path / "instances.csv"
    path.write_bytes(b"\xef\xbb\xbfnet.onnx,prop.vnnlib,5\r\n")
    assert read_instances(path, None) == [(tmp_path / "net.onnx", tmp_path / "prop.vnnlib", 5.0)]
    path.write_bytes("caf\xe9.onnx,prop.vnnlib,5\n".encode("latin-1"))
    with pytest.raises(InputError, match="cannot read instance list .*UnicodeDecodeError"):
        read_instances(path, None)
