"""Converters registered by (ONNX op type, since-version).

A model's opset resolves, through the op's schema, to the since-version of the op definition in
force; the converter registered with the largest `since` not above it handles the node. Each
converter declares the attributes it understands, so an attribute nobody handles is refused
instead of silently ignored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import onnx

ConverterFn = Callable[..., list]


@dataclass(frozen=True)
class Converter:
    op_type: str
    since: int
    attributes: frozenset[str]
    fn: ConverterFn


_REGISTRY: dict[str, list[Converter]] = {}


def converter(op_type: str, since: int = 1, attributes: tuple[str, ...] = ()) -> Callable[[ConverterFn], ConverterFn]:
    def register(fn: ConverterFn) -> ConverterFn:
        entries = _REGISTRY.setdefault(op_type, [])
        entries.append(Converter(op_type, since, frozenset(attributes), fn))
        entries.sort(key=lambda c: c.since)
        return fn

    return register


def since_version(op_type: str, opset: int, domain: str = "") -> int | None:
    try:
        return onnx.defs.get_schema(op_type, opset, domain).since_version
    except Exception:  # onnx raises SchemaError, not exported everywhere
        return None


def lookup(op_type: str, opset: int) -> Converter | None:
    version = since_version(op_type, opset)
    if version is None:
        return None
    candidates = [c for c in _REGISTRY.get(op_type, ()) if c.since <= version]
    return candidates[-1] if candidates else None


def registered_ops() -> dict[str, list[int]]:
    return {op: [c.since for c in entries] for op, entries in sorted(_REGISTRY.items())}
