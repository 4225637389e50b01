"""AttnLRP (`composite="AttnLRP"`, onnxsal/relevance/transformer.py) against references written here.

1. Each new rule on a small graph against its formula in float64 NumPy: UniformEpsilon on a batched
   MatMul of two activations (q·kᵀ) and on a broadcasting Mul; SoftmaxDTD with a -inf and a
   finfo.min additive mask (no NaN, masked positions zero); LayerNormIdentity on a
   LayerNormalization node (last axis, and axis 1 over two axes); a written-out LayerNorm (Centre,
   Normaliser) equal to the node; a written-out RMSNorm and an L2 normalisation passing R unchanged
   (Normaliser); GELU (erf and tanh forms) and SiLU written as products passing R unchanged (Gate),
   while a product of two different values is split (UniformEpsilon). Which rule each node of a
   transformer gets (`rule_table`, what `onnxsal inspect --composite AttnLRP` prints).
2. A tiny transformer (two pre-LN blocks: LayerNorm, 2-head attention with an additive -inf padding
   mask, GELU MLP, residual adds; a LayerNorm and a dense head on the first token), exported by torch
   with LayerNorm as one node and written out, against a float64 torch reference of the same rules
   written layer by layer: max|ours − ref| / max|ref| <= 1e-4, and no NaN.
3. BERT and GPT-2 from `transformers` configs (hidden 32, 2 layers, 2 heads, vocab 100, eager
   attention, random weights), exported with torch.onnx (TorchScript, opset 17), explained at the
   output of the word-embedding Gather:
   - BERT against a float64 hand-written reference of the same rules (LXT 2.1 cannot load its BERT
     module with transformers 5: it imports `find_pruneable_heads_and_indices`, removed);
   - GPT-2 against LXT 2.1 itself (its efficient AttnLRP: Gradient×Input with its patches), in a
     fresh interpreter, float64. LXT 2.1 as published does not run on transformers 5.20 as it is:
     its package __init__ imports the BERT module above, and its `patch_attention` replaces
     transformers' attention registry by a plain dict, on which GPT-2 calls `get_interface`. The
     reference loads LXT's GPT-2 patch module without the package __init__ and applies every patch
     in its `attnLRP` map, the attention one as LXT's own `wrap_attention_forward` around GPT-2's
     eager attention function (what `patch_attention` does first), less the registry swap.
     LXT's efficient mode has no ε; onnxsal runs with ε = 1e-9 there.
   - Conservation: with every bias, LayerNorm shift and the position and token-type embeddings zero,
     Σ R(word embeddings) + (relevance the Softmax nodes absorb: Σ R at their outputs − Σ R at
     their inputs, AttnLRP's softmax rule gives part of it to the softmax's implicit bias) = the
     explained logit, within 1e-3 of |logit| per sample.
"""

from __future__ import annotations

import importlib.util
import math
import subprocess
from collections import Counter
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

torch = pytest.importorskip("torch")

import torch.nn as nn  # noqa: E402
import torch.nn.functional as F_  # noqa: E402

import onnxsal  # noqa: E402
from onnxsal.relevance.composites import resolve  # noqa: E402
from onnxsal.relevance.propagate import rule_table  # noqa: E402
from tests.tiny import F, make_model  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The feature will be removed:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

TOL = 1e-4  # max|ours - ref| / max|ref|, float32 against float64
RULE_TOL = 1e-5  # one rule on dyadic-free random data
CONSERVE_TOL = 1e-3  # |Σ R + absorbed - logit| / |logit| per sample
TINY_EPS = 1e-12  # a stabiliser that only guards against 0/0, where a check is of the rule, not of ε


def rel(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def attnlrp(model, feeds, target, wrt=None, **options):
    ex = onnxsal.Explainer(model, providers="cpu")
    return ex.attribute(feeds, target=target, method="lrp", composite="AttnLRP", wrt=wrt, **options)


def stab(z, eps=1e-6):
    """z + ε·sign(z), sign(0) = +1 (NumPy or torch)."""
    if isinstance(z, np.ndarray):
        return z + eps * np.where(z < 0, -1.0, 1.0)
    return z + eps * torch.where(z < 0, -1.0, 1.0).to(z)


# ---------------------------------------------------------------------------------------------------
# 1. the rules, one node (or one written-out layer) at a time


def test_uniform_epsilon_on_a_matmul_of_two_activations():
    """q·kᵀ: R_q = q ⊙ (S kᵀᵀ), R_k = k ⊙ (qᵀ S), S = R / (2·stabilise(q kᵀ)); each gets half."""
    rng = np.random.default_rng(0)
    q, kt = rng.normal(size=(2, 3, 5, 4)), rng.normal(size=(2, 3, 4, 6))
    model = make_model([helper.make_node("MatMul", ["q", "kt"], ["s"], name="qk")],
                       [("q", F, ["N", 3, 5, 4]), ("kt", F, ["N", 3, 4, 6])], [("s", F, ["N", 3, 5, 6])])
    r = rng.normal(size=(2, 3, 5, 6))
    ours = attnlrp(model, {"q": q.astype(np.float32), "kt": kt.astype(np.float32)}, r.astype(np.float32), wrt=["q", "kt"])
    s = r / (2 * stab(q @ kt))
    assert rel(ours["q"], q * (s @ kt.swapaxes(-1, -2))) < RULE_TOL
    assert rel(ours["kt"], kt * (q.swapaxes(-1, -2) @ s)) < RULE_TOL
    # bias-free: each factor's share sums to half the relevance
    assert abs(ours["q"].sum() - r.sum() / 2) < 1e-4 * np.abs(r).sum()


def test_uniform_epsilon_on_a_broadcasting_mul():
    """a[N,4,5] ⊙ b[N,1,5] (a gate by another value): R/2 to a; b's half summed over the broadcast axis."""
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(3, 4, 5)), rng.normal(size=(3, 1, 5))
    nodes = [helper.make_node("Sigmoid", ["b"], ["g"], name="sigmoid"), helper.make_node("Mul", ["a", "g"], ["y"], name="gate")]
    model = make_model(nodes, [("a", F, ["N", 4, 5]), ("b", F, ["N", 1, 5])], [("y", F, ["N", 4, 5])])
    r = rng.normal(size=(3, 4, 5))
    ours = attnlrp(model, {"a": a.astype(np.float32), "b": b.astype(np.float32)}, r.astype(np.float32), wrt=["a", "b"])
    g = 1 / (1 + np.exp(-b))
    half = a * g * r / (2 * stab(a * g))
    assert rel(ours["a"], half) < RULE_TOL and rel(ours["b"], half.sum(axis=1, keepdims=True)) < RULE_TOL


