"""LRP rules, canonizers and composites against NumPy references written here, in float64.

1. Each rule (Epsilon, ZPlus, AlphaBeta 2/1 and 1/0, Gamma, WSquare, Flat, ZBox) on one linear
   layer (Conv with pads / strides / dilations / auto_pad / groups / depthwise, 1-D Conv,
   ConvTranspose, Gemm with transB 0/1 and bias, MatMul with the constant on either side); and
   Norm / Pass / the gradient on pooling, sums and activations. The reference writes each layer as
   one matrix per sample, y = M(W) x + b, built from explicit index loops (which weight joins which
   input to which output), and each rule as its textbook formula on that matrix
   (R_i = Σ_j z_ij / stabilise(z_j) R_j with the rule's weights and inputs). The bias convention is
   Zennit 0.5's, which onnxsal documents (rules.py): the bias enters once per branch, clamped with
   the branch's main weights (ZPlus z = W⁺x⁺ + b⁺ + W⁻x⁻; AlphaBeta's negative branch
   W⁻x⁺ + b⁻ + W⁺x⁻; Gamma's W₊x⁺ + b₊ + W₋x⁻; ZBox z = y − (W⁺l + b⁺) − (W⁻h + b⁻); WSquare b²;
   Flat no bias). The output relevance is a seed tensor (target=R), taken as given.
   Data are dyadic (weights k/8, inputs k/4, biases odd multiples of 1/64), so every forward sum
   is exact in float32: the float32 run and the float64 reference see the same denominators and
   signs, and differences are rounding of the divisions and backward sums only.
2. Conservation: Conv-Relu-Gemm without biases, per sample Σ R_in = score.
3. Canonizers: BatchNormalization folded after Conv/ConvTranspose/Gemm and before Conv/Gemm where
   exact (not before a padded Conv), MatMul + Add -> Gemm, Conv + per-channel Add -> Conv bias:
   same forward output, the BN/Add gone.
4. Composites: the rule of each node of a small graph (`rule_table`, what `inspect --composite`
   prints) for the named composites and user mappings; unknown names are one-sentence errors.
5. A Conv-BN-ReLU-MaxPool-Conv-ReLU-GAP-Gemm model end to end against a complete NumPy LRP.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

import onnxsal
from onnxsal.errors import InvalidInputError
from onnxsal.relevance import canonize
from onnxsal.relevance.composites import resolve
from onnxsal.relevance.propagate import rule_table
from tests.tiny import F, make_model

TOL = 1e-5  # max|ours - ref| / max|ref|
EPS = 1e-6  # onnxsal's default stabiliser


def rel(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def forward(model: onnx.ModelProto, feeds: dict) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def dyadic(rng, shape, step: float, bound: float) -> np.ndarray:
    """Multiples of `step` in [-bound, bound]: sums of their products are exact in float32."""
    k = int(round(bound / step))
    return rng.integers(-k, k + 1, size=shape) * step


def lrp(model, x, target, composite, **options) -> np.ndarray:
    return onnxsal.Explainer(model, providers="cpu").attribute(x, target=target, method="lrp", composite=composite,
                                                               **options)


# ---------------------------------------------------------------------------------------------------
# a linear layer as a matrix per sample: y = M(W) x + b


@dataclass
class Taps:
    """Which weight entry joins input i to output j (one per pair: a conv tap is unique), so that
    M(f(W))[j, i] = f(W)[w] for any elementwise weight modification f."""

    in_shape: tuple
    out_shape: tuple
    rows: list = field(default_factory=list)
    cols: list = field(default_factory=list)
    wids: list = field(default_factory=list)
    bias_of_row: np.ndarray | None = None  # bias entry of each output (None: no bias)

    def add(self, out_index, in_index, w_index, w_shape):
        self.rows.append(np.ravel_multi_index(out_index, self.out_shape))
        self.cols.append(np.ravel_multi_index(in_index, self.in_shape))
        self.wids.append(np.ravel_multi_index(w_index, w_shape))


@dataclass
class Dense:
    """One layer seen by the reference: M(f) = the matrix of f(W), bias(f) = f(b) per output."""

    taps: Taps
    w: np.ndarray
    b: np.ndarray | None

    def mat(self, f=lambda w: w) -> np.ndarray:
        m = np.zeros((int(np.prod(self.taps.out_shape)), int(np.prod(self.taps.in_shape))))
        np.add.at(m, (np.array(self.taps.rows), np.array(self.taps.cols)), f(self.w).ravel()[np.array(self.taps.wids)])
        return m

    def bias(self, f=lambda b: b) -> np.ndarray:
        n = int(np.prod(self.taps.out_shape))
        return np.zeros(n) if self.b is None else f(self.b).ravel()[self.taps.bias_of_row]

    def forward(self, x: np.ndarray) -> np.ndarray:
        return x @ self.mat().T + self.bias()


def conv_taps(x_shape, w_shape, strides, pads, dilations, group) -> Taps:
    """Conv: out[m, o] += W[m, c', t] x[g·C/g + c', o·s + t·d − p_begin]."""
    c, *sp = x_shape
    m, cg, *k = w_shape
    nd = len(sp)
    out_sp = [(sp[d] + pads[d] + pads[nd + d] - dilations[d] * (k[d] - 1) - 1) // strides[d] + 1 for d in range(nd)]
    taps = Taps(tuple(x_shape), (m, *out_sp))
    for mo in range(m):
        g = mo // (m // group)
        for ci, o, t in itertools.product(range(cg), np.ndindex(*out_sp), np.ndindex(*k)):
            i = [o[d] * strides[d] + t[d] * dilations[d] - pads[d] for d in range(nd)]
            if all(0 <= i[d] < sp[d] for d in range(nd)):
                taps.add((mo, *o), (g * cg + ci, *i), (mo, ci, *t), w_shape)
    taps.bias_of_row = np.repeat(np.arange(m), int(np.prod(out_sp)))
    return taps


def conv_transpose_taps(x_shape, w_shape, strides, pads, dilations, group, output_padding) -> Taps:
    """ConvTranspose: out[g·M/g + m', i·s + t·d − p_begin] += W[c, m', t] x[c, i]."""
    c, *sp = x_shape
    _, mg, *k = w_shape
    nd = len(sp)
    out_sp = [(sp[d] - 1) * strides[d] + (k[d] - 1) * dilations[d] + 1 + output_padding[d] - pads[d] - pads[nd + d]
              for d in range(nd)]
    taps = Taps(tuple(x_shape), (mg * group, *out_sp))
    for ci in range(c):
        g = ci // (c // group)
        for mi, i, t in itertools.product(range(mg), np.ndindex(*sp), np.ndindex(*k)):
            o = [i[d] * strides[d] + t[d] * dilations[d] - pads[d] for d in range(nd)]
            if all(0 <= o[d] < out_sp[d] for d in range(nd)):
                taps.add((g * mg + mi, *o), (ci, *i), (ci, mi, *t), w_shape)
    taps.bias_of_row = np.repeat(np.arange(mg * group), int(np.prod(out_sp)))
    return taps


def matmul_taps(x_shape, w_shape, weight_left: bool) -> Taps:
    """x[..., k] @ W[k, p] (weight right), or W[p, k] @ x[k, b] (weight left), per sample."""
    if weight_left:
        p, kk = w_shape
        _, b = x_shape
        taps = Taps(tuple(x_shape), (p, b))
        for pi, ki, bi in itertools.product(range(p), range(kk), range(b)):
            taps.add((pi, bi), (ki, bi), (pi, ki), w_shape)
        return taps
    kk, p = w_shape
    lead = tuple(x_shape[:-1])
    taps = Taps(tuple(x_shape), lead + (p,))
    for a, ki, pi in itertools.product(np.ndindex(*lead), range(kk), range(p)):
        taps.add((*a, pi), (*a, ki), (ki, pi), w_shape)
    taps.bias_of_row = np.tile(np.arange(p), int(np.prod(lead)))
    return taps


def gemm_taps(x_shape, w_shape, trans_b: bool) -> Taps:
    if not trans_b:
        return matmul_taps(x_shape, w_shape, weight_left=False)
    p, kk = w_shape
    taps = Taps(tuple(x_shape), (p,))
    for pi, ki in itertools.product(range(p), range(kk)):
        taps.add((pi,), (ki,), (pi, ki), w_shape)
    taps.bias_of_row = np.arange(p)
    return taps


# ---------------------------------------------------------------------------------------------------
# the rules, textbook form, on a batch of flattened samples x [N, in] and output relevances R [N, out]


def stabilise(z, eps=EPS):
    return z + eps * np.where(z < 0, -1.0, 1.0)


def pos(w):
    return np.maximum(w, 0)


def neg(w):
    return np.minimum(w, 0)


def ref_epsilon(eps):
    def rule(layer: Dense, x, r):
        m = layer.mat()
        return x * ((r / stabilise(layer.forward(x), eps)) @ m)
    return rule


def _split(layer: Dense, x, r, fa, fb, mask=None):
    """x⁺ ⊙ M_aᵀs + x⁻ ⊙ M_bᵀs with s = R / stabilise(M_a x⁺ + f_a(b) + M_b x⁻)."""
    ma, mb = layer.mat(fa), layer.mat(fb)
    xp, xn = pos(x), neg(x)
    s = r / stabilise(xp @ ma.T + layer.bias(fa) + xn @ mb.T)
    if mask is not None:
        s = s * mask
    return xp * (s @ ma) + xn * (s @ mb)


def ref_zplus(layer, x, r):
    return _split(layer, x, r, pos, neg)


def ref_alpha_beta(alpha, beta):
    def rule(layer, x, r):
        return alpha * _split(layer, x, r, pos, neg) - beta * _split(layer, x, r, neg, pos)
    return rule


def ref_gamma(g):
    def rule(layer, x, r):
        up, down = (lambda w: w + g * pos(w)), (lambda w: w + g * neg(w))
        y = layer.forward(x)
        return _split(layer, x, r, up, down, mask=y > 0) + _split(layer, x, r, down, up, mask=y < 0)
    return rule


def ref_wsquare(layer, x, r):
    m2 = layer.mat(np.square)
    z = m2.sum(axis=1) + layer.bias(np.square)
    return np.broadcast_to((r / stabilise(z)) @ m2, x.shape)


def ref_flat(layer, x, r):
    m1 = layer.mat(np.ones_like)
    return np.broadcast_to((r / stabilise(m1.sum(axis=1))) @ m1, x.shape)


def ref_zbox(low, high):
    def rule(layer, x, r):
        lo, hi = (np.broadcast_to(np.reshape(v, (-1,) + (1,) * (len(layer.taps.in_shape) - 1)) if np.ndim(v) else v,
                                  layer.taps.in_shape).ravel() for v in (low, high))
        m, mp, mn = layer.mat(), layer.mat(pos), layer.mat(neg)
        z = layer.forward(x) - (lo @ mp.T + layer.bias(pos)) - (hi @ mn.T + layer.bias(neg))
        s = r / stabilise(z)
        return x * (s @ m) - lo * (s @ mp) - hi * (s @ mn)
    return rule


RULE_CASES = {  # id: (onnxsal rule spec, reference)
    "epsilon": ("epsilon", ref_epsilon(EPS)),
    "epsilon0.25": (("epsilon", {"epsilon": 0.25}), ref_epsilon(0.25)),
    "zplus": ("zplus", ref_zplus),
    "alpha2beta1": (("alphabeta", {"alpha": 2, "beta": 1}), ref_alpha_beta(2.0, 1.0)),
    "alpha1beta0": (("alpha_beta", {"alpha": 1, "beta": 0}), ref_alpha_beta(1.0, 0.0)),
    "gamma0.25": (("gamma", {"gamma": 0.25}), ref_gamma(0.25)),
    "wsquare": ("wsquare", ref_wsquare),
    "flat": ("flat", ref_flat),
    "zbox": (("zbox", {"low": -2.0, "high": 2.0}), ref_zbox(-2.0, 2.0)),
}


# ---------------------------------------------------------------------------------------------------
# single-layer models


@dataclass(frozen=True)
class Layer:
    op: str
    x_shape: tuple  # per sample
    w_shape: tuple
    attrs: dict = field(default_factory=dict)
    bias: bool = True
    weight_left: bool = False  # MatMul(W, x)

    def taps(self) -> Taps:
        a = self.attrs
        nd = len(self.x_shape) - 1
        strides, dil = a.get("strides", [1] * nd), a.get("dilations", [1] * nd)
        if self.op == "Conv":
            pads = a.get("pads", [0] * 2 * nd)
            if a.get("auto_pad") == "SAME_UPPER":
                k = self.w_shape[2:]
                total = [max((-(-self.x_shape[1 + d] // strides[d]) - 1) * strides[d] + (k[d] - 1) * dil[d] + 1
                             - self.x_shape[1 + d], 0) for d in range(nd)]
                pads = [t // 2 for t in total] + [t - t // 2 for t in total]
            return conv_taps(self.x_shape, self.w_shape, strides, pads, dil, a.get("group", 1))
        if self.op == "ConvTranspose":
            return conv_transpose_taps(self.x_shape, self.w_shape, strides, a.get("pads", [0] * 2 * nd), dil,
                                       a.get("group", 1), a.get("output_padding", [0] * nd))
        if self.op == "Gemm":
            return gemm_taps(self.x_shape, self.w_shape, bool(a.get("transB", 0)))
        return matmul_taps(self.x_shape, self.w_shape, self.weight_left)

    def n_bias(self) -> int:
        if self.op == "Conv":
            return self.w_shape[0]
        if self.op == "ConvTranspose":
            return self.w_shape[1] * self.attrs.get("group", 1)
        return self.w_shape[0] if self.attrs.get("transB", 0) else self.w_shape[1]

    def build(self, seed: int = 0):
        """(model, reference layer, taps): dyadic weights and an odd-multiple-of-1/64 bias, so no
        output is ever exactly zero and every forward sum is exact in float32."""
        rng = np.random.default_rng(seed)
        w = dyadic(rng, self.w_shape, 1 / 8, 1.0)
        b = dyadic(rng, (self.n_bias(),), 1 / 8, 1.0) + 1 / 64 if self.bias else None
        taps = self.taps()
        ins = ["w", "x"] if self.weight_left else ["x", "w"]
        inits = {"w": w.astype(np.float32)}
        if b is not None:
            ins.append("b")
            inits["b"] = b.astype(np.float32)
        node = helper.make_node(self.op, ins, ["y"], name="layer", **self.attrs)
        model = make_model([node], [("x", F, ["N", *self.x_shape])], [("y", F, ["N", *taps.out_shape])], inits)
        alpha, beta = self.attrs.get("alpha", 1.0), self.attrs.get("beta", 1.0)  # Gemm: y = (αW) x + βb
        return model, Dense(taps, alpha * w, None if b is None else beta * b)


LAYERS = {
    "conv_pads": Layer("Conv", (3, 5, 5), (4, 3, 3, 3), {"pads": [1, 1, 1, 1]}),
    "conv_stride_dilation": Layer("Conv", (2, 9, 8), (3, 2, 3, 2), {"strides": [2, 1], "dilations": [2, 3],
                                                                    "pads": [1, 0, 2, 1]}),
    "conv_groups": Layer("Conv", (4, 6, 5), (6, 2, 3, 2), {"group": 2, "strides": [1, 2]}, bias=False),
    "conv_depthwise": Layer("Conv", (3, 5, 5), (6, 1, 3, 3), {"group": 3, "pads": [1, 1, 1, 1]}),
    "conv_same_upper": Layer("Conv", (2, 6, 6), (3, 2, 3, 3), {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    "conv1d": Layer("Conv", (3, 9), (4, 3, 3), {"strides": [2], "pads": [1, 1]}),
    "conv_transpose": Layer("ConvTranspose", (3, 3, 4), (3, 4, 3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1],
                                                                       "output_padding": [1, 0]}),
    "conv_transpose_groups": Layer("ConvTranspose", (4, 3, 3), (4, 2, 2, 2), {"group": 2, "strides": [2, 1],
                                                                             "dilations": [1, 2]}, bias=False),
    "gemm": Layer("Gemm", (6,), (6, 4)),
    "gemm_transB": Layer("Gemm", (6,), (4, 6), {"transB": 1}),
    "gemm_transB_nobias": Layer("Gemm", (6,), (4, 6), {"transB": 1}, bias=False),
    "gemm_alpha_beta": Layer("Gemm", (6,), (4, 6), {"transB": 1, "alpha": 0.5, "beta": 2.0}),
    "gemm_negative_alpha": Layer("Gemm", (6,), (6, 4), {"alpha": -1.0}),
    "matmul_right": Layer("MatMul", (6,), (6, 4), bias=False),
    "matmul_right_3d": Layer("MatMul", (3, 5), (5, 4), bias=False),
    "matmul_left": Layer("MatMul", (5, 3), (4, 5), bias=False, weight_left=True),
}


def layer_data(dense: Dense):
    """Inputs in (-2, 2), strictly inside ZBox's bounds, and a random output relevance, N = 2: the
    first seed whose outputs are all nonzero. (An exact 0 is computed alike in float32 and float64,
    but R/ε then swamps the rest of the map; an input on a bound can make ZBox's z exactly 0.)"""
    for seed in range(1, 100):
        rng = np.random.default_rng(seed)
        x = dyadic(rng, (2, *dense.taps.in_shape), 1 / 4, 1.75) + 1 / 8  # odd multiples of 1/8, never 0
        if np.all(dense.forward(x.reshape(2, -1)) != 0):
            break
    r = rng.normal(size=(2, *dense.taps.out_shape)).astype(np.float32)
    return x, r


@pytest.mark.parametrize("name", LAYERS)
def test_reference_layers_are_the_onnx_ops(name):
    """The reference's matrices compute what onnxruntime computes (the rules' tests rest on them)."""
    model, dense = LAYERS[name].build()
    x, _ = layer_data(dense)
    ref = dense.forward(x.reshape(len(x), -1)).reshape(len(x), *dense.taps.out_shape)
    ours = forward(model, {"x": x.astype(np.float32)})
    assert ours.shape == ref.shape and np.array_equal(ours, ref)  # dyadic data: exact


@pytest.mark.parametrize("rule", RULE_CASES)
@pytest.mark.parametrize("name", LAYERS)
def test_rule_on_one_layer(name, rule):
    layer = LAYERS[name]
    model, dense = layer.build()
    x, r = layer_data(dense)
    spec, reference = RULE_CASES[rule]
    ours = lrp(model, x.astype(np.float32), r, {layer.op: spec})
    n = len(x)
    ref = reference(dense, x.reshape(n, -1), r.reshape(n, -1).astype(np.float64)).reshape(x.shape)
    assert rel(ours, ref) < TOL, (name, rule, rel(ours, ref))


def test_zbox_with_per_channel_bounds():
    """ZBox with one (low, high) per input channel, the input inside them."""
    layer = LAYERS["conv_stride_dilation"]
    model, dense = layer.build()
    x, r = layer_data(dense)
    low, high = np.array([-1.0, 0.0]), np.array([0.5, 2.0])
    x = np.clip(x, low[None, :, None, None], high[None, :, None, None])
    ours = lrp(model, x.astype(np.float32), r, {"convolution": ("zbox", {"low": low, "high": high})})
    ref = ref_zbox(low, high)(dense, x.reshape(2, -1), r.reshape(2, -1).astype(np.float64)).reshape(x.shape)
    assert rel(ours, ref) < TOL


def test_zplus_after_a_rectifier_drops_nothing():
    """After a Relu the rule uses x⁺ only (x⁻ = 0 by construction): same as the full formula."""
    layer = LAYERS["conv_pads"]
    _, dense = layer.build()
    rng = np.random.default_rng(3)
    w, b = dense.w.astype(np.float32), dense.b.astype(np.float32)
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="relu"),
             helper.make_node("MaxPool", ["a"], ["p"], name="pool", kernel_shape=[1, 1]),
             helper.make_node("Conv", ["p", "w", "b"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    model = make_model(nodes, [("x", F, ["N", 3, 5, 5])], [("y", F, ["N", 4, 5, 5])], {"w": w, "b": b})
    x = dyadic(rng, (2, 3, 5, 5), 1 / 4, 2.0)
    r = rng.normal(size=(2, 4, 5, 5)).astype(np.float32)
    ours = lrp(model, x.astype(np.float32), r, {"convolution": "zplus", "activation": "pass"})
    ref = ref_zplus(dense, pos(x).reshape(2, -1), r.reshape(2, -1).astype(np.float64)).reshape(x.shape)
    assert rel(ours, ref) < TOL


@pytest.mark.parametrize("mode", ["cubic", "linear"])
def test_zplus_after_a_resize_of_a_rectifier(mode):
    """Relu -> Resize -> Conv: a linear resize of a rectifier's output is >= 0, a cubic one is not
    (it overshoots), so there ZPlus must keep the x⁻ part. The reference resizes with the matrix
    onnxruntime's Resize applies to basis images, and routes relevance back through its transpose."""
    rng = np.random.default_rng(14)
    w, scales = rng.normal(size=(3, 2, 3, 3)), np.array([1, 1, 2, 2], np.float32)
    resize = helper.make_node("Resize", ["a", "", "scales"], ["u"], name="up", mode=mode)
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="relu"), resize,
             helper.make_node("Conv", ["u", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    model = make_model(nodes, [("x", F, ["N", 2, 4, 4])], [("y", F, ["N", 3, 8, 8])],
                       {"w": w.astype(np.float32), "scales": scales})
    alone = make_model([resize], [("a", F, ["N", 2, 4, 4])], [("u", F, ["N", 2, 8, 8])], {"scales": scales})
    up = forward(alone, {"a": np.eye(32, dtype=np.float32).reshape(32, 2, 4, 4)}).reshape(32, -1).T.astype(np.float64)
    x, r = rng.normal(size=(2, 2, 4, 4)), rng.normal(size=(2, 3, 8, 8))
    u = pos(x).reshape(2, -1) @ up.T
    assert (u.min() < -0.1) == (mode == "cubic")
    conv = Dense(conv_taps((2, 8, 8), w.shape, [1, 1], [1] * 4, [1, 1], 1), w, None)
    ref = (ref_zplus(conv, u, r.reshape(2, -1)) @ up).reshape(x.shape)
    ours = lrp(model, x.astype(np.float32), r.astype(np.float32), {"convolution": "zplus", "scaling": "gradient"})
    assert rel(ours, ref) < TOL


# ---------------------------------------------------------------------------------------------------
# parameter-free ops: Norm (the epsilon rule with a stabiliser), Pass, the gradient


def pool_matrix(shape, kernel, strides, pads, include_pad: bool) -> np.ndarray:
    """AveragePool as a matrix on one sample [C, H, W]: a depthwise all-ones conv / window count."""
    c = shape[0]
    taps = conv_taps(shape, (c, 1, *kernel), strides, pads, [1, 1], c)
    m = Dense(taps, np.ones((c, 1, *kernel)), None).mat()
    return m / (np.prod(kernel) if include_pad else m.sum(axis=1, keepdims=True))


def test_norm_on_average_pools():
    """AveragePool (pads, count_include_pad 0 and 1), GlobalAveragePool and ReduceMean under Norm:
    R_i = x_i Σ_j P_ji R_j / stabilise(y_j) with P the pooling matrix."""
    rng = np.random.default_rng(4)
    x = rng.uniform(0.25, 2.0, (2, 3, 5, 5))
    cases = {
        "avgpool_excl": (helper.make_node("AveragePool", ["x"], ["y"], name="p", kernel_shape=[3, 3], strides=[2, 2],
                                          pads=[1, 1, 1, 1]), pool_matrix((3, 5, 5), [3, 3], [2, 2], [1] * 4, False)),
        "avgpool_incl": (helper.make_node("AveragePool", ["x"], ["y"], name="p", kernel_shape=[2, 3], strides=[1, 2],
                                          pads=[0, 1, 1, 0], count_include_pad=1),
                         pool_matrix((3, 5, 5), [2, 3], [1, 2], [0, 1, 1, 0], True)),
        "gap": (helper.make_node("GlobalAveragePool", ["x"], ["y"], name="p"), pool_matrix((3, 5, 5), [5, 5], [1, 1],
                                                                                            [0] * 4, True)),
        "reducemean": (helper.make_node("ReduceMean", ["x", "axes"], ["y"], name="p"),
                       pool_matrix((3, 5, 5), [5, 5], [1, 1], [0] * 4, True)),
    }
    diffs = {}
    for key, (node, p) in cases.items():
        inits = {"axes": np.array([2, 3], np.int64)} if node.op_type == "ReduceMean" else {}
        model = make_model([node], [("x", F, ["N", 3, 5, 5])], [("y", F, None)], inits, opset=18)
        y = forward(model, {"x": x.astype(np.float32)})
        r = rng.normal(size=y.shape)
        flat_x = x.reshape(2, -1)
        ref = (flat_x * ((r.reshape(2, -1) / stabilise(flat_x @ p.T)) @ p)).reshape(x.shape)
        assert np.allclose(y.reshape(2, -1), flat_x @ p.T, rtol=1e-6), key
        ours = lrp(model, x.astype(np.float32), r.astype(np.float32), {node.op_type: "norm"})
        diffs[key] = rel(ours, ref)
    assert max(diffs.values()) < TOL, diffs


def _two_inputs(nodes, shapes, out_shape):
    return make_model(nodes, [(n, F, ["N", *s]) for n, s in shapes.items()], [("y", F, ["N", *out_shape])])


def test_norm_on_sums_splits_by_contribution():
    """Add with broadcasting and a three-way Sum: R_k = x_k ⊙ R / stabilise(Σ x), reduced over the
    broadcast axes for the smaller operand."""
    rng = np.random.default_rng(5)
    a = rng.integers(1, 9, (2, 3, 4, 4)) / 4
    b = (2 * rng.integers(-8, 8, (2, 3, 1, 1)) + 1) / 8  # odd multiples of 1/8: a + b is never 0
    r = rng.normal(size=(2, 3, 4, 4))
    model = _two_inputs([helper.make_node("Add", ["a", "b"], ["y"], name="add")], {"a": (3, 4, 4), "b": (3, 1, 1)},
                        (3, 4, 4))
    ours = onnxsal.Explainer(model, providers="cpu").attribute(
        {"a": a.astype(np.float32), "b": b.astype(np.float32)}, target=r.astype(np.float32), method="lrp",
        composite={"sum": "norm"}, wrt=["a", "b"])
    s = r / stabilise(a + b)
    assert rel(ours["a"], a * s) < TOL and rel(ours["b"], b * s.sum(axis=(2, 3), keepdims=True)) < TOL

    c = rng.normal(size=(2, 5)) + 3.0
    d, e = rng.normal(size=(2, 5)), rng.normal(size=(2, 5))
    r = rng.normal(size=(2, 5))
    model = _two_inputs([helper.make_node("Sum", ["c", "d", "e"], ["y"], name="sum")],
                        {"c": (5,), "d": (5,), "e": (5,)}, (5,))
    feeds = {k: v.astype(np.float32) for k, v in {"c": c, "d": d, "e": e}.items()}
    ours = onnxsal.Explainer(model, providers="cpu").attribute(feeds, target=r.astype(np.float32), method="lrp",
                                                               composite={"Sum": "norm"}, wrt=["c", "d", "e"])
    s = r / stabilise(c + d + e)
    for k, v in {"c": c, "d": d, "e": e}.items():
        assert rel(ours[k], v * s) < TOL, k


def test_uniform_on_products_of_activations():
    """Uniform gives each of the k factors R/k: as it is for an elementwise Mul of equal shapes; for a
    MatMul of two activations (attention · values) and a broadcasting Mul, spread by each factor's
    epsilon contribution, R_a = a ⊙ J_aᵀ(R / (k·stabilise(z))) (before, R itself was handed on and
    the MatMul's factors got a relevance of the output's shape)."""
    rng = np.random.default_rng(11)

    def run(node, shapes, out_shape, feeds, r):
        model = _two_inputs([node], shapes, out_shape)
        return onnxsal.Explainer(model, providers="cpu").attribute(
            {k: v.astype(np.float32) for k, v in feeds.items()}, target=r.astype(np.float32), method="lrp",
            composite={"product": "uniform"}, wrt=list(feeds))

    a, b = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 3, 4))
    r = rng.normal(size=(2, 3, 4))
    ours = run(helper.make_node("Mul", ["a", "b"], ["y"], name="mul"), {"a": (3, 4), "b": (3, 4)}, (3, 4),
               {"a": a, "b": b}, r)
    assert rel(ours["a"], r / 2) < TOL and rel(ours["b"], r / 2) < TOL

    a, b = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 4, 5))
    r = rng.normal(size=(2, 3, 5))
    ours = run(helper.make_node("MatMul", ["a", "b"], ["y"], name="mm"), {"a": (3, 4), "b": (4, 5)}, (3, 5),
               {"a": a, "b": b}, r)
    s = r / (2 * stabilise(a @ b))
    ref_a, ref_b = a * (s @ b.transpose(0, 2, 1)), b * (a.transpose(0, 2, 1) @ s)
    assert ours["a"].shape == a.shape and ours["b"].shape == b.shape
    assert rel(ours["a"], ref_a) < TOL and rel(ours["b"], ref_b) < TOL
    for part in (ours["a"], ours["b"]):  # each factor gets half of the relevance, sample by sample
        assert np.allclose(part.reshape(2, -1).sum(1), r.reshape(2, -1).sum(1) / 2, rtol=1e-4)

    a, b = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 1, 4))
    r = rng.normal(size=(2, 3, 4))
    ours = run(helper.make_node("Mul", ["a", "b"], ["y"], name="bmul"), {"a": (3, 4), "b": (1, 4)}, (3, 4),
               {"a": a, "b": b}, r)
    s = r / (2 * stabilise(a * b))
    assert rel(ours["a"], a * s * b) < TOL and rel(ours["b"], (b * s * a).sum(1, keepdims=True)) < TOL


