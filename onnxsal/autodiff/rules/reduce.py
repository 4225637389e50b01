"""Reductions: ReduceSum, ReduceMean (spread back), ReduceMax/ReduceMin (to the first extremum),
and the rest of the family: ReduceL1, ReduceL2, ReduceSumSquare, ReduceLogSumExp, ReduceLogSum,
ReduceProd.

ReduceL2 gives a zero gradient where the norm is 0 (a subgradient, as torch.linalg.norm's
backward), never NaN: L2 normalisation ends every sentence-embedding model. ReduceProd sends each
element the product of the others, built from exclusive prefix and suffix products, with no
division by x, so zeros in x are fine. With noop_with_empty_axes and no axes each op is
elementwise (|x|, x^2, log x, ...), and the same formulas hold.
"""

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
    return ctx.emitter.expand_like(g, ctx.x)


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


def _kept(ctx: RuleContext, v: str, axes: list[int]) -> str:
    """A reduced value (y or its gradient) with the reduced axes kept as 1s, so it broadcasts against x."""
    return v if ctx.attr("keepdims", 1) else ctx.emitter.unsqueeze(v, axes)


@rule("ReduceL1")
def reduce_l1(ctx: RuleContext, g):
    axes = reduced_axes(ctx)
    return [ctx.op("Mul", [_kept(ctx, g, axes), ctx.op("Sign", [ctx.x])]), None]


@rule("ReduceL2")
def reduce_l2(ctx: RuleContext, g):
    """g x / ||x||; where the norm is 0 every x in the slice is 0, and dividing by 1 instead gives 0."""
    axes = reduced_axes(ctx)
    norm = _kept(ctx, ctx.y, axes)
    safe = ctx.op("Where", [ctx.op("Greater", [norm, ctx.scalar(0.0)]), norm, ctx.scalar(1.0)])
    return [ctx.op("Mul", [ctx.op("Div", [_kept(ctx, g, axes), safe]), ctx.x]), None]


@rule("ReduceSumSquare")
def reduce_sum_square(ctx: RuleContext, g):
    axes = reduced_axes(ctx)
    return [ctx.op("Mul", [_kept(ctx, g, axes), ctx.op("Mul", [ctx.x, ctx.scalar(2.0)])]), None]


@rule("ReduceLogSumExp")
def reduce_log_sum_exp(ctx: RuleContext, g):
    """g softmax(x) over the slice, as exp(x - y): y >= max x, so the Exp cannot overflow."""
    axes = reduced_axes(ctx)
    return [ctx.op("Mul", [_kept(ctx, g, axes), ctx.op("Exp", [ctx.op("Sub", [ctx.x, _kept(ctx, ctx.y, axes)])])]), None]


@rule("ReduceLogSum")
def reduce_log_sum(ctx: RuleContext, g):
    """g / sum(x), the sum recomputed (exact, where exp(y) would round)."""
    axes = reduced_axes(ctx)
    total = ctx.emitter.reduce("ReduceSum", ctx.x, axes, keepdims=1)
    return [ctx.emitter.expand_like(ctx.op("Div", [_kept(ctx, g, axes), total]), ctx.x), None]


@rule("ReduceProd")
def reduce_prod(ctx: RuleContext, g):
    """g times the product of the other elements of each slice.

    Over axes a_1..a_m, the elements j != i of a slice are those whose first index differing from
    i is on a_k, for one k: the product of the others is the product over k of the exclusive
    product along a_k of F_k, the product of x over a_(k+1)..a_m (F_m = x).
    """
    axes = reduced_axes(ctx)
    shape = ctx.shape(ctx.x)
    sizes = [shape[a] if shape is not None else None for a in axes]
    if not all(isinstance(d, int) for d in sizes):
        ctx.needs_shapes("the sizes of the reduced axes set how many prefix-product steps its gradient takes")
    rank = ctx.rank(ctx.x)
    others = _kept(ctx, g, axes)
    partial = ctx.x
    for a, size in reversed(list(zip(axes, sizes))):
        if size > 1:
            others = ctx.op("Mul", [others, _exclusive_product(ctx, partial, a, size, rank)])
        partial = ctx.emitter.reduce("ReduceProd", partial, [a], keepdims=1)
    if others == g:  # every reduced axis has size 1: y = x
        return [g, None]
    return [ctx.emitter.expand_like(others, ctx.x), None]


def _exclusive_product(ctx: RuleContext, t: str, axis: int, size: int, rank: int) -> str:
    """prod over j != i of t[..., j, ...] along `axis`, at every i: exclusive prefix times exclusive suffix."""
    prefix = _scan_product(ctx, _shift(ctx, t, axis, 1, rank), axis, size, rank, forward=True)
    suffix = _scan_product(ctx, _shift(ctx, t, axis, -1, rank), axis, size, rank, forward=False)
    return ctx.op("Mul", [prefix, suffix])


def _scan_product(ctx: RuleContext, t: str, axis: int, size: int, rank: int, forward: bool) -> str:
    """Inclusive cumulative product along `axis` (from the end when not forward), by doubling."""
    step = 1
    while step < size:
        t = ctx.op("Mul", [t, _shift(ctx, t, axis, step if forward else -step, rank)])
        step *= 2
    return t


def _shift(ctx: RuleContext, t: str, axis: int, by: int, rank: int) -> str:
    """t moved `by` places along `axis` (towards the end when by > 0), the places it leaves filled with 1."""
    e = ctx.emitter
    n = abs(by)
    kept = e.slice(t, [0], [-n], [axis]) if by > 0 else e.slice(t, [n], [np.iinfo(np.int64).max], [axis])
    pads = [0] * (2 * rank)
    pads[axis if by > 0 else rank + axis] = n
    if ctx.opset >= 11:
        return ctx.op("Pad", [kept, e.ints(pads, name="pads"), ctx.scalar(1.0)], mode="constant")
    return ctx.op("Pad", [kept], mode="constant", pads=pads, value=1.0)
