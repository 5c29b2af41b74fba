"""How conversion problems travel inside the front end, and how they surface.

Only deliberate refusals reach the user as `UnsupportedOperator` (op and node named). A helper
that does not know the node raises `Refusal`; `walk` names the node. Anything else a converter
raises is a bug and surfaces as `ConverterBug`, an internal error that names the node too.
`ConstantRequired` is not an error at all: it tells the loader that a graph input must be bound
from the feeds (weights fed as inputs) before the graph can be built.
"""

from __future__ import annotations

from verifier.errors import UnsupportedOperator


class Refusal(Exception):
    """This value or shape cannot be converted exactly (the reason is the message)."""


class ConverterBug(RuntimeError):
    """A converter failed in a way no model should cause: a bug in popqorn, not in the model."""

    def __init__(self, op_type: str, node_name: str, cause: BaseException | str) -> None:
        self.op_type, self.node_name = op_type, node_name
        self.cause = cause if isinstance(cause, str) else f"{type(cause).__name__}: {cause}"
        super().__init__(f"converter for {op_type} failed at node {node_name!r}: {self.cause}")

    def __reduce__(self):  # picklable (worker processes send errors back): the cause as text
        return type(self), (self.op_type, self.node_name, self.cause)


class BatchLayoutError(UnsupportedOperator):
    """A value's batch axis no longer has size one: samples would be mixed. Usually the input's batch
    axis was guessed wrong on a fixed-shape export; the loader then tries the other axes."""


class ConstantRequired(Exception):
    """A converter needs the value of graph input `input_name` (e.g. LSTM weights fed as inputs)."""

    def __init__(self, input_name: str, op_type: str, node_name: str, what: str) -> None:
        self.input_name, self.op_type, self.node_name, self.what = input_name, op_type, node_name, what
        super().__init__(f"{op_type} node {node_name!r} needs {what} (graph input {input_name!r}) as a constant")

    def __reduce__(self):
        return type(self), (self.input_name, self.op_type, self.node_name, self.what)
