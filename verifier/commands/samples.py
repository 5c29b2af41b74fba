"""Sample files (--input, --labels) matched to the model's inputs, for every command that computes.

The perturbed input comes from a .npy, or from an .npz as 'x' (or under the input's own name);
every other model input (initial states, masks, fed weights) comes from the .npz under its own
name, stacked on its batch axis like 'x', and is held fixed at those values. Dynamic dimensions
(a symbolic time axis) are taken from the arrays: the graph is specialised to them once here, so
shapes, frames and classes can be checked before any work. Layout mistakes get a message that
says which axis mismatched and what the model expects."""

from __future__ import annotations

import argparse
import hashlib
import sys
from dataclasses import dataclass, field

import numpy as np

from verifier import ir
from verifier.commands.arrays import list_members, read_arrays
from verifier.errors import InputError

LABELS_KEY = "y"
DEFAULT_KEY = "x"


@dataclass
class Samples:
    """Samples sliced by --start/--limit, in the model's layout, with labels if known.

    `x` is the perturbed input; `others` the model's other inputs by ONNX name (their batch axes in
    `other_axes`). `graph` is the model specialised to these shapes (the loaded graph when nothing
    was dynamic); the engine specialises each chunk again from its own feeds."""

    x: np.ndarray
    labels: np.ndarray | None
    first_index: int
    batch_axis: int | None
    input_name: str = DEFAULT_KEY
    others: dict[str, np.ndarray] = field(default_factory=dict)
    other_axes: dict[str, int | None] = field(default_factory=dict)
    graph: ir.Graph | None = None

    @property
    def count(self) -> int:
        return 1 if self.batch_axis is None else self.x.shape[self.batch_axis]

    @property
    def labels_source(self) -> str:
        """'given' (file or --labels) or 'predicted' (the model's own prediction is the label)."""
        return "predicted" if self.labels is None else "given"

    def take(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray | None]:
        if self.batch_axis is None:
            return self.x, self.labels
        index = np.arange(start, stop)
        labels = None if self.labels is None else self.labels[start:stop]
        return np.take(self.x, index, axis=self.batch_axis), labels

    def feeds(self, positions: list[int]) -> np.ndarray | dict[str, np.ndarray]:
        """The samples at these positions: the perturbed array alone for a single-input model,
        otherwise every input by ONNX name (what the engine's x argument takes)."""
        x = self.x if self.batch_axis is None else np.take(self.x, positions, axis=self.batch_axis)
        if not self.others:
            return x
        feeds = {self.input_name: x}
        for name, array in self.others.items():
            axis = self.other_axes[name]
            feeds[name] = array if axis is None else np.take(array, positions, axis=axis)
        return feeds

    def all_feeds(self) -> np.ndarray | dict[str, np.ndarray]:
        """Every sample, in the form `feeds` returns (no copy)."""
        return {self.input_name: self.x, **self.others} if self.others else self.x

    def digest(self, position: int) -> str:
        """sha256 of one sample (all its inputs, and its label when given): --resume refuses rows
        recorded for different samples."""
        hasher = hashlib.sha256()
        arrays = {self.input_name: (self.x, self.batch_axis),
                  **{name: (array, self.other_axes[name]) for name, array in sorted(self.others.items())}}
        for name, (array, axis) in arrays.items():
            row = array if axis is None else np.take(array, [position], axis=axis)
            row = np.ascontiguousarray(row)
            hasher.update(f"{name}|{row.dtype.str}|{row.shape}|".encode())
            hasher.update(row.tobytes())
        if self.labels is not None:
            hasher.update(f"label|{int(self.labels[position])}".encode())
        return hasher.hexdigest()


def read_input_array(path: str, what: str = "input") -> np.ndarray:
    """The 'x' array of a .npy/.npz (`check --input`), as real numbers."""
    data = read_arrays(path, what, keys=[DEFAULT_KEY])
    if isinstance(data, dict):
        if DEFAULT_KEY not in data:
            raise InputError(f"{path} has arrays {list_members(path)}; an .npz input needs '{DEFAULT_KEY}'")
        data = data[DEFAULT_KEY]
    return as_real(data, f"{path}")


