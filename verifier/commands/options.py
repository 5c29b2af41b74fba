"""Command-line options and file loading shared by the commands that bound, certify or attack.

Everything here turns user text into checked values or a one-line InputError, so the commands
themselves stay short."""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import os
import re
import sys
from typing import TYPE_CHECKING, Any

import numpy as np

from verifier import ir
from verifier.commands.samples import (  # noqa: F401 (re-exported)
    Samples,
    check_labels,
    load_samples,
    read_input_array,
)
from verifier.errors import InputError
from verifier.methods import DEFAULT_METHOD, METHODS
from verifier.threat import BALLS

if TYPE_CHECKING:  # the engine (torch) is imported by the functions that need it, not on import
    import torch

    from verifier.threat import ThreatModel

DTYPE_NAMES = ("float32", "float64")
DEFAULT_DTYPE = "float64"  # the engine's own default: bounds that do not depend on the batch's other samples

MAX_THREADS = 1024
MAX_SAMPLE_ELEMENTS = 2**24  # per sample (an --input-shape beyond it is a typo, not a model)
PLOT_FORMATS = (".png", ".pdf", ".svg", ".svgz", ".eps", ".ps", ".jpg", ".jpeg", ".tif", ".tiff", ".webp")


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


SAMPLES_HELP = (".npy with samples stacked on the perturbed input's batch axis, in the model's own layout; or "
                ".npz with that array as 'x' (or under the input's own name), every other model input under its "
                "name (e.g. 'h0', stacked on its batch axis the same way; held fixed), and optional labels 'y'. "
                "Dynamic dimensions (e.g. the time axis) are taken from these arrays")


def add_samples(parser: argparse.ArgumentParser, labels: bool = True) -> None:
    parser.add_argument("--input", required=True, metavar="X", help=SAMPLES_HELP)
    if labels:
        parser.add_argument("--labels", metavar="Y", help=".npy of integer labels (default: y of the .npz, else the model's prediction)")
    parser.add_argument("--start", type=int, default=0, help="first sample to use (default 0)")
    parser.add_argument("--limit", type=int, help="use at most this many samples")


