"""Elementwise arithmetic and smooth unary functions. Broadcasting is undone by the driver."""

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