def test_stabiliser_takes_sign_of_zero_as_plus():
    """Where the denominator is exactly 0, stabilise(0) = +ε (Zennit): R_k = x_k R / ε, finite."""
    a = np.array([[1.0, -2.0, 0.5]])
    b = np.array([[-1.0, 1.0, 2.0]])  # a + b = 0 at the first entry
    r = np.array([[1.0, 1.0, 1.0]])
    model = _two_inputs([helper.make_node("Add", ["a", "b"], ["y"], name="add")], {"a": (3,), "b": (3,)}, (3,))
    ours = onnxsal.Explainer(model, providers="cpu").attribute(
        {"a": a.astype(np.float32), "b": b.astype(np.float32)}, target=r.astype(np.float32), method="lrp",
        composite={"sum": "norm"}, wrt=["a", "b"])
    s = r / stabilise(a + b)
    assert ours["a"][0, 0] > 1e5 and ours["b"][0, 0] < -1e5  # +1/ε, not -1/ε, not inf
    assert rel(ours["a"], a * s) < TOL and rel(ours["b"], b * s) < TOL


def test_pass_and_gradient_rules():
    """Pass hands R on unchanged through an activation and a bias Add; the gradient rule routes
    MaxPool's relevance to the first maximum of each window (windows overlap: contributions add);
    Pass asked of a node that changes shape (a pooling) falls back to the gradient."""
    rng = np.random.default_rng(6)
    x = rng.normal(size=(2, 2, 5, 5))
    bias = rng.normal(size=(1, 2, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="relu"),
             helper.make_node("Add", ["a", "c"], ["y"], name="add")]
    model = make_model(nodes, [("x", F, ["N", 2, 5, 5])], [("y", F, ["N", 2, 5, 5])], {"c": bias})
    r = rng.normal(size=x.shape)
    ours = lrp(model, x.astype(np.float32), r.astype(np.float32), {"activation": "pass", "sum": "pass"})
    assert rel(ours, r) < TOL
    ours = lrp(model, x.astype(np.float32), r.astype(np.float32), {"activation": "gradient", "sum": "pass"})
    assert rel(ours, r * (x > 0)) < TOL

    pool = helper.make_node("MaxPool", ["x"], ["y"], name="pool", kernel_shape=[3, 3], strides=[2, 2])
    model = make_model([pool], [("x", F, ["N", 2, 5, 5])], [("y", F, ["N", 2, 2, 2])])
    r = rng.normal(size=(2, 2, 2, 2))
    ref = np.zeros_like(x)
    for n, c, i, j in np.ndindex(*r.shape):
        win = x[n, c, 2 * i:2 * i + 3, 2 * j:2 * j + 3]
        di, dj = np.unravel_index(np.argmax(win), win.shape)
        ref[n, c, 2 * i + di, 2 * j + dj] += r[n, c, i, j]
    assert rel(lrp(model, x.astype(np.float32), r.astype(np.float32), {}), ref) < TOL

    avg = helper.make_node("AveragePool", ["x"], ["y"], name="pool", kernel_shape=[2, 2], strides=[2, 2])
    model = make_model([avg], [("x", F, ["N", 2, 5, 5])], [("y", F, ["N", 2, 2, 2])])
    ours = lrp(model, x.astype(np.float32), r.astype(np.float32), {"avgpool": "pass"})
    p = pool_matrix((2, 5, 5), [2, 2], [2, 2], [0] * 4, True)
    assert ours.shape == x.shape and rel(ours, (r.reshape(2, -1) @ p).reshape(x.shape)) < TOL