@pytest.mark.parametrize("fill", [-np.inf, np.finfo(np.float32).min])
def test_softmax_rule_with_an_additive_mask(fill):
    """R_in = x ⊙ (R − s ⊙ Σ R) with x counted 0 where s = 0; masked scores get zero relevance, no NaN,
    even where the output relevance there is not zero; the mask Add's z-rule hands the rest back."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 2, 4, 5)) * 2
    mask = np.zeros((2, 1, 1, 5))
    mask[0, ..., 3:] = fill
    mask[1, ..., 4:] = fill
    nodes = [helper.make_node("Greater", ["keep", "half"], ["kept"], name="kept"),  # the mask from 0/1 flags
             helper.make_node("Where", ["kept", "zero", "fill"], ["mask"], name="mask"),
             helper.make_node("Add", ["x", "mask"], ["xm"], name="mask_add"),
             helper.make_node("Softmax", ["xm"], ["s"], name="softmax", axis=-1)]
    consts = {"half": np.float32(0.5), "zero": np.float32(0), "fill": np.float32(fill)}
    model = make_model(nodes, [("x", F, ["N", 2, 4, 5]), ("keep", F, ["N", 1, 1, 5])], [("s", F, ["N", 2, 4, 5])], consts)
    r = rng.normal(size=x.shape)
    keep = (mask == 0).astype(np.float32)
    ours = attnlrp(model, {"x": x.astype(np.float32), "keep": keep}, r.astype(np.float32), wrt="x", softmax="keep")
    xm = x + mask
    e = np.exp(xm - xm.max(axis=-1, keepdims=True))
    s = e / e.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore"):
        r_xm = np.where(s == 0, 0.0, xm) * (r - s * r.sum(axis=-1, keepdims=True))
        ref = np.where(np.isfinite(mask) & (mask == 0), x * r_xm / stab(np.where(s == 0, 1.0, xm)), 0.0)
    assert np.isfinite(ours).all()
    masked = np.broadcast_to(mask != 0, x.shape)
    assert (ours[masked] == 0).all()
    assert rel(ours, ref) < RULE_TOL


def _layer_norm_ref(x, w, b, r, axes, eps=1e-5, stabilizer=1e-6):
    m = x.mean(axis=axes, keepdims=True)
    std = np.sqrt(((x - m) ** 2).mean(axis=axes, keepdims=True) + eps)
    y = (x - m) / std * w + b
    u = w * r / (std * stab(y, stabilizer))
    return x * (u - u.mean(axis=axes, keepdims=True))


@pytest.mark.parametrize("axis", [-1, 1])
def test_layer_norm_with_its_std_held_constant(axis):
    """R_in = x ⊙ (u − mean u), u = w ⊙ R / (std · stabilise(y)): the epsilon rule on the layer with
    std a constant; without a shift it conserves."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 3, 6)) + 0.5
    shape = (6,) if axis == -1 else (3, 6)
    w, b = rng.normal(1, 0.3, size=shape), rng.normal(0, 0.2, size=shape)
    node = helper.make_node("LayerNormalization", ["x", "w", "b"], ["y"], name="ln", axis=axis, epsilon=1e-5)
    model = make_model([node], [("x", F, ["N", 3, 6])], [("y", F, ["N", 3, 6])],
                       {"w": w.astype(np.float32), "b": b.astype(np.float32)})
    r = rng.normal(size=x.shape)
    ours = attnlrp(model, x.astype(np.float32), r.astype(np.float32))
    axes = (2,) if axis == -1 else (1, 2)
    assert rel(ours, _layer_norm_ref(x, w, b, r, axes)) < RULE_TOL
    model = make_model([node], [("x", F, ["N", 3, 6])], [("y", F, ["N", 3, 6])],
                       {"w": w.astype(np.float32), "b": np.zeros(shape, np.float32)})
    y = onnxsal.Explainer(model, providers="cpu").predict(x.astype(np.float32))
    ours = attnlrp(model, x.astype(np.float32), y, stabilizer=TINY_EPS)
    assert np.allclose(ours.reshape(2, -1).sum(1), y.reshape(2, -1).sum(1), rtol=1e-5)


