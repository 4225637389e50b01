"""Normalisation layers in inference form: BatchNormalization, LayerNormalization,
InstanceNormalization, GroupNormalization, MeanVarianceNormalization, LpNormalization and LRN.

Only the data input gets a gradient; the scale/bias parameters (weights, constant in inference)
are refused if they lie on the path. The statistics (mean, variance, norm, the LRN window sum)
depend on the data, so the data gradient carries their terms too: it is the true one.
"""

from __future__ import annotations

import numpy as np

from ..registry import RuleContext, rule


def _refuse_parameter_grads(ctx: RuleContext) -> None:
    if any(ctx.wants[1:]):
        ctx.unsupported("gradients with respect to normalisation parameters are not built by onnxsal; "
                        "keep the scale and bias constant (initializers)")


@rule("BatchNormalization")
def batch_norm(ctx: RuleContext, g):
    if ctx.attr("training_mode", 0) or len([o for o in ctx.node.output if o]) > 1:
        ctx.unsupported("training-mode batch normalisation; export the model in eval/inference mode")
    _refuse_parameter_grads(ctx)
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


def standardised_grad(ctx: RuleContext, x: str, gs: str, axes: list[int], eps: float) -> str:
    """Gradient wrt x of xhat = (x - mean) / sqrt(var + eps) (statistics over `axes`), given the
    gradient gs of xhat: inv_std * (gs - mean(gs) - xhat * mean(gs * xhat))."""
    e = ctx.emitter

    def mean(v):
        return e.reduce("ReduceMean", v, axes, keepdims=1)

    centred = ctx.op("Sub", [x, mean(x)])
    variance = mean(ctx.op("Mul", [centred, centred]))
    inv_std = ctx.op("Reciprocal", [ctx.op("Sqrt", [ctx.op("Add", [variance, ctx.scalar(eps)])])])
    xhat = ctx.op("Mul", [centred, inv_std])
    inner = ctx.op("Sub", [ctx.op("Sub", [gs, mean(gs)]), ctx.op("Mul", [xhat, mean(ctx.op("Mul", [gs, xhat]))])])
    return ctx.op("Mul", [inv_std, inner])


@rule("LayerNormalization")
def layer_norm(ctx: RuleContext, g):
    _refuse_parameter_grads(ctx)
    rank = ctx.rank(ctx.x)
    axes = list(range(ctx.attr("axis", -1) % rank, rank))
    gs = ctx.op("Mul", [g, ctx.input(1)])
    return [standardised_grad(ctx, ctx.x, gs, axes, ctx.attr("epsilon", 1e-5)), None, None]


def _per_channel(ctx: RuleContext, param: str, rank: int) -> str:
    """A (C,) parameter shaped (C, 1, ..., 1) to broadcast against (N, C, D1, ...)."""
    return ctx.emitter.unsqueeze(param, list(range(1, rank - 1)))


@rule("InstanceNormalization")
def instance_norm(ctx: RuleContext, g):
    """Statistics per sample and channel, over the spatial axes; scale per channel."""
    _refuse_parameter_grads(ctx)
    rank = ctx.rank(ctx.x)
    gs = ctx.op("Mul", [g, _per_channel(ctx, ctx.input(1), rank)])
    return [standardised_grad(ctx, ctx.x, gs, list(range(2, rank)), ctx.attr("epsilon", 1e-5)), None, None]


@rule("GroupNormalization")
def group_norm(ctx: RuleContext, g):
    """Statistics per sample and group of channels, on x viewed as (N, groups, -1). The scale is
    per group in opset 18 (shape (groups,)) and per channel from opset 21 (shape (C,))."""
    _refuse_parameter_grads(ctx)
    groups = ctx.attr("num_groups")
    e = ctx.emitter
    grouped = e.ints([0, groups, -1], name="grouped_shape")
    if ctx.opset >= 21:
        gs = ctx.op("Reshape", [ctx.op("Mul", [g, _per_channel(ctx, ctx.input(1), ctx.rank(ctx.x))]), grouped])
    else:
        gs = ctx.op("Mul", [ctx.op("Reshape", [g, grouped]), e.unsqueeze(ctx.input(1), [1])])
    xg = ctx.op("Reshape", [ctx.x, grouped])
    xg_grad = standardised_grad(ctx, xg, gs, [2], ctx.attr("epsilon", 1e-5))
    return [e.reshape_like(xg_grad, ctx.x), None, None]


MVN_EPSILON = 1e-9  # what the ONNX function body of MeanVarianceNormalization adds to the std


