"""The ONNX backend node cases for LSTM / GRU / RNN, generated at test time from
the Python definitions the onnx wheel ships: each case's expected outputs are the spec's."""

from __future__ import annotations

import importlib
import inspect

import numpy as np
import onnx
import pytest
from onnx import helper

import parsers
import verifier


def collect(module_name: str) -> list[tuple[str, onnx.NodeProto, list, list, list]]:
    """(case name, node, inputs, outputs, opset imports) for every `expect` call of a case module."""
    module = importlib.import_module(f"onnx.backend.test.case.node.{module_name}")
    found = []

    def expect(node, inputs, outputs, name, **kwargs):
        found.append((name, node, list(inputs), list(outputs), kwargs))

    original = module.expect
    module.expect = expect
    try:
        for _, case in inspect.getmembers(module, inspect.isclass):
            for attribute in vars(case):
                if attribute.startswith("export"):
                    getattr(case, attribute)()
    finally:
        module.expect = original
    return found


def to_model(node: onnx.NodeProto, inputs: list, outputs: list, kwargs: dict) -> onnx.ModelProto:
    graph_inputs = [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.asarray(v).dtype), np.shape(v))
                    for name, v in zip([n for n in node.input if n], inputs)]
    graph_outputs = [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.asarray(v).dtype), np.shape(v))
                     for name, v in zip(node.output, outputs) if name]
    graph = helper.make_graph([node], "case", graph_inputs, graph_outputs)
    opsets = kwargs.get("opset_imports") or [helper.make_opsetid("", onnx.defs.onnx_opset_version())]
    return helper.make_model(graph, opset_imports=opsets)


RECURRENT = [case for name in ("lstm", "gru", "rnn") for case in collect(name)]


@pytest.mark.parametrize("case", RECURRENT, ids=lambda c: c[0])
def test_recurrent_backend_cases(case, tmp_path):
    """As the conformance suite runs them: W, R, B (and sequence_lens, initial states, P) are graph
    inputs, fed at run time; the ones a converter needs as constants are bound from the feeds."""
    name, node, inputs, outputs, kwargs = case
    path = tmp_path / f"{name}.onnx"
    onnx.save(to_model(node, inputs, outputs, kwargs), path)
    graph = parsers.load_onnx(path)
    assert graph.specializer is not None
    feeds = dict(zip([n for n in node.input if n], inputs))
    got = verifier.evaluate(graph, feeds)
    for expected, value in zip(outputs, got):
        assert np.shape(expected) == value.shape
        assert np.abs(np.asarray(expected, dtype=np.float64) - value).max() <= 1e-5
    _, taken = graph.specialize(feeds)
    assert {"W", "R"} <= set(feeds) - set(taken)  # held fixed, not graph inputs any more
    assert node.input[0] in taken