def _written_out_layer_norm(w, b, statistics_of_centred=True):
    """(x − mean x) / sqrt(mean((x − mean x)²) + ε) · w + b as torch writes it out."""
    nodes = [helper.make_node("ReduceMean", ["x"], ["m"], name="mean", axes=[-1]),
             helper.make_node("Sub", ["x", "m"], ["c"], name="centre"),
             helper.make_node("Pow", ["c", "two"], ["c2"], name="square"),
             helper.make_node("ReduceMean", ["c2"], ["var"], name="variance", axes=[-1]),
             helper.make_node("Add", ["var", "eps"], ["ve"], name="add_eps"),
             helper.make_node("Sqrt", ["ve"], ["std"], name="std"),
             helper.make_node("Div", ["c", "std"], ["n"], name="normalise"),
             helper.make_node("Mul", ["n", "w"], ["nw"], name="scale"),
             helper.make_node("Add", ["nw", "b"], ["y"], name="shift")]
    inits = {"two": np.float32(2), "eps": np.float32(1e-5), "w": w.astype(np.float32), "b": b.astype(np.float32)}
    return make_model(nodes, [("x", F, ["N", 3, 6])], [("y", F, ["N", 3, 6])], inits)


def test_written_out_layer_norm_is_the_layer_norm_rule():
    """ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul/Add: the Sub gets Centre, the Div Normaliser
    (nothing through the std), and the result is the LayerNormalization node's."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 3, 6)) + 0.5
    w, b = rng.normal(1, 0.3, size=6), rng.normal(0, 0.2, size=6)
    model = _written_out_layer_norm(w, b)
    rows = {row["node"]: row for row in rule_table(model, resolve("AttnLRP"), ["x"], "y")[0]}
    assert rows["normalise"]["kind"] == "normaliser" and rows["normalise"]["rule"] == "normaliser"
    assert rows["centre"]["kind"] == "centring" and rows["centre"]["rule"].startswith("centre")
    r = rng.normal(size=x.shape)
    ours = attnlrp(model, x.astype(np.float32), r.astype(np.float32), stabilizer=TINY_EPS)
    assert rel(ours, _layer_norm_ref(x, w, b, r, (2,), stabilizer=TINY_EPS)) < RULE_TOL


def test_rms_and_l2_normalisation_pass_relevance():
    """x · 1/sqrt(mean x² + ε) · w (RMSNorm) and x / max(‖x‖, ε) (L2): the statistic is a constant,
    so the relevance passes unchanged (LXT's rms_norm_identity, normalize)."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 3, 6))
    rms = [helper.make_node("Mul", ["x", "x"], ["x2"], name="square"),
           helper.make_node("ReduceMean", ["x2"], ["ms"], name="mean", axes=[-1]),
           helper.make_node("Add", ["ms", "eps"], ["mse"], name="add_eps"),
           helper.make_node("Sqrt", ["mse"], ["root"], name="root"),
           helper.make_node("Reciprocal", ["root"], ["inv"], name="inverse"),
           helper.make_node("Mul", ["x", "inv"], ["n"], name="normalise"),
           helper.make_node("Mul", ["n", "w"], ["y"], name="scale")]
    l2 = [helper.make_node("ReduceL2", ["x"], ["norm"], name="norm", axes=[-1]),
          helper.make_node("Max", ["norm", "eps"], ["safe"], name="clamp"),
          helper.make_node("Div", ["x", "safe"], ["y"], name="normalise")]
    inits = {"eps": np.float32(1e-6), "w": rng.normal(1, 0.3, size=6).astype(np.float32)}
    r = rng.normal(size=x.shape)
    for nodes in (rms, l2):
        model = make_model(nodes, [("x", F, ["N", 3, 6])], [("y", F, ["N", 3, 6])],
                           {k: v for k, v in inits.items() if any(k in n.input for n in nodes)})
        rows = {row["node"]: row["rule"] for row in rule_table(model, resolve("AttnLRP"), ["x"], "y")[0]}
        assert rows["normalise"] == "normaliser"
        assert rel(attnlrp(model, x.astype(np.float32), r.astype(np.float32), stabilizer=TINY_EPS), r) < RULE_TOL


def _gelu_erf():
    return [helper.make_node("Div", ["x", "sqrt2"], ["xs"], name="div"), helper.make_node("Erf", ["xs"], ["e"], name="erf"),
            helper.make_node("Add", ["e", "one"], ["e1"], name="add_one"),
            helper.make_node("Mul", ["x", "e1"], ["p"], name="gate"), helper.make_node("Mul", ["p", "half"], ["y"], name="half")]


def _gelu_tanh():
    """GPT-2's gelu_new: ½x · (1 + tanh(√(2/π)(x + 0.044715 x³)))."""
    return [helper.make_node("Mul", ["x", "half"], ["hx"], name="half"),
            helper.make_node("Pow", ["x", "three"], ["x3"], name="cube"),
            helper.make_node("Mul", ["x3", "c"], ["cx3"], name="cubic_term"),
            helper.make_node("Add", ["x", "cx3"], ["inner"], name="inner"),
            helper.make_node("Mul", ["inner", "k"], ["arg"], name="scale"),
            helper.make_node("Tanh", ["arg"], ["t"], name="tanh"),
            helper.make_node("Add", ["t", "one"], ["t1"], name="add_one"),
            helper.make_node("Mul", ["hx", "t1"], ["y"], name="gate")]


def _silu():
    return [helper.make_node("Sigmoid", ["x"], ["s"], name="sigmoid"), helper.make_node("Mul", ["s", "x"], ["y"], name="gate")]


@pytest.mark.parametrize("form", [_gelu_erf, _gelu_tanh, _silu])
def test_activations_written_as_products_pass_relevance(form):
    """GELU and SiLU as exporters write them: the product is a gate (identity rule), R_in = R_out."""
    consts = {"sqrt2": math.sqrt(2), "one": 1.0, "half": 0.5, "three": 3.0, "c": 0.044715, "k": math.sqrt(2 / math.pi)}
    nodes = form()
    used = {i for n in nodes for i in n.input}
    model = make_model(nodes, [("x", F, ["N", 7])], [("y", F, ["N", 7])],
                       {k: np.float32(v) for k, v in consts.items() if k in used})
    rows = {row["node"]: row for row in rule_table(model, resolve("AttnLRP"), ["x"], "y")[0]}
    assert rows["gate"]["kind"] == "gate" and rows["gate"]["rule"] == "gate"
    rng = np.random.default_rng(6)
    x, r = rng.uniform(-3, 3, size=(4, 7)), rng.normal(size=(4, 7))
    assert rel(attnlrp(model, x.astype(np.float32), r.astype(np.float32), stabilizer=TINY_EPS), r) < RULE_TOL


# ---------------------------------------------------------------------------------------------------
# 2. a tiny transformer against a float64 reference written layer by layer


class _LayerNorm(nn.Module):
    """nn.LayerNorm's computation, exported as one LayerNormalization node or written out."""

    def __init__(self, d, written_out):
        super().__init__()
        self.weight = nn.Parameter(1 + 0.2 * torch.randn(d))
        self.bias = nn.Parameter(0.1 * torch.randn(d))
        self.written_out = written_out

    def forward(self, x):
        if not self.written_out:
            return F_.layer_norm(x, (self.weight.shape[0],), self.weight, self.bias, 1e-5)
        c = x - x.mean(-1, keepdim=True)
        return c / torch.sqrt((c ** 2).mean(-1, keepdim=True) + 1e-5) * self.weight + self.bias


class _Block(nn.Module):
    def __init__(self, d, heads, written_out):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = _LayerNorm(d, written_out), _LayerNorm(d, written_out)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.fc1, self.fc2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, x, mask):
        n, t, d = x.shape[0], x.shape[1], self.q.in_features
        dh = d // self.heads
        h = self.ln1(x)
        q, k, v = (z.reshape(n, t, self.heads, dh).transpose(1, 2) for z in (self.q(h), self.k(h), self.v(h)))
        a = torch.softmax(q @ k.transpose(-1, -2) * (1 / math.sqrt(dh)) + mask, dim=-1)
        x = x + self.o((a @ v).transpose(1, 2).reshape(n, t, d))
        return x + self.fc2(F_.gelu(self.fc1(self.ln2(x))))


