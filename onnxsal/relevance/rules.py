"""LRP rules: how relevance at a node's output is distributed to its inputs.

The relevance flows through the differentiator where the gradient would: each rule receives the
relevance R of the node's output (of the output's shape) and returns one relevance per input, as
Zennit's rules and LXT's do (R_in = x ⊙ Wᵀ(R / stabilise(z)), the rule deciding which weights
and inputs form z). With z the forward output, s = R / stabilise(z) and ⊙ elementwise:

- Epsilon (Bach et al. 2015):   z = W x + b,                    R_in = x ⊙ Wᵀ s
- ZPlus (alpha 1, beta 0):      z = W⁺x⁺ + b⁺ + W⁻x⁻,           R_in = x⁺ ⊙ W⁺ᵀ s + x⁻ ⊙ W⁻ᵀ s
- AlphaBeta (alpha − beta = 1): α·(positive part, as ZPlus) − β·(z = W⁻x⁺ + b⁻ + W⁺x⁻, likewise)
- Gamma (Montavon et al. 2019, generalised as Zennit: sign of y picks the part; W_± = W + γW^±):
    y > 0: z = W₊x⁺ + b₊ + W₋x⁻,  y < 0: z = W₋x⁺ + b₋ + W₊x⁻
- WSquare:  z = W²·1 + b²,  R_in = W²ᵀ s;   Flat: z = 1·1 (weights ones, no bias), R_in = 1ᵀ s
- ZBox (bounded input l ≤ x ≤ h):  z = W x − W⁺l − W⁻h,  R_in = x ⊙ Wᵀs − l ⊙ W⁺ᵀs − h ⊙ W⁻ᵀs
- Norm: the Epsilon rule on a parameter-free linear op (sums, averages, scaling, resizing):
  residual Adds split in proportion to their contributions (the z-rule)
- Pass: the relevance passes unchanged (elementwise activations, unfolded BatchNormalization)
- Uniform: a product of activations (a gate, attention) gives each factor R/k (AttnLRP)
- Gradient: the vanilla gradient rule (routing ops: MaxPool winner-takes-all, reshapes, slices)

stabilise(z) = z + ε·sign(z) with sign(0) = +1 (Zennit's convention). Every rule is linear in R,
so the relevance of a class's score is the score times the relevance of its one-hot.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..autodiff.registry import RuleContext
from .linear import LinearLayer, gamma, is_linear_layer, negative, ones, positive, square

DEFAULT_STABILIZER = 1e-6


def stabilise(ctx: RuleContext, z: str, epsilon: float) -> str:
    """z + ε·sign(z), sign(0) = +1."""
    eps = ctx.scalar(epsilon)
    return ctx.op("Where", [ctx.op("Less", [z, ctx.scalar(0.0)]), ctx.op("Sub", [z, eps]), ctx.op("Add", [z, eps])])


def _divide(ctx: RuleContext, r: str, z: str, epsilon: float) -> str:
    return ctx.op("Div", [r, stabilise(ctx, z, epsilon)])


def _parts(ctx: RuleContext, x: str) -> tuple[str, str | None]:
    """x⁺ and x⁻; x⁻ is None when x cannot be negative (a rectifier's output, through routing ops)."""
    pos = ctx.op("Relu", [x])
    if nonnegative(ctx, x):
        return pos, None
    return pos, ctx.op("Sub", [x, pos])


ROUTING = {"MaxPool", "GlobalMaxPool", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout",
           "Transpose", "Concat", "Split", "Slice", "Pad", "AveragePool", "GlobalAveragePool", "Resize"}
NONNEGATIVE = {"Relu", "Sigmoid", "Softmax", "Softplus", "Exp", "Abs", "HardSigmoid"}


def nonnegative(ctx: RuleContext, x: str, depth: int = 8) -> bool:
    """Whether value x is >= 0 by construction: a rectifier's (or Sigmoid's, ...) output, possibly
    moved by routing ops whose other inputs are constants; constant padding must be >= 0 too."""
    node = ctx.view.producer.get(x)
    if node is None or depth == 0:
        return False
    op = node.op_type
    if op in NONNEGATIVE:
        return True
    if op == "Clip":
        low = ctx.view.const(node.input[1]) if len(node.input) > 1 and node.input[1] else None
        if low is None:
            from onnx import helper
            low = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "min"), None)
        return low is not None and float(low) >= 0
    if op in ROUTING:
        if op == "Resize" and any(a.name == "mode" and a.s == b"cubic" for a in node.attribute):
            return False  # cubic interpolation overshoots: negative values next to positive ones
        if op == "Pad":
            value = ctx.view.const(node.input[2]) if len(node.input) > 2 and node.input[2] else 0.0
            if value is None or float(value) < 0:
                return False
        data = [i for i in node.input[:1 if op not in ("Concat",) else None] if i]
        return all(nonnegative(ctx, i, depth - 1) for i in data)
    return False


