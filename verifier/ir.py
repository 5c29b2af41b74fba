"""The internal representation: a recurrent network unrolled into a small DAG of vector nodes.

Why this shape: the bound-propagation engine only needs to know, per node, how a sample's
vector is computed from its inputs. Every node holds a flat float vector per sample (C order
of the tensor it stands for); the engine adds the batch dimension. Nodes refer to each other by
name, and the graph lists them in topological order, so the IR is plain data: bounds, values
and relaxations live in dicts keyed by node name, never on the nodes.

Seven node kinds cover RNN/LSTM/GRU exports:
  Input       a graph input (or an initial state fed as input)
  Affine      y = W·x + b, W applied to each consecutive block of x (a MatMul on [T, 1, H]
              is one Affine with T blocks), or an elementwise scale when W is 1-D
  Add         sum of same-size vectors
  Activation  elementwise unary function (sigmoid, tanh, relu, clip, ...)
  Product     elementwise product left_fn(a) * right_fn(b) of two bounded vectors; the fused
              forms sigmoid(x)*tanh(y) and sigmoid(x)*y are what POPQORN bounds jointly
  Concat      concatenation of vectors
  Select      y = x[indices]: slices, gathers, splits, transposes, reversals, broadcasts
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import NoReturn

import numpy as np


class Act(enum.Enum):
    """Elementwise activations the engine knows. Parametrised ONNX activations that are affine
    compositions of these (Affine, ScaledTanh, HardSigmoid) are decomposed by the parser."""

    SIGMOID = "sigmoid"
    TANH = "tanh"
    RELU = "relu"
    LEAKY_RELU = "leaky_relu"  # alpha: negative slope
    CLIP = "clip"  # alpha: min, beta: max (may be +-inf)
    ELU = "elu"  # alpha
    SOFTPLUS = "softplus"
    SOFTSIGN = "softsign"
    THRESHOLDED_RELU = "thresholded_relu"  # alpha: threshold; x if x > alpha else 0


@dataclass(frozen=True)
class ActivationFn:
    """An activation together with its parameters (meaning depends on the kind, see Act)."""

    kind: Act
    alpha: float = 0.0
    beta: float = 0.0

    def __str__(self) -> str:
        params = {
            Act.LEAKY_RELU: f"({self.alpha:g})",
            Act.CLIP: f"({self.alpha:g},{self.beta:g})",
            Act.ELU: f"({self.alpha:g})",
            Act.THRESHOLDED_RELU: f"({self.alpha:g})",
        }.get(self.kind, "")
        return self.kind.value + params


SIGMOID = ActivationFn(Act.SIGMOID)
TANH = ActivationFn(Act.TANH)
RELU = ActivationFn(Act.RELU)


@dataclass(frozen=True, eq=False)
class Input:
    """A graph input. `shape` is the ONNX shape with the batch axis set to 1 (so its C-order
    flattening is the per-sample vector); `batch_axis` is None when the model has none.
    `frame_axis` is the time axis the per-frame threat model groups elements by."""

    name: str
    shape: tuple[int, ...]
    batch_axis: int | None
    frame_axis: int | None
    onnx_name: str

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def num_frames(self) -> int:
        return 1 if self.frame_axis is None else self.shape[self.frame_axis]

    def frame_of_element(self) -> np.ndarray:
        """Frame index of every element of the flat per-sample vector."""
        if self.frame_axis is None:
            return np.zeros(self.size, dtype=np.int64)
        return np.unravel_index(np.arange(self.size), self.shape)[self.frame_axis]


@dataclass(frozen=True, eq=False)
class Affine:
    """y = W·x + b. 2-D weight (out, in): applied to each of the size/in consecutive blocks of x.
    1-D weight: elementwise scale of the whole vector. bias: full output length, or None."""

    name: str
    input: str
    weight: np.ndarray
    bias: np.ndarray | None = None

    def output_size(self, input_size: int) -> int:
        if self.weight.ndim == 1:
            return input_size
        out_features, in_features = self.weight.shape
        return input_size // in_features * out_features


@dataclass(frozen=True, eq=False)
class Add:
    """Sum of same-size vectors."""

    name: str
    inputs: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class Activation:
    name: str
    input: str
    fn: ActivationFn


@dataclass(frozen=True, eq=False)
class Product:
    """left_fn(left) * right_fn(right), elementwise; a None fn is the identity.
    With left_fn = sigmoid and right_fn in {tanh, None} this is an LSTM/GRU gate product,
    bounded jointly by 2-D planes on the box of (left, right)."""

    name: str
    left: str
    right: str
    left_fn: ActivationFn | None = None
    right_fn: ActivationFn | None = None


@dataclass(frozen=True, eq=False)
class Concat:
    name: str
    inputs: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class Select:
    """y = x[indices] on the flat vector (indices may repeat or reorder)."""

    name: str
    input: str
    indices: np.ndarray


Node = Input | Affine | Add | Activation | Product | Concat | Select


def assert_never(value: NoReturn) -> NoReturn:
    """The end of an exhaustive `match` over IR nodes (typing.assert_never, for Python 3.10 too):
    a type checker flags a forgotten node kind, and at run time it is an error, not a silent skip."""
    raise TypeError(f"not an IR node: {value!r}")


def node_inputs(node: Node) -> tuple[str, ...]:
    match node:
        case Input():
            return ()
        case Affine(input=x) | Activation(input=x) | Select(input=x):
            return (x,)
        case Add(inputs=xs) | Concat(inputs=xs):
            return xs
        case Product(left=a, right=b):
            return (a, b)
        case _:
            assert_never(node)


class Postprocess(enum.Enum):
    """A trailing op the parser kept out of the IR because it does not change the argmax.
    `evaluate` applies it so outputs still match the ONNX model; bounds are on the logits."""

    SOFTMAX = "softmax"
    LOG_SOFTMAX = "log_softmax"


@dataclass(frozen=True)
class Output:
    """A graph output: the IR node whose vector holds it, and how to reshape it back.
    `shape` has the batch axis set to 1, like Input.shape."""

    onnx_name: str
    node: str
    shape: tuple[int, ...]
    batch_axis: int | None
    postprocess: Postprocess | None = None
    postprocess_axis: int = -1

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass(frozen=True)
class CellInfo:
    """What `inspect` reports about one recurrent cell found in the model."""

    name: str
    kind: str  # "LSTM", "GRU", "RNN", "Loop", "Scan"
    direction: str
    steps: int
    input_size: int
    hidden_size: int
    details: str = ""


@dataclass(frozen=True)
class Graph:
    """One sample's computation, nodes in topological order."""

    nodes: tuple[Node, ...]
    inputs: tuple[Input, ...]
    outputs: tuple[Output, ...]
    cells: tuple[CellInfo, ...] = ()
    notes: tuple[str, ...] = ()
    opset: int = 0
    producer: str = ""
    specializer: Callable[[Mapping[str, np.ndarray]], Graph] | None = field(default=None, repr=False, compare=False)
    _index: dict[str, Node] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        index = {}
        for node in self.nodes:
            if node.name in index:
                raise ValueError(f"duplicate IR node name {node.name!r}")
            missing = [x for x in node_inputs(node) if x not in index]
            if missing:
                raise ValueError(f"IR node {node.name!r} uses {missing} before they are defined")
            index[node.name] = node
        for out in self.outputs:
            if out.node not in index:
                raise ValueError(f"output {out.onnx_name!r} refers to unknown node {out.node!r}")
        self._index.update(index)

    def __getitem__(self, name: str) -> Node:
        return self._index[name]

    def sizes(self) -> dict[str, int]:
        """Vector length of every node, computed once from the inputs (verifier.rules)."""
        from verifier.rules import rule  # the rule table imports this module

        sizes: dict[str, int] = {}
        for node in self.nodes:
            sizes[node.name] = rule(node).size(node, sizes)
        return sizes

    def specialize(self, feeds: Mapping[str, np.ndarray]) -> tuple[Graph, dict[str, np.ndarray]]:
        """The concrete graph for these feeds, and the feeds it takes.

        Why: a model whose input dimensions are symbolic (a dynamic time axis), or whose constants
        are fed as graph inputs (weights, initial states that converters need as values), can only
        be unrolled once the feeds are known. The front end then sets `specializer`, which builds
        (and caches) the graph for the feeds' shapes and constant values; inputs folded into that
        graph are dropped from the feeds. Graphs without a specializer return themselves."""
        if self.specializer is None:
            return self, dict(feeds)
        graph = self.specializer(feeds)
        taken = {node.onnx_name for node in graph.inputs}
        return graph, {name: value for name, value in feeds.items() if name in taken}

    def input_named(self, onnx_name: str) -> Input:
        for node in self.inputs:
            if node.onnx_name == onnx_name:
                return node
        raise KeyError(onnx_name)


def require_graph(graph: object, caller: str) -> Graph:
    """The API's entry points take the Graph that parsers.load_onnx returns; anything else (None,
    a path, an onnx.ModelProto) is refused by name instead of failing deep inside as AttributeError."""
    if not isinstance(graph, Graph):
        from verifier.errors import InputError

        raise InputError(f"{caller} takes the verifier.ir.Graph that parsers.load_onnx returns "
                         f"(load the model with it first), not {type(graph).__name__}")
    return graph
