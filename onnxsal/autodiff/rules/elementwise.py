"""Elementwise arithmetic, smooth unary functions, trigonometric and hyperbolic functions, the
variadic Min/Max/Mean, and the piecewise-constant Floor/Ceil/Round/Sign. Broadcasting is undone
by the driver.

Min and Max send the gradient to the input that attains the extremum. On ties the gradient is
split evenly among the inputs that attain it (torch.maximum/torch.minimum give each of two tied
inputs half; with n inputs tied, each gets 1/n), so the parts always add up to the incoming
gradient. Floor, Ceil, Round and Sign have zero gradient almost everywhere, as in PyTorch and
TensorFlow: their rules give zeros of the input's run-time shape.
"""

from __future__ import annotations

import math

import numpy as np

from ..registry import RuleContext, rule


@rule("Add", "Sum", broadcasting=True)
def add(ctx: RuleContext, g):
    return [g] * len(ctx.node.input)


@rule("Sub", broadcasting=True)
def sub(ctx: RuleContext, g):
    return [g, ctx.op("Neg", [g]) if ctx.wants[1] else None]


@rule("Mul", broadcasting=True)
def mul(ctx: RuleContext, g):
    a, b = ctx.node.input
    return [
        ctx.op("Mul", [g, b]) if ctx.wants[0] else None,
        ctx.op("Mul", [g, a]) if ctx.wants[1] else None,
    ]


@rule("Div", broadcasting=True)
def div(ctx: RuleContext, g):
    a, b = ctx.node.input
    ga = ctx.op("Div", [g, b]) if ctx.wants[0] else None
    gb = None
    if ctx.wants[1]:  # d(a/b)/db = -y/b
        gb = ctx.op("Neg", [ctx.op("Div", [ctx.op("Mul", [g, ctx.y]), b])])
    return [ga, gb]


@rule("Neg")
def neg(ctx: RuleContext, g):
    return [ctx.op("Neg", [g])]


@rule("Identity", "Dropout")
def identity(ctx: RuleContext, g):
    if ctx.node.op_type == "Dropout" and _dropout_trains(ctx):
        ctx.unsupported("training-mode dropout is random; export the model in inference mode")
    return [g] + [None] * (len(ctx.node.input) - 1)


def _dropout_trains(ctx: RuleContext) -> bool:
    """Whether a Dropout may drop: `is_test` 0 before opset 7, a true (or run-time) `training_mode` from 12."""
    if ctx.opset < 7:
        return not ctx.attr("is_test", 0)
    if ctx.opset < 12 or not ctx.input(2):
        return False
    mode = ctx.const(2)
    return mode is None or bool(np.ravel(mode)[0])


@rule("Cast")
def cast(ctx: RuleContext, g):
    return [ctx.op("Cast", [g], to=ctx.view.elem_type(ctx.x))]


@rule("Exp")
def exp(ctx: RuleContext, g):
    return [ctx.op("Mul", [g, ctx.y])]


@rule("Log")
def log(ctx: RuleContext, g):
    return [ctx.op("Div", [g, ctx.x])]


@rule("Sqrt")
def sqrt(ctx: RuleContext, g):
    return [ctx.op("Div", [ctx.op("Mul", [g, ctx.scalar(0.5)]), ctx.y])]


@rule("Reciprocal")
def reciprocal(ctx: RuleContext, g):
    return [ctx.op("Neg", [ctx.op("Mul", [g, ctx.op("Mul", [ctx.y, ctx.y])])])]


@rule("Abs")
def abs_(ctx: RuleContext, g):
    return [ctx.op("Mul", [g, ctx.op("Sign", [ctx.x])])]


@rule("Erf")
def erf(ctx: RuleContext, g):
    x = ctx.x
    gauss = ctx.op("Exp", [ctx.op("Neg", [ctx.op("Mul", [x, x])])])
    return [ctx.op("Mul", [g, ctx.op("Mul", [gauss, ctx.scalar(2.0 / math.sqrt(math.pi))])])]


@rule("Pow", broadcasting=True)
def pow_(ctx: RuleContext, g):
    a, b = ctx.node.input
    ga = gb = None
    if ctx.wants[0]:  # b * a^(b-1), written as b * y / a would fail at a == 0
        bf = ctx.op("Cast", [b], to=ctx.view.elem_type(a))  # the exponent may be an integer tensor
        bm1 = ctx.op("Sub", [bf, ctx.scalar(1.0)])
        ga = ctx.op("Mul", [g, ctx.op("Mul", [bf, ctx.op("Pow", [a, bm1])])])
    if ctx.wants[1]:
        gb = ctx.op("Mul", [g, ctx.op("Mul", [ctx.y, ctx.op("Log", [a])])])
    return [ga, gb]