class TinyTransformer(nn.Module):
    """x[N, T, d] and keep[N, T] (1 a token, 0 padding: an additive -inf key mask) -> logits of the first token."""

    def __init__(self, d=16, heads=2, layers=2, classes=3, written_out=False):
        super().__init__()
        self.blocks = nn.ModuleList(_Block(d, heads, written_out) for _ in range(layers))
        self.ln, self.head = _LayerNorm(d, written_out), nn.Linear(d, classes)

    def forward(self, x, keep):
        mask = torch.where(keep > 0.5, 0.0, float("-inf"))[:, None, None, :]
        for block in self.blocks:
            x = block(x, mask)
        return self.head(self.ln(x)[:, 0])


class Rules:
    """AttnLRP's rules in float64 torch, as the paper and LXT write them (ε as onnxsal's stabiliser)."""

    def __init__(self, eps):
        self.eps = eps

    def linear(self, x, layer, r):
        w = layer.weight.double()
        z = x @ w.T + (layer.bias.double() if layer.bias is not None else 0)
        return x * ((r / stab(z, self.eps)) @ w)

    def add(self, a, b, r):
        s = r / stab(a + b, self.eps)
        return a * s, b * s

    def layer_norm(self, x, ln, r):
        m = x.mean(-1, keepdim=True)
        std = torch.sqrt(((x - m) ** 2).mean(-1, keepdim=True) + getattr(ln, "eps", 1e-5))
        y = (x - m) / std * ln.weight.double() + ln.bias.double()
        u = ln.weight.double() * r / (std * stab(y, self.eps))
        return x * (u - u.mean(-1, keepdim=True))

    def matmul(self, a, b, r):
        s = r / (2 * stab(a @ b, self.eps))
        return a * (s @ b.transpose(-1, -2)), b * (a.transpose(-1, -2) @ s)

    def softmax(self, x, s, r):
        return torch.where(s == 0, torch.zeros_like(x), x) * (r - s * r.sum(-1, keepdim=True))

    def attention(self, x, q_layer, k_layer, v_layer, tape, r_context):
        """Relevance at x (the attention's input) of the context's relevance [N, T, d]."""
        n, t, d = x.shape
        heads, dh = tape["q"].shape[1], tape["q"].shape[-1]
        r_c = r_context.reshape(n, t, heads, dh).transpose(1, 2)
        r_a, r_v = self.matmul(tape["a"], tape["v"], r_c)
        r_masked = self.softmax(tape["masked"], tape["a"], r_a)
        r_scores = torch.where(tape["a"] == 0, torch.zeros_like(r_masked),
                               tape["scores"] * r_masked / stab(tape["masked"], self.eps))  # + mask: z-rule; scaling passes
        r_q, r_kt = self.matmul(tape["q"], tape["k"].transpose(-1, -2), r_scores)
        merge = lambda z: z.transpose(1, 2).reshape(n, t, d)  # noqa: E731
        return (self.linear(x, q_layer, merge(r_q)) + self.linear(x, k_layer, merge(r_kt.transpose(-1, -2)))
                + self.linear(x, v_layer, merge(r_v)))


