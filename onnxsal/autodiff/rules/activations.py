"""Activations: rectifiers (Relu, Clip), leaky and parametric ReLU, hard sigmoid/swish, softmax,
and the smooth or thresholded ones real graphs carry (Elu, Selu, Celu, Gelu, Mish, Softplus,
Softsign, Swish, ThresholdedRelu, Shrink).

Kinks follow PyTorch and TensorFlow: Relu'(0) = 0 and Clip passes the gradient only strictly
inside (min, max). The exponential units take the left branch at 0 (Elu'(0) = alpha, as
torch.nn.ELU's backward), ThresholdedRelu and Shrink pass nothing at their thresholds.
"""

from __future__ import annotations

import math

import numpy as np
import onnx

from ..graph import GraphView
from ..registry import RuleContext, rule


def clip_bounds(ctx: RuleContext) -> tuple[str | None, str | None]:
    """Clip's min and max as value names (None when absent), from inputs or opset<11 attributes."""
    if ctx.opset >= 11:
        return (ctx.input(1) or None, ctx.input(2) or None)
    lo, hi = ctx.attr("min"), ctx.attr("max")
    return (None if lo is None else ctx.scalar(lo), None if hi is None else ctx.scalar(hi))


def is_rectifier_node(view: GraphView, node: onnx.NodeProto) -> bool:
    """Relu, and Clip with a minimum of exactly 0 (ReLU6 and friends)."""
    if node.op_type == "Relu":
        return True
    if node.op_type != "Clip":
        return False
    if view.opset >= 11:
        lo = view.const(node.input[1]) if len(node.input) > 1 else None
    else:
        lo = next((a.f for a in node.attribute if a.name == "min"), None)
    return lo is not None and np.size(lo) == 1 and float(np.ravel(lo)[0]) == 0.0


def is_rectifier(ctx: RuleContext) -> bool:
    return is_rectifier_node(ctx.view, ctx.node)


# The masks of Relu and Clip are read off the output: y > 0 exactly where x > 0, and lo < y < hi
# exactly where lo < x < hi. Not reading x lets ONNX Runtime keep Conv+Relu/Clip fused.
@rule("Relu")
def relu(ctx: RuleContext, g):
    return [ctx.op("Mul", [g, ctx.op("Cast", [ctx.op("Greater", [ctx.y, ctx.scalar(0.0)])], to=ctx.view.elem_type(ctx.y))])]


@rule("Clip")
def clip(ctx: RuleContext, g):
    lo, hi = clip_bounds(ctx)
    x = ctx.y
    masks = []
    if lo is not None:
        masks.append(ctx.op("Greater", [x, lo]))
    if hi is not None:
        masks.append(ctx.op("Less", [x, hi]))
    if not masks:
        return [g, None, None]
    mask = masks[0] if len(masks) == 1 else ctx.op("And", masks)
    return [ctx.op("Mul", [g, ctx.op("Cast", [mask], to=ctx.view.elem_type(ctx.y))]), None, None]


@rule("LeakyRelu")
def leaky_relu(ctx: RuleContext, g):
    alpha = ctx.attr("alpha", 0.01)
    return [ctx.op("Where", [ctx.op("Greater", [ctx.x, ctx.scalar(0.0)]), g, ctx.op("Mul", [g, ctx.scalar(alpha)])])]


@rule("PRelu", broadcasting=True)
def prelu(ctx: RuleContext, g):
    x, slope = ctx.node.input
    positive = ctx.op("Greater", [x, ctx.scalar(0.0)])
    gx = ctx.op("Where", [positive, g, ctx.op("Mul", [g, slope])]) if ctx.wants[0] else None
    gs = ctx.op("Where", [positive, ctx.scalar(0.0), ctx.op("Mul", [g, x])]) if ctx.wants[1] else None
    return [gx, gs]


@rule("HardSigmoid")
def hard_sigmoid(ctx: RuleContext, g):
    alpha, beta = ctx.attr("alpha", 0.2), ctx.attr("beta", 0.5)
    z = ctx.op("Add", [ctx.op("Mul", [ctx.x, ctx.scalar(alpha)]), ctx.scalar(beta)])
    inside = ctx.op("And", [ctx.op("Greater", [z, ctx.scalar(0.0)]), ctx.op("Less", [z, ctx.scalar(1.0)])])
    return [ctx.op("Where", [inside, ctx.op("Mul", [g, ctx.scalar(alpha)]), ctx.scalar(0.0)])]


