"""Ops that move values: reshapes, Transpose, Concat, Split, Slice, Pad, Expand,
Tile, DepthToSpace/SpaceToDepth, and the masks and running sums CumSum and Trilu."""

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


def _pad_mode(ctx: RuleContext) -> str:
    mode = ctx.attr("mode", "constant")
    return mode.decode() if isinstance(mode, bytes) else mode


def _pad_amounts(ctx: RuleContext, rank: int) -> tuple[list[int], list[int]]:
    """The forward pads as (begin, end) per axis of x, from the attribute (opsets 1-10) or the
    constant `pads` and `axes` inputs (opset 11 on; `axes` from 18). Negative amounts crop."""
    if ctx.opset < 11:
        pads = ctx.attr("pads", ctx.attr("paddings"))
    else:
        pads = ctx.const(1)
        if pads is None:
            ctx.needs_shapes("the pads are computed at run time")
    pads = [int(p) for p in np.ravel(pads)]
    axes = list(range(rank))
    if ctx.opset >= 18 and ctx.input(3):
        a = ctx.const(3)
        if a is None:
            ctx.needs_shapes("the pad axes are computed at run time")
        axes = [int(v) % rank for v in np.ravel(a)]
    begin, end = [0] * rank, [0] * rank
    for i, a in enumerate(axes):
        begin[a], end[a] = pads[i], pads[len(axes) + i]
    return begin, end


_BIG = np.iinfo(np.int64).max  # a Slice end past any extent


@rule("Pad")
def pad(ctx: RuleContext, g):
    """y is x cropped by the negative pads, then padded by the positive ones (onnxruntime's order).

    Constant mode: the gradient is the centre of g. Reflect, edge and wrap also copy x's values into
    the border, so each border strip of g is added back onto the elements it copies, one axis at a
    time (the copies are separable per axis). Where the forward cropped, the gradient is zero-padded.
    """
    mode = _pad_mode(ctx)
    if mode not in ("constant", "reflect", "edge", "wrap"):
        ctx.unsupported(f"pad mode '{mode}' is not an ONNX mode (constant, reflect, edge, wrap)")
    rank = ctx.rank(ctx.x)
    begin, end = _pad_amounts(ctx, rank)
    e = ctx.emitter
    out = g
    if mode == "constant":
        axes = [a for a in range(rank) if begin[a] > 0 or end[a] > 0]
        if axes:
            ends = [-end[a] if end[a] > 0 else _BIG for a in axes]
            out = e.slice(out, [max(begin[a], 0) for a in axes], ends, axes)
    else:
        shape = ctx.shape(ctx.x)
        for a in range(rank):
            b, t = max(begin[a], 0), max(end[a], 0)
            if b or t:
                dim = shape[a] if shape is not None else None
                n = dim - max(-begin[a], 0) - max(-end[a], 0) if isinstance(dim, int) else None
                out = _fold_border(ctx, out, a, b, t, n, mode, rank)
    crops = [max(-p, 0) for p in begin] + [max(-p, 0) for p in end]
    if any(crops):
        out = e.pad(out, crops)
    return [out] + [None] * (len(ctx.node.input) - 1)