# ---------------------------------------------------------------------------------------------------
# 2. conservation


def _conv_relu_dense(seed=0, bias=False, n_classes=5):
    rng = np.random.default_rng(seed)
    inits = {"w1": rng.normal(size=(4, 3, 3, 3)).astype(np.float32),
             "w2": rng.normal(size=(n_classes, 4 * 6 * 6)).astype(np.float32)}
    conv_in, gemm_in = ["x", "w1"], ["f", "w2"]
    if bias:
        inits.update(b1=rng.normal(size=4).astype(np.float32), b2=rng.normal(size=n_classes).astype(np.float32))
        conv_in.append("b1")
        gemm_in.append("b2")
    nodes = [helper.make_node("Conv", conv_in, ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["a"], name="relu"),
             helper.make_node("Flatten", ["a"], ["f"], name="flatten"),
             helper.make_node("Gemm", gemm_in, ["y"], name="dense", transB=1)]
    return make_model(nodes, [("x", F, ["N", 3, 6, 6])], [("y", F, ["N", n_classes])], inits)


CONSERVING = {"Epsilon": {"epsilon": 1e-9}, "EpsilonPlus": {}, "EpsilonPlusFlat": {}, "EpsilonAlpha2Beta1": {},
              "EpsilonGammaBox": {"low": -3.0, "high": 3.0}}