def add_threat(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--norm", default="inf", help="perturbation norm: 1, 2 or inf (default inf)")
    parser.add_argument("--ball", default="frame", choices=BALLS,
                        help="frame: each perturbed frame has its own ball (POPQORN); sequence: one ball over all perturbed frames")
    parser.add_argument("--frames", help="0-based frames to perturb, e.g. 0,3 (default: all)")
    parser.add_argument("--domain", metavar="LOW,HIGH",
                        help="valid input range intersected with every ball, e.g. 0,1 for pixels; a negative LOW needs "
                             "the = form: --domain=-1,1 (default: none)")
    parser.add_argument("--domain-file", metavar="NPZ",
                        help="per-feature valid range: an .npz with arrays 'low' and 'high' shaped like one sample "
                             "(the input's shape without its batch axis; broadcasting allowed)")


def add_certification(parser: argparse.ArgumentParser) -> None:
    """What `certify` and `audit` both take: the model, samples, threat model, engine, target,
    per-frame radii and the search tolerance."""
    add_model(parser)
    add_samples(parser)
    add_threat(parser)
    add_engine(parser)
    parser.add_argument("--target", type=int,
                        help="certify against this class only (default: all other classes); samples whose label "
                             "and prediction are this class are skipped (reported with skipped: 'label equals --target')")
    parser.add_argument("--per-frame", action="store_true", help="also the radius when only frame t is perturbed, for every t")
    parser.add_argument("--tol", default="1e-3", help="relative tolerance of the radius search (default 1e-3)")


def add_engine(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", default=DEFAULT_METHOD.value, choices=METHODS,
                        help=f"crown: activation lines and McCormick products; popqorn: POPQORN's joint 2-D planes for "
                             f"the gate products (tighter on LSTM/GRU, slower); ibp: intervals; alpha: relaxations "
                             f"optimised per margin row by gradient ascent (alpha-CROWN's idea; tightest, slowest) "
                             f"(default {DEFAULT_METHOD.value})")
    parser.add_argument("--optimize-steps", type=int, default=20, metavar="N",
                        help="--method alpha: gradient steps per bound, or of a whole radius search (certify, "
                             "audit: epsilon moves with the relaxations; default 20)")
    parser.add_argument("--optimize-intermediate", default="shared", choices=("shared", "per-row", "per-bound", "none"),
                        help="--method alpha: intermediate bounds optimised with one relaxation per node (shared, "
                             "default), per row of every pass (per-row, ~5x slower), per row with separate "
                             "parameters for each neuron's lower and upper bound (per-bound: alpha-CROWN's full "
                             "scheme, tightest, ~1.2-1.4x per-row's time) or not at all (none: final pass only, fastest)")
    parser.add_argument("--optimize-mix-ratio", type=float, metavar="R",
                        help="--method alpha: Adam's step for the McCormick plane mixes over its step for the line "
                             "slopes (default 10, measured best on the digits LSTM; 5 did better on one GRU sample)")
    parser.add_argument("--optimize-joint-planes", default="auto", choices=("auto", "on", "off"),
                        help="--method alpha: also blend POPQORN's joint 2-D planes into the optimised gate "
                             "products (auto: with per-row and per-bound only; tighter, ~1.2-1.5x slower)")
    add_device(parser)
    parser.add_argument("--dtype", default=DEFAULT_DTYPE, choices=DTYPE_NAMES,
                        help=f"engine precision (default {DEFAULT_DTYPE})")
    add_threads(parser)


def optimize_from(args: argparse.Namespace):
    """The optimised mode's options from the --optimize-* switches."""
    from verifier.optimize import OptimizeOptions

    _warn_unused_optimize(args)
    steps = getattr(args, "optimize_steps", 20)
    if steps < 0 or steps > 100000:
        raise InputError(f"--optimize-steps must be in 0..100000, not {steps}")
    joint = {"auto": None, "on": True, "off": False}[getattr(args, "optimize_joint_planes", "auto")]
    ratio = getattr(args, "optimize_mix_ratio", None)
    if ratio is not None and not 0 < ratio < 1e6:
        raise InputError(f"--optimize-mix-ratio must be in (0, 1e6), not {ratio}")
    return OptimizeOptions(steps=steps, intermediate=getattr(args, "optimize_intermediate", "shared"), joint_planes=joint,
                           mix_ratio=ratio)


def _warn_unused_optimize(args: argparse.Namespace) -> None:
    """--optimize-* set with another method than alpha change nothing: say so rather than ignore them."""
    method = getattr(args, "method", "alpha")
    given = [flag for flag, value, default in (
        ("--optimize-steps", getattr(args, "optimize_steps", 20), 20),
        ("--optimize-intermediate", getattr(args, "optimize_intermediate", "shared"), "shared"),
        ("--optimize-mix-ratio", getattr(args, "optimize_mix_ratio", None), None),
        ("--optimize-joint-planes", getattr(args, "optimize_joint_planes", "auto"), "auto")) if value != default]
    if given and method != "alpha":
        verb = "applies" if len(given) == 1 else "apply"
        print(f"popqorn: warning: {', '.join(given)} {verb} only to --method alpha; ignored with --method {method}",
              file=sys.stderr)


def describe_optimize(args: argparse.Namespace) -> dict:
    """The optimised mode's settings for a journal's configuration ({} for other methods, whose
    results they do not change): a resumed run must not mix radii found with other settings."""
    if getattr(args, "method", None) != "alpha":
        return {}
    chosen = optimize_from(args)
    return {"optimize": {"steps": chosen.steps, "intermediate": chosen.intermediate,
                         "joint_planes": chosen.with_joint_planes, "mix_ratio": chosen.mix_ratio}}


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when present)")


THREADS_HELP = ("CPU threads for torch and onnxruntime (default 1: the engine works on many small tensors, where "
                "more threads mostly wait on each other; 0 = one per core)")


