"""Ops that move or select values: reshapes, Transpose, Concat, Split, Slice, Pad, Gather, Expand."""

from __future__ import annotations

import numpy as np

from ..registry import RuleContext, rule
from .scatter import index_map, scatter_flat


@rule("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def reshape(ctx: RuleContext, g):
    return [ctx.emitter.reshape_like(g, ctx.x)] + [None] * (len(ctx.node.input) - 1)


@rule("Transpose")
def transpose(ctx: RuleContext, g):
    perm = ctx.attr("perm") or list(reversed(range(ctx.rank(ctx.x))))
    return [ctx.emitter.transpose(g, list(np.argsort(perm)))]


@rule("Expand", broadcasting=True)
def expand(ctx: RuleContext, g):
    return [g, None]


@rule("Concat")
def concat(ctx: RuleContext, g):
    e = ctx.emitter
    rank = ctx.rank(ctx.y)
    axis = ctx.attr("axis") % rank
    out, offset = [], e.ints([0], name="start")
    static_offset = 0
    for i, x in enumerate(ctx.node.input):
        shape = ctx.shape(x)
        size = shape[axis] if shape is not None else None
        if isinstance(size, int) and static_offset is not None:
            out.append(e.slice(g, [static_offset], [static_offset + size], [axis]) if ctx.wants[i] else None)
            static_offset += size
            continue
        if static_offset is not None:  # run-time sizes from here on
            offset = e.ints([static_offset], name="start")
            static_offset = None
        start = offset
        end = offset = ctx.op("Add", [offset, ctx.op("Slice", [ctx.op("Shape", [x]), e.ints([axis]), e.ints([axis + 1])])])
        out.append(ctx.op("Slice", [g, start, end, e.ints([axis])]) if ctx.wants[i] else None)
    return out


@rule("Split")
def split(ctx: RuleContext, g):
    parts = [gi if gi is not None else ctx.zeros_like(o) for gi, o in zip(ctx.grads, ctx.node.output)]
    return [ctx.op("Concat", parts, axis=ctx.attr("axis", 0)), None]


def _slice_params(ctx: RuleContext):
    if ctx.opset < 10:
        starts, ends = ctx.attr("starts"), ctx.attr("ends")
        axes = ctx.attr("axes") or list(range(len(starts)))
        return list(starts), list(ends), list(axes), [1] * len(starts)
    consts = [ctx.const(i) if ctx.input(i) else None for i in range(1, 5)]
    if any(c is None for c in consts[:2]) or (ctx.input(3) and consts[2] is None) or (ctx.input(4) and consts[3] is None):
        return None
    starts, ends = [int(v) for v in consts[0]], [int(v) for v in consts[1]]
    axes = [int(v) for v in consts[2]] if consts[2] is not None else list(range(len(starts)))
    steps = [int(v) for v in consts[3]] if consts[3] is not None else [1] * len(starts)
    return starts, ends, axes, steps


@rule("Slice")
def slice_(ctx: RuleContext, g):
    x = ctx.x
    params = _slice_params(ctx)
    shape = ctx.view.static_shape(x)
    nones = [None] * (len(ctx.node.input) - 1)
    if params is not None and shape is not None and all(s == 1 for s in params[3]):
        starts, ends, axes, _ = params
        rank = len(shape)
        pads = [0] * (2 * rank)
        for s, t, a in zip(starts, ends, axes):
            a %= rank
            lo, hi = slice(s, t).indices(shape[a])[:2]
            hi = max(hi, lo)
            pads[a], pads[rank + a] = lo, shape[a] - hi
        return [ctx.emitter.pad(g, pads)] + nones
    # General case (steps, run-time bounds): slice a map of flat positions the same way, scatter.
    chosen = ctx.op("Slice", [index_map(ctx, x)] + list(ctx.node.input[1:]))
    return [scatter_flat(ctx, x, chosen, g, repeats=False)] + nones


@rule("Pad")
def pad(ctx: RuleContext, g):
    mode = ctx.attr("mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode != "constant":
        ctx.unsupported(f"only constant padding is differentiated, not mode '{mode}'")
    rank = ctx.rank(ctx.x)
    pads = ctx.attr("pads") if ctx.opset < 11 else ctx.const(1)
    if pads is None:
        ctx.needs_shapes("the pads are computed at run time")
    pads = [int(p) for p in np.ravel(pads)]
    axes = list(range(rank))
    if ctx.opset >= 18 and ctx.input(3):
        a = ctx.const(3)
        if a is None:
            ctx.needs_shapes("the pad axes are computed at run time")
        axes = [int(v) % rank for v in np.ravel(a)]
    n = len(axes)
    e = ctx.emitter
    out = g
    grow = [max(-p, 0) for p in pads]  # where the forward cropped, the gradient is zero-padded
    if any(grow):
        full = [0] * (2 * rank)
        for i, a in enumerate(axes):
            full[a], full[rank + a] = grow[i], grow[n + i]
        out = e.pad(out, full)
    cut = [max(p, 0) for p in pads]  # where the forward padded, the gradient is cropped
    if any(cut):
        big = np.iinfo(np.int64).max
        starts = [cut[i] for i in range(n)]
        ends = [-cut[n + i] if cut[n + i] else big for i in range(n)]
        out = e.slice(out, starts, ends, axes)
    return [out] + [None] * (len(ctx.node.input) - 1)


@rule("Gather")
def gather(ctx: RuleContext, g):
    """Data side only: every gathered element sends its gradient back to where it came from."""
    x, indices = ctx.input(0), ctx.input(1)
    chosen = ctx.op("Gather", [index_map(ctx, x), indices], axis=ctx.attr("axis", 0))
    idx = ctx.const(1)
    repeats = True
    if idx is not None:
        shape = ctx.shape(x)
        dim = shape[ctx.attr("axis", 0) % len(shape)] if shape is not None else None
        flat = np.ravel(idx)
        if isinstance(dim, int):
            flat = np.where(flat < 0, flat + dim, flat)
            repeats = len(np.unique(flat)) != len(flat)
        elif np.all(flat >= 0):
            repeats = len(np.unique(flat)) != len(flat)
    return [scatter_flat(ctx, x, chosen, g, repeats=repeats), None]