@dataclass(frozen=True)
class LrpRule:
    """A rule: `backward(ctx, r)` returns the relevance of each input of ctx's node."""

    @property
    def name(self) -> str:
        return type(self).__name__.lower()

    def describe(self) -> str:
        fields = ", ".join(f"{k}={v}" for k, v in self.__dict__.items())
        return f"{self.name}({fields})" if fields else self.name

    def applies(self, ctx: RuleContext) -> bool:
        """Whether the rule can treat this node; where it cannot, the vanilla gradient is used."""
        return True

    def backward(self, ctx: RuleContext, r: str) -> list:
        raise NotImplementedError


@dataclass(frozen=True)
class Gradient(LrpRule):
    def backward(self, ctx, r):
        return ctx.base(r)


@dataclass(frozen=True)
class Pass(LrpRule):
    """R unchanged, for an elementwise node: one input on the path, of the output's shape (on a
    pooling or a broadcast R would have the wrong shape; the gradient is used there)."""

    def applies(self, ctx):
        if sum(ctx.wants) != 1:
            return False
        return not _shapes_differ(ctx.shape(ctx.node.input[ctx.wants.index(True)]), ctx.shape(ctx.y))

    def backward(self, ctx, r):
        return [r if w else None for w in ctx.wants]


@dataclass(frozen=True)
class Uniform(LrpRule):
    """R/k to each of the k factors of a product of activations on the path.

    An elementwise product whose factors all have the output's shape hands R/k itself. Any other
    product (a MatMul of two activations such as attention · values, a broadcasting Mul) cannot
    hand R over as it is; there each factor's share is spread by its epsilon contribution,
    R_a = a ⊙ J_aᵀ(R / (k·stabilise(z))), which sums to R/k because the product is linear in each
    factor."""

    stabilizer: float = DEFAULT_STABILIZER

    def backward(self, ctx, r):
        k = sum(ctx.wants)
        on = [x for x, w in zip(ctx.node.input, ctx.wants) if w]
        if ctx.node.op_type == "Mul" and all(_same_shape(ctx.shape(x), ctx.shape(ctx.y)) for x in on):
            share = r if k == 1 else ctx.op("Mul", [r, ctx.scalar(1.0 / k)])
            return [share if w else None for w in ctx.wants]
        s = ctx.op("Div", [r, ctx.op("Mul", [stabilise(ctx, ctx.y, self.stabilizer), ctx.scalar(float(k))])])
        return [ctx.op("Mul", [x, g]) if w and g is not None else None
                for x, g, w in zip(ctx.node.input, ctx.base(s), ctx.wants)]


@dataclass(frozen=True)
class Epsilon(LrpRule):
    """x ⊙ Jᵀ(R / stabilise(y)) for any op with a vanilla rule (J its Jacobian at x)."""

    epsilon: float = DEFAULT_STABILIZER

    def backward(self, ctx, r):
        s = _divide(ctx, r, ctx.y, self.epsilon)
        grads = ctx.base(s)
        return [ctx.op("Mul", [x, g]) if w and g is not None else None for x, g, w in zip(ctx.node.input, grads, ctx.wants)]