def add_threads(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, metavar="N", help=THREADS_HELP)


def threads_from(args: argparse.Namespace) -> int:
    """--threads as a count (0 = one per core), checked; the default is 1 (see THREADS_HELP)."""
    threads = getattr(args, "threads", None)
    if threads is None:
        return 1
    if threads < 0:
        raise InputError(f"--threads must be 0 (one per core) or a positive count, not {threads}")
    if threads > MAX_THREADS:
        raise InputError(f"--threads {threads} is more than the {MAX_THREADS} popqorn accepts")
    return threads or (os.cpu_count() or 1)


def apply_threads(args: argparse.Namespace) -> int:
    """Set torch's thread count from --threads before any engine work; returns the count, which
    onnxruntime sessions use too."""
    import torch
    threads = threads_from(args)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


_DEVICE = re.compile(r"(cpu|cuda)(:\d+)?")


def device_from(args: argparse.Namespace):
    """--device checked before any work: cpu, cuda or cuda:N, and the GPU must exist."""
    text = getattr(args, "device", None)
    if text is not None and not _DEVICE.fullmatch(text.strip()):
        raise InputError(f"--device must be cpu, cuda or cuda:N, not {text!r}")
    import torch

    from verifier.bounds import resolve_device
    device = resolve_device(None if text is None else text.strip())
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise InputError(f"--device {text}: there are {torch.cuda.device_count()} CUDA devices (0-based)")
    return device


def threat_from(args: argparse.Namespace) -> ThreatModel:
    from verifier.threat import Domain, ThreatModel, parse_frames, parse_norm
    domain = None
    text, path = getattr(args, "domain", None), getattr(args, "domain_file", None)
    if text and path:
        raise InputError("give either --domain or --domain-file, not both")
    if text:
        domain = Domain.parse(text)
    elif path:
        from verifier.commands.arrays import read_arrays
        arrays = read_arrays(path, "domain", keys=["low", "high"])
        if not isinstance(arrays, dict) or set(arrays) != {"low", "high"}:
            raise InputError(f"--domain-file {path} must be an .npz holding exactly the arrays 'low' and 'high'")
        for name, array in arrays.items():
            if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
                raise InputError(f"--domain-file {path}: {name!r} must hold real numbers, not {array.dtype}")
        import hashlib
        digest = hashlib.sha256(np.ascontiguousarray(arrays["low"], dtype=np.float64).tobytes()
                                + np.ascontiguousarray(arrays["high"], dtype=np.float64).tobytes()).hexdigest()[:12]
        domain = Domain(arrays["low"], arrays["high"], label=f"{os.path.basename(path)} (sha256 {digest})")
    return ThreatModel(parse_norm(args.norm), args.ball, parse_frames(args.frames), domain)


def engine_from(args: argparse.Namespace) -> tuple[torch.device, torch.dtype]:
    """Device and dtype of the engine; also applies --threads (every engine command calls this first)."""
    import torch
    apply_threads(args)
    dtype_for_method(args)
    return device_from(args), getattr(torch, args.dtype)


def dtype_for_method(args: argparse.Namespace) -> None:
    """The optimised mode always computes in float64 (its relaxations are differentiated there): a
    --dtype float32 request is said to be overridden, and reports and journals say float64."""
    if getattr(args, "method", None) == "alpha" and getattr(args, "dtype", "float64") == "float32":
        print("popqorn: warning: --method alpha computes in float64; --dtype float32 is ignored", file=sys.stderr)
        args.dtype = "float64"


def output_from(args: argparse.Namespace) -> int | str:
    return int(args.output) if str(args.output).lstrip("-").isdigit() else args.output


def add_input_shape(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input-shape", action="append", default=[], metavar="NAME=d0,d1,...",
                        help="full shape (batch included) of an input with dynamic dimensions; repeatable")


