"""Shared backward of selection ops (MaxPool, Slice, Gather, ReduceMax): scatter into zeros."""

from __future__ import annotations

from ..registry import RuleContext


def scatter_flat(ctx: RuleContext, x: str, flat_indices: str, g: str, repeats: bool) -> str:
    """Zeros shaped like x with g added at flat_indices (an index tensor shaped like g).

    `repeats` says an element of x may be selected more than once; those contributions add up,
    which needs ScatterElements' reduction (opset 16).
    """
    e = ctx.emitter
    flat = e.ints([-1], name="flat")
    if repeats and ctx.opset < 16:
        ctx.unsupported("elements selected more than once need ScatterElements with reduction (opset >= 16)")
    zeros = ctx.zeros_like(e.op("Reshape", [x, flat]))
    out = e.op(
        "ScatterElements",
        [zeros, e.op("Reshape", [flat_indices, flat]), e.op("Reshape", [g, flat])],
        axis=0,
        reduction="add" if repeats else None,
    )
    return e.reshape_like(out, x)


def index_map(ctx: RuleContext, x: str) -> str:
    """An int64 tensor shaped like x whose entries are their own flat positions."""
    e = ctx.emitter
    size = e.op("Size", [x])
    positions = e.op("Range", [e.const(0, dtype="int64", name="zero"), size, e.const(1, dtype="int64", name="one")])
    return e.reshape_like(positions, x)
