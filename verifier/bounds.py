"""Public bound API: certified output bounds over a threat model or an input box.

This is where user arrays (model layout, batch axis anywhere) become per-sample flat tensors and
Regions; the propagation itself (verifier.propagation) knows nothing about layouts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from verifier import forward, ir
from verifier.canonical import optimised_forms
from verifier.errors import InputError
from verifier.methods import DEFAULT_METHOD, METHODS, Method, parse_method
from verifier.optimize import OptimizeOptions, jointly_optimized_lower_bounds, optimized_lower_bounds
from verifier.propagation import Propagator
from verifier.regions import BallRegion, BoxRegion, PointRegion, Region
from verifier.relaxations import RELAXERS, Relaxer
from verifier.threat import Default, Domain, ThreatModel

__all__ = ["METHODS", "DEFAULT_METHOD", "Method", "bound_outputs", "bound_linear_box", "make_batch", "relaxer_for"]


def relaxer_for(method: Method | str) -> Relaxer | None:
    """The relaxation family of a method's intermediate bounds; None for IBP (intervals only).
    The optimised mode starts from CROWN's relaxations."""
    method = parse_method(method)
    if method is Method.IBP:
        return None
    return RELAXERS["crown" if method is Method.ALPHA else method.value]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """None -> cuda when present, else cpu. Asking for cuda without one is an input error."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise InputError(f"device {device!r} is not a torch device (cpu, cuda, cuda:0, ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but no CUDA GPU is available (torch.cuda.is_available() is False)")
    return device


DTYPES = {"float32": torch.float32, "float64": torch.float64}


def resolve_dtype(dtype) -> torch.dtype:
    """torch.float32/float64, their names, or the numpy types: the spellings the CLI and numpy users
    write; anything else is an input error (the engine computes in these two only)."""
    if dtype in (torch.float32, torch.float64):
        return dtype
    try:
        name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype.strip().lower()
    except TypeError:
        name = None
    if name not in DTYPES:
        raise InputError(f"dtype must be float32 or float64, not {dtype!r}")
    return DTYPES[name]


@dataclass(frozen=True)
class Batch:
    """Samples in engine form: the graph they run through (specialised to their shapes), the
    perturbed input's IR node and flat centres, the other inputs' fixed values, all (batch, size)
    tensors on one device."""

    graph: ir.Graph
    node: ir.Input
    center: Tensor
    fixed: dict[str, Tensor]

    @property
    def size(self) -> int:
        return self.center.shape[0]

    def select(self, rows: Tensor) -> Batch:
        return Batch(self.graph, self.node, self.center[rows], {k: v[rows] for k, v in self.fixed.items()})

    def repeat(self, times: int) -> Batch:
        """Each sample `times` times in a row (sample-major), for per-frame variants."""
        return Batch(self.graph, self.node, self.center.repeat_interleave(times, 0),
                     {k: v.repeat_interleave(times, 0) for k, v in self.fixed.items()})

    def feeds(self) -> dict[str, Tensor]:
        return {self.node.name: self.center, **self.fixed}


def perturbed_input(graph: ir.Graph, input_name: str | None) -> ir.Input:
    """The input the threat model perturbs: named, or the only input, or the first with frames."""
    if input_name is not None:
        try:
            return graph.input_named(input_name)
        except KeyError:
            names = [node.onnx_name for node in graph.inputs]
            raise InputError(f"the model has no input named {input_name!r}; its inputs are {names}") from None
    if len(graph.inputs) == 1:
        return graph.inputs[0]
    with_frames = [node for node in graph.inputs if node.frame_axis is not None]
    return (with_frames or list(graph.inputs))[0]


def make_batch(graph: ir.Graph, x: np.ndarray | dict[str, np.ndarray], *, input_name: str | None = None,
               device: torch.device | str | None = None, dtype: torch.dtype = torch.float64) -> Batch:
    """Stacked samples in the model's own layout (or a full feeds dict) -> Batch. The batch's graph
    is `graph` specialised to the feeds (see ir.Graph.specialize)."""
    node = perturbed_input(graph, input_name)
    feeds = dict(x) if isinstance(x, dict) else {node.onnx_name: x}
    graph, feeds = graph.specialize(feeds)
    try:
        node = graph.input_named(node.onnx_name)
    except KeyError:
        raise InputError(f"input {node.onnx_name!r} is held at its given value (the model uses it as a constant); "
                         f"it cannot be the perturbed input") from None
    if len(feeds) != len(graph.inputs):
        missing = [n.onnx_name for n in graph.inputs if n.onnx_name not in feeds]
        raise InputError(f"the model also takes inputs {missing}; pass all inputs as a dict of arrays")
    flat, _ = forward.flatten_feeds(graph, feeds)
    device, dtype = resolve_device(device), resolve_dtype(dtype)
    tensors = {k: torch.as_tensor(np.array(v, dtype=np.float64), dtype=dtype, device=device) for k, v in flat.items()}
    center = tensors.pop(node.name)
    return Batch(graph, node, center, tensors)


def as_eps(eps: float | np.ndarray | Tensor, batch: Batch) -> Tensor:
    values = torch.as_tensor(np.asarray(eps, dtype=np.float64), device=batch.center.device).to(batch.center.dtype)
    values = values.reshape(-1).expand(batch.size) if values.numel() == 1 else values.reshape(-1)
    if values.shape[0] != batch.size:
        raise InputError(f"eps has {values.shape[0]} values for {batch.size} samples")
    if not torch.isfinite(values).all() or (values < 0).any():
        raise InputError(f"eps must be finite and >= 0, got {eps!r}")
    limit = math.sqrt(torch.finfo(batch.center.dtype).max)  # products of two such values still fit the dtype
    reach = values + batch.center.abs().amax(dim=1)
    if (reach > limit).any():
        raise InputError(f"eps {float(values.max()):g} with inputs up to {float(batch.center.abs().max()):g} leaves "
                         f"{batch.center.dtype} arithmetic (over {limit:.3g}); use a smaller radius")
    return values


def check_threat(batch: Batch, threat: ThreatModel) -> None:
    """Refuse, before any work, frames out of range and clean inputs outside the domain."""
    threat.frame_mask(batch.node)
    BallRegion(batch.node, batch.center, torch.zeros_like(batch.center[:, 0]), threat)


def ball_regions(batch: Batch, eps: Tensor, threat: ThreatModel, frame_mask: Tensor | None = None) -> dict[str, Region]:
    regions: dict[str, Region] = {batch.node.name: BallRegion(batch.node, batch.center, eps, threat, frame_mask)}
    regions.update({name: PointRegion(value) for name, value in batch.fixed.items()})
    return regions


def output_node(graph: ir.Graph, output: int | str) -> ir.Output:
    if isinstance(output, str):
        matches = [o for o in graph.outputs if o.onnx_name == output]
        if not matches:
            raise InputError(f"the model has no output named {output!r}; outputs: {[o.onnx_name for o in graph.outputs]}")
        return matches[0]
    if not 0 <= output < len(graph.outputs):
        raise InputError(f"output index {output} out of range: the model has {len(graph.outputs)} outputs")
    return graph.outputs[output]


def bound_outputs(graph: ir.Graph, x: np.ndarray | dict[str, np.ndarray], eps: float | np.ndarray,
                  norm: float | str = Default(math.inf), ball: str = Default("frame"), frames=None, *,
                  domain: Domain | tuple | None = None, threat: ThreatModel | None = None,
                  method: Method | str = DEFAULT_METHOD, optimize: OptimizeOptions | None = None,
                  output: int | str = 0, input_name: str | None = None,
                  device=None, dtype: torch.dtype = torch.float64) -> tuple[np.ndarray, np.ndarray]:
    """Certified (lower, upper) of one model output for every sample of `x` (stacked on the model
    input's batch axis) over the threat model (given as `threat`, or spelled out by norm (default
    inf), ball (default "frame"), frames and domain); arrays shaped like the output. A dropped trailing softmax is not applied:
    the bounds are on the logits. `optimize` sets the effort of method alpha."""
    ir.require_graph(graph, "bound_outputs")
    threat = ThreatModel.of(threat, norm=norm, ball=ball, frames=frames, domain=domain)
    relaxer = relaxer_for(method)
    if parse_method(method) is Method.ALPHA:
        dtype = torch.float64  # the optimised relaxations are computed (and differentiated) in float64
    batch = make_batch(graph, x, input_name=input_name, device=device, dtype=dtype)
    graph = batch.graph
    check_threat(batch, threat)
    radius = as_eps(eps, batch)
    out = output_node(graph, output)
    propagator = Propagator(graph, ball_regions(batch, radius, threat), relaxer)
    if parse_method(method) is Method.ALPHA:  # both sides: rows I (lower) and -I (minus the upper)
        size = graph.sizes()[out.node]
        eye = torch.eye(size, dtype=batch.center.dtype, device=batch.center.device)
        spec = torch.cat([eye, -eye]).expand(batch.size, -1, -1)
        both = _optimized(graph, ball_regions(batch, radius, threat), relaxer, out.node, spec, optimize)
        with torch.no_grad():
            propagator.run(until=out.node)
            ibp_lower, ibp_upper = propagator.bounds[out.node]
        lower, upper = torch.maximum(both[:, :size], ibp_lower), torch.minimum(-both[:, size:], ibp_upper)
    else:
        with torch.no_grad():
            lower, upper = propagator.bound(out.node)
    if not (torch.isfinite(lower).all() and torch.isfinite(upper).all()):
        raise InputError("the bounds are not finite (inf/NaN): the weights or inputs are too large for "
                         f"{batch.center.dtype} arithmetic at this radius")
    return _to_output_layout(out, lower), _to_output_layout(out, upper)


def bound_linear_box(graph: ir.Graph, lower: np.ndarray, upper: np.ndarray, spec: np.ndarray, *,
                     offset: np.ndarray | None = None, input_name: str | None = None, output_index: int = 0,
                     method: Method | str = DEFAULT_METHOD, optimize: OptimizeOptions | None = None,
                     device=None, dtype: torch.dtype = torch.float64) -> np.ndarray:
    """Certified lower bounds of spec @ y + offset over the box lower <= x <= upper, where x is the
    flat C-order per-sample vector of the perturbed input and y the flattened output. lower/upper (n,)
    or stacked (B, n); spec (m, out_size); returns (m,) or (B, m). Other inputs must not exist."""
    node = perturbed_input(graph, input_name)
    if len(graph.inputs) != 1:
        raise InputError("box properties are supported for single-input models only")
    single = np.ndim(lower) == 1
    device, dtype = resolve_device(device), resolve_dtype(dtype)
    if parse_method(method) is Method.ALPHA:
        dtype = torch.float64
    as_tensor = lambda a: torch.as_tensor(np.atleast_2d(np.asarray(a, dtype=np.float64)), dtype=dtype, device=device)
    box_lower, box_upper = as_tensor(lower), as_tensor(upper)
    if box_lower.shape[1] != node.size or box_upper.shape != box_lower.shape:
        raise InputError(f"box has {box_lower.shape[1]} elements; input {node.onnx_name!r} has {node.size}")
    out = output_node(graph, output_index)
    spec_t = torch.as_tensor(np.asarray(spec, dtype=np.float64), dtype=dtype, device=device)
    spec_t = spec_t.expand(box_lower.shape[0], *spec_t.shape[-2:])
    regions = {node.name: BoxRegion(box_lower, box_upper)}
    propagator = Propagator(graph, regions, relaxer_for(method))
    if parse_method(method) is Method.ALPHA:
        result = _optimized(graph, regions, relaxer_for(method), out.node, spec_t, optimize)
    else:
        with torch.no_grad():
            result, _ = propagator.bound(out.node, spec_t, need_upper=False)
    values = result.double().cpu().numpy()
    if offset is not None:
        values = values + np.asarray(offset, dtype=np.float64)
    return values[0] if single else values


def _optimized(graph: ir.Graph, regions: dict[str, Region], relaxer: Relaxer, node: str, spec: Tensor,
               optimize: OptimizeOptions | None) -> Tensor:
    """The best optimised lower bounds over the forms of the graph (canonical.optimised_forms)."""
    bounds = [_optimized_one(form, regions, relaxer, node, spec, optimize) for form in optimised_forms(graph)]
    return bounds[0] if len(bounds) == 1 else torch.stack(bounds).amax(0)


def _optimized_one(graph: ir.Graph, regions: dict[str, Region], relaxer: Relaxer, node: str, spec: Tensor,
                   optimize: OptimizeOptions | None) -> Tensor:
    """Lower bounds of spec rows with the optimised mode's relaxations."""
    optimize = optimize or OptimizeOptions()
    if optimize.intermediate == "none":
        return optimized_lower_bounds(Propagator(graph, regions, relaxer), node, spec, optimize)
    return jointly_optimized_lower_bounds(lambda: Propagator(graph, regions, relaxer), node, spec, optimize)


def _to_output_layout(out: ir.Output, values: Tensor) -> np.ndarray:
    batch = values.shape[0]
    array = values.detach().double().cpu().numpy()
    if out.batch_axis is None:
        return array.reshape(out.shape) if batch == 1 else array.reshape(batch, *out.shape)
    per_sample = [d for k, d in enumerate(out.shape) if k != out.batch_axis]
    return np.moveaxis(array.reshape(batch, *per_sample), 0, out.batch_axis)
