"""Elementwise arithmetic and activations."""

from __future__ import annotations

import numpy as np

from parsers.context import Context
from parsers.errors import Refusal
from parsers.registry import converter
from parsers.values import Sym
from verifier import activations
from verifier.ir import Act, ActivationFn


def _shape(v) -> tuple[int, ...]:
    return v.shape if isinstance(v, Sym) else tuple(np.shape(v))


def _aligned_batch(sym: Sym, rank: int) -> int | None:
    return None if sym.batch_axis is None else sym.batch_axis + rank - sym.rank


def collapse_fixed_batch(const: np.ndarray, rank: int, batch_axis: int | None) -> np.ndarray:
    """Models exported with a fixed batch size carry constants (zero initial states) sized for
    that batch; one sample needs one slice of them, provided all slices are equal."""
    const = np.asarray(const)
    if batch_axis is None:
        return const
    axis = batch_axis - (rank - const.ndim)
    if axis < 0 or const.shape[axis] == 1:
        return const
    first = np.take(const, [0], axis=axis)
    if not np.array_equal(np.broadcast_to(first, const.shape), const):
        raise Refusal("a constant differs between batch entries; the model is not per-sample")
    return first


def prepare_binary(ctx: Context, a, b):
    """Broadcast the operands of a binary elementwise op: symbolic ones as Sym of the output
    shape, constants as float arrays of the output shape. Returns (a, b, shape, batch_axis)."""
    rank = max(len(_shape(a)), len(_shape(b)))
    syms = [v for v in (a, b) if isinstance(v, Sym)]
    batch = next((_aligned_batch(s, rank) for s in syms if s.batch_axis is not None), None)
    a, b = [v if isinstance(v, Sym) else collapse_fixed_batch(v, rank, batch) for v in (a, b)]
    try:
        shape = tuple(np.broadcast_shapes(_shape(a), _shape(b)))
    except ValueError:
        raise Refusal(f"operands of shapes {_shape(a)} and {_shape(b)} do not broadcast") from None
    out = []
    for v in (a, b):
        if isinstance(v, Sym):
            out.append(ctx.broadcast(v, shape, batch))
        else:
            out.append(np.broadcast_to(np.asarray(v, dtype=np.float64), shape))
    return out[0], out[1], shape, batch


def _scale_shift(ctx, x: Sym, scale, shift, shape, batch, name) -> Sym | np.ndarray:
    if not np.any(scale):  # x * 0 is a constant (x is finite)
        return np.broadcast_to(np.asarray(shift, dtype=np.float64), shape).copy()
    node = ctx.builder.affine(x.node, np.broadcast_to(scale, shape).reshape(-1),
                              np.broadcast_to(shift, shape).reshape(-1), f"{ctx.prefix}/{name}")
    return Sym(node, shape, batch)


@converter("Add", since=1)
def add(node, inputs, ctx):
    a, b, shape, batch = prepare_binary(ctx, *inputs)
    if isinstance(a, Sym) and isinstance(b, Sym):
        return [Sym(ctx.builder.add([a.node, b.node], ctx.prefix), shape, batch)]
    x, c = (a, b) if isinstance(a, Sym) else (b, a)
    out = _scale_shift(ctx, x, 1.0, c, shape, batch, "add")
    known = ctx.derived.get(x.node)
    if isinstance(out, Sym) and known and known[0] == "abs" and np.all(c == 1.0):
        ctx.derived[out.node] = ("one_plus_abs", known[1])
    return [out]


@converter("Sub", since=1)
def sub(node, inputs, ctx):
    a, b, shape, batch = prepare_binary(ctx, *inputs)
    if isinstance(b, Sym):
        neg_b = _scale_shift(ctx, b, -1.0, 0.0 if isinstance(a, Sym) else a, shape, batch, "neg")
        if not isinstance(a, Sym):
            return [neg_b]
        return [Sym(ctx.builder.add([a.node, neg_b.node], ctx.prefix), shape, batch)]
    return [_scale_shift(ctx, a, 1.0, -b, shape, batch, "sub")]


@converter("Mul", since=1)
def mul(node, inputs, ctx):
    a, b, shape, batch = prepare_binary(ctx, *inputs)
    if isinstance(a, Sym) and isinstance(b, Sym):
        return [Sym(ctx.builder.product(a.node, b.node, ctx.prefix), shape, batch)]
    x, c = (a, b) if isinstance(a, Sym) else (b, a)
    return [_scale_shift(ctx, x, c, 0.0, shape, batch, "mul")]


@converter("Div", since=1)
def div(node, inputs, ctx):
    x, divisor = inputs
    if isinstance(x, Sym) and isinstance(divisor, Sym):
        known = ctx.derived.get(divisor.node)
        if known and known[0] == "one_plus_abs" and known[1].node == x.node and divisor.shape == x.shape:
            return [apply_activation(ctx, x, ActivationFn(Act.SOFTSIGN))]  # x / (1 + |x|): PyTorch's softsign
    inputs = [x, ctx.constant(node, divisor, "the divisor")]
    a, b, shape, batch = prepare_binary(ctx, *inputs)
    with np.errstate(divide="ignore", over="ignore"):
        reciprocal = 1.0 / np.asarray(b, dtype=np.float64)
    if not np.isfinite(reciprocal).all():
        raise ctx.unsupported(node, "the divisor holds 0 (or values so small that 1/b overflows): the result is "
                                    "infinite or NaN")
    return [_scale_shift(ctx, a, reciprocal, 0.0, shape, batch, "div")]


