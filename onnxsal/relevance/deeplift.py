"""DeepLIFT (Shrikumar et al. 2017): the Rescale and RevealCancel rules as overrides of the vanilla
gradient rules.

The graph runs the model once on the input and its reference stacked on the batch axis,
[x ; x_ref] (2N samples; `onnxsal.methods.deeplift` builds it), so every value v on the path holds
both halves and Δv = v_x − v_ref. The backward pass runs over both halves; a rule reads Δ by
viewing axis 0 as [2, N] ("pairing"). A value whose batch is not on axis 0 (a [T, N, C] layout),
or whose leading dim is fixed (a Reshape to a constant batch), cannot be paired: that is refused
with the node's name, never computed on the wrong samples.

Rescale (Captum 0.9's DeepLift): linear ops keep their gradient. At an elementwise nonlinearity
y = f(x) with one input on the path (Relu, Sigmoid, Tanh, Gelu, Clip, Exp, ...) both halves of the
incoming gradient are multiplied by Δy/Δx, and where |Δx| < eps each half gets the node's own
gradient. MaxPool, GlobalMaxPool and ReduceMax take Captum's maxpool rule: with
y_max = max(y_x, y_ref), the gradient times [y_max − y_ref ; y_x − y_max] is routed by each half's
own maxima, the two halves are summed (u), and u/Δx is the multiplier of both (the gradient where
|Δx| < eps); windows that overlap add their contributions (Captum's unpool keeps only one).
A Softmax/LogSoftmax at the explained output is identity (softmax="identity"); elsewhere it is
refused: Captum's softmax rule subtracts a mean taken over the whole batch, mixing samples.

RevealCancel (sec. 3.5.3): every value carries a positive and a negative part, Δv = Δv⁺ + Δv⁻,
held as one tensor [Δv⁺ ; Δv⁻] of the forward value's shape; the backward pass carries one
multiplier per part, in the two halves of the gradient [m⁺ ; m⁻].
- explained input: Δx⁺ = max(Δx, 0), Δx⁻ = min(Δx, 0); its attribution is m⁺Δx⁺ + m⁻Δx⁻;
- weighted linear op (Conv, ConvTranspose, Gemm, MatMul with a constant side), the paper's linear
  rule by the sign of each term w·Δx: Δz⁺ = W⁺Δx⁺ + W⁻Δx⁻, Δz⁻ = W⁻Δx⁺ + W⁺Δx⁻; both parts of the
  input get W⁺ᵀm⁺ + W⁻ᵀm⁻ where Δx > 0, W⁻ᵀm⁺ + W⁺ᵀm⁻ where Δx < 0, Wᵀ(m⁺ + m⁻)/2 where Δx = 0;
- elementwise nonlinearity y = f(z), z_ref its reference input:
  Δy⁺ = ½(f(z_ref + Δz⁺) − f(z_ref)) + ½(f(z_ref + Δz⁻ + Δz⁺) − f(z_ref + Δz⁻)),
  Δy⁻ = ½(f(z_ref + Δz⁻) − f(z_ref)) + ½(f(z_ref + Δz⁺ + Δz⁻) − f(z_ref + Δz⁺)),
  m⁺_z = m⁺_y·Δy⁺/Δz⁺ and m⁻_z = m⁻_y·Δy⁻/Δz⁻ (0 where |Δz±| < eps: that part is zero);
- ops with nonnegative coefficients (Add, Sum, average pooling, reshapes, slices, concatenation)
  carry each part through; Neg, Sub's second input, Mul/Div by a value off the path and
  BatchNormalization carry them with the parts swapped where the coefficient is negative;
- any other op (MaxPool, a product of two path values, ...) splits its output by sign
  (Δy⁺ = max(Δy, 0)) and takes the Rescale rule, seeded with the multiplier of the part that Δy
  falls in (their mean where Δy = 0).
Pooling, BatchNormalization and reshapes carrying the parts while dense and conv layers re-split
them is how the authors' implementation (kundajelab/deeplift) propagates them too.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import onnx
from onnx import helper

from ..autodiff import DEFAULT_RULES, GRADIENT, RuleContext, RuleSet
from ..autodiff.driver import live_path
from ..autodiff.emitter import Emitter
from ..errors import UnsupportedModelError
from .linear import LinearLayer, is_linear_layer, negative, positive

DEFAULT_EPS = 1e-10  # Captum 0.9's default: |Δx| below this takes the gradient
RULES = ("rescale", "reveal_cancel")
BATCH = "stacked_batch"  # the dim name `methods.expand.Stacked` gives the stacked batch

ELEMENTWISE = ("Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Sigmoid", "Tanh", "Softplus", "Softsign",
               "HardSigmoid", "HardSwish", "Gelu", "Mish", "Swish", "Clip", "ThresholdedRelu", "Shrink", "Erf", "Exp",
               "Log", "Sqrt", "Reciprocal", "Abs", "Pow", "Sin", "Cos", "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh",
               "Asinh", "Acosh", "Atanh", "Floor", "Ceil", "Round", "Sign")
MAX_LIKE = ("MaxPool", "GlobalMaxPool", "ReduceMax")
SOFTMAX = ("Softmax", "LogSoftmax")
CARRY = {"Add", "Sum", "Mean", "Concat", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity",
         "Dropout", "Cast", "Slice", "Split", "Gather", "GatherElements", "GatherND", "Expand", "Tile", "Pad",
         "DepthToSpace", "SpaceToDepth", "AveragePool", "GlobalAveragePool", "ReduceSum", "ReduceMean", "Resize",
         "Upsample"}
ADDITIVE = {"Add", "Sum", "Mean", "Concat"}  # constants among their inputs are dropped from the parts
SIGNED = {"Neg", "Sub", "Mul", "Div", "BatchNormalization"}
_END = np.iinfo(np.int64).max


# -- pairing: [v_x ; v_ref] seen as [2, N, ...] -------------------------------------------------------
def pair(e: Emitter, v: str) -> str:
    """`v` [2N, ...] as [2, N, ...]."""
    rest = e.slice(e.op("Shape", [v]), [1], [_END], [0])
    return e.op("Reshape", [v, e.op("Concat", [e.ints([2, -1], name="pair"), rest], axis=0)])


def half(e: Emitter, paired: str, i: int) -> str:
    """Half i (0: the input's, 1: the reference's) of a paired value, [N, ...]."""
    return e.op("Gather", [paired, e.const(np.asarray(i, np.int64), name="half")], axis=0)


def unpair(e: Emitter, paired: str, like: str) -> str:
    return e.op("Reshape", [paired, e.op("Shape", [like])])


def join(e: Emitter, first: str, second: str, like: str) -> str:
    """[first ; second] (each [N, ...]) in the shape of `like` [2N, ...]."""
    return unpair(e, e.op("Concat", [e.unsqueeze(first, [0]), e.unsqueeze(second, [0])], axis=0), like)


def swap(e: Emitter, v: str) -> str:
    """[b ; a] for v = [a ; b]."""
    return unpair(e, e.op("Gather", [pair(e, v), e.ints([1, 0], name="swap")], axis=0), v)


def delta(e: Emitter, v: str) -> str:
    """Δv = v_x − v_ref, [N, ...]."""
    p = pair(e, v)
    return e.op("Sub", [half(e, p, 0), half(e, p, 1)])


def unpairable(where: str, value: str, shape) -> str | None:
    """Why `value` (of `shape`, at `where`) cannot be split into the input's and the reference's halves
    of axis 0, as far as shape inference tells; None when it can (or nothing says it cannot)."""
    if not shape or shape[0] == BATCH:
        return None
    if BATCH in shape:
        return (f"DeepLIFT cannot pair the input with its reference at {where}: {value!r} holds the batch on "
                f"axis {shape.index(BATCH)}, not axis 0 (a [T, N, C] layout), and DeepLIFT runs the input and its "
                f"reference as the two halves of axis 0; export the model with the batch first (batch_first=True), "
                f"or use a gradient method such as integrated_gradients.")
    if isinstance(shape[0], int):
        return (f"DeepLIFT cannot pair the input with its reference at {where}: {value!r} has a fixed leading dim "
                f"{shape[0]} where the input and its reference run as 2N samples (the file fixes the batch size, "
                f"e.g. in a Reshape to a constant shape); export the model with a dynamic batch axis.")
    return None


def check_pairable(ctx: RuleContext, value: str) -> None:
    """Refuse a value whose axis 0 is not the stacked batch."""
    why = unpairable(f"{ctx.node.op_type} node '{ctx.node.name}'", value, ctx.view.shape(value))
    if why:
        raise UnsupportedModelError(why)


def _single_input(ctx: RuleContext) -> bool:
    return bool(ctx.wants) and ctx.wants[0] and not any(ctx.wants[1:])


def _small(ctx: RuleContext, d: str, eps: float) -> str:
    return ctx.op("Less", [ctx.op("Abs", [d]), ctx.scalar(eps)])


def _ratio(ctx: RuleContext, num: str, den: str, small: str, fill: str | None = None) -> str:
    """num/den where den is not small, `fill` (0 when None) where it is."""
    safe = ctx.op("Where", [small, ctx.scalar(1.0), den])
    return ctx.op("Where", [small, fill or ctx.scalar(0.0), ctx.op("Div", [num, safe])])


# -- Rescale -------------------------------------------------------------------------------------------
def rescale_elementwise(ctx: RuleContext, g: str, eps: float = DEFAULT_EPS) -> list:
    """Both halves times Δy/Δx; the node's own gradient where |Δx| < eps."""
    if not _single_input(ctx):
        return ctx.base(g)
    check_pairable(ctx, ctx.x)
    e = ctx.emitter
    own = ctx.base(g)
    dx, dy = delta(e, ctx.x), delta(e, ctx.y)
    small = _small(ctx, dx, eps)
    m = ctx.op("Div", [dy, ctx.op("Where", [small, ctx.scalar(1.0), dx])])
    out = ctx.op("Where", [small, pair(e, own[0]), ctx.op("Mul", [pair(e, g), m])])
    return [unpair(e, out, g)] + list(own[1:])


