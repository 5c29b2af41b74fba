"""The optimised mode (method alpha): every parameter value is a sound relaxation, the optimisation
starts exactly at CROWN and never ends below it, and its bounds and radii hold for points run
through onnxruntime."""

from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import pytest
import torch

import parsers
from tests.verifier import models
from tests.verifier.sampling import gradient_deltas, random_deltas
from verifier import activations
from verifier.bounds import bound_outputs, make_batch, relaxer_for
from verifier.certify import SearchOptions, certify, margin_lower_bounds, margin_spec
from verifier.ir import SIGMOID, TANH, Act, ActivationFn
from verifier.optimize import OptimizeOptions
from verifier.relaxations.activation_lines import exact_intercepts
from verifier.relaxations.base import Interval
from verifier.relaxations.optimizable import identity_lines, lines_from_slopes, mixed_mccormick, slope_range
from verifier.threat import ThreatModel

MODES = ["none", "shared", "per-row", "per-bound"]


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("optimize")
    return {kind: models.export_torch(models.CellLoop(kind), folder / f"{kind}.onnx", seed=3) for kind in ("lstm", "gru")}


def _box(count: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    centre = torch.randn(count, generator=g, dtype=torch.float64) * 2
    width = torch.rand(count, generator=g, dtype=torch.float64) * 4
    return centre - width / 2, centre + width / 2


@pytest.mark.parametrize("fn", [SIGMOID, TANH, ActivationFn(Act.RELU), ActivationFn(Act.SOFTSIGN)], ids=str)
def test_lines_are_sound_for_any_slope(fn):
    lower, upper = _box(3000, 1)
    g = torch.Generator().manual_seed(2)
    k_min, k_max = slope_range(fn, lower, upper)
    slopes = [k_min + (k_max - k_min) * torch.rand(3000, generator=g, dtype=torch.float64) for _ in range(2)]
    lines = lines_from_slopes(fn, lower, upper, *slopes)
    xs = lower[:, None] + (upper - lower)[:, None] * torch.linspace(0, 1, 401, dtype=torch.float64)
    f = activations.apply(fn, xs)
    assert (lines.lower_slope[:, None] * xs + lines.lower_intercept[:, None] <= f + 1e-12).all()
    assert (lines.upper_slope[:, None] * xs + lines.upper_intercept[:, None] >= f - 1e-12).all()


@pytest.mark.parametrize("fn", [SIGMOID, TANH, ActivationFn(Act.SOFTSIGN), ActivationFn(Act.ELU, 1.0),
                                ActivationFn(Act.SOFTPLUS), ActivationFn(Act.LEAKY_RELU, 0.1)], ids=str)
def test_exact_intercepts_carry_the_envelope_gradient(fn):
    """The intercepts' attached gradient (d/dk = -x*, d/dl = f'(l) - k at a lower-end x*, ...) equals
    autograd's through the candidate points, and the values are the no-gradient ones exactly."""
    lower, upper = _box(400, 7)
    g = torch.Generator().manual_seed(8)
    k_min, k_max = slope_range(fn, lower, upper)
    theta = torch.rand(2, 400, generator=g, dtype=torch.float64) * 0.98 + 0.01
    leaves = [t.clone().requires_grad_(True) for t in (lower, upper, theta[0], theta[1])]

    def intercepts(picked_by_autograd: bool):
        l, u, a, b = leaves
        k_lo, k_hi = slope_range(fn, l, u)
        slopes = (k_lo + a * (k_hi - k_lo), k_lo + b * (k_hi - k_lo))
        if not picked_by_autograd:
            return exact_intercepts(fn, *slopes, l, u)
        sides = []
        for slope, sign in zip(slopes, (-1.0, 1.0)):  # the reference: autograd through every candidate
            values = torch.stack([v - slope * x for x, v in activations.critical_points(fn, slope, l, u)])
            grid = torch.round(sign * values.detach() / (values.detach().abs().amax(0) + 1) * 2.0 ** 36)
            sides.append(values.gather(0, grid.max(0, keepdim=True).indices).squeeze(0))
        return sides

    grads = []
    for reference in (True, False):
        low, high = intercepts(reference)
        grads.append(torch.autograd.grad((low * 1.3 - high * 0.7).sum(), leaves))
        if not reference:
            with torch.no_grad():
                plain = intercepts(False)
            assert torch.equal(low.detach(), plain[0]) and torch.equal(high.detach(), plain[1])
    for expected, got in zip(*grads):
        assert torch.allclose(got, expected, rtol=1e-7, atol=1e-7)


def test_exact_intercepts_with_gradient_keep_their_value_on_unbounded_intervals():
    """An infinite end (inf - inf in the gradient's carrier) must not turn the value into NaN."""
    lower = torch.tensor([-math.inf, -1.0], dtype=torch.float64, requires_grad=True)
    upper = torch.tensor([1.0, math.inf], dtype=torch.float64, requires_grad=True)
    slope = torch.tensor([0.1, 0.1], dtype=torch.float64, requires_grad=True)
    got = exact_intercepts(SIGMOID, slope, slope, lower, upper)
    with torch.no_grad():
        plain = exact_intercepts(SIGMOID, slope, slope, lower, upper)
    for g, p in zip(got, plain):
        assert torch.equal(g.detach(), p)


@pytest.mark.parametrize("left_fn, right_fn", [(SIGMOID, TANH), (SIGMOID, None), (None, SIGMOID)], ids=str)
def test_mixed_mccormick_planes_are_sound_for_any_parameters(left_fn, right_fn):
    (xl, xu), (yl, yu) = _box(2000, 3), _box(2000, 4)
    g = torch.Generator().manual_seed(5)
    rand = lambda: torch.rand(2000, generator=g, dtype=torch.float64)

    def factor(fn, lower, upper):
        if fn is None:
            return Interval(lower, upper), identity_lines(lower)
        k_min, k_max = slope_range(fn, lower, upper)
        slope = lambda: k_min + (k_max - k_min) * rand()
        interval = Interval(activations.apply(fn, lower), activations.apply(fn, upper))  # monotone factors
        return interval, lines_from_slopes(fn, lower, upper, slope(), slope())

    (a, a_lines), (b, b_lines) = factor(left_fn, xl, xu), factor(right_fn, yl, yu)
    planes = mixed_mccormick(left_fn, right_fn, a, b, a_lines, b_lines, rand(), rand())
    t = torch.linspace(0, 1, 41, dtype=torch.float64)
    x = (xl[:, None] + (xu - xl)[:, None] * t)[:, :, None]
    y = (yl[:, None] + (yu - yl)[:, None] * t)[:, None, :]
    f = activations.apply(left_fn, x) * activations.apply(right_fn, y)
    at = lambda px, py, c: px[:, None, None] * x + py[:, None, None] * y + c[:, None, None]
    assert (at(planes.lower_x, planes.lower_y, planes.lower_const) <= f + 1e-12).all()
    assert (at(planes.upper_x, planes.upper_y, planes.upper_const) >= f - 1e-12).all()


@pytest.mark.parametrize("left_fn, right_fn", [(SIGMOID, TANH), (SIGMOID, None), (None, SIGMOID)], ids=str)
def test_planes_blended_with_popqorns_are_sound_for_any_weight(left_fn, right_fn):
    """The optimised mode's products with joint planes: (1 - w) * mixed McCormick + w * POPQORN's
    planes, any w in [0, 1], bounds the product on the box (sampled on a grid)."""
    from verifier.optimize import _blend
    from verifier.relaxations import relax_product_planes

    (xl, xu), (yl, yu) = _box(1000, 6), _box(1000, 7)
    g = torch.Generator().manual_seed(8)
    rand = lambda: torch.rand(1000, generator=g, dtype=torch.float64)
    interval = lambda fn, lower, upper: (Interval(lower, upper) if fn is None
                                         else Interval(activations.apply(fn, lower), activations.apply(fn, upper)))
    lines = lambda fn, lower, upper: identity_lines(lower) if fn is None else lines_from_slopes(
        fn, lower, upper, *(lambda lo, hi: (lo + (hi - lo) * rand(), lo + (hi - lo) * rand()))(*slope_range(fn, lower, upper)))
    mccormick = mixed_mccormick(left_fn, right_fn, interval(left_fn, xl, xu), interval(right_fn, yl, yu),
                                lines(left_fn, xl, xu), lines(right_fn, yl, yu), rand(), rand())
    joint = relax_product_planes(left_fn, right_fn, xl, xu, yl, yu)
    planes = _blend(mccormick, joint, rand(), rand())
    t = torch.linspace(0, 1, 41, dtype=torch.float64)
    x = (xl[:, None] + (xu - xl)[:, None] * t)[:, :, None]
    y = (yl[:, None] + (yu - yl)[:, None] * t)[:, None, :]
    f = activations.apply(left_fn, x) * activations.apply(right_fn, y)
    at = lambda px, py, c: px[:, None, None] * x + py[:, None, None] * y + c[:, None, None]
    assert (at(planes.lower_x, planes.lower_y, planes.lower_const) <= f + 1e-12).all()
    assert (at(planes.upper_x, planes.upper_y, planes.upper_const) >= f - 1e-12).all()


def test_joint_planes_come_with_per_row_by_default():
    assert not OptimizeOptions().with_joint_planes and OptimizeOptions(intermediate="per-row").with_joint_planes
    assert OptimizeOptions(intermediate="per-bound").with_joint_planes
    assert OptimizeOptions(joint_planes=True).with_joint_planes
    assert not OptimizeOptions(intermediate="per-row", joint_planes=False).with_joint_planes


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("mode", [*MODES, "shared+joint"])
def test_optimised_margins_start_at_crown_never_fall_below_and_hold(nets, kind, mode):
    joint = mode.endswith("+joint") or None
    mode = mode.split("+")[0]
    path = nets[kind]
    graph = parsers.load_onnx(path)
    x = np.random.default_rng(1).uniform(-1, 1, (2, models.STEPS, models.FEATURES)).astype(np.float32)
    labels = ort.InferenceSession(str(path)).run(None, {"x": x})[0].argmax(1)
    batch = make_batch(graph, x)
    spec = margin_spec(torch.as_tensor(labels), models.CLASSES, None)
    threat = ThreatModel(2.0, "frame")
    eps = torch.full((2,), 0.3, dtype=torch.float64)
    out = batch.graph.outputs[0].node
    crown = margin_lower_bounds(batch.graph, batch, eps, threat, spec, relaxer_for("crown"), out)
    start = margin_lower_bounds(batch.graph, batch, eps, threat, spec, relaxer_for("alpha"), out,
                                optimize=OptimizeOptions(steps=0, intermediate=mode, joint_planes=joint))
    assert torch.allclose(start, crown, rtol=0, atol=1e-12)  # step 0 is CROWN
    tuned = margin_lower_bounds(batch.graph, batch, eps, threat, spec, relaxer_for("alpha"), out,
                                optimize=OptimizeOptions(steps=6, intermediate=mode, lr=0.1, joint_planes=joint))
    assert (tuned >= crown - 1e-12).all() and (tuned > crown + 1e-6).any()
    session = ort.InferenceSession(str(path))
    rng = np.random.default_rng(0)
    for k in range(2):
        center = x[k].reshape(-1).astype(np.float64)
        deltas = np.concatenate([random_deltas(batch.node, 0.3, threat, 2000, rng),
                                 gradient_deltas(batch.graph, batch.node, center, 0.3, threat, out)])
        logits = session.run(None, {"x": (center + deltas).reshape(-1, models.STEPS, models.FEATURES).astype(np.float32)})[0]
        margins = logits @ spec[k].numpy().T
        assert (margins >= tuned[k].numpy() - 2e-5).all()


def test_optimised_output_bounds_contain_onnxruntime(nets):
    path = nets["lstm"]
    graph = parsers.load_onnx(path)
    x = np.random.default_rng(2).uniform(-1, 1, (2, models.STEPS, models.FEATURES)).astype(np.float32)
    threat = ThreatModel(math.inf, "sequence")
    lower, upper = bound_outputs(graph, x, 0.08, threat=threat, method="alpha", optimize=OptimizeOptions(steps=4))
    crown_lower, crown_upper = bound_outputs(graph, x, 0.08, threat=threat, method="crown")
    assert (lower >= crown_lower - 1e-12).all() and (upper <= crown_upper + 1e-12).all()
    node = make_batch(graph, x).node
    session = ort.InferenceSession(str(path))
    rng = np.random.default_rng(4)
    for k in range(2):
        points = x[k].reshape(-1) + random_deltas(node, 0.08, threat, 3000, rng)
        outputs = session.run(None, {"x": points.reshape(-1, models.STEPS, models.FEATURES).astype(np.float32)})[0]
        assert (outputs >= lower[k] - 2e-5).all() and (outputs <= upper[k] + 2e-5).all()


def test_optimised_radius_is_certified_and_at_least_crowns(nets):
    path = nets["gru"]
    graph = parsers.load_onnx(path)
    x = np.random.default_rng(3).uniform(-1, 1, (2, models.STEPS, models.FEATURES)).astype(np.float32)
    crown = certify(graph, x, 2.0)
    alpha = certify(graph, x, 2.0, options=SearchOptions(method="alpha", optimize=OptimizeOptions(steps=6)))
    batch = make_batch(graph, x)
    session = ort.InferenceSession(str(path))
    threat = ThreatModel(2.0, "frame")
    rng = np.random.default_rng(5)
    assert any(a.radius > c.radius * 1.001 for c, a in zip(crown, alpha))
    for k, (c, a) in enumerate(zip(crown, alpha)):
        assert a.radius >= c.radius  # the optimisation starts at CROWN's certified radius
        # no point of the certified ball (sampled, and pushed by gradient steps) changes the prediction
        center = x[k].reshape(-1).astype(np.float64)
        deltas = np.concatenate([random_deltas(batch.node, a.radius, threat, 2000, rng),
                                 gradient_deltas(batch.graph, batch.node, center, a.radius, threat,
                                                 batch.graph.outputs[0].node, steps=20)])
        points = (center + deltas).reshape(-1, models.STEPS, models.FEATURES).astype(np.float32)
        assert (session.run(None, {"x": points})[0].argmax(1) == a.label).all()


@pytest.mark.parametrize("mode", MODES)
def test_radius_ascent_reports_the_largest_step_with_a_positive_margin(nets, mode):
    """ascended_radii returns max(start, every step's eps whose worst margin is > 0) and nothing
    else, and its first step is CROWN's bound at CROWN's radius."""
    from verifier.bounds import ball_regions
    from verifier.optimize import ascended_radii
    from verifier.propagation import Propagator

    graph = parsers.load_onnx(nets["lstm"])
    x = np.random.default_rng(8).uniform(-1, 1, (3, models.STEPS, models.FEATURES)).astype(np.float32)
    crown = certify(graph, x, math.inf, ball="sequence")
    batch = make_batch(graph, x)
    threat = ThreatModel(math.inf, "sequence")
    spec = margin_spec(torch.tensor([r.label for r in crown]), models.CLASSES, None).double()
    start = torch.tensor([r.radius for r in crown], dtype=torch.float64)
    out = batch.graph.outputs[0].node
    trace = []
    found = ascended_radii(lambda e: Propagator(batch.graph, ball_regions(batch, e, threat), relaxer_for("alpha")),
                           out, spec, start, OptimizeOptions(steps=8, intermediate=mode), trace)
    assert len(trace) == 8
    expected = start.clone()
    for eps, worst in trace:
        eps, worst = torch.tensor(eps, dtype=torch.float64), torch.tensor(worst, dtype=torch.float64)
        expected = torch.where((worst > 0) & (eps > expected), eps, expected)
    assert torch.equal(found, expected)
    # step 0 bounds CROWN's relaxation at CROWN's radius
    eps0, worst0 = (torch.tensor(v, dtype=torch.float64) for v in trace[0])
    assert torch.equal(eps0, start)
    plain = margin_lower_bounds(batch.graph, batch, eps0, threat, spec, relaxer_for("crown"), out).amin(1)
    assert torch.allclose(worst0, plain, rtol=0, atol=1e-9)
    assert (found > start * 1.001).any()
    _assert_trust_region(trace)


def _assert_trust_region(trace) -> None:
    """eps moves by at most a factor 1 + reach per step, where reach starts at REACH, halves when
    the margin changes sign and regrows (x1.5, up to REACH) otherwise."""
    from verifier.optimize import REACH

    eps = torch.tensor([e for e, _ in trace], dtype=torch.float64)
    certified = torch.tensor([w for _, w in trace], dtype=torch.float64) > 0
    reach = torch.full_like(eps[0], REACH)
    for k in range(1, len(trace)):
        if k >= 2:
            flipped = certified[k - 1] != certified[k - 2]
            reach = torch.where(flipped, reach * 0.5, torch.clamp(reach * 1.5, max=REACH))
        ratio = eps[k] / eps[k - 1]
        assert (ratio <= (1 + reach) * (1 + 1e-12)).all() and (ratio >= 1 / (1 + reach) * (1 - 1e-12)).all()


def test_radius_ascent_settles_instead_of_swinging(nets):
    """A long ascent: after its sign changes eps moves less and less (it used to swing between
    eps * 0.8 and eps * 1.25 for good once a row's Newton slope went stale)."""
    from verifier.bounds import ball_regions
    from verifier.optimize import ascended_radii
    from verifier.propagation import Propagator

    graph = parsers.load_onnx(nets["gru"])
    x = np.random.default_rng(11).uniform(-1, 1, (2, models.STEPS, models.FEATURES)).astype(np.float32)
    crown = certify(graph, x, math.inf, ball="sequence")
    batch = make_batch(graph, x)
    threat = ThreatModel(math.inf, "sequence")
    spec = margin_spec(torch.tensor([r.label for r in crown]), models.CLASSES, None).double()
    start = torch.tensor([r.radius for r in crown], dtype=torch.float64)
    trace = []
    ascended_radii(lambda e: Propagator(batch.graph, ball_regions(batch, e, threat), relaxer_for("alpha")),
                   batch.graph.outputs[0].node, spec, start, OptimizeOptions(steps=30), trace)
    _assert_trust_region(trace)
    eps = torch.tensor([e for e, _ in trace], dtype=torch.float64)
    late = (eps[-5:] / eps[-6:-1]).sub(1).abs().amax(0)
    assert (late < 0.02).all()


def test_optimised_radius_does_not_depend_on_the_batch(nets):
    graph = parsers.load_onnx(nets["lstm"])
    x = np.random.default_rng(9).uniform(-1, 1, (3, models.STEPS, models.FEATURES)).astype(np.float32)
    options = SearchOptions(method="alpha", optimize=OptimizeOptions(steps=5))
    together = [r.radius for r in certify(graph, x, math.inf, ball="sequence", options=options)]
    alone = [certify(graph, x[k:k + 1], math.inf, ball="sequence", options=options)[0].radius for k in range(3)]
    assert together == pytest.approx(alone, rel=1e-9, abs=0)


def test_bad_optimise_options_are_refused():
    from verifier.errors import InputError

    with pytest.raises(InputError, match="intermediate"):
        OptimizeOptions(intermediate="all")
    with pytest.raises(InputError, match="steps"):
        OptimizeOptions(steps=-1)
    with pytest.raises(InputError, match="mix ratio"):
        OptimizeOptions(mix_ratio=0)


def test_the_optimisers_adam_matches_torchs():
    from verifier.optimize import _Adam

    torch.manual_seed(0)
    ours = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    theirs = ours.detach().clone().requires_grad_(True)
    steppers = [(ours, _Adam([ours], [0.05])), (theirs, torch.optim.Adam([theirs], lr=0.05))]
    for _ in range(6):
        for t, optimiser in steppers:
            optimiser.zero_grad()
            ((t ** 3).sum() + t.sin().sum()).backward()
            optimiser.step()
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-12)


