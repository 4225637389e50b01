"""Pooling: MaxPool (first maximum, ceil_mode, overlap), AveragePool, global average and max."""

from __future__ import annotations

import functools

import numpy as np

from ..registry import RuleContext, rule
from .conv import geometry, spatial, transpose_back
from .scatter import scatter_flat


@rule("MaxPool")
def max_pool(ctx: RuleContext, g):
    if ctx.attr("storage_order", 0):
        ctx.unsupported("column-major storage_order is not supported")
    kernel = list(ctx.attr("kernel_shape"))
    geo = geometry(ctx, spatial(ctx, ctx.x), kernel)
    if len(ctx.node.output) > 1 and ctx.node.output[1]:
        indices = ctx.node.output[1]
    else:  # run the pool again, asking for the (flat, first-maximum) index of each window
        keep = {a.name: ctx.attr(a.name) for a in ctx.node.attribute}
        indices = ctx.op("MaxPool", [ctx.x], n_out=2, **keep)[1]
    overlap = any(e > s for e, s in zip(geo.extent, geo.strides))
    return [scatter_flat(ctx, ctx.x, indices, g, repeats=overlap)]


@rule("AveragePool")
def average_pool(ctx: RuleContext, g):
    x = ctx.x
    xs = ctx.shape(x)
    if xs is None or not all(isinstance(d, int) for d in xs[1:]):
        ctx.needs_shapes("AveragePool gradients need static channel and spatial sizes")
    kernel = list(ctx.attr("kernel_shape"))
    geo = geometry(ctx, list(xs[2:]), kernel)
    e = ctx.emitter
    # 1/divisor of each window, whatever the runtime's convention (pads, ceil_mode): the pool of
    # ones over a ones-sized input divided by the number of real elements in the window.
    ones = e.const(np.ones((1, 1) + tuple(xs[2:]), dtype=ctx.dtype), name="ones")
    pooled_ones = ctx.op("AveragePool", [ones], **{a.name: ctx.attr(a.name) for a in ctx.node.attribute})
    ys = ctx.shape(ctx.y)
    if ys is None or not all(isinstance(d, int) for d in ys[2:]):
        ctx.needs_shapes("AveragePool gradients need a static output shape")
    per_axis = []
    for i, size in enumerate(xs[2:]):
        starts = np.arange(ys[2 + i]) * geo.strides[i] - geo.begin[i]
        taps = starts[:, None] + np.arange(kernel[i])[None, :] * geo.dilations[i]
        per_axis.append(((taps >= 0) & (taps < size)).sum(axis=1))
    counts = functools.reduce(np.multiply.outer, per_axis).astype(ctx.dtype).reshape((1, 1) + tuple(ys[2:]))
    scale = ctx.op("Div", [pooled_ones, e.const(np.maximum(counts, 1), name="window_counts")])
    weights = e.const(np.ones((xs[1], 1) + tuple(kernel), dtype=ctx.dtype), name="ones_kernel")
    return [transpose_back(ctx, ctx.op("Mul", [g, scale]), x, ctx.y, weights, geo, xs[1])]


@rule("GlobalAveragePool")
def global_average_pool(ctx: RuleContext, g):
    x = ctx.x
    e = ctx.emitter
    spread = ctx.op("Expand", [g, e.op("Shape", [x])])
    xs = ctx.shape(x)
    if xs is not None and all(isinstance(d, int) for d in xs[2:]):
        return [ctx.op("Mul", [spread, ctx.scalar(1.0 / float(np.prod(xs[2:])))])]
    rank = ctx.rank(x)
    area = e.reduce("ReduceProd", e.op("Slice", [e.op("Shape", [x]), e.ints([2]), e.ints([rank])]), [0], keepdims=0)
    return [ctx.op("Div", [spread, ctx.op("Cast", [area], to=ctx.view.elem_type(x))])]


@rule("GlobalMaxPool")
def global_max_pool(ctx: RuleContext, g):
    e = ctx.emitter
    flat = e.op("Reshape", [ctx.x, e.ints([0, 0, -1], name="nc_flat")])
    first = ctx.op("ArgMax", [flat], axis=2, keepdims=1)
    gflat = e.op("Reshape", [g, e.ints([0, 0, 1], name="nc_one")])
    spread = ctx.op("ScatterElements", [ctx.zeros_like(flat), first, gflat], axis=2)
    return [e.reshape_like(spread, ctx.x)]