@rule("MeanVarianceNormalization")
def mean_variance_norm(ctx: RuleContext, g):
    """y = c / (s + eps) with c = x - mean(x), s = sqrt(mean(c^2)) over `axes` (default N, H, W):
    x_grad = (g - mean(g)) / (s + eps) - c * mean(g * c) / ((s + eps)^2 * s)."""
    rank = ctx.rank(ctx.x)
    axes = sorted(a % rank for a in (ctx.attr("axes") or [0, 2, 3]))
    e = ctx.emitter

    def mean(v):
        return e.reduce("ReduceMean", v, axes, keepdims=1)

    centred = ctx.op("Sub", [ctx.x, mean(ctx.x)])
    std = ctx.op("Sqrt", [mean(ctx.op("Mul", [centred, centred]))])
    denom = ctx.op("Add", [std, ctx.scalar(MVN_EPSILON)])
    direct = ctx.op("Div", [ctx.op("Sub", [g, mean(g)]), denom])
    through_std = ctx.op("Div", [ctx.op("Mul", [centred, mean(ctx.op("Mul", [g, centred]))]),
                                 ctx.op("Mul", [ctx.op("Mul", [denom, denom]), std])])
    return [ctx.op("Sub", [direct, through_std])]


@rule("LpNormalization")
def lp_norm(ctx: RuleContext, g):
    """y = x / n, n = ||x||_p along `axis`: x_grad = (g - d * sum(g * y)) / n with d = dn/dx,
    which is y for p = 2 and sign(x) for p = 1. Where n = 0 the output is 0 and so is the gradient."""
    p = ctx.attr("p", 2)
    if p not in (1, 2):
        ctx.unsupported(f"LpNormalization is defined for p = 1 or 2, not {p}")
    axis = [ctx.attr("axis", -1) % ctx.rank(ctx.x)]
    e = ctx.emitter
    x, y = ctx.x, ctx.y
    magnitude = ctx.op("Abs", [x]) if p == 1 else ctx.op("Mul", [x, x])
    norm = e.reduce("ReduceSum", magnitude, axis, keepdims=1)
    if p == 2:
        norm = ctx.op("Sqrt", [norm])
    zero = ctx.scalar(0.0)
    inv_norm = ctx.op("Where", [ctx.op("Equal", [norm, zero]), zero, ctx.op("Reciprocal", [norm])])
    d = y if p == 2 else ctx.op("Sign", [x])
    along = e.reduce("ReduceSum", ctx.op("Mul", [g, y]), axis, keepdims=1)
    return [ctx.op("Mul", [ctx.op("Sub", [g, ctx.op("Mul", [d, along])]), inv_norm])]


def _channel_window_sum(ctx: RuleContext, v: str, rank: int, size: int, before: int) -> str:
    """out[:, c] = sum of v[:, c - before .. c - before + size - 1] (zeros outside), for a channel
    count known only at run time: zero-pad the channel axis, then add `size` shifted slices."""
    if size == 1:
        return v
    e = ctx.emitter
    pads = [0] * (2 * rank)
    pads[1], pads[rank + 1] = before, size - 1 - before
    padded = e.pad(v, pads)
    last = np.iinfo(np.int64).max
    parts = [e.slice(padded, [k], [k - (size - 1) if k < size - 1 else last], [1]) for k in range(size)]
    return ctx.op("Sum", parts)


@rule("LRN")
def lrn(ctx: RuleContext, g):
    """y = x * d^-beta, d = bias + alpha/size * S(x^2), S the window sum over channels
    [c - floor((size-1)/2), c + ceil((size-1)/2)]. With S^T the transposed window sum:
    x_grad = g * d^-beta - (2 * alpha * beta / size) * x * S^T(g * y / d)."""
    size = int(ctx.attr("size"))
    alpha, beta, bias = ctx.attr("alpha", 1e-4), ctx.attr("beta", 0.75), ctx.attr("bias", 1.0)
    rank = ctx.rank(ctx.x)
    x = ctx.x
    before = (size - 1) // 2
    square_sum = _channel_window_sum(ctx, ctx.op("Mul", [x, x]), rank, size, before)
    d = ctx.op("Add", [ctx.scalar(bias), ctx.op("Mul", [ctx.scalar(alpha / size), square_sum])])
    direct = ctx.op("Mul", [g, ctx.op("Pow", [d, ctx.scalar(-beta)])])
    through_d = ctx.op("Div", [ctx.op("Mul", [g, ctx.y]), d])
    spread = _channel_window_sum(ctx, through_d, rank, size, size - 1 - before)
    cross = ctx.op("Mul", [ctx.scalar(2.0 * alpha * beta / size), ctx.op("Mul", [x, spread])])
    return [ctx.op("Sub", [direct, cross])]
