"""Conversion state shared by the op converters: values in scope, attributes, and the
generic mechanisms every converter leans on (data movement, broadcasting, materialising)."""

from __future__ import annotations

import re

import numpy as np
import onnx
from onnx import helper

from parsers.builder import GraphBuilder
from parsers.reference import run_node
from parsers.values import Sym, Value
from verifier.errors import UnsupportedOperator


def clean_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_./-]+", "_", name).strip("/_.") or "node"


class Context:
    def __init__(self, builder: GraphBuilder, opset: int) -> None:
        self.builder = builder
        self.opset = opset
        self.scopes: list[dict[str, Value]] = [{}]
        self.cells: list = []
        self.notes: list[str] = []
        self.prefix = ""
        self.scope_prefix = ""  # e.g. "loop0/iter3/" while a loop body is unrolled
        self._counters: dict[str, int] = {}

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
        except Exception:
            pass
        for attr in node.attribute:
            values[attr.name] = helper.get_attribute_value(attr)
        for key, value in list(values.items()):
            if isinstance(value, bytes):
                values[key] = value.decode()
            elif isinstance(value, list) and value and isinstance(value[0], bytes):
                values[key] = [v.decode() for v in value]
        return values

    def unsupported(self, node: onnx.NodeProto, reason: str = "") -> UnsupportedOperator:
        return UnsupportedOperator(node.op_type, self.opset, node.name or node.output[0], reason)

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
        moved = run_node(node, id_inputs, opset or self.opset)
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
        ids = np.arange(value.size, dtype=np.int64).reshape(value.shape)
        ids = np.broadcast_to(ids, shape)
        node = self.builder.select(value.node, ids.reshape(-1), f"{self.prefix}/broadcast")
        return Sym(node, tuple(shape), batch_axis)
