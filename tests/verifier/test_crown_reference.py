"""`crown` against an independent CROWN written here from the textbook rules: a dense back-substitution
over an explicitly unrolled LSTM (numpy, float64, one sample at a time), with CROWN's lines for
sigmoid/tanh (tangent points found by bisection, not popqorn's table) and the fixed McCormick pair
for the gate products, each node's bounds intersected with interval arithmetic. The engine's margins
must equal it to 1e-4 (observed <= 1e-6); a reference with the old tangent rule (through the
opposite end point) differs by up to 0.3 at these radii, so the test can tell the rules apart."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import parsers
from tests.verifier import models
from verifier.bounds import make_batch, relaxer_for
from verifier.certify import SearchOptions, margin_lower_bounds, margin_spec
from verifier.threat import ThreatModel

sigmoid = lambda x: 1 / (1 + np.exp(-x))
FUNCTIONS = {"sigmoid": (sigmoid, lambda x: sigmoid(x) * (1 - sigmoid(x))),
             "tanh": (np.tanh, lambda x: 1 - np.tanh(x) ** 2)}


def _tangent_through(f, df, anchor, lo, hi):
    """d in [lo, hi] whose tangent passes through (anchor, f(anchor)), by bisection (None if none)."""
    gap = lambda d: f(d) + df(d) * (anchor - d) - f(anchor)
    if gap(lo) * gap(hi) > 0:
        return None
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if gap(mid) * gap(lo) > 0 else (lo, mid)
    return (lo + hi) / 2


def crown_lines(name: str, l: float, u: float):
    """CROWN's (lower slope, lower intercept, upper slope, upper intercept) for sigmoid/tanh on [l, u]."""
    f, df = FUNCTIONS[name]
    if u - l < 1e-12:
        k = df(l)
        return k, f(l) - k * l, k, f(l) - k * l
    chord = (f(u) - f(l)) / (u - l)
    m = (l + u) / 2
    tangent = lambda d: (df(d), f(d) - df(d) * d)
    if u <= 0:  # convex: tangent at the midpoint below, chord above
        return (*tangent(m), chord, f(l) - chord * l)
    if l >= 0:  # concave
        return chord, f(l) - chord * l, *tangent(m)
    d_low = _tangent_through(f, df, u, l, 0.0)  # lower line: tangent at min(d_l, m), or the chord
    lower = (chord, f(l) - chord * l) if d_low is None else tangent(min(d_low, m))
    d_up = _tangent_through(f, df, l, 0.0, u)
    upper = (chord, f(l) - chord * l) if d_up is None else tangent(max(d_up, m))
    return (*lower, *upper)


class Expr:
    """A linear expression sum_k A_k · node_k + c over named vectors (dense matrices)."""

    def __init__(self, terms: dict[str, np.ndarray], const: np.ndarray) -> None:
        self.terms, self.const = terms, const


