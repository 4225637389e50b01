"""Normalisation layers in inference form: BatchNormalization and LayerNormalization."""

from __future__ import annotations

import numpy as np

from ..registry import RuleContext, rule


@rule("BatchNormalization")
def batch_norm(ctx: RuleContext, g):
    if ctx.attr("training_mode", 0) or len([o for o in ctx.node.output if o]) > 1:
        ctx.unsupported("training-mode batch normalisation; export the model in eval/inference mode")
    if any(ctx.wants[1:]):
        ctx.unsupported("gradients with respect to normalisation parameters are not built by onnxsal")
    rank = ctx.rank(ctx.x)
    eps = ctx.attr("epsilon", 1e-5)
    scale, var = ctx.const(1), ctx.const(4)
    e = ctx.emitter
    trailing = list(range(1, rank - 1))
    if scale is not None and var is not None:  # fold the per-channel factor at build time
        factor = (scale.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)).astype(ctx.dtype)
        factor = e.const(factor.reshape((-1,) + (1,) * (rank - 2)), name="bn_factor")
    else:
        root = ctx.op("Sqrt", [ctx.op("Add", [ctx.input(4), ctx.scalar(eps)])])
        factor = e.unsqueeze(ctx.op("Div", [ctx.input(1), root]), trailing)
    return [ctx.op("Mul", [g, factor]), None, None, None, None]


@rule("LayerNormalization")
def layer_norm(ctx: RuleContext, g):
    if any(ctx.wants[1:]):
        ctx.unsupported("gradients with respect to normalisation parameters are not built by onnxsal")
    x = ctx.x
    rank = ctx.rank(x)
    axes = list(range(ctx.attr("axis", -1) % rank, rank))
    eps = ctx.attr("epsilon", 1e-5)
    e = ctx.emitter

    def mean(v):
        return e.reduce("ReduceMean", v, axes, keepdims=1)

    centred = ctx.op("Sub", [x, mean(x)])
    inv_std = ctx.op("Reciprocal", [ctx.op("Sqrt", [ctx.op("Add", [mean(ctx.op("Mul", [centred, centred])), ctx.scalar(eps)])])])
    xhat = ctx.op("Mul", [centred, inv_std])
    gs = ctx.op("Mul", [g, ctx.input(1)])
    inner = ctx.op("Sub", [ctx.op("Sub", [gs, mean(gs)]), ctx.op("Mul", [xhat, mean(ctx.op("Mul", [gs, xhat]))])])
    return [ctx.op("Mul", [inv_std, inner]), None, None]