@rule("HardSwish")
def hard_swish(ctx: RuleContext, g):
    # PyTorch's convention: 0 below -3, x/3 + 1/2 on [-3, 3], 1 above.
    x = ctx.x
    ramp = ctx.op("Add", [ctx.op("Div", [x, ctx.scalar(3.0)]), ctx.scalar(0.5)])
    slope = ctx.op("Where", [ctx.op("Less", [x, ctx.scalar(-3.0)]), ctx.scalar(0.0),
                             ctx.op("Where", [ctx.op("Greater", [x, ctx.scalar(3.0)]), ctx.scalar(1.0), ramp])])
    return [ctx.op("Mul", [g, slope])]


def softmax_axes(ctx: RuleContext) -> list[int]:
    """Axes the (Log)Softmax normalises over: one axis from opset 13, all from `axis` on before."""
    rank = ctx.rank(ctx.x)
    if ctx.opset >= 13:
        return [ctx.attr("axis", -1) % rank]
    return list(range(ctx.attr("axis", 1) % rank, rank))


@rule("Softmax")
def softmax(ctx: RuleContext, g):
    y = ctx.y
    gy = ctx.op("Mul", [g, y])
    total = ctx.emitter.reduce("ReduceSum", gy, softmax_axes(ctx), keepdims=1)
    return [ctx.op("Sub", [gy, ctx.op("Mul", [y, total])])]


@rule("LogSoftmax")
def log_softmax(ctx: RuleContext, g):
    total = ctx.emitter.reduce("ReduceSum", g, softmax_axes(ctx), keepdims=1)
    return [ctx.op("Sub", [g, ctx.op("Mul", [ctx.op("Exp", [ctx.y]), total])])]


# -- exponential linear units: slope 1 (Selu: gamma) for x > 0, the exponential branch's slope at or below 0.
def _exponential_unit(ctx: RuleContext, g, positive_slope: float, negative_slope: str):
    """g times `positive_slope` where x > 0 and times `negative_slope` (a value name) elsewhere."""
    above = ctx.op("Greater", [ctx.x, ctx.scalar(0.0)])
    return [ctx.op("Mul", [g, ctx.op("Where", [above, ctx.scalar(positive_slope), negative_slope])])]


@rule("Elu")
def elu(ctx: RuleContext, g):
    # y = alpha (e^x - 1) below 0, so y' = alpha e^x = y + alpha there.
    return _exponential_unit(ctx, g, 1.0, ctx.op("Add", [ctx.y, ctx.scalar(ctx.attr("alpha", 1.0))]))


SELU_ALPHA = 1.67326319217681884765625  # the schema's defaults (exact float32 values)
SELU_GAMMA = 1.05070102214813232421875


@rule("Selu")
def selu(ctx: RuleContext, g):
    # y = gamma alpha (e^x - 1) below 0, so y' = y + gamma alpha there.
    alpha, gamma = ctx.attr("alpha", SELU_ALPHA), ctx.attr("gamma", SELU_GAMMA)
    return _exponential_unit(ctx, g, gamma, ctx.op("Add", [ctx.y, ctx.scalar(gamma * alpha)]))


@rule("Celu")
def celu(ctx: RuleContext, g):
    # y = alpha (e^(x/alpha) - 1) below 0: y' = e^(x/alpha); the Exp of the other branch is not selected.
    alpha = ctx.attr("alpha", 1.0)
    return _exponential_unit(ctx, g, 1.0, ctx.op("Exp", [ctx.op("Div", [ctx.x, ctx.scalar(alpha)])]))


# -- smooth gates ------------------------------------------------------------------------------------------
def _text(value, default: str) -> str:
    if value is None:
        return default
    return value.decode() if isinstance(value, bytes) else str(value)