def reference_lower_bounds(weights, x0: np.ndarray, eps: float, spec: np.ndarray) -> np.ndarray:
    """Lower bounds of spec @ logits over the l_inf ball of radius eps around x0 [T, F] (whole
    sequence), by CROWN back-substitution over the unrolled LSTM."""
    W, R, b, Wo, bo = weights
    T, H = x0.shape[0], R.shape[1]
    # nodes: "x" (T*F), per step t: "g{t}" = W x_t + R h_{t-1} + b (4H, torch order i, f, g, o)
    #        "c{t}" = sig(f)*c + sig(i)*tanh(g), "h{t}" = sig(o)*tanh(c{t})
    bounds: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    relax: dict[str, dict] = {}
    F = x0.shape[1]

    def concretise(expr: Expr) -> np.ndarray:
        a = expr.terms.get("x", np.zeros((len(expr.const), T * F)))
        return a @ x0.reshape(-1) - eps * np.abs(a).sum(1) + expr.const

    def pull(expr: Expr, upto_t: int, final: bool) -> np.ndarray:
        """Back-substitute expr (over g/c/h nodes of steps <= upto_t) down to x; lower bounds."""
        expr = Expr(dict(expr.terms), expr.const.copy())
        for t in range(upto_t, -1, -1):
            for node in (f"h{t}", f"c{t}", f"g{t}"):
                a = expr.terms.pop(node, None)
                if a is None:
                    continue
                if node.startswith("g"):
                    gx = np.zeros((a.shape[0], T * F))
                    gx[:, t * F:(t + 1) * F] = a @ W
                    expr.terms["x"] = expr.terms.get("x", 0) + gx
                    expr.const = expr.const + a @ b
                    if t > 0:
                        expr.terms[f"h{t - 1}"] = expr.terms.get(f"h{t - 1}", 0) + a @ R
                    continue
                for product in relax[node]:
                    product(a, expr)
        return concretise(expr)

    def bound(node: str, t: int, size: int, interval: tuple[np.ndarray, np.ndarray]) -> None:
        """Back-substitution bounds, intersected with interval arithmetic (as CROWN engines do)."""
        eye = np.eye(size)
        lower = pull(Expr({node: eye}, np.zeros(size)), t, False)
        upper = -pull(Expr({node: -eye}, np.zeros(size)), t, False)
        bounds[node] = (np.maximum(lower, interval[0]), np.minimum(upper, interval[1]))

    def times(a, b):  # interval product
        corners = np.stack([a[0] * b[0], a[0] * b[1], a[1] * b[0], a[1] * b[1]])
        return corners.min(0), corners.max(0)

    def matvec(matrix, interval):
        mid, rad = (interval[0] + interval[1]) / 2, (interval[1] - interval[0]) / 2
        return matrix @ mid - np.abs(matrix) @ rad, matrix @ mid + np.abs(matrix) @ rad

    x_box = (x0 - eps, x0 + eps)

    def mccormick(a_name, a_rows, a_fn, b_name, b_rows, b_fn, out_rows):
        """One product sig(a)*b_fn(b) feeding `out_rows` of a c/h node: its pull-back."""
        al, au = (bounds[a_name][0][a_rows], bounds[a_name][1][a_rows])
        bl, bu = (bounds[b_name][0][b_rows], bounds[b_name][1][b_rows])
        a_lines = [crown_lines(a_fn, lo, hi) for lo, hi in zip(al, au)]
        a_low = sigmoid(al)  # the McCormick pair anchors at the gate's lower end only
        if b_fn is None:
            b_lines, b_low, b_high = [(1.0, 0.0, 1.0, 0.0)] * len(bl), bl, bu
        else:
            b_lines = [crown_lines(b_fn, lo, hi) for lo, hi in zip(bl, bu)]
            b_low, b_high = np.tanh(bl), np.tanh(bu)

        def pull_product(a, expr):
            coef = a[:, out_rows]  # (m, n) coefficients on the product
            m, n = coef.shape
            ca, cb, cc = np.zeros((m, n)), np.zeros((m, n)), np.zeros(m)
            for k in range(n):
                # lower (coef >= 0): b_l*A + a_l*B - a_l*b_l ; upper (coef < 0): b_u*A + a_l*B - a_l*b_u
                pos = coef[:, k] >= 0
                coef_a = np.where(pos, b_low[k], b_high[k])
                coef_b = np.full(m, a_low[k])
                const = np.where(pos, -a_low[k] * b_low[k], -a_low[k] * b_high[k])
                side = lambda c, lines: (np.where((c * coef[:, k] >= 0), lines[0], lines[2]),
                                         np.where((c * coef[:, k] >= 0), lines[1], lines[3]))
                ka, ia = side(coef_a, a_lines[k])
                kb, ib = side(coef_b, b_lines[k])
                ca[:, k] = coef[:, k] * coef_a * ka
                cb[:, k] = coef[:, k] * coef_b * kb
                cc += coef[:, k] * (coef_a * ia + coef_b * ib + const)
            ga = np.zeros((m, bounds[a_name][0].shape[0]))
            ga[:, a_rows] = ca
            expr.terms[a_name] = expr.terms.get(a_name, 0) + ga
            gb = np.zeros((m, bounds[b_name][0].shape[0]))
            gb[:, b_rows] = cb
            expr.terms[b_name] = expr.terms.get(b_name, 0) + gb
            expr.const = expr.const + cc

        return pull_product

    i_, f_, g_, o_ = (np.arange(k * H, (k + 1) * H) for k in range(4))
    all_rows = np.arange(H)
    h_box = (np.zeros(H), np.zeros(H))
    for t in range(T):
        g_box = matvec(W, (x_box[0][t], x_box[1][t]))
        g_box = (g_box[0] + b, g_box[1] + b)
        if t > 0:
            rec = matvec(R, h_box)
            g_box = (g_box[0] + rec[0], g_box[1] + rec[1])
        bound(f"g{t}", t, 4 * H, g_box)
        lo, hi = bounds[f"g{t}"]
        gate = lambda rows: (sigmoid(lo[rows]), sigmoid(hi[rows]))
        c_box = times(gate(i_), (np.tanh(lo[g_]), np.tanh(hi[g_])))
        relax[f"c{t}"] = [mccormick(f"g{t}", i_, "sigmoid", f"g{t}", g_, "tanh", all_rows)]
        if t > 0:
            keep = times(gate(f_), bounds[f"c{t - 1}"])
            c_box = (c_box[0] + keep[0], c_box[1] + keep[1])
            relax[f"c{t}"].append(mccormick(f"g{t}", f_, "sigmoid", f"c{t - 1}", all_rows, None, all_rows))
        bound(f"c{t}", t, H, c_box)
        h_box = times(gate(o_), (np.tanh(bounds[f"c{t}"][0]), np.tanh(bounds[f"c{t}"][1])))
        relax[f"h{t}"] = [mccormick(f"g{t}", o_, "sigmoid", f"c{t}", all_rows, "tanh", all_rows)]
    final = Expr({f"h{T - 1}": spec @ Wo}, spec @ bo)
    return pull(final, T - 1, True)


@pytest.mark.parametrize("seed, eps", [(0, 0.15), (1, 0.5)])
def test_crown_equals_an_independent_dense_crown(tmp_path, seed, eps):
    module = models.CellLoop("lstm")
    path = models.export_torch(module, tmp_path / "lstm.onnx", seed=seed)
    cell, head = module.cell, module.head
    weights = tuple(p.detach().double().numpy() for p in (cell.weight_ih, cell.weight_hh))
    bias = (cell.bias_ih + cell.bias_hh).detach().double().numpy()
    weights = (*weights, bias, head.weight.detach().double().numpy(), head.bias.detach().double().numpy())
    graph = parsers.load_onnx(path)
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (2, models.STEPS, models.FEATURES)).astype(np.float32)
    batch = make_batch(graph, x)
    labels = torch.tensor([0, 2])
    spec = margin_spec(labels, models.CLASSES, None)
    ours = margin_lower_bounds(batch.graph, batch, torch.full((2,), eps, dtype=torch.float64),
                               ThreatModel(math.inf, "sequence"), spec, relaxer_for("crown"),
                               batch.graph.outputs[0].node).numpy()
    for k in range(2):
        reference = reference_lower_bounds(weights, x[k].astype(np.float64), eps, spec[k].numpy())
        assert np.abs(ours[k] - reference).max() <= 1e-4, (ours[k], reference)
    assert SearchOptions().method.value == "crown"  # the default is the method checked here