def _attention_forward(x, q_layer, k_layer, v_layer, heads, mask):
    """The attention's forward in float64, keeping what the rules read; returns (context [N,T,d], tape)."""
    n, t, d = x.shape
    dh = d // heads
    lin = lambda layer, z: z @ layer.weight.double().T + layer.bias.double()  # noqa: E731
    q, k, v = (lin(layer, x).reshape(n, t, heads, dh).transpose(1, 2) for layer in (q_layer, k_layer, v_layer))
    scores = q @ k.transpose(-1, -2) / math.sqrt(dh)
    masked = scores + mask
    a = torch.softmax(masked, -1)
    return (a @ v).transpose(1, 2).reshape(n, t, d), dict(q=q, k=k, v=v, scores=scores, masked=masked, a=a)


def _seed(logits, target):
    r = torch.zeros_like(logits)
    idx = torch.arange(len(target))
    r[idx, target] = logits[idx, target]
    return r


def tiny_reference(model: TinyTransformer, x, keep, target, eps):
    """AttnLRP of the target logit with respect to x, float64, layer by layer; (relevance, logits)."""
    rules = Rules(eps)
    x = x.double()
    d = x.shape[-1]
    mask = torch.where(keep > 0.5, 0.0, float("-inf")).double()[:, None, None, :]
    ln = lambda layer, z: F_.layer_norm(z, (d,), layer.weight.double(), layer.bias.double(), 1e-5)  # noqa: E731
    lin = lambda layer, z: z @ layer.weight.double().T + layer.bias.double()  # noqa: E731
    tapes = []
    for b in model.blocks:
        h = ln(b.ln1, x)
        c, tape = _attention_forward(h, b.q, b.k, b.v, b.heads, mask)
        o = lin(b.o, c)
        x1 = x + o
        h2 = ln(b.ln2, x1)
        f1 = lin(b.fc1, h2)
        g = F_.gelu(f1)
        f2 = lin(b.fc2, g)
        tapes.append(dict(tape, x=x, h=h, c=c, o=o, x1=x1, h2=h2, g=g, f2=f2))
        x = x1 + f2
    hf = ln(model.ln, x)
    logits = lin(model.head, hf[:, 0])
    r_hf = torch.zeros_like(hf)
    r_hf[:, 0] = rules.linear(hf[:, 0], model.head, _seed(logits, target))
    r = rules.layer_norm(x, model.ln, r_hf)
    for b, tp in zip(reversed(model.blocks), reversed(tapes)):
        r_x1, r_f2 = rules.add(tp["x1"], tp["f2"], r)
        r_g = rules.linear(tp["g"], b.fc2, r_f2)  # GELU: identity
        r_x1 = r_x1 + rules.layer_norm(tp["x1"], b.ln2, rules.linear(tp["h2"], b.fc1, r_g))
        r_x, r_o = rules.add(tp["x"], tp["o"], r_x1)
        r_h = rules.attention(tp["h"], b.q, b.k, b.v, tp, rules.linear(tp["c"], b.o, r_o))
        r = r_x + rules.layer_norm(tp["x"], b.ln1, r_h)
    return r.numpy(), logits.numpy()


def _export(module, args, input_names, output_names, dynamic_axes):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        torch.onnx.export(module, args, str(path), input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic_axes, opset_version=17, dynamo=False, do_constant_folding=True)
        return onnx.load(str(path))


def _tiny(written_out):
    torch.manual_seed(0)
    model = TinyTransformer(written_out=written_out).eval()
    x = torch.randn(3, 5, 16)
    keep = torch.ones(3, 5)
    keep[1, 3:] = 0
    keep[2, 4:] = 0
    proto = _export(model, (x, keep), ["x", "keep"], ["logits"], {"x": {0: "batch"}, "keep": {0: "batch"}, "logits": {0: "batch"}})
    return model, proto, x, keep