@rule("Gelu")
def gelu(ctx: RuleContext, g):
    """y = x Phi(x) (exact) or 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3) ("tanh")."""
    x = ctx.x
    half_x = ctx.op("Mul", [x, ctx.scalar(0.5)])
    if _text(ctx.attr("approximate"), "none") == "tanh":
        c = math.sqrt(2.0 / math.pi)
        x2 = ctx.op("Mul", [x, x])
        u = ctx.op("Mul", [ctx.op("Mul", [x, ctx.op("Add", [ctx.op("Mul", [x2, ctx.scalar(0.044715)]), ctx.scalar(1.0)])]),
                           ctx.scalar(c)])
        t = ctx.op("Tanh", [u])
        du = ctx.op("Add", [ctx.op("Mul", [x2, ctx.scalar(3.0 * 0.044715 * c)]), ctx.scalar(c)])
        sech2 = ctx.op("Sub", [ctx.scalar(1.0), ctx.op("Mul", [t, t])])
        cdf = ctx.op("Mul", [ctx.op("Add", [t, ctx.scalar(1.0)]), ctx.scalar(0.5)])
        slope = ctx.op("Add", [cdf, ctx.op("Mul", [half_x, ctx.op("Mul", [sech2, du])])])
    else:  # Phi(x) + x phi(x)
        erf = ctx.op("Erf", [ctx.op("Mul", [x, ctx.scalar(1.0 / math.sqrt(2.0))])])
        cdf = ctx.op("Mul", [ctx.op("Add", [erf, ctx.scalar(1.0)]), ctx.scalar(0.5)])
        pdf = ctx.op("Mul", [ctx.op("Exp", [ctx.op("Neg", [ctx.op("Mul", [half_x, x])])]),
                             ctx.scalar(1.0 / math.sqrt(2.0 * math.pi))])
        slope = ctx.op("Add", [cdf, ctx.op("Mul", [x, pdf])])
    return [ctx.op("Mul", [g, slope])]


@rule("Mish")
def mish(ctx: RuleContext, g):
    """y = x tanh(softplus(x)): y' = t + x sigmoid(x) (1 - t^2) with t = tanh(softplus(x))."""
    x = ctx.x
    t = ctx.op("Tanh", [ctx.op("Softplus", [x])])
    sech2 = ctx.op("Sub", [ctx.scalar(1.0), ctx.op("Mul", [t, t])])
    slope = ctx.op("Add", [t, ctx.op("Mul", [ctx.op("Mul", [x, ctx.op("Sigmoid", [x])]), sech2])])
    return [ctx.op("Mul", [g, slope])]


@rule("Softplus")
def softplus(ctx: RuleContext, g):
    return [ctx.op("Mul", [g, ctx.op("Sigmoid", [ctx.x])])]


@rule("Softsign")
def softsign(ctx: RuleContext, g):
    """y = x / (1 + |x|): y' = 1 / (1 + |x|)^2."""
    denom = ctx.op("Add", [ctx.op("Abs", [ctx.x]), ctx.scalar(1.0)])
    return [ctx.op("Div", [g, ctx.op("Mul", [denom, denom])])]


@rule("Swish")
def swish(ctx: RuleContext, g):
    """y = x sigmoid(alpha x): y' = s + alpha x s (1 - s) with s = sigmoid(alpha x)."""
    alpha = ctx.attr("alpha", 1.0)
    ax = ctx.op("Mul", [ctx.x, ctx.scalar(alpha)])
    s = ctx.op("Sigmoid", [ax])
    slope = ctx.op("Add", [s, ctx.op("Mul", [ax, ctx.op("Mul", [s, ctx.op("Sub", [ctx.scalar(1.0), s])])])])
    return [ctx.op("Mul", [g, slope])]


# -- thresholds ----------------------------------------------------------------------------------------------
@rule("ThresholdedRelu")
def thresholded_relu(ctx: RuleContext, g):
    """y = x where x > alpha, else 0: the gradient passes strictly above the threshold."""
    above = ctx.op("Greater", [ctx.x, ctx.scalar(ctx.attr("alpha", 1.0))])
    return [ctx.op("Where", [above, g, ctx.scalar(0.0)])]


@rule("Shrink")
def shrink(ctx: RuleContext, g):
    """y = x -/+ bias outside [-lambd, lambd], 0 inside: the gradient passes strictly outside."""
    lambd = ctx.attr("lambd", 0.5)
    outside = ctx.op("Or", [ctx.op("Greater", [ctx.x, ctx.scalar(lambd)]), ctx.op("Less", [ctx.x, ctx.scalar(-lambd)])])
    return [ctx.op("Where", [outside, g, ctx.scalar(0.0)])]
