"""Every registered converter has a one-node test in the test module mirroring its source module."""

from __future__ import annotations

import importlib

import parsers.loader  # noqa: F401  (registers the converters)
from parsers import registry

MODULES = ["comparison", "control_flow", "elementwise", "linear", "movement", "normalization", "recurrent", "reduce"]


def test_every_registered_converter_is_covered_by_its_module_test():
    covered: dict[str, str] = {}
    for name in MODULES:
        for op in importlib.import_module(f"tests.parsers.ops.test_{name}").COVERED:
            covered[op] = name
    registered = registry.registered_ops()
    assert set(registered) == set(covered), set(registered) ^ set(covered)
    for op, name in covered.items():
        source = importlib.import_module(f"parsers.ops.{name}")
        assert any(c.fn.__module__ == source.__name__ for c in registry._REGISTRY[op]), (op, name)


def test_converters_take_node_inputs_and_context():
    import pytest

    with pytest.raises(TypeError, match="must take"):
        registry.converter("NotAnOp")(lambda node, inputs: [])


def test_readme_lists_exactly_the_registered_operators():
    """README's operator list is what users read before exporting: it must not drift from the code."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    listed = re.search(r"<!-- operators -->\n(.*)\n<!-- /operators -->", readme).group(1)
    assert listed.split(", ") == sorted(registry.registered_ops())