def _fold_border(ctx: RuleContext, g: str, axis: int, b: int, t: int, n: int | None, mode: str, rank: int) -> str:
    """The gradient of padding one axis of size n (None: known only at run time) by b before and t
    after in `mode`: the centre of g plus each border strip added onto the elements it copies."""
    least = 2 if mode == "reflect" else 1
    if n is not None and n < least:
        ctx.unsupported(f"{mode} padding of axis {axis} needs at least {least} element(s) there after cropping, "
                        f"and it has {n}")
    if mode == "reflect" and n is not None and max(b, t) > n - 1:
        ctx.unsupported(f"reflect padding of {max(b, t)} on axis {axis} exceeds the axis size minus one "
                        f"({n - 1}), which ONNX does not allow")
    if mode == "wrap" and n is None:
        ctx.needs_shapes(f"wrap padding needs the static size of axis {axis} of '{ctx.x}', to know "
                         f"which elements the border copies")
    e = ctx.emitter
    centre = e.slice(g, [b], [-t if t else _BIG], [axis])
    if mode == "reflect":  # y[b-k] = x[k] and y[b+n-1+k] = x[n-1-k], k = 1..pad
        if b:
            centre = _add_onto(ctx, centre, _reverse(ctx, e.slice(g, [0], [b], [axis]), axis, b), axis, 1, b + 1, n, rank)
        if t:
            strip = _reverse(ctx, e.slice(g, [-t], [_BIG], [axis]), axis, t)
            centre = _add_onto(ctx, centre, strip, axis, -1 - t, -1, n, rank)
    elif mode == "edge":  # every border element copies the first or the last element
        if b:
            centre = _add_onto(ctx, centre, e.reduce("ReduceSum", e.slice(g, [0], [b], [axis]), [axis]), axis, 0, 1, n, rank)
        if t:
            strip = e.reduce("ReduceSum", e.slice(g, [-t], [_BIG], [axis]), [axis])
            centre = _add_onto(ctx, centre, strip, axis, -1, None, n, rank)
    else:  # wrap: y[i] = x[(i - b) mod n], so the border may wrap round x several times
        if b:
            centre = ctx.op("Add", [centre, _wrap_strip(ctx, e.slice(g, [0], [b], [axis]), axis, b, -b % n, n, rank)])
        if t:
            centre = ctx.op("Add", [centre, _wrap_strip(ctx, e.slice(g, [-t], [_BIG], [axis]), axis, t, 0, n, rank)])
    return centre


def _reverse(ctx: RuleContext, strip: str, axis: int, length: int) -> str:
    """`strip` (static `length` along `axis`) in reverse order: Slice with step -1 from opset 10,
    a Gather of the reversed positions before."""
    if length == 1:
        return strip
    e = ctx.emitter
    if ctx.opset >= 10:
        lowest = np.iinfo(np.int64).min
        return ctx.op("Slice", [strip, e.ints([-1], name="starts"), e.ints([lowest], name="ends"), e.ints([axis]),
                                e.ints([-1], name="steps")])
    return ctx.op("Gather", [strip, e.ints(range(length - 1, -1, -1), name="reversed")], axis=axis)


def _add_onto(ctx: RuleContext, c: str, strip: str, axis: int, lo: int, hi: int | None, n: int | None, rank: int) -> str:
    """c with `strip` added onto c[lo:hi] along `axis` (Python slice bounds; hi None: to the end).

    With a static size n: strip zero-padded to c's extent, then added. Otherwise c is cut around
    [lo, hi) with bounds relative to its start or end (no size needed) and concatenated back."""
    e = ctx.emitter
    if n is not None:
        start = lo % n if lo < 0 else lo
        stop = n if hi is None else (hi % n if hi < 0 else hi)
        pads = [0] * (2 * rank)
        pads[axis], pads[rank + axis] = start, n - stop
        return ctx.op("Add", [c, e.pad(strip, pads) if start or n - stop else strip])
    pieces = [e.slice(c, [0], [lo], [axis])] if lo != 0 else []
    pieces.append(ctx.op("Add", [e.slice(c, [lo], [_BIG if hi is None else hi], [axis]), strip]))
    if hi is not None:
        pieces.append(e.slice(c, [hi], [_BIG], [axis]))
    return ctx.op("Concat", pieces, axis=axis)


def _wrap_strip(ctx: RuleContext, strip: str, axis: int, length: int, phase: int, n: int, rank: int) -> str:
    """Strip position j (of `length`) copies x[(j + phase) mod n]: the strip cut into runs that land
    on consecutive elements, each zero-padded to x's extent n, summed."""
    e = ctx.emitter
    total, j = None, 0
    while j < length:
        start = (j + phase) % n
        run = min(n - start, length - j)
        piece = strip if run == length else e.slice(strip, [j], [j + run], [axis])
        if start or n - start - run:
            pads = [0] * (2 * rank)
            pads[axis], pads[rank + axis] = start, n - start - run
            piece = e.pad(piece, pads)
        total = piece if total is None else ctx.op("Add", [total, piece])
        j += run
    return total