def rescale_max(ctx: RuleContext, g: str, eps: float = DEFAULT_EPS) -> list:
    """Captum's maxpool rule, with overlapping windows' contributions added."""
    if not _single_input(ctx):
        return ctx.base(g)
    check_pairable(ctx, ctx.x)
    check_pairable(ctx, ctx.y)
    e = ctx.emitter
    py = pair(e, ctx.y)
    y_x, y_ref = half(e, py, 0), half(e, py, 1)
    top = ctx.op("Max", [y_x, y_ref])
    change = join(e, ctx.op("Sub", [top, y_ref]), ctx.op("Sub", [y_x, top]), ctx.y)
    routed = pair(e, ctx.base(ctx.op("Mul", [g, change]))[0])
    u = ctx.op("Add", [half(e, routed, 0), half(e, routed, 1)])
    dx = delta(e, ctx.x)
    small = _small(ctx, dx, eps)
    own = pair(e, ctx.base(g)[0])
    out = ctx.op("Where", [small, own, ctx.op("Div", [u, ctx.op("Where", [small, ctx.scalar(1.0), dx])])])
    return [unpair(e, out, ctx.x)] + [None] * (len(ctx.node.input) - 1)


def softmax_rule(policy: str):
    def rule(ctx: RuleContext, g: str) -> list:
        if ctx.at_output and policy == "identity":
            return [g]
        ctx.unsupported("DeepLIFT explains the scores before a softmax: a Softmax at the explained output is taken "
                        "as identity (softmax='identity'), and one inside the network has no DeepLIFT rule (Captum's "
                        "subtracts a mean over the whole batch, which mixes samples)")
    return rule