@dataclass(frozen=True)
class Norm(Epsilon):
    """Epsilon with a fixed small stabiliser, for parameter-free linear ops."""

    @property
    def name(self) -> str:
        return "norm"


class _LinearRule(LrpRule):
    def applies(self, ctx):
        return is_linear_layer(ctx)


@dataclass(frozen=True)
class ZPlus(_LinearRule):
    stabilizer: float = DEFAULT_STABILIZER

    def backward(self, ctx, r):
        layer = LinearLayer(ctx)
        return layer.relevance(_signed_split(ctx, layer, r, positive(), negative(), "plus", "minus", self.stabilizer))


def _signed_split(ctx, layer: LinearLayer, r: str, for_pos, for_neg, pos_name: str, neg_name: str,
                  stabilizer: float, mask: str | None = None) -> str:
    """x⁺ ⊙ W_aᵀs + x⁻ ⊙ W_bᵀs with z = W_a x⁺ + b_a + W_b x⁻ (b_a the bias under for_pos)."""
    xp, xn = _parts(ctx, layer.x)
    wa, wb = layer.modified("w", pos_name, for_pos), layer.modified("w", neg_name, for_neg)
    ba = layer.modified("b", pos_name, for_pos) if layer.b else None
    z = layer.forward(xp, wa, ba)
    if xn is not None:
        z = ctx.op("Add", [z, layer.forward(xn, wb, None)])
    s = _divide(ctx, r, z, stabilizer)
    if mask is not None:
        s = ctx.op("Mul", [s, mask])
    out = ctx.op("Mul", [xp, layer.backward(s, wa)])
    if xn is not None:
        out = ctx.op("Add", [out, ctx.op("Mul", [xn, layer.backward(s, wb)])])
    return out


@dataclass(frozen=True)
class AlphaBeta(_LinearRule):
    alpha: float = 2.0
    beta: float = 1.0
    stabilizer: float = DEFAULT_STABILIZER

    def __post_init__(self):
        if self.alpha < 0 or self.beta < 0 or abs(self.alpha - self.beta - 1.0) > 1e-12:
            raise ValueError(f"alpha-beta needs alpha, beta >= 0 and alpha - beta = 1, not alpha={self.alpha}, beta={self.beta}")

    def backward(self, ctx, r):
        layer = LinearLayer(ctx)
        pos = _signed_split(ctx, layer, r, positive(), negative(), "plus", "minus", self.stabilizer)
        out = ctx.op("Mul", [pos, ctx.scalar(self.alpha)]) if self.alpha != 1 else pos
        if self.beta:
            neg = _signed_split(ctx, layer, r, negative(), positive(), "minus", "plus", self.stabilizer)
            out = ctx.op("Sub", [out, ctx.op("Mul", [neg, ctx.scalar(self.beta)])])
        return layer.relevance(out)


@dataclass(frozen=True)
class Gamma(_LinearRule):
    gamma: float = 0.25
    stabilizer: float = DEFAULT_STABILIZER

    def backward(self, ctx, r):
        layer = LinearLayer(ctx)
        up, down = gamma(self.gamma, "+"), gamma(self.gamma, "-")
        up_name, down_name = f"gamma{self.gamma}+", f"gamma{self.gamma}-"
        cast = ctx.dtype
        above = ctx.op("Cast", [ctx.op("Greater", [ctx.y, ctx.scalar(0.0)])], to=_onnx_type(cast))
        below = ctx.op("Cast", [ctx.op("Less", [ctx.y, ctx.scalar(0.0)])], to=_onnx_type(cast))
        pos = _signed_split(ctx, layer, r, up, down, up_name, down_name, self.stabilizer, mask=above)
        neg = _signed_split(ctx, layer, r, down, up, down_name, up_name, self.stabilizer, mask=below)
        return layer.relevance(ctx.op("Add", [pos, neg]))