def _assemble_shape(ctx: RuleContext, source: str, pieces: list) -> str:
    """An int64 shape tensor from `pieces`: ints taken as they are, ("dim", k) for dimension k of
    `source`. A constant when those dimensions are static, else Concat of Shape slices."""
    e = ctx.emitter
    static = ctx.view.static_shape(source)
    if static is not None:
        return e.ints([static[p[1]] if isinstance(p, tuple) else p for p in pieces], name="shape")
    shape = ctx.op("Shape", [source])
    parts = [e.slice(shape, [p[1]], [p[1] + 1], [0]) if isinstance(p, tuple) else e.ints([p], name="dim") for p in pieces]
    return ctx.op("Concat", parts, axis=0)


@rule("Tile")
def tile(ctx: RuleContext, g):
    """y repeats x r_i times along axis i: view g as (r_0, d_0, r_1, d_1, ...) and sum the r_i axes."""
    if ctx.opset < 6:
        ctx.unsupported("Tile before opset 6 (tiles and axis inputs) is not differentiated; "
                        "convert the model to opset 6 or later")
    x, repeats = ctx.x, ctx.input(1)
    rank = ctx.rank(x)
    e = ctx.emitter
    reps, static = ctx.const(1), ctx.view.static_shape(x)
    if reps is not None and static is not None:
        blocks = e.ints([v for r, d in zip(np.ravel(reps), static) for v in (int(r), d)], name="blocks")
    else:  # interleave repeats and Shape(x) at run time: stack them as (rank, 2) rows, then flatten
        pairs = [e.unsqueeze(repeats, [1]), e.unsqueeze(ctx.op("Shape", [x]), [1])]
        blocks = ctx.op("Reshape", [ctx.op("Concat", pairs, axis=1), e.ints([-1], name="flat")])
    summed = e.reduce("ReduceSum", ctx.op("Reshape", [g, blocks]), list(range(0, 2 * rank, 2)), keepdims=0)
    return [summed, None]


def _mode(ctx: RuleContext) -> str:
    mode = ctx.attr("mode", "DCR")
    return mode.decode() if isinstance(mode, bytes) else mode


@rule("DepthToSpace")
def depth_to_space(ctx: RuleContext, g):
    """A permutation of x's elements: both modes view y as (N, C/b^2, H, b, W, b) after their
    transpose, so g is viewed so, transposed back, and reshaped to x."""
    b = int(ctx.attr("blocksize"))
    x = ctx.x
    if _mode(ctx) == "CRD":  # x viewed as (N, C/b^2, b, b, H, W)
        perm = [0, 1, 4, 2, 5, 3]
    else:  # DCR: x viewed as (N, b, b, C/b^2, H, W)
        perm = [0, 3, 4, 1, 5, 2]
    blocks = _assemble_shape(ctx, x, [("dim", 0), -1, ("dim", 2), b, ("dim", 3), b])
    g6 = ctx.op("Reshape", [g, blocks])
    return [ctx.emitter.reshape_like(ctx.emitter.transpose(g6, list(np.argsort(perm))), x)]


@rule("SpaceToDepth")
def space_to_depth(ctx: RuleContext, g):
    """The inverse permutation of DCR DepthToSpace: x viewed as (N, C, H/b, b, W/b, b) is
    transposed to (N, b, b, C, H/b, W/b); g is viewed so, transposed back, and reshaped to x."""
    b = int(ctx.attr("blocksize"))
    perm = [0, 3, 5, 1, 2, 4]
    blocks = _assemble_shape(ctx, ctx.y, [("dim", 0), b, b, -1, ("dim", 2), ("dim", 3)])
    g6 = ctx.op("Reshape", [g, blocks])
    return [ctx.emitter.reshape_like(ctx.emitter.transpose(g6, list(np.argsort(perm))), ctx.x)]


@rule("CumSum")
def cumsum(ctx: RuleContext, g):
    """x_j reaches every y_i with i >= j (i > j when exclusive): the gradient is the cumulative
    sum of g in the other direction, with the same exclusivity."""
    reverse = 0 if ctx.attr("reverse", 0) else 1
    return [ctx.op("CumSum", [g, ctx.input(1)], exclusive=ctx.attr("exclusive", 0), reverse=reverse), None]


@rule("Trilu")
def trilu(ctx: RuleContext, g):
    """A mask: the same triangle of g."""
    k = list(ctx.node.input[1:2])
    return [ctx.op("Trilu", [g] + k, upper=ctx.attr("upper", 1))] + [None] * len(k)
