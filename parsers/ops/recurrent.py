"""Native ONNX LSTM / GRU / RNN nodes, unrolled over time into IR nodes.

Reads like onnx.reference's op_lstm / op_gru / op_rnn (the executable spec) but also honours what
the reference ignores — `activations` with their alpha/beta, `clip`, `sequence_lens`,
`input_forget`, `layout` — and refuses what it cannot represent, naming the reason.

Per direction and time step the gate pre-activations are one Affine of x_t (all steps at once,
blockwise) plus one of h_{t-1}, split into gates by Select; the gate products are emitted through
the builder so sigmoid(x)*tanh(y) and sigmoid(x)*y are fused for the engine's joint planes. GRU's
(1 - z) is written sigmoid(-u_z), so both of its update terms are sigmoid products too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from parsers.context import Context
from parsers.errors import Refusal
from parsers.ops.elementwise import collapse_fixed_batch
from parsers.registry import converter
from parsers.values import Sym
from verifier import activations
from verifier.ir import Act, ActivationFn, CellInfo

_TABLE_BY_NAME = {name.lower(): spec for name, spec in activations.BY_ONNX_NAME.items()}

COMMON = ("activation_alpha", "activation_beta", "activations", "clip", "direction", "hidden_size", "layout")
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
DEFAULT_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}
# activation name -> (number of alpha, number of beta parameters it consumes)
PARAMETERS = {"sigmoid": (0, 0), "tanh": (0, 0), "relu": (0, 0), "softsign": (0, 0), "softplus": (0, 0),
              "leakyrelu": (1, 0), "thresholdedrelu": (1, 0), "elu": (1, 0), "hardsigmoid": (1, 1),
              "affine": (1, 1), "scaledtanh": (1, 1)}
# values of omitted alpha/beta: the defaults of the ONNX operator of the same name (HardSigmoid-6,
# LeakyRelu-6, Elu-6), which is also what onnxruntime uses. Where runtimes disagree, the parameters
# must be given: ThresholdedRelu (operator default 1.0, onnxruntime's RNN default 0), and Affine and
# ScaledTanh (no operators any more).
ONNX_SPELLING = {name.lower(): name for name in ("Sigmoid", "Tanh", "Relu", "Softsign", "Softplus", "LeakyRelu",
                                                  "ThresholdedRelu", "Elu", "HardSigmoid", "Affine", "ScaledTanh")}
DEFAULTS = {"leakyrelu": (0.01, None), "elu": (1.0, None), "hardsigmoid": (0.2, 0.5)}
# IR nodes one time step of one direction emits at most (checked against max_nodes before unrolling)
NODES_PER_STEP = {"LSTM": 32, "GRU": 32, "RNN": 8}

State = str | np.ndarray  # an IR node name, or a constant vector


@dataclass(frozen=True)
class Activation:
    """One entry of the `activations` attribute with its parameters."""

    name: str
    alpha: float = 0.0
    beta: float = 0.0

    def apply(self, ctx: Context, x: State, label: str) -> State:
        """Emit the activation of x (constants are evaluated directly)."""
        if isinstance(x, np.ndarray):
            return _evaluate(self, x)
        b = ctx.builder
        spec = _TABLE_BY_NAME.get(self.name)  # activations the table knows (alpha/beta as parsed here)
        if spec is not None and spec.kind is not Act.CLIP:
            return b.activation(x, ActivationFn(spec.kind, self.alpha, self.beta), label)
        if self.name == "affine":
            return b.scale_shift(x, self.alpha, self.beta, label)
        if self.name == "hardsigmoid":
            return b.activation(b.scale_shift(x, self.alpha, self.beta, f"{label}/scale"),
                                ActivationFn(Act.CLIP, 0.0, 1.0), label)
        if self.name == "scaledtanh":
            inner = b.activation(b.scale_shift(x, self.beta, 0.0, f"{label}/scale"), ActivationFn(Act.TANH), label)
            return b.scale_shift(inner, self.alpha, 0.0, f"{label}/out")
        raise ValueError(f"activation {self.name}")


def _evaluate(fn: Activation, x: np.ndarray) -> np.ndarray:
    a, b = fn.alpha, fn.beta
    table = {"sigmoid": lambda v: 1 / (1 + np.exp(-v)), "tanh": np.tanh, "relu": lambda v: np.maximum(v, 0),
             "softsign": lambda v: v / (1 + np.abs(v)), "softplus": lambda v: np.logaddexp(0, v),
             "leakyrelu": lambda v: np.where(v >= 0, v, a * v), "thresholdedrelu": lambda v: np.where(v > a, v, 0.0),
             "elu": lambda v: np.where(v >= 0, v, a * np.expm1(np.minimum(v, 0))), "affine": lambda v: a * v + b,
             "hardsigmoid": lambda v: np.clip(a * v + b, 0, 1), "scaledtanh": lambda v: a * np.tanh(b * v)}
    return table[fn.name](x)


def parse_activations(node, attrs: dict, op: str, directions: int, ctx: Context) -> list[list[Activation]]:
    """Per direction, the activations in use; alpha/beta are consumed in order by the activations
    that take them (onnxruntime's reading). A parametrised activation without its parameters is
    refused: runtimes disagree on its defaults."""
    per_direction = len(DEFAULT_ACTIVATIONS[op])
    explicit = {a.name for a in node.attribute}
    names = (attrs.get("activations") if "activations" in explicit else None) or DEFAULT_ACTIVATIONS[op] * directions
    if len(names) != per_direction * directions:  # the spec's count; onnxruntime refuses others too
        raise ctx.unsupported(node, f"expected {per_direction * directions} activations "
                                    f"({per_direction} per direction, {directions} direction(s)), got {len(names)}")
    alphas, betas = list(attrs.get("activation_alpha") or []), list(attrs.get("activation_beta") or [])
    parsed = []
    for name in names:
        key = name.lower()
        if key not in PARAMETERS:
            raise ctx.unsupported(node, f"activation {name!r} is not supported (supported: "
                                        f"{', '.join(sorted(ONNX_SPELLING[k] for k in PARAMETERS))})")
        need_alpha, need_beta = PARAMETERS[key]
        default_alpha, default_beta = DEFAULTS.get(key, (None, None))
        if (need_alpha and not alphas and default_alpha is None) or (need_beta and not betas and default_beta is None):
            raise ctx.unsupported(node, f"activation {name} needs activation_alpha/activation_beta values "
                                        "(it has no operator defaults)")
        alpha = (alphas.pop(0) if alphas else default_alpha) if need_alpha else 0.0
        beta = (betas.pop(0) if betas else default_beta) if need_beta else 0.0
        parsed.append(Activation(key, float(alpha), float(beta)))
    if alphas or betas:
        raise ctx.unsupported(node, "more activation_alpha/activation_beta values than activations take")
    return [parsed[d * per_direction:(d + 1) * per_direction] for d in range(directions)]


def _constant(node, value, what: str, ctx: Context) -> np.ndarray | None:
    value = ctx.constant(node, value, what)
    return None if value is None else np.asarray(value, dtype=np.float64)


def _initial_state(node, value, directions: int, hidden: int, layout: int, what: str, ctx: Context):
    """Per direction: a constant vector or an IR node for the initial h / c (batch of one)."""
    if value is None:
        return [np.zeros(hidden) for _ in range(directions)]
    expected = (1, directions, hidden) if layout else (directions, 1, hidden)
    axes = "(batch, num_directions, hidden_size)" if layout else "(num_directions, batch, hidden_size)"
    if isinstance(value, Sym):
        batch_axis = 0 if layout else 1
        if value.batch_axis not in (None, batch_axis) or value.shape != expected:
            raise ctx.unsupported(node, f"{what} has shape {value.shape} for one sample; expected {expected} {axes}")
        per = hidden
        return [ctx.builder.select(value.node, np.arange(d * per, (d + 1) * per), f"{ctx.prefix}/{what}{d}")
                for d in range(directions)]
    array = np.asarray(value, dtype=np.float64)
    if array.ndim != 3:
        raise ctx.unsupported(node, f"{what} has shape {array.shape}; expected {axes}")
    array = collapse_fixed_batch(array, 3, 0 if layout else 1)
    if array.shape != expected:
        raise ctx.unsupported(node, f"{what} has shape {array.shape}; expected {axes} = {expected} for one sample")
    array = np.moveaxis(array, 0, 1) if layout else array  # -> (directions, 1, hidden)
    return [array[d].reshape(-1) for d in range(directions)]


class Unroller:
    """Shared mechanics of one direction of a recurrent node: input projections, the recurrent
    affine map and constant/symbolic state bookkeeping."""

    def __init__(self, ctx: Context, x: Sym | np.ndarray, steps: int, inputs: int, label: str) -> None:
        self.ctx, self.b, self.x, self.steps, self.inputs, self.label = ctx, ctx.builder, x, steps, inputs, label

    def project_inputs(self, weight: np.ndarray, bias: np.ndarray) -> State:
        """W x_t + bias for every step at once: one blockwise affine map over the whole sequence
        (flat, step-major); for a constant sequence (steps, features), its value."""
        if isinstance(self.x, np.ndarray):
            return (self.x @ weight.T + bias).reshape(-1)
        return self.b.affine(self.x.node, weight, np.tile(bias, self.steps), f"{self.label}/input_proj")

    def select(self, value: State, index: np.ndarray, name: str) -> State:
        return value[index] if isinstance(value, np.ndarray) else self.b.select(value, index, name)

    def step_slice(self, projected: State, t: int, width: int, name: str) -> State:
        return self.select(projected, np.arange(t * width, (t + 1) * width), f"{self.label}/t{t}/{name}")

    def recurrent(self, x_part: State, weight: np.ndarray, h: State, t: int, name: str) -> State:
        """x_part + R h: a constant state folds into a bias, a constant input part too."""
        if isinstance(h, np.ndarray):
            if isinstance(x_part, np.ndarray):
                return x_part + weight @ h
            if not h.any():
                return x_part
            return self.b.affine(x_part, np.ones(self.b.sizes[x_part]), weight @ h, f"{self.label}/t{t}/{name}")
        if isinstance(x_part, np.ndarray):
            return self.b.affine(h, weight, x_part, f"{self.label}/t{t}/{name}")
        rec = self.b.affine(h, weight, None, f"{self.label}/t{t}/{name}_rec")
        return self.b.add([x_part, rec], f"{self.label}/t{t}/{name}")

    def gate(self, pre: State, k: int, hidden: int, t: int, name: str) -> State:
        return self.select(pre, np.arange(k * hidden, (k + 1) * hidden), f"{self.label}/t{t}/{name}_pre")

    def clip(self, pre: State, clip: float | None, t: int, name: str) -> State:
        if clip is None:
            return pre
        if isinstance(pre, np.ndarray):
            return np.clip(pre, -clip, clip)
        return self.b.activation(pre, ActivationFn(Act.CLIP, -clip, clip), f"{self.label}/t{t}/{name}_clip")

    def product(self, a: State, c: State, name: str) -> State:
        """a * c with constants handled: a constant factor becomes an elementwise scale."""
        if isinstance(a, np.ndarray) and isinstance(c, np.ndarray):
            return a * c
        if isinstance(c, np.ndarray):
            a, c = c, a
        if isinstance(a, np.ndarray):
            if not a.any():
                return np.zeros_like(a)
            return self.b.affine(c, a, None, name)
        return self.b.product(a, c, name)

    def add(self, a: State, c: State, name: str) -> State:
        if isinstance(a, np.ndarray) and isinstance(c, np.ndarray):
            return a + c
        if isinstance(c, np.ndarray):
            a, c = c, a
        if isinstance(a, np.ndarray):
            return self.b.affine(c, np.ones(self.b.sizes[c]), a, name) if a.any() else c
        return self.b.add([a, c], name)


def _one_minus(unroller: Unroller, fn: Activation, pre: State, activated: State, name: str) -> State:
    """1 - f(pre): sigmoid(-pre) when f is the sigmoid (keeps products in fused form)."""
    if isinstance(activated, np.ndarray):
        return 1.0 - activated
    b = unroller.b
    if fn.name == "sigmoid":
        return b.activation(b.scale_shift(pre, -1.0, 0.0, f"{name}_neg"), ActivationFn(Act.SIGMOID), name)
    return b.scale_shift(activated, -1.0, 1.0, name)


def _sequence_length(node, value, steps: int, ctx: Context) -> int:
    lengths = _constant(node, value, "sequence_lens", ctx)
    if lengths is None:
        return steps
    lengths = np.asarray(lengths).reshape(-1)
    if lengths.size == 0 or not np.all(lengths == lengths[0]):
        raise ctx.unsupported(node, "sequence_lens differ between batch entries; the model is not per-sample")
    length = int(lengths[0])
    if not 0 < length <= steps:
        raise ctx.unsupported(node, f"sequence_lens {length} outside 1..{steps}")
    return length


def _sequence_input(node, x, layout: int, ctx: Context) -> tuple[Sym | np.ndarray, int, int]:
    """X as a Sym, or a constant X (a decoder's input, or a node folded per batch entry by
    walk._fold) as its (steps, features) array in time order."""
    if not isinstance(x, Sym):
        return _constant_sequence(node, x, layout, ctx)
    if x.rank != 3:
        raise ctx.unsupported(node, f"X must have rank 3, got shape {x.shape}")
    batch_axis = 0 if layout else 1
    if x.shape[batch_axis] != 1 or x.batch_axis not in (None, batch_axis):
        raise ctx.unsupported(node, f"X of shape {x.shape} does not have its batch on axis {batch_axis}")
    steps = x.shape[1] if layout else x.shape[0]
    if steps < 1 or x.shape[2] < 1:
        raise ctx.unsupported(node, f"X of shape {x.shape} is empty: no time steps or no features")
    return x, steps, x.shape[2]


def _constant_sequence(node, x, layout: int, ctx: Context) -> tuple[np.ndarray, int, int]:
    array = np.asarray(x, dtype=np.float64)
    if array.ndim != 3:
        raise ctx.unsupported(node, f"X must have rank 3, got shape {array.shape}")
    batch_axis = 0 if layout else 1
    try:
        array = collapse_fixed_batch(array, 3, batch_axis)
    except Refusal as exc:
        raise ctx.unsupported(node, f"X is constant but {exc}") from None
    sequence = array[0] if layout else array[:, 0]
    if sequence.shape[0] < 1 or sequence.shape[1] < 1:
        raise ctx.unsupported(node, f"X of shape {array.shape} is empty: no time steps or no features")
    return sequence, sequence.shape[0], sequence.shape[1]


def _emit_outputs(node, ctx: Context, per_step: list[list[State]], finals: list[list[State]], steps: int,
                  hidden: int, layout: int, like: Sym | None) -> list:
    """Y [T, D, 1, H] (layout 0) / [1, T, D, H] (layout 1) and the final states [D, 1, H] / [1, D, H];
    flat order t, d, h in both layouts. With constant inputs only (`like` None), constant arrays."""
    directions = len(per_step)
    y_shape = (1, steps, directions, hidden) if layout else (steps, directions, 1, hidden)
    final_shape = (1, directions, hidden) if layout else (directions, 1, hidden)
    wanted = len(node.output)
    if like is None:
        y = np.stack([np.stack([np.asarray(per_step[d][t]) for d in range(directions)]) for t in range(steps)])
        outputs = [y.reshape(y_shape)] + [np.stack(states).reshape(final_shape) for states in finals]
        return [outputs[k] if k < wanted and node.output[k] else None for k in range(len(outputs))][:wanted]
    materialized = lambda s: s if isinstance(s, str) else ctx.materialize(np.asarray(s), like).node
    y_parts = [materialized(per_step[d][t]) for t in range(steps) for d in range(directions)]
    outputs = [Sym(ctx.builder.concat(y_parts, f"{ctx.prefix}/Y"), y_shape, 0 if layout else 2)]
    for k, states in enumerate(finals):
        parts = [materialized(s) for s in states]
        outputs.append(Sym(ctx.builder.concat(parts, f"{ctx.prefix}/final{k}"), final_shape, 0 if layout else 1))
    return [outputs[k] if k < wanted and node.output[k] else None for k in range(len(outputs))][:wanted]


def _symbolic(inputs: list) -> Sym | None:
    """A symbolic input of the node (X, or a decoder's initial state), which constant outputs are
    materialised against; None when every input is constant."""
    return next((value for value in inputs if isinstance(value, Sym)), None)


def _setup(node, inputs, ctx: Context, op: str):
    attrs = ctx.attrs(node)
    layout = int(attrs.get("layout", 0))
    direction = attrs.get("direction", "forward")
    if direction not in ("forward", "reverse", "bidirectional"):
        raise ctx.unsupported(node, f"direction {direction!r} (the spec's values: forward, reverse, bidirectional)")
    directions = 2 if direction == "bidirectional" else 1
    x, steps, input_size = _sequence_input(node, inputs[0], layout, ctx)
    weight = _constant(node, inputs[1], "W", ctx)
    recurrence = _constant(node, inputs[2], "R", ctx)
    gates = GATES[op]
    if weight.ndim != 3 or recurrence.ndim != 3:
        raise ctx.unsupported(node, f"W {weight.shape} and R {recurrence.shape} must have rank 3")
    declared_hidden = attrs.get("hidden_size")
    if declared_hidden is not None and int(declared_hidden) < 1:
        raise ctx.unsupported(node, f"hidden_size {declared_hidden} must be positive")
    hidden = int(declared_hidden or recurrence.shape[-1])
    if weight.shape != (directions, gates * hidden, input_size) or recurrence.shape != (directions, gates * hidden, hidden):
        raise ctx.unsupported(node, f"W {weight.shape} / R {recurrence.shape} do not match {directions} direction(s), "
                                    f"hidden {hidden}, input {input_size}")
    bias = _constant(node, inputs[3] if len(inputs) > 3 else None, "B", ctx)
    if bias is not None and bias.shape != (directions, 2 * gates * hidden):
        raise ctx.unsupported(node, f"B has shape {bias.shape}; expected {(directions, 2 * gates * hidden)}")
    bias = np.zeros((directions, 2 * gates * hidden)) if bias is None else bias
    length = _sequence_length(node, inputs[4] if len(inputs) > 4 else None, steps, ctx)
    clip = attrs.get("clip")
    clip = None if clip is None else float(clip)
    if clip is not None and not clip > 0:  # NaN included; onnxruntime refuses these too
        raise ctx.unsupported(node, f"clip {clip} must be a positive number")
    activations = parse_activations(node, attrs, op, directions, ctx)
    h0 = _initial_state(node, inputs[5] if len(inputs) > 5 else None, directions, hidden, layout, "initial_h", ctx)
    where = f"{op} node {node.name or node.output[0]!r} ({steps:,} steps, hidden {hidden:,}, {directions} direction(s))"
    ctx.meter.check_nodes(len(ctx.builder.nodes), steps * directions * NODES_PER_STEP[op] + 4, where)
    ctx.meter.charge_unrolled(steps * hidden * directions, where)
    label = ctx.fresh_prefix(op.lower())
    ctx.cells.append(CellInfo(name=f"{label} ({node.name or node.output[0]})", kind=op, direction=direction,
                              steps=steps, input_size=input_size, hidden_size=hidden,
                              details=", ".join(f"{k}={v}" for k, v in sorted(attrs.items())
                                                if k in ("clip", "layout", "linear_before_reset", "input_forget", "activations"))))
    return (attrs, layout, direction, directions, x, steps, input_size, weight, recurrence, bias, hidden, length, clip,
            activations, h0, label)


def _order(direction: str, d: int, length: int) -> range:
    reverse = direction == "reverse" or (direction == "bidirectional" and d == 1)
    return range(length - 1, -1, -1) if reverse else range(length)


@converter("LSTM", since=1, attributes=COMMON + ("input_forget", "output_sequence"))
def lstm(node, inputs, ctx: Context):
    (attrs, layout, direction, directions, x, steps, input_size, weight, recurrence, bias, hidden, length, clip,
     activations, h0, label) = _setup(node, inputs, ctx, "LSTM")
    c0 = _initial_state(node, inputs[6] if len(inputs) > 6 else None, directions, hidden, layout, "initial_c", ctx)
    peepholes = _constant(node, inputs[7] if len(inputs) > 7 else None, "P", ctx)
    if peepholes is not None and peepholes.shape != (directions, 3 * hidden):
        raise ctx.unsupported(node, f"P has shape {peepholes.shape}; expected {(directions, 3 * hidden)}")
    input_forget = bool(attrs.get("input_forget", 0))
    per_step, final_h, final_c = [], [], []
    for d in range(directions):
        f_act, g_act, h_act = activations[d]
        tag = f"{label}/{['fwd', 'bwd'][d] if directions == 2 else ('bwd' if direction == 'reverse' else 'fwd')}"
        u = Unroller(ctx, x, steps, input_size, tag)
        projected = u.project_inputs(weight[d], bias[d, :4 * hidden] + bias[d, 4 * hidden:])
        h, c = h0[d], c0[d]
        outputs: list[State] = [np.zeros(hidden)] * steps
        for t in _order(direction, d, length):
            pre = u.recurrent(u.step_slice(projected, t, 4 * hidden, "x"), recurrence[d], h, t, "gates")
            gate = {name: u.gate(pre, k, hidden, t, name) for k, name in enumerate(("input", "output", "forget", "cell"))}
            if peepholes is not None:
                p_i, _, p_f = np.split(peepholes[d], 3)
                gate["input"] = u.add(gate["input"], u.product(p_i, c, f"{tag}/t{t}/peep_i"), f"{tag}/t{t}/input_peep")
                gate["forget"] = u.add(gate["forget"], u.product(p_f, c, f"{tag}/t{t}/peep_f"), f"{tag}/t{t}/forget_peep")
            i_pre = u.clip(gate["input"], clip, t, "input")
            i = f_act.apply(ctx, i_pre, f"{tag}/t{t}/input")
            if input_forget:
                f = _one_minus(u, f_act, i_pre, i, f"{tag}/t{t}/forget")
            else:
                f = f_act.apply(ctx, u.clip(gate["forget"], clip, t, "forget"), f"{tag}/t{t}/forget")
            g = g_act.apply(ctx, u.clip(gate["cell"], clip, t, "cell"), f"{tag}/t{t}/cell_in")
            c = u.add(u.product(f, c, f"{tag}/t{t}/keep"), u.product(i, g, f"{tag}/t{t}/write"), f"{tag}/t{t}/c")
            o_pre = gate["output"]
            if peepholes is not None:
                o_pre = u.add(o_pre, u.product(np.split(peepholes[d], 3)[1], c, f"{tag}/t{t}/peep_o"), f"{tag}/t{t}/output_peep")
            o = f_act.apply(ctx, u.clip(o_pre, clip, t, "output"), f"{tag}/t{t}/output")
            h = u.product(o, h_act.apply(ctx, c, f"{tag}/t{t}/c_act"), f"{tag}/t{t}/h")
            outputs[t] = h
        per_step.append(outputs)
        final_h.append(h)
        final_c.append(c)
    return _emit_outputs(node, ctx, per_step, [final_h, final_c], steps, hidden, layout, _symbolic(inputs))


@converter("GRU", since=1, attributes=COMMON + ("linear_before_reset", "output_sequence"))
def gru(node, inputs, ctx: Context):
    (attrs, layout, direction, directions, x, steps, input_size, weight, recurrence, bias, hidden, length, clip,
     activations, h0, label) = _setup(node, inputs, ctx, "GRU")
    before_reset = bool(attrs.get("linear_before_reset", 0))
    per_step, final_h = [], []
    for d in range(directions):
        f_act, g_act = activations[d]
        tag = f"{label}/{['fwd', 'bwd'][d] if directions == 2 else ('bwd' if direction == 'reverse' else 'fwd')}"
        u = Unroller(ctx, x, steps, input_size, tag)
        w_bias, r_bias = bias[d, :3 * hidden], bias[d, 3 * hidden:]
        # z and r take both biases; the candidate's recurrent bias sits where linear_before_reset says
        x_bias = w_bias + np.concatenate([r_bias[:2 * hidden], np.zeros(hidden)])
        projected = u.project_inputs(weight[d], x_bias)
        r_zr, r_h = recurrence[d][:2 * hidden], recurrence[d][2 * hidden:]
        h = h0[d]
        outputs: list[State] = [np.zeros(hidden)] * steps
        for t in _order(direction, d, length):
            x_part = u.step_slice(projected, t, 3 * hidden, "x")
            zr = u.recurrent(u.select(x_part, np.arange(2 * hidden), f"{tag}/t{t}/x_zr"), r_zr, h, t, "zr")
            z_pre = u.clip(u.gate(zr, 0, hidden, t, "update"), clip, t, "update")
            r = f_act.apply(ctx, u.clip(u.gate(zr, 1, hidden, t, "reset"), clip, t, "reset"), f"{tag}/t{t}/reset")
            x_h = u.select(x_part, np.arange(2 * hidden, 3 * hidden), f"{tag}/t{t}/x_h")
            if before_reset:
                rec = _affine_state(u, h, r_h, r_bias[2 * hidden:], f"{tag}/t{t}/h_rec")
                candidate_pre = u.add(x_h, u.product(r, rec, f"{tag}/t{t}/reset_rec"), f"{tag}/t{t}/candidate_sum")
            else:
                gated = u.product(r, h, f"{tag}/t{t}/reset_h")
                rec = _affine_state(u, gated, r_h, r_bias[2 * hidden:], f"{tag}/t{t}/h_rec")
                candidate_pre = u.add(x_h, rec, f"{tag}/t{t}/candidate_sum")
            n = g_act.apply(ctx, u.clip(candidate_pre, clip, t, "candidate"), f"{tag}/t{t}/candidate")
            z = f_act.apply(ctx, z_pre, f"{tag}/t{t}/update")
            keep_new = _one_minus(u, f_act, z_pre, z, f"{tag}/t{t}/update_not")
            h = u.add(u.product(keep_new, n, f"{tag}/t{t}/new"), u.product(z, h, f"{tag}/t{t}/keep"), f"{tag}/t{t}/h")
            outputs[t] = h
        per_step.append(outputs)
        final_h.append(h)
    return _emit_outputs(node, ctx, per_step, [final_h], steps, hidden, layout, _symbolic(inputs))


def _affine_state(u: Unroller, state: State, weight: np.ndarray, bias: np.ndarray, name: str) -> State:
    if isinstance(state, np.ndarray):
        return weight @ state + bias
    return u.b.affine(state, weight, bias, name)


@converter("RNN", since=1, attributes=COMMON + ("output_sequence",))
def rnn(node, inputs, ctx: Context):
    (_, layout, direction, directions, x, steps, input_size, weight, recurrence, bias, hidden, length, clip,
     activations, h0, label) = _setup(node, inputs, ctx, "RNN")
    per_step, final_h = [], []
    for d in range(directions):
        (f_act,) = activations[d]
        tag = f"{label}/{['fwd', 'bwd'][d] if directions == 2 else ('bwd' if direction == 'reverse' else 'fwd')}"
        u = Unroller(ctx, x, steps, input_size, tag)
        projected = u.project_inputs(weight[d], bias[d, :hidden] + bias[d, hidden:])
        h = h0[d]
        outputs: list[State] = [np.zeros(hidden)] * steps
        for t in _order(direction, d, length):
            pre = u.recurrent(u.step_slice(projected, t, hidden, "x"), recurrence[d], h, t, "pre")
            h = f_act.apply(ctx, u.clip(pre, clip, t, "pre"), f"{tag}/t{t}/h")
            outputs[t] = h
        per_step.append(outputs)
        final_h.append(h)
    return _emit_outputs(node, ctx, per_step, [final_h], steps, hidden, layout, _symbolic(inputs))