def test_mcormick_mixes_step_further_than_slopes():
    from verifier.optimize import MIX_RATIO, _rates

    groups = [{"lower": None, "upper": None}, {"left_lower": None, "lower_mix": None, "upper_mix": None}]
    options = OptimizeOptions(lr=0.01)
    assert _rates(groups, options) == pytest.approx([0.01, 0.01, 0.01, 0.01 * MIX_RATIO, 0.01 * MIX_RATIO])
    assert _rates(groups, OptimizeOptions(lr=0.01, mix_ratio=2))[-1] == pytest.approx(0.02)
    assert MIX_RATIO > 1


def test_the_optimised_mode_also_bounds_the_gru_difference_form(nets):
    """GRUs get a second form (n + z*(h - n)) of the same function; LSTMs none."""
    from verifier import forward
    from verifier.canonical import optimised_forms

    assert len(optimised_forms(parsers.load_onnx(nets["lstm"]))) == 1
    graph = parsers.load_onnx(nets["gru"])
    forms = optimised_forms(graph)
    assert len(forms) == 2 and forms[0] is graph and optimised_forms(graph) is forms  # computed once
    x = np.random.default_rng(12).uniform(-1, 1, (4, models.STEPS, models.FEATURES)).astype(np.float32)
    batch = make_batch(graph, x)
    out = graph.outputs[0].node
    values = [forward.run(form, {k: v.double() for k, v in batch.feeds().items()})[out] for form in forms]
    assert torch.allclose(values[0], values[1], rtol=0, atol=1e-12)
    kinds = lambda g: sorted(type(n).__name__ for n in g.nodes)
    assert kinds(forms[0]) != kinds(forms[1])