@dataclass(frozen=True)
class WSquare(_LinearRule):
    stabilizer: float = DEFAULT_STABILIZER

    def backward(self, ctx, r):
        layer = LinearLayer(ctx)
        w2 = layer.modified("w", "square", square())
        b2 = layer.modified("b", "square", square()) if layer.b else None
        z = layer.forward(_ones_like(ctx, layer.x), w2, b2)
        return layer.relevance(layer.backward(_divide(ctx, r, z, self.stabilizer), w2))


@dataclass(frozen=True)
class Flat(_LinearRule):
    stabilizer: float = DEFAULT_STABILIZER

    def backward(self, ctx, r):
        layer = LinearLayer(ctx)
        w1 = layer.modified("w", "ones", ones())
        z = layer.forward(_ones_like(ctx, layer.x), w1, None)
        return layer.relevance(layer.backward(_divide(ctx, r, z, self.stabilizer), w1))


@dataclass(frozen=True)
class ZBox(_LinearRule):
    """For an input bounded by low <= x <= high (scalars, or one value per channel)."""

    low: float | tuple = 0.0
    high: float | tuple = 1.0
    stabilizer: float = DEFAULT_STABILIZER

    def backward(self, ctx, r):
        layer = LinearLayer(ctx)
        lo, hi = (_bound(ctx, layer.x, v, f"zbox_{n}") for v, n in ((self.low, "low"), (self.high, "high")))
        wp, wn = layer.modified("w", "plus", positive()), layer.modified("w", "minus", negative())
        bp = layer.modified("b", "plus", positive()) if layer.b else None
        bn = layer.modified("b", "minus", negative()) if layer.b else None
        z = ctx.op("Sub", [ctx.op("Sub", [ctx.y, layer.forward(lo, wp, bp)]), layer.forward(hi, wn, bn)])
        s = _divide(ctx, r, z, self.stabilizer)
        out = ctx.op("Mul", [layer.x, layer.backward(s, layer.w)])
        out = ctx.op("Sub", [out, ctx.op("Mul", [lo, layer.backward(s, wp)])])
        out = ctx.op("Sub", [out, ctx.op("Mul", [hi, layer.backward(s, wn)])])
        return layer.relevance(out)


def _same_shape(a, b) -> bool:
    """Whether two (possibly symbolic) shapes are known to be equal: same rank, each dim the same
    number or the same symbol."""
    return a is not None and b is not None and len(a) == len(b) and all(
        p == q and p is not None and p != "" for p, q in zip(a, b))


def _shapes_differ(a, b) -> bool:
    """Whether two (possibly symbolic) shapes are known to differ: rank, or a static dim."""
    if a is None or b is None:
        return False
    return len(a) != len(b) or any(isinstance(p, int) and isinstance(q, int) and p != q for p, q in zip(a, b))


def _onnx_type(dtype) -> int:
    from onnx import helper

    return helper.np_dtype_to_tensor_dtype(dtype)


def _ones_like(ctx: RuleContext, x: str) -> str:
    return ctx.op("Add", [ctx.zeros_like(x), ctx.scalar(1.0)])


def _bound(ctx: RuleContext, x: str, value, name: str) -> str:
    """A bound of the input, expanded to x's shape: a scalar, or one value per channel (axis 1)."""
    import numpy as np

    v = np.asarray(value, dtype=ctx.dtype)
    rank = ctx.rank(x)
    if v.ndim == 1 and v.size > 1:
        v = v.reshape((1, -1) + (1,) * (rank - 2))
    return ctx.emitter.expand_like(ctx.emitter.const(v, name=name), x)


RULES = {cls.__name__.lower(): cls for cls in (Gradient, Pass, Uniform, Epsilon, Norm, ZPlus, AlphaBeta, Gamma,
                                               WSquare, Flat, ZBox)}
RULES.update({"z_plus": ZPlus, "zplus": ZPlus, "alpha_beta": AlphaBeta, "w_square": WSquare, "z_box": ZBox})
