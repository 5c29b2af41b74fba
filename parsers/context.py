"""Conversion state shared by the op converters: values in scope, attributes, and the
generic mechanisms every converter leans on (data movement, broadcasting, materialising)."""

from __future__ import annotations

import re

import numpy as np
import onnx
from onnx import helper

from parsers.budget import Budget, Meter
from parsers.builder import GraphBuilder
from parsers.errors import ConstantRequired, Refusal
from parsers.reference import run_node
from parsers.values import Sym, Value
from verifier import ir
from verifier.errors import UnsupportedOperator


def node_label(node: onnx.NodeProto) -> str:
    return node.name or (node.output[0] if node.output else node.op_type)


def clean_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_./-]+", "_", name).strip("/_.") or "node"


class Context:
    def __init__(self, builder: GraphBuilder, opset: int, budget: Budget | None = None,
                 domains: dict[str, int] | None = None) -> None:
        self.builder = builder
        self.opset = opset
        self.domains = domains or {}  # the opset the model imports for each other domain, for messages
        self.meter = Meter(budget or Budget())
        self.scopes: list[dict[str, Value]] = [{}]
        self.cells: list = []
        self.notes: list[str] = []
        self.prefix = ""
        self.scope_prefix = ""  # e.g. "loop0/iter3/" while a loop body is unrolled
        self._counters: dict[str, int] = {}
        # what some symbolic values are known to be, for formulas spread over several ops:
        # IR node -> ("abs", x) or ("one_plus_abs", x) (PyTorch writes softsign as x / (1 + |x|))
        self.derived: dict[str, tuple[str, Sym]] = {}

    # -- values ----------------------------------------------------------------------
    def lookup(self, name: str) -> Value:
        for scope in reversed(self.scopes):
            if name in scope:
                return scope[name]
        raise KeyError(name)

    def bind(self, name: str, value: Value) -> None:
        if name:
            self.scopes[-1][name] = value

    def fresh_prefix(self, stem: str) -> str:
        """`lstm0`, `lstm1`, ... for recurrent cells, so IR names say where they came from."""
        k = self._counters.get(stem, 0)
        self._counters[stem] = k + 1
        return f"{stem}{k}"

    # -- attributes ------------------------------------------------------------------
    def attrs(self, node: onnx.NodeProto) -> dict:
        """The node's attributes with the schema's defaults filled in."""
        values = {}
        try:
            schema = onnx.defs.get_schema(node.op_type, self.opset, node.domain)
            for name, attr in schema.attributes.items():
                if attr.default_value is not None and attr.default_value.type != 0:
                    values[name] = helper.get_attribute_value(attr.default_value)
        except onnx.defs.SchemaError:
            pass  # an op the schema does not know: only its own attributes
        for attr in node.attribute:
            values[attr.name] = helper.get_attribute_value(attr)
        for key, value in list(values.items()):
            if isinstance(value, bytes):
                values[key] = value.decode()
            elif isinstance(value, list) and value and isinstance(value[0], bytes):
                values[key] = [v.decode() for v in value]
        return values

    def unsupported(self, node: onnx.NodeProto, reason: str = "") -> UnsupportedOperator:
        return UnsupportedOperator(node.op_type, self.opset, node_label(node), reason)

    def constant(self, node: onnx.NodeProto, value: Value | None, what: str) -> np.ndarray | None:
        """`value` as a constant array. A graph input used directly here (weights fed as inputs) is
        reported to the loader, which binds it from the feeds; anything else computed from the
        inputs is refused."""
        if value is None or not isinstance(value, Sym):
            return value
        source = self.builder.nodes.get(value.node)
        if isinstance(source, ir.Input):
            raise ConstantRequired(source.onnx_name, node.op_type, node_label(node), what)
        raise self.unsupported(node, f"{what} must be a constant, not computed from the model's inputs")

    def run(self, node: onnx.NodeProto, inputs: list, opset: int | None = None) -> list:
        """run_node with the output sizes checked first; a failure of the reference evaluator on
        these values is a refusal (the model does not compute on them), not a crash."""
        try:
            return run_node(node, inputs, opset or self.opset, self.meter.budget.max_elements)
        except Refusal:
            raise
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise Refusal(f"the operator fails on these shapes/values: {first}") from exc

    # -- generic mechanisms ----------------------------------------------------------
    def materialize(self, value: Value, like: Sym | None = None) -> Sym:
        """A symbolic tensor for `value`; constants are only allowed where a converter has
        no constant path, and then become bias-only affine maps of some symbolic input."""
        if isinstance(value, Sym):
            return value
        if like is None:
            raise TypeError("constant without a symbolic reference")
        b = self.builder
        arr = np.asarray(value, dtype=np.float64)
        zero = b.select(like.node, np.zeros(arr.size, dtype=np.int64), f"{self.prefix}/const_src")
        node = b.affine(zero, np.zeros(arr.size), arr.reshape(-1), f"{self.prefix}/const")
        return Sym(node, arr.shape, None)

    def move(self, node: onnx.NodeProto, inputs: list[Value | None], data: tuple[int, ...],
             batch_axes: list[int | None], opset: int | None = None) -> list[Value]:
        """Apply a data-movement op (Transpose, Gather, Slice, Concat, ...) by running it on
        integer arrays of element ids: output element k is input element ids[k]. Constant data
        inputs get negative ids and come back as a bias."""
        id_inputs = list(inputs)
        sources: list[str] = []
        const_parts: list[np.ndarray] = []
        offset = n_const = 0
        for k in data:
            value = inputs[k]
            if value is None:
                continue
            if isinstance(value, Sym):
                id_inputs[k] = offset + np.arange(value.size, dtype=np.int64).reshape(value.shape)
                sources.append(value.node)
                offset += value.size
            else:
                arr = np.asarray(value)
                id_inputs[k] = -(1 + n_const + np.arange(arr.size, dtype=np.int64)).reshape(arr.shape)
                const_parts.append(arr.astype(np.float64).reshape(-1))
                n_const += arr.size
        moved = self.run(node, id_inputs, opset)
        consts = np.concatenate(const_parts) if const_parts else np.zeros(0)
        results: list[Value] = []
        source: str | None = None
        for out, batch_axis in zip(moved, batch_axes):
            if out is None:
                results.append(None)
                continue
            ids = np.asarray(out, dtype=np.int64).reshape(-1)
            if ids.size and (ids < 0).all():
                results.append(consts[-ids - 1].reshape(out.shape))
                continue
            if source is None:
                source = self.builder.concat(sources, f"{self.prefix}/sources")
            is_sym = ids >= 0
            selected = self.builder.select(source, np.where(is_sym, ids, 0), f"{self.prefix}")
            if not is_sym.all():
                bias = np.where(is_sym, 0.0, consts[np.where(is_sym, 0, -ids - 1)])
                selected = self.builder.affine(selected, is_sym.astype(np.float64), bias, f"{self.prefix}/fill")
            results.append(Sym(selected, tuple(out.shape), batch_axis))
        return results

    def broadcast(self, value: Sym, shape: tuple[int, ...], batch_axis: int | None) -> Sym:
        """Expand a symbolic tensor to `shape` (numpy broadcasting) by repeating elements."""
        if value.shape == tuple(shape):
            return value
        count = int(np.prod(shape, dtype=np.float64))
        if count > self.meter.budget.max_elements:
            raise Refusal(f"broadcasting to {tuple(shape)} gives {count:,} elements, over the limit max_elements="
                          f"{self.meter.budget.max_elements:,}")
        ids = np.arange(value.size, dtype=np.int64).reshape(value.shape)
        ids = np.broadcast_to(ids, shape)
        node = self.builder.select(value.node, ids.reshape(-1), f"{self.prefix}/broadcast")
        return Sym(node, tuple(shape), batch_axis)