@pytest.mark.parametrize("composite", CONSERVING)
def test_relevance_is_conserved_without_biases(composite):
    """Σ_i R_i = the target's score, per sample (no bias absorbs relevance, ε ~ 0)."""
    model = _conv_relu_dense()
    x = np.clip(np.random.default_rng(7).normal(size=(3, 3, 6, 6)), -3, 3).astype(np.float32)
    target = np.array([0, 3, 4])
    score = forward(model, {"x": x})[np.arange(3), target]
    ours = lrp(model, x, target, composite, **CONSERVING[composite])
    gap = np.abs(ours.reshape(3, -1).sum(axis=1, dtype=np.float64) - score) / np.abs(score)
    assert gap.max() < 1e-5, gap


def test_bias_absorbs_relevance():
    """With biases the sum is not the score (the check above can fail)."""
    model = _conv_relu_dense(bias=True)
    x = np.random.default_rng(7).normal(size=(3, 3, 6, 6)).astype(np.float32)
    score = forward(model, {"x": x})[np.arange(3), [0, 3, 4]]
    ours = lrp(model, x, np.array([0, 3, 4]), "Epsilon")
    assert (np.abs(ours.reshape(3, -1).sum(axis=1) - score) / np.abs(score)).max() > 1e-3


# ---------------------------------------------------------------------------------------------------
# 3. canonizers