def parse_input_shapes(texts: list[str]) -> dict[str, tuple[int, ...]]:
    """`x=1,4,196` -> {"x": (1, 4, 196)}; anything else is a one-line InputError, and so is a shape
    beyond MAX_SAMPLE_ELEMENTS (refused before anything is built)."""
    shapes = {}
    for text in texts:
        name, sep, dims = text.partition("=")
        try:
            shape = tuple(int(d) for d in dims.split(","))
        except ValueError:
            shape = ()
        if not sep or not name or not shape or min(shape) < 1:
            raise InputError(f"--input-shape {text!r}: expected NAME=d0,d1,... with positive integers")
        if math.prod(shape) > MAX_SAMPLE_ELEMENTS:
            raise InputError(f"--input-shape {text!r}: {math.prod(shape):,} elements, more than the "
                             f"{MAX_SAMPLE_ELEMENTS:,} popqorn accepts for one input")
        if name in shapes:
            raise InputError(f"--input-shape gives input {name!r} twice ({shapes[name]} and {shape}); give it once")
        shapes[name] = shape
    return shapes


def load_graph(args: argparse.Namespace) -> ir.Graph:
    """The model with --input-shape applied; names that are no model input are refused. Inputs
    whose dimensions stay dynamic carry -1 there and the graph has a `specializer`: the samples
    (see verifier.commands.samples) or --input-shape fix them."""
    import parsers
    if not getattr(parsers, "POPQORN_FRONT_END", False):  # the design card's generic package name can collide
        raise InputError(f"the package 'parsers' imported from {getattr(parsers, '__file__', '?')} is not popqorn's "
                         f"front end (another package of that name comes first on the path); install popqorn in its "
                         f"own virtual environment")
    shapes = parse_input_shapes(args.input_shape)
    graph = parsers.load_onnx(args.model, input_shapes=shapes or None)
    unknown = sorted(set(shapes) - {n.onnx_name for n in graph.inputs})
    if unknown:
        raise InputError(f"--input-shape names {unknown}, but the model's inputs are "
                         f"{[n.onnx_name for n in graph.inputs]}")
    startup_finished()
    return graph


def startup_finished() -> None:
    """The console script (cli.entry) starts with the cyclic garbage collector off: importing torch
    and onnx and parsing the model allocate ~10^6 objects that live until exit, and the collector's
    full passes over them took 0.15-0.3 s of a ~2 s certify run. Once the model is loaded they are
    frozen out of every later pass and collection resumes. A no-op where the collector was never
    turned off (the Python API, the tests)."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def unknown_axes(node: ir.Input) -> list[int]:
    """Axes of an input whose length the model leaves open (the batch axis never counts)."""
    return [k for k, d in enumerate(node.shape) if k != node.batch_axis and d < 0]


def shape_hint(node: ir.Input) -> str:
    """The --input-shape flag that would fix `node`'s open dimensions, e.g. `--input-shape x=1,<T>,8`."""
    dims = []
    for k, d in enumerate(node.shape):
        if k == node.batch_axis:
            dims.append("1")
        elif d >= 0:
            dims.append(str(d))
        else:
            dims.append("<T>" if k == node.frame_axis else f"<d{k}>")
    return f"--input-shape {node.onnx_name}={','.join(dims)}"


def require_shapes(graph: ir.Graph, why: str) -> None:
    """Refuse, naming the flag, when an input's length is still unknown and nothing can fix it."""
    for node in graph.inputs:
        if unknown_axes(node):
            raise InputError(f"input {node.onnx_name!r} has dynamic dimension(s) on axis {unknown_axes(node)}; "
                             f"{why}, give {shape_hint(node)}")