def rescale_rules(softmax: str = "identity", eps: float = DEFAULT_EPS) -> RuleSet:
    fns = {op: partial(rescale_elementwise, eps=eps) for op in ELEMENTWISE if op in DEFAULT_RULES}
    fns.update({op: partial(rescale_max, eps=eps) for op in MAX_LIKE if op in DEFAULT_RULES})
    fns.update({op: softmax_rule(softmax) for op in SOFTMAX})
    return GRADIENT.override(f"deeplift:rescale:{softmax}", **fns)


# -- RevealCancel ----------------------------------------------------------------------------------------
def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


class RevealCancel:
    """The RevealCancel rule set for one graph: the parts [Δv⁺ ; Δv⁻] of the values on the path are
    emitted on first use (upstream first, so the graph stays in order) and kept by value name."""

    def __init__(self, wrt: list[str], output: str, softmax: str = "identity", eps: float = DEFAULT_EPS):
        self.wrt, self.output, self.eps = set(wrt), output, eps
        self._wrt_list = list(wrt)
        self.softmax = softmax_rule(softmax)
        self.live: set[str] | None = None
        self.parts: dict[str, str] = {}
        self.terms: dict[str, tuple[str, str, str, str]] = {}  # nonlinearity -> (Δy⁺, Δy⁻, Δz⁺, Δz⁻)
        self.layers: dict[str, LinearLayer] = {}

    def rules(self) -> RuleSet:
        return GRADIENT.override("deeplift:reveal_cancel", **{op: self.backward for op in DEFAULT_RULES})

    # -- what a node is -----------------------------------------------------------------------------------
    def kind(self, ctx: RuleContext) -> str:
        op = ctx.node.op_type
        if op in SOFTMAX:
            return "softmax"
        if op in ELEMENTWISE and _single_input(ctx):
            return "nonlinear"
        if is_linear_layer(ctx):
            return "linear"
        if op in CARRY and not (op in ("Resize", "Upsample") and _text(ctx.attr("mode"), "nearest") == "cubic"):
            return "carry"
        if op in SIGNED and self._signed_applies(ctx):
            return "signed"
        return "other"

    @staticmethod
    def _signed_applies(ctx: RuleContext) -> bool:
        op = ctx.node.op_type
        if op in ("Neg", "Sub"):
            return True
        if op == "Div":
            return _single_input(ctx)
        if op == "Mul":
            return sum(ctx.wants) == 1
        return _single_input(ctx) and all(ctx.const(i) is not None for i in (1, 2, 3, 4))  # BatchNormalization

    def context(self, ctx: RuleContext, node: onnx.NodeProto) -> RuleContext:
        wants = [bool(x) and x in self.live for x in node.input]
        return RuleContext(node, ctx.view, ctx.emitter, [None] * len(node.output), wants)

    def layer(self, ctx: RuleContext) -> LinearLayer:
        if ctx.node.name not in self.layers:
            self.layers[ctx.node.name] = LinearLayer(ctx)
        return self.layers[ctx.node.name]

    # -- forward: the parts of a value ----------------------------------------------------------------------
    def part(self, ctx: RuleContext, value: str) -> str:
        if value in self.parts:
            return self.parts[value]
        node = ctx.view.producer.get(value)
        if value in self.wrt or node is None:
            self.parts[value] = self.split(ctx, value)
            return self.parts[value]
        nctx = self.context(ctx, node)
        saved, ctx.emitter.prefix = ctx.emitter.prefix, f"{node.name}_parts/"
        try:
            k = self.kind(nctx)
            if k == "nonlinear":
                outs = [self.nonlinear_parts(nctx)]
            elif k == "linear":
                outs = [self.linear_parts(nctx)]
            elif k == "carry":
                outs = self.carry_parts(nctx)
            elif k == "signed":
                outs = [self.signed_parts(nctx)]
            else:
                outs = [self.split(nctx, o) if o else None for o in node.output]
        finally:
            ctx.emitter.prefix = saved
        for o, p in zip(node.output, outs):
            if o:
                self.parts[o] = p
        return self.parts[value]

    def split(self, ctx: RuleContext, value: str) -> str:
        """[max(Δv, 0) ; min(Δv, 0)]."""
        check_pairable(ctx, value)
        e = ctx.emitter
        d = delta(e, value)
        return join(e, ctx.op("Relu", [d]), ctx.op("Min", [d, ctx.scalar(0.0)]), value)

    def linear_parts(self, ctx: RuleContext) -> str:
        e, lay = ctx.emitter, self.layer(ctx)
        check_pairable(ctx, lay.x)
        d = delta(e, lay.x)
        signed = join(e, ctx.op("Relu", [d]), ctx.op("Min", [d, ctx.scalar(0.0)]), lay.x)
        a = pair(e, lay.forward(signed, lay.modified("w", "positive", positive()), None))
        b = pair(e, lay.forward(signed, lay.modified("w", "negative", negative()), None))
        pos = ctx.op("Add", [half(e, a, 0), half(e, b, 1)])
        neg = ctx.op("Add", [half(e, b, 0), half(e, a, 1)])
        return join(e, pos, neg, ctx.y)

    def nonlinear_parts(self, ctx: RuleContext) -> str:
        e, z = ctx.emitter, ctx.x
        check_pairable(ctx, z)
        parts = pair(e, self.part(ctx, z))
        dz_pos, dz_neg = half(e, parts, 0), half(e, parts, 1)
        z_ref = half(e, pair(e, z), 1)
        py = pair(e, ctx.y)
        y_x, y_ref = half(e, py, 0), half(e, py, 1)

        def f(a: str) -> str:
            return ctx.op(ctx.node.op_type, [a] + list(ctx.node.input[1:]), **_attrs(ctx.node))

        f_pos, f_neg = f(ctx.op("Add", [z_ref, dz_pos])), f(ctx.op("Add", [z_ref, dz_neg]))
        half_ = ctx.scalar(0.5)
        dy_pos = ctx.op("Mul", [ctx.op("Add", [ctx.op("Sub", [f_pos, y_ref]), ctx.op("Sub", [y_x, f_neg])]), half_])
        dy_neg = ctx.op("Mul", [ctx.op("Add", [ctx.op("Sub", [f_neg, y_ref]), ctx.op("Sub", [y_x, f_pos])]), half_])
        self.terms[ctx.node.name] = (dy_pos, dy_neg, dz_pos, dz_neg)
        return join(e, dy_pos, dy_neg, ctx.y)

    def carry_parts(self, ctx: RuleContext) -> list[str]:
        node, ins = ctx.node, list(ctx.node.input)
        for i, x in enumerate(ins):
            if not x:
                continue
            if ctx.wants[i]:
                ins[i] = self.part(ctx, x)
            elif node.op_type in ADDITIVE and ctx.view.is_float(x):
                ins[i] = ctx.zeros_like(x)
        if node.op_type == "Pad" and len(ins) > 2:
            ins[2] = ""  # pad the parts with zeros
        outs = ctx.op(node.op_type, ins, n_out=len(node.output), **_attrs(node))
        return outs if isinstance(outs, list) else [outs]

    def signed_parts(self, ctx: RuleContext) -> str:
        e, op = ctx.emitter, ctx.node.op_type
        if op == "Neg":
            return ctx.op("Neg", [swap(e, self.part(ctx, ctx.x))])
        if op == "Sub":
            terms = []
            if ctx.wants[0]:
                terms.append(self.part(ctx, ctx.input(0)))
            if ctx.wants[1]:
                terms.append(ctx.op("Neg", [swap(e, self.part(ctx, ctx.input(1)))]))
            return terms[0] if len(terms) == 1 else ctx.op("Add", terms)
        if op == "BatchNormalization":
            pos, neg = self._bn_scales(ctx)
            s = self.part(ctx, ctx.x)
            return ctx.op("Add", [ctx.op("Mul", [s, pos]), ctx.op("Mul", [swap(e, s), neg])])
        i = 0 if ctx.wants[0] else 1  # Mul or Div by c, a value off the path
        ins = list(ctx.node.input)
        ins[i] = self.part(ctx, ins[i])
        scaled = ctx.op(op, ins)
        return ctx.op("Where", [ctx.op("Less", [ctx.input(1 - i), ctx.scalar(0.0)]), swap(e, scaled), scaled])

    def _bn_scales(self, ctx: RuleContext) -> tuple[str, str]:
        scale, var = ctx.const(1), ctx.const(4)
        s = (scale / np.sqrt(var + ctx.attr("epsilon", 1e-5))).astype(ctx.dtype)
        s = s.reshape((1, -1) + (1,) * (ctx.rank(ctx.x) - 2))
        return ctx.emitter.const(np.maximum(s, 0), name="scale_pos"), ctx.emitter.const(np.minimum(s, 0), name="scale_neg")

    # -- backward: the multipliers of the parts --------------------------------------------------------------
    def backward(self, ctx: RuleContext, g: str) -> list:
        if self.live is None:
            self.live = live_path(ctx.view, GRADIENT, self._wrt_list, self.output)[1]
        k = self.kind(ctx)
        if k == "softmax":
            return self.softmax(ctx, g)
        if k == "nonlinear":
            return self.nonlinear_backward(ctx, g)
        if k == "linear":
            return self.linear_backward(ctx, g)
        if k == "carry":
            return ctx.base(g)
        if k == "signed":
            return self.signed_backward(ctx, g)
        return self.other_backward(ctx, g)

    def nonlinear_backward(self, ctx: RuleContext, g: str) -> list:
        e = ctx.emitter
        self.part(ctx, ctx.y)
        dy_pos, dy_neg, dz_pos, dz_neg = self.terms[ctx.node.name]
        m_pos = _ratio(ctx, dy_pos, dz_pos, _small(ctx, dz_pos, self.eps))
        m_neg = _ratio(ctx, dy_neg, dz_neg, _small(ctx, dz_neg, self.eps))
        out = ctx.op("Mul", [g, join(e, m_pos, m_neg, g)])
        return [out] + [None] * (len(ctx.node.input) - 1)

    def linear_backward(self, ctx: RuleContext, g: str) -> list:
        e, lay = ctx.emitter, self.layer(ctx)
        a = pair(e, lay.backward(g, lay.modified("w", "positive", positive())))
        b = pair(e, lay.backward(g, lay.modified("w", "negative", negative())))
        pos = ctx.op("Add", [half(e, a, 0), half(e, b, 1)])
        neg = ctx.op("Add", [half(e, b, 0), half(e, a, 1)])
        d = delta(e, lay.x)
        mean = ctx.op("Mul", [ctx.op("Add", [pos, neg]), ctx.scalar(0.5)])
        m = ctx.op("Where", [ctx.op("Greater", [d, ctx.scalar(0.0)]), pos,
                             ctx.op("Where", [ctx.op("Less", [d, ctx.scalar(0.0)]), neg, mean])])
        return lay.relevance(join(e, m, m, lay.x))

    def signed_backward(self, ctx: RuleContext, g: str) -> list:
        e, op = ctx.emitter, ctx.node.op_type
        if op == "BatchNormalization":
            pos, neg = self._bn_scales(ctx)
            gx = ctx.op("Add", [ctx.op("Mul", [g, pos]), ctx.op("Mul", [swap(e, g), neg])])
            return [gx] + [None] * (len(ctx.node.input) - 1)
        out = list(ctx.base(g))
        if op == "Neg":
            return [swap(e, out[0])]
        if op == "Sub":
            if ctx.wants[1]:
                out[1] = swap(e, out[1])
            return out
        i = 0 if ctx.wants[0] else 1
        out[i] = ctx.op("Where", [ctx.op("Less", [ctx.input(1 - i), ctx.scalar(0.0)]), swap(e, out[i]), out[i]])
        return out

    def other_backward(self, ctx: RuleContext, g: str) -> list:
        """Split by the sign of Δy; the Rescale rule (Captum's maxpool rule, else the gradient) on the
        multiplier of the part Δy falls in; both parts of the inputs get the input half's result."""
        e = ctx.emitter
        check_pairable(ctx, ctx.y)
        pg = pair(e, g)
        m_pos, m_neg = half(e, pg, 0), half(e, pg, 1)
        d = delta(e, ctx.y)
        mean = ctx.op("Mul", [ctx.op("Add", [m_pos, m_neg]), ctx.scalar(0.5)])
        m = ctx.op("Where", [ctx.op("Greater", [d, ctx.scalar(0.0)]), m_pos,
                             ctx.op("Where", [ctx.op("Less", [d, ctx.scalar(0.0)]), m_neg, mean])])
        both = join(e, m, m, g)
        if ctx.node.op_type in MAX_LIKE:
            result = rescale_max(ctx, both, self.eps)
        else:
            result = ctx.base(both)
        out = []
        for r in result:
            if r is None:
                out.append(None)
                continue
            first = half(e, pair(e, r), 0)
            out.append(join(e, first, first, r))
        return out


def _text(value, default: str) -> str:
    if value is None:
        return default
    return value.decode() if isinstance(value, bytes) else str(value)


def deeplift_rules(rule: str, wrt: list[str], output: str, softmax: str = "identity", eps: float = DEFAULT_EPS) -> RuleSet:
    """The rule set of a DeepLIFT rule for one graph (RevealCancel keeps per-graph state)."""
    if rule == "rescale":
        return rescale_rules(softmax, eps)
    if rule == "reveal_cancel":
        return RevealCancel(wrt, output, softmax, eps).rules()
    raise ValueError(f"unknown DeepLIFT rule {rule!r}; expected one of {RULES}")