def _bn(rng, c, name="bn", x="c", y="n"):
    inits = {f"{name}_s": rng.uniform(0.5, 1.5, c), f"{name}_t": rng.normal(size=c), f"{name}_mu": rng.normal(size=c),
             f"{name}_var": rng.uniform(0.5, 2.0, c)}
    node = helper.make_node("BatchNormalization", [x] + list(inits), [y], name=name, epsilon=1e-3)
    return node, {k: v.astype(np.float32) for k, v in inits.items()}


def _canon_model(kind: str):
    """(model, input shape) for each canonizer case; the BN / bias Add sits where `kind` says."""
    rng = np.random.default_rng(8)
    w = lambda *s: rng.normal(size=s).astype(np.float32)  # noqa: E731
    if kind == "bn_after_conv":
        bn, inits = _bn(rng, 4)
        nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]), bn,
                 helper.make_node("Relu", ["n"], ["y"], name="relu")]
        return make_model(nodes, [("x", F, ["N", 3, 5, 5])], [("y", F, ["N", 4, 5, 5])],
                          {**inits, "w": w(4, 3, 3, 3), "b": w(4)}), (2, 3, 5, 5)
    if kind == "bn_after_conv_transpose":
        bn, inits = _bn(rng, 4)
        nodes = [helper.make_node("ConvTranspose", ["x", "w"], ["c"], name="deconv", strides=[2, 2]), bn]
        return make_model(nodes, [("x", F, ["N", 3, 4, 4])], [("n", F, ["N", 4, 9, 9])],
                          {**inits, "w": w(3, 4, 3, 3)}), (2, 3, 4, 4)
    if kind in ("bn_after_gemm", "bn_after_gemm_transB"):
        bn, inits = _bn(rng, 5)
        t = int(kind.endswith("transB"))
        nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["c"], name="dense", transB=t), bn]
        return make_model(nodes, [("x", F, ["N", 6])], [("n", F, ["N", 5])],
                          {**inits, "w": w(5, 6) if t else w(6, 5), "b": w(5)}), (3, 6)
    if kind in ("bn_before_conv", "bn_before_padded_conv"):
        bn, inits = _bn(rng, 3, x="x", y="n")
        pads = [1, 1, 1, 1] if kind == "bn_before_padded_conv" else [0, 0, 0, 0]
        nodes = [bn, helper.make_node("Conv", ["n", "w", "b"], ["y"], name="conv", pads=pads, strides=[2, 1])]
        out = [4, 3 if pads[0] else 2, 5 if pads[0] else 3]
        return make_model(nodes, [("x", F, ["N", 3, 5, 5])], [("y", F, ["N", *out])],
                          {**inits, "w": w(4, 3, 3, 3), "b": w(4)}), (2, 3, 5, 5)
    if kind == "bn_before_gemm":
        bn, inits = _bn(rng, 6, x="x", y="n")
        nodes = [bn, helper.make_node("Gemm", ["n", "w"], ["y"], name="dense", transB=1)]
        return make_model(nodes, [("x", F, ["N", 6])], [("y", F, ["N", 4])], {**inits, "w": w(4, 6)}), (3, 6)
    if kind == "matmul_add":
        nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="dense"),
                 helper.make_node("Add", ["m", "b"], ["y"], name="bias")]
        return make_model(nodes, [("x", F, ["N", 6])], [("y", F, ["N", 4])], {"w": w(6, 4), "b": w(4)}), (3, 6)
    if kind in ("conv_add", "conv_add_not_per_channel"):
        b = w(1, 4, 1, 1) if kind == "conv_add" else w(1, 4, 5, 5)
        nodes = [helper.make_node("Conv", ["x", "w", "b0"], ["c"], name="conv", pads=[1, 1, 1, 1]),
                 helper.make_node("Add", ["c", "b"], ["y"], name="bias")]
        return make_model(nodes, [("x", F, ["N", 3, 5, 5])], [("y", F, ["N", 4, 5, 5])],
                          {"w": w(4, 3, 3, 3), "b0": w(4), "b": b}), (2, 3, 5, 5)
    raise KeyError(kind)


