"""Command-line options and file loading shared by the commands that bound, certify or attack.

Everything here turns user text into checked values or a one-line InputError, so the commands
themselves stay short."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from verifier import ir
from verifier.errors import InputError

if TYPE_CHECKING:  # the engine (torch) is imported by the functions that need it, not on import
    import torch

    from verifier.threat import ThreatModel

# Choices shown by --help without importing the engine; tests/test_cli_startup.py checks that they
# equal verifier.bounds.METHODS and verifier.threat.BALLS.
METHODS = ("popqorn", "crown", "ibp")
BALLS = ("frame", "sequence")
DTYPE_NAMES = ("float32", "float64")


def __getattr__(name: str) -> Any:
    if name == "DTYPES":  # {name: torch dtype}, built on first use
        import torch
        return {dtype: getattr(torch, dtype) for dtype in DTYPE_NAMES}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def add_model(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="ONNX model file")
    add_input_shape(parser)
    parser.add_argument("--input-name", help="which model input is perturbed (default: the only one / the first with frames)")
    parser.add_argument("--output", default="0", help="which model output to bound: index or name (default 0)")


def add_samples(parser: argparse.ArgumentParser, labels: bool = True) -> None:
    parser.add_argument("--input", required=True, metavar="X",
                        help=".npy with samples stacked on the model input's batch axis, or .npz with x (and y)")
    if labels:
        parser.add_argument("--labels", metavar="Y", help=".npy of integer labels (default: y of the .npz, else the model's prediction)")
    parser.add_argument("--start", type=int, default=0, help="first sample to use (default 0)")
    parser.add_argument("--limit", type=int, help="use at most this many samples")


def add_threat(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--norm", default="inf", help="perturbation norm: 1, 2 or inf (default inf)")
    parser.add_argument("--ball", default="frame", choices=BALLS,
                        help="frame: each perturbed frame has its own ball (POPQORN); sequence: one ball over all perturbed frames")
    parser.add_argument("--frames", help="0-based frames to perturb, e.g. 0,3 (default: all)")


def add_engine(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", default="popqorn", choices=METHODS,
                        help="popqorn: joint 2-D planes for gate products; crown: McCormick products; ibp: intervals")
    parser.add_argument("--device", help="torch device, e.g. cpu or cuda (default: cuda when present)")
    parser.add_argument("--dtype", default="float32", choices=DTYPE_NAMES, help="engine precision (default float32)")


def threat_from(args: argparse.Namespace) -> ThreatModel:
    from verifier.threat import ThreatModel, parse_frames, parse_norm
    return ThreatModel(parse_norm(args.norm), args.ball, parse_frames(args.frames))


def engine_from(args: argparse.Namespace) -> tuple[torch.device, torch.dtype]:
    import torch

    from verifier.bounds import resolve_device
    return resolve_device(args.device), getattr(torch, args.dtype)


def output_from(args: argparse.Namespace) -> int | str:
    return int(args.output) if str(args.output).lstrip("-").isdigit() else args.output


def add_input_shape(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input-shape", action="append", default=[], metavar="NAME=d0,d1,...",
                        help="full shape (batch included) of an input with dynamic dimensions; repeatable")


def parse_input_shapes(texts: list[str]) -> dict[str, tuple[int, ...]]:
    """`x=1,4,196` -> {"x": (1, 4, 196)}; anything else is a one-line InputError."""
    shapes = {}
    for text in texts:
        name, sep, dims = text.partition("=")
        try:
            shape = tuple(int(d) for d in dims.split(","))
        except ValueError:
            shape = ()
        if not sep or not name or not shape or min(shape) < 1:
            raise InputError(f"--input-shape {text!r}: expected NAME=d0,d1,... with positive integers")
        shapes[name] = shape
    return shapes


def load_graph(args: argparse.Namespace) -> ir.Graph:
    """The model with --input-shape applied; names that are no model input are refused."""
    import parsers
    shapes = parse_input_shapes(args.input_shape)
    graph = parsers.load_onnx(args.model, input_shapes=shapes or None)
    unknown = sorted(set(shapes) - {n.onnx_name for n in graph.inputs})
    if unknown:
        raise InputError(f"--input-shape names {unknown}, but the model's inputs are "
                         f"{[n.onnx_name for n in graph.inputs]}")
    return graph


@dataclass
class Samples:
    """Samples sliced by --start/--limit, in the model's layout, with labels if known."""

    x: np.ndarray
    labels: np.ndarray | None
    first_index: int
    batch_axis: int | None

    @property
    def count(self) -> int:
        return 1 if self.batch_axis is None else self.x.shape[self.batch_axis]

    def take(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray | None]:
        if self.batch_axis is None:
            return self.x, self.labels
        index = np.arange(start, stop)
        labels = None if self.labels is None else self.labels[start:stop]
        return np.take(self.x, index, axis=self.batch_axis), labels


def _read_array(path: str, what: str) -> np.ndarray | dict[str, np.ndarray]:
    if not os.path.isfile(path):
        raise InputError(f"{what} file not found: {path}")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise InputError(f"cannot read {what} file {path}: {type(exc).__name__}: {exc}") from None
    if isinstance(data, np.lib.npyio.NpzFile):
        return {key: data[key] for key in data.files}
    return data


def load_samples(graph: ir.Graph, args: argparse.Namespace, need_labels: bool = True) -> Samples:
    from verifier.bounds import perturbed_input
    node = perturbed_input(graph, args.input_name)
    data = _read_array(args.input, "input")
    labels = None
    if isinstance(data, dict):
        if "x" not in data:
            raise InputError(f"{args.input} has arrays {sorted(data)}; an .npz input needs 'x' (and optionally 'y')")
        x, labels = data["x"], data.get("y")
    else:
        x = data
    if getattr(args, "labels", None):
        loaded = _read_array(args.labels, "labels")
        if isinstance(loaded, dict):
            raise InputError(f"labels file {args.labels} must be a .npy array")
        labels = loaded
    if not np.issubdtype(x.dtype, np.number):
        raise InputError(f"input {args.input} has dtype {x.dtype}; numbers are required")
    x = x.astype(np.float32) if x.dtype != np.float64 else x
    if x.ndim != len(node.shape):
        expected = tuple("N" if k == node.batch_axis else d for k, d in enumerate(node.shape))
        raise InputError(f"input {args.input} has shape {x.shape}; model input {node.onnx_name!r} expects {expected}")
    total = 1 if node.batch_axis is None else x.shape[node.batch_axis]
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        if labels.shape[0] != total:
            raise InputError(f"{labels.shape[0]} labels for {total} samples")
    if args.start < 0 or args.start >= total:
        raise InputError(f"--start {args.start} out of range: {total} samples")
    if args.limit is not None and args.limit < 1:
        raise InputError("--limit must be at least 1")
    stop = total if args.limit is None else min(total, args.start + args.limit)
    samples = Samples(x, labels, 0, node.batch_axis)
    if node.batch_axis is not None:
        sliced, sliced_labels = samples.take(args.start, stop)
        samples = Samples(sliced, sliced_labels, args.start, node.batch_axis)
    return samples


def describe_threat(threat: ThreatModel) -> dict:
    from verifier.threat import norm_label
    return {"norm": norm_label(threat.norm), "ball": threat.ball,
            "frames": "all" if threat.frames is None else list(threat.frames)}


def parse_float(text: str, name: str, minimum: float | None = 0.0) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"{name} must be a number, not {text!r}") from None
    if not np.isfinite(value) or (minimum is not None and value < minimum):
        raise InputError(f"{name} must be finite and >= {minimum:g}, not {text}")
    return value