def load_samples(graph: ir.Graph, args: argparse.Namespace, need_labels: bool = True) -> Samples:
    """--input (and --labels) for `graph`, checked against every model input and sliced by
    --start/--limit. Refuses, in one line, anything that does not fit."""
    from verifier.bounds import perturbed_input

    node = perturbed_input(graph, args.input_name)
    others = [n for n in graph.inputs if n is not node]
    input_names = {n.onnx_name for n in graph.inputs}
    keys = [node.onnx_name, DEFAULT_KEY, *(n.onnx_name for n in others)]
    if LABELS_KEY not in input_names:
        keys.append(LABELS_KEY)
    data = read_arrays(args.input, "input", keys=list(dict.fromkeys(keys)))
    labels = None
    if isinstance(data, dict):
        key = node.onnx_name if node.onnx_name in data else DEFAULT_KEY
        if key not in data:
            named = "" if node.onnx_name == DEFAULT_KEY else f" (or {node.onnx_name!r})"
            raise InputError(f"{args.input} has arrays {list_members(args.input)}; an .npz input needs "
                             f"'{DEFAULT_KEY}'{named} for the perturbed input (and optionally 'y')")
        unused = [m for m in list_members(args.input) if m not in keys]
        if unused:  # e.g. an initial state for a model that takes none: say so rather than drop it quietly
            print(f"popqorn: warning: {args.input}: ignoring array(s) {unused}: this model reads only "
                  f"{list(dict.fromkeys(keys))}", file=sys.stderr)
        x = data[key]
        labels = data.get(LABELS_KEY) if LABELS_KEY not in input_names else None
        missing = [n for n in others if n.onnx_name not in data]
    else:
        key, x = DEFAULT_KEY, data
        missing = others
    if missing:
        wanted = ", ".join(f"{n.onnx_name!r} {_expected(n)}" for n in missing)
        raise InputError(f"the model also takes input(s) {wanted}; put them in an .npz next to "
                         f"'{DEFAULT_KEY}' under those names, each stacked on its batch axis (they are held fixed)")
    if getattr(args, "labels", None):
        loaded = read_arrays(args.labels, "labels")
        if isinstance(loaded, dict):
            raise InputError(f"labels file {args.labels} must be a .npy array")
        labels = loaded
    arrays = {node.onnx_name: check_layout(node, as_real(x, f"{args.input}: {key!r}"), f"{args.input}: {key!r}")}
    for other in others:
        arrays[other.onnx_name] = check_layout(other, as_real(data[other.onnx_name], f"{args.input}: {other.onnx_name!r}"),
                                               f"{args.input}: {other.onnx_name!r}")
    total = _sample_count(graph, arrays, args.input)
    if labels is not None:
        labels = check_labels(labels, total)
    if args.start < 0 or args.start >= total:
        raise InputError(f"--start {args.start} out of range: {total} samples")
    if args.limit is not None and args.limit < 1:
        raise InputError("--limit must be at least 1")
    stop = total if args.limit is None else min(total, args.start + args.limit)
    positions = np.arange(args.start, stop)
    sliced = {name: (array if graph.input_named(name).batch_axis is None
                     else np.take(array, positions, axis=graph.input_named(name).batch_axis))
              for name, array in arrays.items()}
    samples = Samples(x=sliced[node.onnx_name], labels=None if labels is None else labels[positions],
                      first_index=int(args.start) if node.batch_axis is not None else 0,
                      batch_axis=node.batch_axis, input_name=node.onnx_name,
                      others={n.onnx_name: sliced[n.onnx_name] for n in others},
                      other_axes={n.onnx_name: n.batch_axis for n in others})
    samples.graph = _specialised(graph, samples)
    return samples


def _specialised(graph: ir.Graph, samples: Samples) -> ir.Graph:
    """The graph for these samples' shapes, from the first sample (shapes, frames and the output
    size are the same for all of them)."""
    if graph.specializer is None:
        return graph
    first = samples.feeds([0])
    feeds = first if isinstance(first, dict) else {samples.input_name: first}
    concrete, _ = graph.specialize(feeds)
    return concrete


def _sample_count(graph: ir.Graph, arrays: dict[str, np.ndarray], path: str) -> int:
    counts = {name: array.shape[graph.input_named(name).batch_axis] for name, array in arrays.items()
              if graph.input_named(name).batch_axis is not None}
    if len(set(counts.values())) > 1:
        described = ", ".join(f"{name!r} {count}" for name, count in counts.items())
        raise InputError(f"{path}: the inputs hold different numbers of samples on their batch axes ({described})")
    return next(iter(counts.values()), 1)


def as_real(array: np.ndarray, what: str) -> np.ndarray:
    """Real numbers as float32 (float64 kept; integers exact in float64); anything else refused."""
    kind = array.dtype.kind
    if kind == "c":
        raise InputError(f"{what} holds complex numbers (dtype {array.dtype}); popqorn takes real inputs "
                         "and would lose the imaginary part")
    if kind not in "fiu":
        raise InputError(f"{what} has dtype {array.dtype}; real numbers are required")
    if array.dtype == np.float64:
        return array
    if kind == "f":
        return array.astype(np.float32, copy=False)
    return array.astype(np.float64)