@pytest.mark.parametrize("written_out, eps", [(False, 1e-6), (True, 1e-9)])
def test_tiny_transformer_against_the_reference(written_out, eps):
    """LayerNorm as one node (ε = 1e-6, onnxsal's default) and written out (ε = 1e-9: the written-out
    graph applies the stabiliser at each of its nodes, the reference once per layer; at 1e-6 that
    alone differs by ~9e-5 here)."""
    model, proto, x, keep = _tiny(written_out)
    ops = {n.op_type for n in proto.graph.node}
    assert ("LayerNormalization" in ops) != written_out and {"Erf", "Softmax", "Where"} <= ops
    target = np.array([0, 1, 2])
    with torch.no_grad():
        ref, logits = tiny_reference(model, x, keep, torch.from_numpy(target), eps)
    ours = attnlrp(proto, {"x": x.numpy(), "keep": keep.numpy()}, target, wrt="x", epsilon=eps, stabilizer=eps)
    assert np.isfinite(ours).all()
    assert rel(ours, ref) < TOL


def test_tiny_transformer_rules():
    """Which rule each node gets: the rule table `inspect --composite AttnLRP` prints."""
    _, proto, _, _ = _tiny(written_out=False)
    rows = rule_table(proto, resolve("AttnLRP"), ["x"], "logits")[0]
    by_op: dict[tuple, set] = {}
    for row in rows:
        by_op.setdefault((row["op_type"], row["kind"]), set()).add(row["rule"].split("(")[0])
    assert by_op[("Softmax", "activation")] == {"softmaxdtd"}
    assert by_op[("LayerNormalization", "other")] == {"layernormidentity"}
    assert by_op[("MatMul", "product")] == {"uniformepsilon"} and by_op[("MatMul", "dense")] == {"epsilon"}
    assert by_op[("Mul", "gate")] == {"gate"} and by_op[("Erf", "activation")] == {"pass"}
    assert by_op[("Add", "sum")] == {"norm"} and by_op[("Gemm", "dense")] == {"epsilon"}
    assert sum(1 for row in rows if row["op_type"] == "MatMul" and row["kind"] == "product") == 4


def test_attnlrp_rules_in_a_mapping():
    """The new kinds and rules can be named in a mapping, over the base map or over AttnLRP."""
    _, proto, _, _ = _tiny(written_out=False)
    mapping = {"Softmax": "softmaxdtd", "product": ("uniformepsilon", {"stabilizer": 1e-3}),
               "LayerNormalization": "layernormidentity", "gate": "gate"}
    rows = rule_table(proto, resolve(mapping), ["x"], "logits")[0]
    rules = {(row["op_type"], row["rule"]) for row in rows}
    assert {("Softmax", "softmaxdtd"), ("MatMul", "uniformepsilon(stabilizer=0.001)"),
            ("LayerNormalization", "layernormidentity(stabilizer=1e-06)")} <= rules
    assert ("Mul", "gate") not in rules  # the base map tells no gates apart: the GELU product is a product
    rows = rule_table(proto, resolve("AttnLRP").with_rules({"gate": "uniform"}), ["x"], "logits")[0]
    assert {row["rule"] for row in rows if row["kind"] == "gate"} == {"uniform(stabilizer=1e-06)"}


def test_inspect_lists_attnlrp_rules(tmp_path):
    from tests.test_cli import cli

    _, proto, _, _ = _tiny(written_out=False)
    onnx.save(proto, tmp_path / "tiny.onnx")
    r = cli("inspect", tmp_path / "tiny.onnx", "--composite", "AttnLRP")
    assert r.returncode == 0, r.stderr
    assert "LRP rules of AttnLRP" in r.stdout
    for line in ("Softmax (activation): softmaxdtd", "LayerNormalization (other): layernormidentity",
                 "MatMul (product): uniformepsilon", "Mul (gate): gate"):
        assert line in r.stdout, line


# ---------------------------------------------------------------------------------------------------
# 3. BERT and GPT-2 from transformers configs