CANON = {  # case: (canonizer, op type that must be gone (None: nothing may change), op type present after)
    "bn_after_conv": (canonize.fold_batchnorm, "BatchNormalization", "Conv"),
    "bn_after_conv_transpose": (canonize.fold_batchnorm, "BatchNormalization", "ConvTranspose"),
    "bn_after_gemm": (canonize.fold_batchnorm, "BatchNormalization", "Gemm"),
    "bn_after_gemm_transB": (canonize.fold_batchnorm, "BatchNormalization", "Gemm"),
    "bn_before_conv": (canonize.fold_batchnorm, "BatchNormalization", "Conv"),
    "bn_before_gemm": (canonize.fold_batchnorm, "BatchNormalization", "Gemm"),
    "bn_before_padded_conv": (canonize.fold_batchnorm, None, "BatchNormalization"),
    "matmul_add": (canonize.fuse_bias, "Add", "Gemm"),
    "conv_add": (canonize.fuse_bias, "Add", "Conv"),
    "conv_add_not_per_channel": (canonize.fuse_bias, None, "Add"),
}


@pytest.mark.parametrize("kind", CANON)
def test_canonizer_keeps_the_forward(kind):
    model, shape = _canon_model(kind)
    step, gone, present = CANON[kind]
    original = onnx.ModelProto()
    original.CopyFrom(model)
    x = np.random.default_rng(9).normal(size=shape).astype(np.float32)
    before = forward(original, {"x": x})
    out, notes = step(model)
    onnx.checker.check_model(out)
    ops = [n.op_type for n in out.graph.node]
    assert present in ops
    if gone is None:
        assert notes == [] and ops == [n.op_type for n in original.graph.node]
    else:
        assert gone not in ops and len(notes) == 1 and len(ops) == len(original.graph.node) - 1
    assert rel(forward(out, {"x": x}), before) < 1e-5