def shape_from_size(node: ir.Input, size: int) -> tuple[int, ...]:
    """The one-sample shape of `node` that holds `size` elements, when exactly one dimension is
    open (e.g. the time axis from the number of X_i of a VNN-LIB property); otherwise InputError."""
    open_axes = unknown_axes(node)
    known = math.prod(d for k, d in enumerate(node.shape) if k not in open_axes and k != node.batch_axis)
    if not open_axes:
        if size != known:
            raise InputError(f"{size} values given for input {node.onnx_name!r} of {known} elements {node.shape}")
        return node.shape
    if len(open_axes) > 1 or known == 0 or size % known or size == 0:
        raise InputError(f"cannot infer the dynamic dimension(s) of input {node.onnx_name!r} from {size} values; "
                         f"give {shape_hint(node)}")
    return tuple(1 if k == node.batch_axis else (size // known if k in open_axes else d)
                 for k, d in enumerate(node.shape))


def check_output_path(path: str | None, flag: str, suffixes: tuple[str, ...] | None = None) -> None:
    """Refuse an output path before any work: missing folder, a directory, not writable, or (for
    files whose format follows the name) an unknown extension. '-' (stdout) passes."""
    if path is None or path == "-":
        return
    if not path.strip():
        raise InputError(f"{flag}: empty path")
    if os.path.isdir(path):
        raise InputError(f"{flag} {path}: is a directory; give a file name")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        existing = folder
        while not os.path.exists(existing) and os.path.dirname(existing) != existing:
            existing = os.path.dirname(existing)
        if os.path.exists(existing) and not os.path.isdir(existing):
            raise InputError(f"{flag} {path}: {existing} is a file, not a folder")
        raise InputError(f"{flag} {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise InputError(f"{flag} {path}: not writable")
    if suffixes and not path.lower().endswith(suffixes):
        raise InputError(f"{flag} {path}: unknown format; use one of {', '.join(suffixes)}")


@contextlib.contextmanager
def writing(path: str, flag: str):
    """Writes to an output file inside this block fail as one InputError naming the file and the
    system's reason. check_output_path cannot foresee everything: root passes os.access checks on
    /sys and /proc, and a full disk (or /dev/full) only shows when the data goes out."""
    try:
        yield
    except OSError as exc:
        raise InputError(f"cannot write {flag} {path}: {exc.strerror or exc}") from None


def overflow_limit(dtype_name: str) -> float:
    """Largest |input| + radius that bound arithmetic in this dtype handles: beyond the square root
    of the dtype's largest value, squared norms and products of bounds overflow to inf/NaN."""
    return float(np.sqrt(np.finfo(np.dtype(dtype_name)).max))


def check_magnitude(eps: float, values: np.ndarray, dtype_name: str, flag: str = "--eps") -> None:
    """Refuse a radius (with the samples it is added to) too large for the arithmetic's dtype,
    instead of computing bounds that overflow."""
    finite = np.abs(values[np.isfinite(values)]) if values.size else np.zeros(0)
    largest = float(finite.max()) if finite.size else 0.0
    limit = overflow_limit(dtype_name)
    if eps + largest > limit:
        what = f"{flag} {eps:g}" if eps > largest else f"input values up to {largest:g}" + (
            f" (with {flag} {eps:g})" if eps else "")
        advice = "a smaller radius or --dtype float64" if dtype_name == "float32" else "a smaller radius"
        raise InputError(f"{what}: too large for {dtype_name} bound arithmetic (at most {limit:.2g} "
                         f"in all); use {advice}")


def describe_threat(threat: ThreatModel) -> dict:
    """The JSON fields every report carries (norm, ball, frames, domain)."""
    return threat.describe()


def parse_float(text: str, name: str, minimum: float | None = 0.0) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"{name} must be a number, not {text!r}") from None
    if not np.isfinite(value) or (minimum is not None and value < minimum):
        raise InputError(f"{name} must be finite and >= {minimum:g}, not {text}")
    return value


MAX_SEED = 2**63 - 1


def seed_value(text: str) -> int:
    """--seed as argparse reads it: an integer in 0..2**63-1, what numpy's and torch's generators
    both take (anything else used to end in an internal error deep in the attack or sampler)."""
    try:
        seed = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid seed {text!r}: expected an integer") from None
    if not 0 <= seed <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"seed {seed} out of range 0..{MAX_SEED}")
    return seed
