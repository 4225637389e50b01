"""Reductions: ReduceSum, ReduceMean (spread back) and ReduceMax/ReduceMin (to the first extremum)."""

from __future__ import annotations

import numpy as np

from ..registry import RuleContext, rule
from .scatter import scatter_flat


def reduced_axes(ctx: RuleContext) -> list[int]:
    """The normalised axes a Reduce* node reduces (attribute or input, by opset)."""
    rank = ctx.rank(ctx.x)
    input_since = 13 if ctx.node.op_type == "ReduceSum" else 18
    if ctx.opset >= input_since:
        if not ctx.input(1):
            axes = None
        else:
            axes = ctx.const(1)
            if axes is None:
                ctx.needs_shapes("the reduction axes are computed at run time")
            axes = [int(a) for a in np.ravel(axes)]
    else:
        axes = ctx.attr("axes")
    if not axes:
        if ctx.attr("noop_with_empty_axes", 0):
            return []
        return list(range(rank))
    return sorted(a % rank for a in axes)


def _spread(ctx: RuleContext, g: str, axes: list[int]) -> str:
    """g broadcast back over the reduced axes to x's shape."""
    if not ctx.attr("keepdims", 1):
        g = ctx.emitter.unsqueeze(g, axes)
    return ctx.op("Expand", [g, ctx.op("Shape", [ctx.x])])


@rule("ReduceSum")
def reduce_sum(ctx: RuleContext, g):
    axes = reduced_axes(ctx)
    return [_spread(ctx, g, axes) if axes else g, None]


@rule("ReduceMean")
def reduce_mean(ctx: RuleContext, g):
    axes = reduced_axes(ctx)
    if not axes:
        return [g, None]
    shape = ctx.shape(ctx.x)
    dims = [shape[a] for a in axes] if shape is not None else [None]
    spread = _spread(ctx, g, axes)
    if all(isinstance(d, int) for d in dims):
        return [ctx.op("Mul", [spread, ctx.scalar(1.0 / float(np.prod(dims)))]), None]
    e = ctx.emitter
    count = e.reduce("ReduceProd", e.op("Gather", [e.op("Shape", [ctx.x]), e.ints(axes)], axis=0), [0], keepdims=0)
    return [ctx.op("Div", [spread, ctx.op("Cast", [count], to=ctx.view.elem_type(ctx.x))]), None]


@rule("ReduceMax", "ReduceMin")
def reduce_extremum(ctx: RuleContext, g):
    """The whole gradient goes to the first maximum (minimum) of each reduced slice."""
    axes = reduced_axes(ctx)
    if not axes:
        return [g, None]
    from .scatter import index_map

    e = ctx.emitter
    x = ctx.x
    rank = ctx.rank(x)
    kept = [a for a in range(rank) if a not in axes]
    perm = kept + axes
    to_rows = e.ints([0] * len(kept) + [-1], name="rows")
    rows = e.op("Reshape", [e.transpose(x, perm), to_rows])
    pick = ctx.op("ArgMax" if ctx.node.op_type == "ReduceMax" else "ArgMin", [rows], axis=len(kept), keepdims=1)
    where = e.op("Reshape", [e.transpose(index_map(ctx, x), perm), to_rows])
    first = ctx.op("GatherElements", [where, pick], axis=len(kept))
    gk = g if ctx.attr("keepdims", 1) else e.unsqueeze(g, axes)
    return [scatter_flat(ctx, x, first, gk, repeats=False), None]
