"""Converters registered by (ONNX op type, since-version).

A model's opset resolves, through the op's schema, to the since-version of the op definition in
force; the converter registered with the largest `since` not above it handles the node. Each
converter declares the attributes it understands, so an attribute nobody handles is refused
instead of silently ignored.

The contract (`ConverterFn`): a converter gets the ONNX node, its inputs in order (a constant
array, a symbolic `Sym`, or None for an omitted optional input) and the conversion `Context`, and
returns one value per node output in order (None for outputs it does not produce; trailing ones
may be left out). It refuses what it cannot convert exactly with `ctx.unsupported(...)` or
`parsers.errors.Refusal`, asks for graph inputs it needs as constants with `ctx.constant(...)`, and
raises nothing else on purpose: any other exception is reported as a bug naming the node.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import onnx

if TYPE_CHECKING:
    from parsers.context import Context
    from parsers.values import Value

    Outputs = list[Value | None]


class ConverterFn(Protocol):
    """(node, inputs, ctx) -> one value per node output; see the module docstring."""

    def __call__(self, node: onnx.NodeProto, inputs: Sequence[Value | None], ctx: Context, /) -> Outputs: ...


@dataclass(frozen=True)
class Converter:
    op_type: str
    since: int
    attributes: frozenset[str]
    fn: ConverterFn


_REGISTRY: dict[str, list[Converter]] = {}


def converter(op_type: str, since: int = 1, attributes: tuple[str, ...] = ()) -> Callable[[ConverterFn], ConverterFn]:
    """Register `fn` for `op_type` from opset `since` on, understanding `attributes`."""

    def register(fn: ConverterFn) -> ConverterFn:
        parameters = [p for p in inspect.signature(fn).parameters.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if len(parameters) != 3:
            raise TypeError(f"converter {fn.__name__} for {op_type} must take (node, inputs, ctx)")
        entries = _REGISTRY.setdefault(op_type, [])
        if any(c.since == since for c in entries):
            raise ValueError(f"two converters registered for {op_type} since opset {since}")
        entries.append(Converter(op_type, since, frozenset(attributes), fn))
        entries.sort(key=lambda c: c.since)
        return fn

    return register


def since_version(op_type: str, opset: int, domain: str = "") -> int | None:
    try:
        return onnx.defs.get_schema(op_type, opset, domain).since_version
    except onnx.defs.SchemaError:
        return None


def lookup(op_type: str, opset: int) -> Converter | None:
    version = since_version(op_type, opset)
    if version is None:
        return None
    candidates = [c for c in _REGISTRY.get(op_type, ()) if c.since <= version]
    return candidates[-1] if candidates else None


def registered_ops() -> dict[str, list[int]]:
    return {op: [c.since for c in entries] for op, entries in sorted(_REGISTRY.items())}