def test_canonize_runs_both_steps():
    """`canonize` (what LRP applies) fuses the bias and folds the BN of one model."""
    rng = np.random.default_rng(10)
    bn, inits = _bn(rng, 4, x="y0", y="y")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="dense"),
             helper.make_node("Add", ["b", "m"], ["y0"], name="bias"), bn]
    params = {"w": rng.normal(size=(6, 4)), "b": rng.normal(size=4)}
    model = make_model(nodes, [("x", F, ["N", 6])], [("y", F, ["N", 4])],
                       {**inits, **{k: v.astype(np.float32) for k, v in params.items()}})
    x = rng.normal(size=(3, 6)).astype(np.float32)
    before = forward(model, {"x": x})
    out, notes = canonize.canonize(model)
    assert [n.op_type for n in out.graph.node] == ["Gemm"] and len(notes) == 2
    assert rel(forward(out, {"x": x}), before) < 1e-5


# ---------------------------------------------------------------------------------------------------
# 4. composites: which rule each node gets


def _residual_net():
    """stem Conv -> relu1 -> block/conv Conv -> add (residual) -> relu2 -> gap -> flat -> fc1 Gemm
    -> relu3 -> fc2 MatMul (a constant right side, no bias)."""
    rng = np.random.default_rng(11)
    w = lambda *s: rng.normal(size=s).astype(np.float32)  # noqa: E731
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="stem", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="block/conv", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["r1", "c2"], ["s"], name="add"),
             helper.make_node("Relu", ["s"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "w3", "b3"], ["h"], name="fc1", transB=1),
             helper.make_node("Relu", ["h"], ["r3"], name="relu3"),
             helper.make_node("MatMul", ["r3", "w4"], ["y"], name="fc2")]
    return make_model(nodes, [("x", F, ["N", 3, 6, 6])], [("y", F, ["N", 3])],
                      {"w1": w(4, 3, 3, 3), "b1": w(4), "w2": w(4, 4, 3, 3), "w3": w(5, 4), "b3": w(5), "w4": w(5, 3)})


BASE = {"relu1": "pass", "add": "norm", "relu2": "pass", "gap": "norm", "flat": "gradient", "relu3": "pass"}
ASSIGNED = {  # composite: (options, {node: rule name}, {node: why})
    "EpsilonPlus": ({}, {"stem": "zplus", "block/conv": "zplus", "fc1": "epsilon", "fc2": "epsilon"},
                    {"stem": "convolution", "fc2": "dense"}),
    "EpsilonPlusFlat": ({}, {"stem": "flat", "block/conv": "zplus", "fc1": "epsilon", "fc2": "epsilon"},
                        {"stem": "first linear"}),
    "EpsilonGammaBox": ({"low": -1, "high": 1},
                        {"stem": "zbox", "block/conv": "gamma", "fc1": "epsilon", "fc2": "epsilon"},
                        {"stem": "first convolution", "block/conv": "convolution"}),
    "EpsilonAlpha2Beta1": ({}, {"stem": "alphabeta", "block/conv": "alphabeta", "fc1": "epsilon", "fc2": "epsilon"},
                           {}),
}


def _table(composite, **options):
    rows, _ = rule_table(_residual_net(), resolve(composite, **options), ["x"], "y")
    return {r["node"]: r for r in rows}


@pytest.mark.parametrize("composite", ASSIGNED)
def test_named_composites_assign_rules(composite):
    options, rules, why = ASSIGNED[composite]
    table = _table(composite, **options)
    assert {k: v["rule"].split("(")[0] for k, v in table.items()} == {**BASE, **rules}
    assert all(table[k]["by"] == v for k, v in why.items()), table
    if composite == "EpsilonAlpha2Beta1":
        assert table["stem"]["rule"] == "alphabeta(alpha=2.0, beta=1.0, stabilizer=1e-06)"
    if composite == "EpsilonGammaBox":
        assert table["stem"]["rule"] == "zbox(low=-1.0, high=1.0, stabilizer=1e-06)"
        table = _table(composite, **options, gamma=0.5, stabilizer=1e-3)
        assert table["block/conv"]["rule"] == "gamma(gamma=0.5, stabilizer=0.001)"
        assert table["gap"]["rule"] == "norm(epsilon=0.001)"


