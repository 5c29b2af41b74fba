"""BatchNormalization in inference mode (torch BatchNorm1d in eval()): an elementwise affine map.

    y = scale * (x - mean) / sqrt(var + epsilon) + B,   per channel (axis 1)

folds, in float64 from the model's constants, into y = w * x + b with w = scale / sqrt(var + epsilon)
and b = B - mean * w: one exact Affine node. Training mode normalises with the batch's own statistics
(not a per-sample map) and is refused, as are the extra outputs only training computes.
"""

from __future__ import annotations

import numpy as np

from parsers.context import Context, node_label
from parsers.errors import BatchLayoutError, Refusal
from parsers.ops.elementwise import collapse_fixed_batch
from parsers.registry import converter
from parsers.values import Sym

_PARAMETERS = ("scale", "B", "mean", "var")


def _channel_shaped(x: Sym, value: np.ndarray, what: str, spatial: bool) -> np.ndarray:
    """A per-channel constant laid out to broadcast against the ONNX input (N, C, D1, ...): shape
    (C, 1, ...) when spatial, (C, D1, ...) (one value per activation, BatchNormalization-7) otherwise.
    The channel count is only known here when axis 1 is not the batch axis (size one in a Sym)."""
    value = np.asarray(value, dtype=np.float64)
    if spatial:
        if value.ndim != 1 or (x.batch_axis != 1 and value.size != x.shape[1]):
            raise Refusal(f"the {what} of shape {value.shape} does not hold one value per channel of the input "
                          f"{x.shape} (axis 1)")
        return value.reshape((-1,) + (1,) * (x.rank - 2))
    return value


def _per_sample(ctx: Context, node, x: Sym, value: np.ndarray, what: str) -> np.ndarray:
    """`value` (aligned to the input's trailing axes) for one sample, broadcast to the input's shape."""
    try:
        value = collapse_fixed_batch(value, x.rank, x.batch_axis)
    except Refusal:
        raise BatchLayoutError(node.op_type, ctx.opset, node_label(node),
                               f"its channel axis 1 is the batch axis of the input {x.shape}, and the {what} differs "
                               "between channels: each sample would be normalised differently (the input's batch "
                               "axis may not be where popqorn assumed; give batch_axes=...)") from None
    try:
        return np.broadcast_to(value, x.shape)
    except ValueError:
        raise Refusal(f"the {what} of shape {value.shape} does not match the input {x.shape} on its channel "
                      "axis 1") from None


@converter("BatchNormalization", since=7, attributes=("epsilon", "momentum", "spatial"))
@converter("BatchNormalization", since=9, attributes=("epsilon", "momentum"))
@converter("BatchNormalization", since=14, attributes=("epsilon", "momentum", "training_mode"))
def batch_normalization(node, inputs, ctx):
    attrs = ctx.attrs(node)
    if attrs.get("training_mode", 0):
        raise ctx.unsupported(node, "training_mode=1 normalises with the batch's own statistics, which mixes "
                                    "samples; export the model in eval() mode")
    extra = [name for name in node.output[1:] if name]
    if extra:
        raise ctx.unsupported(node, f"outputs {extra} are running or saved statistics, computed only in training "
                                    "mode; export the model in eval() mode")
    if len(inputs) != 5 or any(v is None for v in inputs):
        raise ctx.unsupported(node, "expects the five inputs X, scale, B, mean, var")
    scale, shift, mean, var = [ctx.constant(node, inputs[k], f"the {name} input") for k, name in
                               enumerate(_PARAMETERS, start=1)]
    x = inputs[0]
    if x.rank < 2:
        raise ctx.unsupported(node, f"the input {x.shape} has no channel axis 1")
    spatial = bool(attrs.get("spatial", 1))
    scale, shift, mean, var = [_channel_shaped(x, v, name, spatial) for v, name in
                               zip((scale, shift, mean, var), _PARAMETERS)]
    denominator = var + float(attrs.get("epsilon", 1e-5))
    if not (denominator > 0).all():
        raise ctx.unsupported(node, "var + epsilon is not positive: the normalisation divides by zero or takes the "
                                    "square root of a negative number")
    weight = scale / np.sqrt(denominator)
    bias = shift - mean * weight
    if not (np.isfinite(weight).all() and np.isfinite(bias).all()):
        raise ctx.unsupported(node, "the folded scale or shift is infinite or NaN")
    weight = _per_sample(ctx, node, x, weight, "folded scale")
    bias = _per_sample(ctx, node, x, bias, "folded shift")
    out = ctx.builder.affine(x.node, weight.reshape(-1), bias.reshape(-1), f"{ctx.prefix}/batchnorm")
    return [Sym(out, x.shape, x.batch_axis)]