@converter("Abs", since=1)
def abs_(node, inputs, ctx):
    """|x| = relu(x) + relu(-x), exactly; the two ReLUs' upper chords add up to |x|'s own chord.
    Remembered as |x|, so that x / (1 + |x|) (how PyTorch exports softsign) becomes one Softsign."""
    x = inputs[0]
    positive = apply_activation(ctx, x, ActivationFn(Act.RELU), "/positive")
    flipped = _scale_shift(ctx, x, -1.0, 0.0, x.shape, x.batch_axis, "flip")
    negative = apply_activation(ctx, flipped, ActivationFn(Act.RELU), "/negative")
    out = Sym(ctx.builder.add([positive.node, negative.node], ctx.prefix), x.shape, x.batch_axis)
    ctx.derived[out.node] = ("abs", x)
    return [out]


@converter("Neg", since=1)
def neg(node, inputs, ctx):
    x = inputs[0]
    return [_scale_shift(ctx, x, -1.0, 0.0, x.shape, x.batch_axis, "neg")]


@converter("Sum", since=1)
def sum_(node, inputs, ctx):
    total = inputs[0]
    for other in inputs[1:]:
        total = add(node, [total, other], ctx)[0]
    return [total]


def apply_activation(ctx: Context, x: Sym, fn: ActivationFn, name: str = "") -> Sym:
    node = ctx.builder.activation(x.node, fn, f"{ctx.prefix}{name}")
    return Sym(node, x.shape, x.batch_axis)


def _unary(op: str, kind: Act, since: int = 1, attributes=(), params=lambda a: {}):
    @converter(op, since=since, attributes=attributes)
    def convert(node, inputs, ctx):
        return [apply_activation(ctx, inputs[0], ActivationFn(kind, **params(ctx.attrs(node))))]
    convert.__name__ = f"convert_{op.lower()}"
    return convert


def _parameters(spec: activations.ActivationSpec):
    """ONNX attributes -> ActivationFn fields, with the spec's defaults (the activation table)."""
    return lambda attrs: {field: attrs.get(name, default)
                          for (name, default), field in zip(spec.params, ("alpha", "beta"))}


# one converter per elementwise activation operator of the table; Clip takes its bounds as inputs
# since opset 11 and has its own converter below
for _spec in activations.TABLE.values():
    for _op in _spec.onnx_names:
        if _op != "Clip":
            _unary(_op, _spec.kind, attributes=tuple(name for name, _ in _spec.params), params=_parameters(_spec))


@converter("HardSigmoid", since=1, attributes=("alpha", "beta"))
def hard_sigmoid(node, inputs, ctx):
    attrs = ctx.attrs(node)
    x = inputs[0]
    scaled = _scale_shift(ctx, x, attrs.get("alpha", 0.2), attrs.get("beta", 0.5), x.shape, x.batch_axis, "affine")
    return [apply_activation(ctx, scaled, ActivationFn(Act.CLIP, 0.0, 1.0))]


@converter("Clip", since=1, attributes=("min", "max"))
def clip(node, inputs, ctx):
    if ctx.opset >= 11:
        bounds = [ctx.constant(node, inputs[k], "the clip bounds") if len(inputs) > k else None for k in (1, 2)]
        low, high = [float(np.asarray(v)) if v is not None else None for v in bounds]
    else:
        attrs = ctx.attrs(node)
        low, high = attrs.get("min"), attrs.get("max")
    low = -np.inf if low is None else low
    high = np.inf if high is None else high
    return [apply_activation(ctx, inputs[0], ActivationFn(Act.CLIP, float(low), float(high)))]


def _bound_by_constant(op: str, keep_above: bool):
    """Max(x, c) = Clip(c, inf)(x) and Min(x, c) = Clip(-inf, c)(x) for one computed input and
    constants of one value (what tf.keras writes for clip_by_value, e.g. its hard_sigmoid); the
    canonical pass merges Max-then-Min into one Clip, relaxed as a whole."""
    @converter(op, since=6)
    def convert(node, inputs, ctx):
        computed = [v for v in inputs if isinstance(v, Sym)]
        constants = [np.asarray(v, dtype=np.float64) for v in inputs if v is not None and not isinstance(v, Sym)]
        if len(computed) != 1:
            raise Refusal(f"{op} of {len(computed)} computed inputs is not supported (one computed input and "
                          "constants are: a clip)")
        x = computed[0]
        values = np.concatenate([c.reshape(-1) for c in constants]) if constants else np.zeros(0)
        if values.size and (np.isnan(values).any() or np.any(values != values[0])):
            raise Refusal(f"{op} with a constant that varies by element (or is NaN) is not supported; one value "
                          "for all elements is (a clip)")
        if np.broadcast_shapes(x.shape, *(c.shape for c in constants)) != tuple(x.shape):
            raise Refusal(f"{op}'s constant broadcasts the computed input {x.shape} to a larger shape")
        if not values.size:
            return [x]
        edge = float(values[0])
        fn = ActivationFn(Act.CLIP, edge, np.inf) if keep_above else ActivationFn(Act.CLIP, -np.inf, edge)
        return [apply_activation(ctx, x, fn)]
    convert.__name__ = f"convert_{op.lower()}"
    return convert


_bound_by_constant("Max", keep_above=True)
_bound_by_constant("Min", keep_above=False)