def hf_model(arch: str, zero_bias: bool = False, seed: int = 0):
    """A tiny random BERT or GPT-2 sequence classifier (eager attention). With zero_bias every bias,
    LayerNorm shift and the position and token-type embeddings are zero; otherwise biases and
    LayerNorm parameters are drawn away from their init (zeros, ones)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    if arch == "bert":
        cfg = transformers.BertConfig(vocab_size=100, max_position_embeddings=32, num_labels=4, hidden_size=32,
                                      num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                      attn_implementation="eager")
        model = transformers.BertForSequenceClassification(cfg)
    else:
        cfg = transformers.GPT2Config(vocab_size=100, n_positions=32, n_embd=32, n_layer=2, n_head=2, num_labels=4,
                                      pad_token_id=0, attn_implementation="eager")
        model = transformers.GPT2ForSequenceClassification(cfg)
    model.eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if zero_bias and (name.endswith("bias") or any(k in name for k in ("position_embeddings", "token_type", "wpe"))):
                p.zero_()
            elif not zero_bias and name.endswith("bias"):
                p.normal_(0, 0.1)
            elif not zero_bias and ("LayerNorm.weight" in name or ".ln_" in name and name.endswith("weight")):
                p.normal_(1, 0.2)
    return model


class _Ids(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask).logits


def _embedding_output(proto: onnx.ModelProto, ids: str = "input_ids") -> str:
    """The output of the Gather that looks `ids` up in a [vocab, hidden] table (as the corpus finds it)."""
    tables = {t.name for t in proto.graph.initializer if len(t.dims) == 2}
    carriers = {ids}
    for node in proto.graph.node:
        if node.op_type in ("Reshape", "Unsqueeze", "Squeeze", "Cast", "Identity", "Flatten") and node.input[0] in carriers:
            carriers.add(node.output[0])
        if node.op_type == "Gather" and node.input[1] in carriers and node.input[0] in tables:
            return node.output[0]
    raise AssertionError(f"no embedding Gather reads {ids!r}")


def hf_case(arch: str, zero_bias: bool = False):
    """(model, proto, feeds, word-embedding output): 3 sequences of 7 tokens, the second padded after 5."""
    model = hf_model(arch, zero_bias)
    torch.manual_seed(1)
    ids = torch.randint(1, 100, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 5:] = 0
    ids[1, 5:] = 0  # the padding token (GPT-2 classifies the last token that is not padding)
    proto = _export(_Ids(model).eval(), (ids, mask), ["input_ids", "attention_mask"], ["logits"],
                    {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
                     "logits": {0: "batch"}})
    model.eval()  # the exporter restores the mode it found; dropout must stay off for the references
    return model, proto, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}, _embedding_output(proto)


def bert_reference(model, ids, mask, target, eps):
    """AttnLRP of BertForSequenceClassification written out from its weights (float64): embeddings
    (word + token type 0 + position, z-rule), LayerNorm, per layer attention / add & LayerNorm / GELU
    MLP / add & LayerNorm (post-LN), the pooler's dense + tanh (identity) and the classifier.
    Returns (relevance at the word embeddings, logits)."""
    rules = Rules(eps)
    bert = model.bert
    n, t = ids.shape
    d = model.config.hidden_size
    heads = model.config.num_attention_heads
    emb = bert.embeddings
    word = emb.word_embeddings.weight.double()[ids]
    e = word + emb.token_type_embeddings.weight.double()[0] + emb.position_embeddings.weight.double()[:t]
    ln = lambda layer, z: F_.layer_norm(z, (d,), layer.weight.double(), layer.bias.double(), layer.eps)  # noqa: E731
    lin = lambda layer, z: z @ layer.weight.double().T + layer.bias.double()  # noqa: E731
    mask_add = torch.where(mask > 0, 0.0, float("-inf")).double()[:, None, None, :]
    x = ln(emb.LayerNorm, e)
    tapes = []
    for layer in bert.encoder.layer:
        att = layer.attention
        c, tape = _attention_forward(x, att.self.query, att.self.key, att.self.value, heads, mask_add)
        o = lin(att.output.dense, c)
        s1 = o + x
        x1 = ln(att.output.LayerNorm, s1)
        g = F_.gelu(lin(layer.intermediate.dense, x1))
        f2 = lin(layer.output.dense, g)
        s2 = f2 + x1
        tapes.append(dict(tape, x=x, c=c, o=o, s1=s1, x1=x1, g=g, f2=f2, s2=s2))
        x = ln(layer.output.LayerNorm, s2)
    first = x[:, 0]
    pooled = torch.tanh(lin(bert.pooler.dense, first))
    logits = lin(model.classifier, pooled)
    r_x = torch.zeros_like(x)
    r_pooled = rules.linear(pooled, model.classifier, _seed(logits, target))
    r_x[:, 0] = rules.linear(first, bert.pooler.dense, r_pooled)  # tanh: identity
    for layer, tp in zip(reversed(bert.encoder.layer), reversed(tapes)):
        att = layer.attention
        r_f2, r_x1 = rules.add(tp["f2"], tp["x1"], rules.layer_norm(tp["s2"], layer.output.LayerNorm, r_x))
        r_g = rules.linear(tp["g"], layer.output.dense, r_f2)  # GELU: identity
        r_x1 = r_x1 + rules.linear(tp["x1"], layer.intermediate.dense, r_g)
        r_o, r_x = rules.add(tp["o"], tp["x"], rules.layer_norm(tp["s1"], att.output.LayerNorm, r_x1))
        r_x = r_x + rules.attention(tp["x"], att.self.query, att.self.key, att.self.value, tp,
                                    rules.linear(tp["c"], att.output.dense, r_o))
    r_e = rules.layer_norm(e, emb.LayerNorm, r_x)
    return (word * r_e / stab(e, eps)).numpy(), logits.numpy()


def test_bert_against_the_reference():
    model, proto, feeds, emb = hf_case("bert")
    ids, mask = torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"])
    target = np.array([1, 2, 3])
    with torch.no_grad():
        ref, logits = bert_reference(model, ids, mask, torch.from_numpy(target), 1e-9)
        hf_logits = model.double()(input_ids=ids, attention_mask=mask).logits.numpy()
    assert rel(logits, hf_logits) < 1e-12  # the reference reads the model right
    ours = attnlrp(proto, feeds, target, wrt="embeddings", epsilon=1e-9, stabilizer=1e-9)  # found: `emb`
    assert np.isfinite(ours).all()
    assert rel(ours, ref) < TOL


LXT_GPT2 = r'''
import importlib.util, sys, types
from pathlib import Path
import numpy as np
import torch

root = Path(importlib.util.find_spec("lxt").submodule_search_locations[0])
for name, path in (("lxt.efficient", root / "efficient"), ("lxt.efficient.models", root / "efficient" / "models")):
    module = types.ModuleType(name)  # the package without its __init__ (which imports LXT's BERT)
    module.__path__ = [str(path)]
    sys.modules[name] = module
import lxt.efficient.models.gpt2 as lxt_gpt2
from lxt.efficient.patches import wrap_attention_forward

for target, patch in lxt_gpt2.attnLRP.items():
    if target is lxt_gpt2.modeling_gpt2:  # LXT's patch_attention, less the swap of the registry for a dict
        target.eager_attention_forward = wrap_attention_forward(target.eager_attention_forward)
    else:
        assert patch(target), target
model = torch.load(sys.argv[1], weights_only=False).double().eval()
data = np.load(sys.argv[2])
ids, mask, target = (torch.from_numpy(data[k]) for k in ("ids", "mask", "target"))
emb = model.get_input_embeddings()(ids).detach().requires_grad_(True)
hidden = model.transformer(inputs_embeds=emb, attention_mask=mask).last_hidden_state
n, last = torch.arange(len(ids)), mask.sum(1) - 1  # the token GPT2ForSequenceClassification classifies
logits = model.score(hidden)[n, last]
logits[n, target].sum().backward()
np.savez(sys.argv[3], relevance=(emb * emb.grad).detach().numpy(), logits=logits.detach().numpy())
'''


def test_gpt2_against_lxt(tmp_path):
    if importlib.util.find_spec("lxt") is None:
        pytest.fail("lxt is missing: `make .venv/.test` installs it (pip install --no-deps lxt==2.1)", pytrace=False)
    model, proto, feeds, emb = hf_case("gpt2")
    target = np.array([1, 2, 3])
    torch.save(model, tmp_path / "model.pt")
    np.savez(tmp_path / "in.npz", ids=feeds["input_ids"], mask=feeds["attention_mask"], target=target)
    run = subprocess.run([sys.executable, "-c", LXT_GPT2, str(tmp_path / "model.pt"), str(tmp_path / "in.npz"),
                          str(tmp_path / "out.npz")], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    ref = np.load(tmp_path / "out.npz")
    with torch.no_grad():
        logits = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits.numpy()
    assert rel(ref["logits"], logits) < 1e-5  # LXT's patched model explains the logits the export computes
    ours = attnlrp(proto, feeds, target, wrt=emb, epsilon=1e-9, stabilizer=1e-9)
    assert np.isfinite(ours).all()
    assert rel(ours, ref["relevance"]) < TOL


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_relevance_is_conserved(arch):
    """Σ R(word embeddings) + what the softmax rules absorb = the logit, with nothing else absorbing."""
    model, proto, feeds, emb = hf_case(arch, zero_bias=True)
    softmax = [n for n in proto.graph.node if n.op_type == "Softmax"]
    rules = Counter(row["rule"].split("(")[0] for row in rule_table(proto, resolve("AttnLRP"), [emb], "logits")[0])
    # per layer: q·kᵀ and attention·v, one softmax, one GELU written as a product; 2 + 2 + 1 LayerNorms
    assert (rules["uniformepsilon"], rules["softmaxdtd"], rules["gate"], rules["layernormidentity"]) == (4, 2, 2, 5)
    wrt = [emb] + [n.input[0] for n in softmax] + [n.output[0] for n in softmax]
    target = np.array([0, 1, 3])
    out = attnlrp(proto, feeds, target, wrt=wrt, epsilon=1e-9, stabilizer=1e-9)
    with torch.no_grad():
        logits = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits.numpy()[np.arange(3), target]
    total = lambda v: out[v].reshape(3, -1).sum(axis=1, dtype=np.float64)  # noqa: E731
    absorbed = sum(total(n.output[0]) - total(n.input[0]) for n in softmax)
    gap = np.abs(total(emb) + absorbed - logits) / np.abs(logits)
    assert np.isfinite(out[emb]).all() and gap.max() < CONSERVE_TOL, gap
    assert np.abs(absorbed).max() > 0  # the softmax rule does absorb (the check is not vacuous)


@pytest.mark.parametrize("composite", ["EpsilonPlusFlat", "Epsilon"])
def test_cnn_composites_run_on_bert(composite):
    """The composites made for CNNs also run on a transformer export: the MatMuls of two activations
    get Uniform's epsilon split (before, they handed the output's relevance on with the wrong shape
    and onnxruntime refused the graph). Padded tokens get no relevance: attention gives them
    probability 0, and the classifier reads only [CLS]."""
    _, proto, feeds, emb = hf_case("bert")
    ours = onnxsal.Explainer(proto, providers="cpu").attribute(feeds, target=np.array([0, 1, 3]), method="lrp",
                                                               composite=composite, wrt=emb)
    assert ours.shape == (3, 7, 32) and np.isfinite(ours).all()
    tokens = np.abs(ours).sum(-1)
    assert tokens[1, :5].min() > 0 and tokens[1, 5:].max() <= 1e-6 * tokens.max()