@rule("Sigmoid")
def sigmoid(ctx: RuleContext, g):
    y = ctx.y
    return [ctx.op("Mul", [g, ctx.op("Mul", [y, ctx.op("Sub", [ctx.scalar(1.0), y])])])]


@rule("Tanh")
def tanh(ctx: RuleContext, g):
    y = ctx.y
    return [ctx.op("Mul", [g, ctx.op("Sub", [ctx.scalar(1.0), ctx.op("Mul", [y, y])])])]


@rule("Where", broadcasting=True)
def where(ctx: RuleContext, g):
    cond = ctx.input(0)
    zero = ctx.scalar(0.0)
    return [
        None,
        ctx.op("Where", [cond, g, zero]) if ctx.wants[1] else None,
        ctx.op("Where", [cond, zero, g]) if ctx.wants[2] else None,
    ]


# -- variadic Min, Max, Mean -----------------------------------------------------------------------------
@rule("Max", "Min", broadcasting=True)
def extremum(ctx: RuleContext, g):
    """g, split evenly among the inputs equal to the output (x_i attains the max iff not x_i < y)."""
    inputs = list(ctx.node.input)
    if len(inputs) == 1:
        return [g]
    beaten = "Less" if ctx.node.op_type == "Max" else "Greater"
    et = ctx.view.elem_type(ctx.y)
    attains = [ctx.op("Cast", [ctx.op("Not", [ctx.op(beaten, [x, ctx.y])])], to=et) for x in inputs]
    share = ctx.op("Div", [g, ctx.op("Sum", attains)])  # the count is >= 1 everywhere
    return [ctx.op("Mul", [share, mask]) if want else None for mask, want in zip(attains, ctx.wants)]


@rule("Mean", broadcasting=True)
def mean(ctx: RuleContext, g):
    n = len(ctx.node.input)
    share = g if n == 1 else ctx.op("Mul", [g, ctx.scalar(1.0 / n)])
    return [share] * n


# -- trigonometric and hyperbolic functions, on their domains -------------------------------------------------
def _times(ctx: RuleContext, g, slope: str) -> list:
    return [ctx.op("Mul", [g, slope])]


def _over_sqrt(ctx: RuleContext, g, radicand: str, sign: float = 1.0) -> list:
    """sign * g / sqrt(radicand): the derivatives of Asin, Acos, Asinh, Acosh."""
    gs = g if sign > 0 else ctx.op("Neg", [g])
    return [ctx.op("Div", [gs, ctx.op("Sqrt", [radicand])])]


def _one_minus_x2(ctx: RuleContext) -> str:
    return ctx.op("Sub", [ctx.scalar(1.0), ctx.op("Mul", [ctx.x, ctx.x])])


def _x2_plus(ctx: RuleContext, c: float) -> str:
    return ctx.op("Add", [ctx.op("Mul", [ctx.x, ctx.x]), ctx.scalar(c)])


@rule("Sin")
def sin(ctx: RuleContext, g):
    return _times(ctx, g, ctx.op("Cos", [ctx.x]))


@rule("Cos")
def cos(ctx: RuleContext, g):
    return _times(ctx, g, ctx.op("Neg", [ctx.op("Sin", [ctx.x])]))


@rule("Tan")
def tan(ctx: RuleContext, g):
    return _times(ctx, g, ctx.op("Add", [ctx.op("Mul", [ctx.y, ctx.y]), ctx.scalar(1.0)]))


@rule("Asin")
def asin(ctx: RuleContext, g):
    return _over_sqrt(ctx, g, _one_minus_x2(ctx))


@rule("Acos")
def acos(ctx: RuleContext, g):
    return _over_sqrt(ctx, g, _one_minus_x2(ctx), sign=-1.0)


@rule("Atan")
def atan(ctx: RuleContext, g):
    return [ctx.op("Div", [g, _x2_plus(ctx, 1.0)])]


@rule("Sinh")
def sinh(ctx: RuleContext, g):
    return _times(ctx, g, ctx.op("Cosh", [ctx.x]))


@rule("Cosh")
def cosh(ctx: RuleContext, g):
    return _times(ctx, g, ctx.op("Sinh", [ctx.x]))


@rule("Asinh")
def asinh(ctx: RuleContext, g):
    return _over_sqrt(ctx, g, _x2_plus(ctx, 1.0))


@rule("Acosh")
def acosh(ctx: RuleContext, g):
    return _over_sqrt(ctx, g, _x2_plus(ctx, -1.0))


@rule("Atanh")
def atanh(ctx: RuleContext, g):
    return [ctx.op("Div", [g, _one_minus_x2(ctx)])]


# -- piecewise constant ------------------------------------------------------------------------------------
@rule("Floor", "Ceil", "Round", "Sign")
def piecewise_constant(ctx: RuleContext, g):
    """Zero almost everywhere (the jumps have no derivative): zeros of x's run-time shape."""
    return [ctx.zeros_like(ctx.x)]