def test_per_bound_gives_a_neurons_lower_and_upper_rows_parameters_of_their_own(nets):
    """per-row: an intermediate pass's parameters cover half its rows (a neuron's lower and upper row
    share them); per-bound: every row; the final pass has one set per margin row either way."""
    from verifier.bounds import ball_regions
    from verifier.optimize import _PassTuner
    from verifier.propagation import Propagator

    graph = parsers.load_onnx(nets["lstm"])
    x = np.random.default_rng(9).uniform(-1, 1, (2, models.STEPS, models.FEATURES)).astype(np.float32)
    batch = make_batch(graph, x)
    regions = ball_regions(batch, torch.full((2,), 0.05, dtype=torch.float64), ThreatModel(math.inf, "sequence"))
    widths = {}
    for paired in (True, False):
        propagator = Propagator(batch.graph, regions, relaxer_for("alpha"))
        tuner = _PassTuner(propagator, shared=False, paired=paired)
        tuner.use(propagator)
        propagator.tuner = tuner
        with torch.enable_grad():
            propagator.run()
        widths[paired] = {key: next(iter(group.values())).shape[1] for key, group in tuner.theta.items()}
    assert widths[True].keys() == widths[False].keys() and widths[True]
    assert all(widths[False][key] == 2 * width for key, width in widths[True].items())


@pytest.mark.parametrize("mode", MODES)
def test_a_bound_no_relaxation_reaches_is_returned_as_crown_gives_it(mode, tmp_path):
    """An RNN with the Affine activation is linear: nothing to optimise, so every mode returns
    CROWN's (exact) bounds instead of failing on a gradient that does not exist."""
    path = models.onnx_recurrent("RNN", tmp_path / "affine.onnx", seed=4, activations=["Affine"],
                                 activation_alpha=[0.7], activation_beta=[0.1])
    graph = parsers.load_onnx(path)
    x = np.random.default_rng(0).uniform(-1, 1, (models.STEPS, 2, models.FEATURES)).astype(np.float32)
    crown = bound_outputs(graph, x, eps=0.1, norm="inf", method="crown")
    alpha = bound_outputs(graph, x, eps=0.1, norm="inf", method="alpha", optimize=OptimizeOptions(steps=3, intermediate=mode))
    np.testing.assert_allclose(alpha, crown, rtol=0, atol=1e-12)
    assert np.all(crown[1] - crown[0] > 0)