def test_user_mappings_assign_rules():
    """By op type (Gemm, not the MatMul), by node-name glob, by "first" and "first:dense"; a linear
    layer the mapping leaves out gets the vanilla gradient; names win over first over layer maps."""
    table = _table({"Gemm": "flat", "block/*": "wsquare", "first": ("zbox", {"low": 0, "high": 1}), "dense": "epsilon"})
    got = {k: v["rule"].split("(")[0] for k, v in table.items()}
    assert got == {**BASE, "stem": "zbox", "block/conv": "wsquare", "fc1": "flat", "fc2": "epsilon"}
    assert table["block/conv"]["by"] == "name 'block/*'" and table["stem"]["by"] == "first linear"
    assert table["fc1"]["by"] == "Gemm" and table["fc2"]["by"] == "dense"
    table = _table({"first:dense": "wsquare", "linear": ("epsilon", {"epsilon": 0.5}), "fc*": "zplus", "add": "pass"})
    got = {k: v["rule"] for k, v in table.items()}
    assert got["fc1"].startswith("zplus") and got["fc2"].startswith("zplus")  # the name glob beats first:dense
    assert got["stem"] == got["block/conv"] == "epsilon(epsilon=0.5)" and got["add"] == "pass"
    table = _table({"first:dense": "wsquare"})
    assert table["fc1"]["rule"].startswith("wsquare") and table["fc2"]["rule"] == "gradient"
    assert table["stem"]["rule"] == "gradient"


@pytest.mark.parametrize("composite, message", [
    ("NoSuchComposite", "unknown composite 'NoSuchComposite'"),
    ({"Conv": "bogus"}, "unknown LRP rule 'bogus'"),
    ({"Conv": ("alphabeta", {"alpha": 1, "beta": 1})}, "alpha - beta = 1"),
    ({"Conv": ("epsilon", {"eps": 1})}, "LRP rule 'epsilon'"),
    ("EpsilonGammaBox", "needs the input's bounds"),
])
def test_bad_composites_are_one_sentence(composite, message):
    model = _residual_net()
    x = np.zeros((1, 3, 6, 6), np.float32)
    with pytest.raises(InvalidInputError) as info:
        lrp(model, x, None, composite)
    text = str(info.value)
    assert message in text and "\n" not in text and text.endswith(".")


def test_lowercase_composite_names_resolve():
    assert resolve("epsilonplusflat").name == "EpsilonPlusFlat"


# ---------------------------------------------------------------------------------------------------
# 5. a composite end to end


def _cnn():
    """Conv(pads 1) -> BN -> Relu -> MaxPool 2x2 -> Conv(pads 1) -> Relu -> GAP -> Flatten -> Gemm."""
    rng = np.random.default_rng(12)
    p = {"w1": rng.normal(size=(4, 3, 3, 3)), "b1": rng.normal(size=4), "s": rng.uniform(0.5, 1.5, 4),
         "t": rng.normal(size=4), "mu": rng.normal(size=4), "var": rng.uniform(0.5, 2.0, 4),
         "w2": rng.normal(size=(6, 4, 3, 3)), "b2": rng.normal(size=6) * 0.3, "wd": rng.normal(size=(5, 6)),
         "bd": rng.normal(size=5)}
    p = {k: v.astype(np.float32) for k, v in p.items()}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c1", "s", "t", "mu", "var"], ["n1"], name="bn", epsilon=1e-5),
             helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
             helper.make_node("MaxPool", ["r1"], ["m1"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["m1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "wd", "bd"], ["y"], name="dense", transB=1)]
    model = make_model(nodes, [("x", F, ["N", 3, 8, 8])], [("y", F, ["N", 5])], p)
    return model, {k: v.astype(np.float64) for k, v in p.items()}


def _maxpool_back(a, r):
    """2x2/2 MaxPool's relevance routed to each window's first maximum (a [N, C, H, W])."""
    n, c, h, w = a.shape
    win = a.reshape(n, c, h // 2, 2, w // 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(n, c, h // 2, w // 2, 4)
    hit = np.eye(4)[win.argmax(axis=-1)] * r[..., None]
    return hit.reshape(n, c, h // 2, w // 2, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(n, c, h, w)


def numpy_lrp(p, x, target, first_rule, conv_rule, eps=EPS):
    """The whole LRP pass in NumPy: BN folded into conv1 by hand, then each layer's rule."""
    a = p["s"] / np.sqrt(p["var"] + 1e-5)
    conv1 = Dense(conv_taps((3, 8, 8), (4, 3, 3, 3), [1, 1], [1] * 4, [1, 1], 1), p["w1"] * a[:, None, None, None],
                  a * p["b1"] + p["t"] - a * p["mu"])
    conv2 = Dense(conv_taps((4, 4, 4), (6, 4, 3, 3), [1, 1], [1] * 4, [1, 1], 1), p["w2"], p["b2"])
    dense = Dense(gemm_taps((6,), (5, 6), True), p["wd"], p["bd"])
    n = len(x)
    r1 = np.maximum(conv1.forward(x.reshape(n, -1)), 0).reshape(n, 4, 8, 8)
    m1 = r1.reshape(n, 4, 4, 2, 4, 2).max(axis=(3, 5))
    r2 = np.maximum(conv2.forward(m1.reshape(n, -1)), 0).reshape(n, 6, 4, 4)
    g = r2.mean(axis=(2, 3))
    y = dense.forward(g)
    r_y = np.zeros_like(y)
    r_y[np.arange(n), target] = y[np.arange(n), target]
    r_g = ref_epsilon(eps)(dense, g, r_y)
    r_r2 = r2 / 16 * (r_g / stabilise(g))[:, :, None, None]  # GAP under Norm; relu2 passes
    r_m1 = conv_rule(conv2, m1.reshape(n, -1), r_r2.reshape(n, -1)).reshape(m1.shape)
    r_r1 = _maxpool_back(r1, r_m1)  # relu1 passes
    return first_rule(conv1, x.reshape(n, -1), r_r1.reshape(n, -1)).reshape(x.shape), y


END_TO_END = {  # composite: (options, first conv's rule, second conv's rule)
    "EpsilonPlus": ({}, ref_zplus, ref_zplus),
    "EpsilonPlusFlat": ({}, ref_flat, ref_zplus),
    "EpsilonAlpha2Beta1": ({}, ref_alpha_beta(2, 1), ref_alpha_beta(2, 1)),
    "EpsilonGammaBox": ({"low": -2.5, "high": 2.5}, ref_zbox(-2.5, 2.5), ref_gamma(0.25)),
    "mapping": ({}, ref_zplus, ref_zplus),  # EpsilonPlus as a user mapping over the base map (GAP: its Norm)
}
MAPPINGS = {"mapping": {"convolution": "zplus", "dense": "epsilon"}}


@pytest.mark.parametrize("composite", END_TO_END)
def test_composite_end_to_end(composite):
    model, p = _cnn()
    x = np.clip(np.random.default_rng(13).normal(size=(2, 3, 8, 8)), -2.5, 2.5).astype(np.float32)
    target = np.array([1, 3])
    options, first, conv = END_TO_END[composite]
    ref, y = numpy_lrp(p, x.astype(np.float64), target, first, conv)
    assert rel(forward(model, {"x": x}), y) < 1e-5  # the reference's forward, BN folded, is the model's
    ours = lrp(model, x, target, MAPPINGS.get(composite, composite), **options)
    assert rel(ours, ref) < TOL, rel(ours, ref)