def check_labels(labels: np.ndarray | list, count: int | None = None, classes: int | None = None,
                 what: str = "label") -> np.ndarray:
    """One rule for labels (and --target) in every command: whole numbers (integer dtype, or floats
    with no fractional part), one per sample, within 0..classes-1. Returns int64."""
    array = np.asarray(labels)
    kind = array.dtype.kind
    if kind not in "iuf":
        raise InputError(f"{what}s have dtype {array.dtype}; integer class indices are required")
    if array.ndim > 1 and count is not None and array.shape[0] == count and array.size != count:
        raise InputError(f"{what}s have shape {array.shape}: one integer class per sample is required "
                         "(one-hot rows? take their argmax)")
    array = array.reshape(-1)
    if kind == "f":
        finite = np.isfinite(array)
        bad = array[~finite] if not finite.all() else array[np.mod(array, 1) != 0]  # no mod of inf (a warning)
        if bad.size:
            raise InputError(f"{what}s must be whole numbers (class indices), not {bad[0]:g}")
    if count is not None and array.shape[0] != count:
        raise InputError(f"{array.shape[0]} {what}s for {count} samples")
    if array.size and (array.min() < -2**62 or array.max() > 2**62):
        raise InputError(f"{what} {array.max():g} out of range")
    array = array.astype(np.int64)
    if classes is not None:
        bad = array[(array < 0) | (array >= classes)]
        if bad.size:
            raise InputError(f"{what} {int(bad[0])} out of range: the model has {classes} classes (0..{classes - 1})")
    return array


def _axis_name(node: ir.Input, axis: int) -> str:
    if axis == node.batch_axis:
        return "batch"
    if axis == node.frame_axis:
        return "time"
    if node.frame_axis is not None and axis == len(node.shape) - 1:
        return "features"
    return f"axis {axis}"


def _expected(node: ir.Input) -> str:
    """The model's layout, e.g. (N, T=4, F=196) or (N, T=?, F=8) for a dynamic time axis."""
    parts = []
    for axis, dim in enumerate(node.shape):
        if axis == node.batch_axis:
            parts.append("N")
            continue
        value = "?" if dim < 0 else str(dim)
        label = {"time": "T=", "features": "F="}.get(_axis_name(node, axis), "")
        parts.append(label + value)
    return f"({', '.join(parts)})"


def _fits(node: ir.Input, shape: tuple[int, ...]) -> bool:
    return len(shape) == len(node.shape) and all(
        d == e or k == node.batch_axis or e < 0 for k, (d, e) in enumerate(zip(shape, node.shape)))


def check_layout(node: ir.Input, array: np.ndarray, what: str) -> np.ndarray:
    """`array` must be `node`'s layout with samples on its batch axis (open dimensions take any
    length). Otherwise say which axis is wrong and what the model expects."""
    shape = tuple(array.shape)
    if _fits(node, shape):
        if any(d == 0 for k, d in enumerate(shape)):
            raise InputError(f"{what} has shape {shape}: no samples / an empty axis")
        return array
    model = f"the model's input {node.onnx_name!r} is {_expected(node)}"
    batch = node.batch_axis
    if batch is not None and len(shape) == len(node.shape) - 1 and _fits(node, shape[:batch] + (1,) + shape[batch:]):
        raise InputError(f"{what} has shape {shape}: a single sample without the batch axis; {model} with the batch "
                         f"on axis {batch}: add that axis (e.g. x[None] or np.expand_dims(x, {batch}))")
    if len(shape) != len(node.shape):
        raise InputError(f"{what} has {len(shape)} axes {shape}; {model} ({len(node.shape)} axes, samples on the "
                         f"{'batch axis' if batch is not None else 'model has no batch axis'})")
    frame = node.frame_axis
    if batch is not None and frame is not None:
        swapped = list(shape)
        swapped[batch], swapped[frame] = swapped[frame], swapped[batch]
        if _fits(node, tuple(swapped)):
            given, wanted = ("batch-first", "time-major") if frame < batch else ("time-major", "batch-first")
            raise InputError(f"{what} has shape {shape}, which looks {given}; {model} ({wanted}): swap the batch "
                             f"and time axes (np.swapaxes(x, {batch}, {frame}))")
    wrong = [f"axis {k} ({_axis_name(node, k)}) has {d}, expected {e}"
             for k, (d, e) in enumerate(zip(shape, node.shape)) if k != batch and e >= 0 and d != e]
    raise InputError(f"{what} has shape {shape}: {'; '.join(wrong)} -- {model}")
