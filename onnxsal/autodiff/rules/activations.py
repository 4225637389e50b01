"""Activations: rectifiers (Relu, Clip), leaky and parametric ReLU, hard sigmoid/swish, softmax.

Kinks follow PyTorch and TensorFlow: Relu'(0) = 0 and Clip passes the gradient only strictly
inside (min, max).
"""

from __future__ import annotations

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
