"""The gather/scatter family on its float data side: Gather, GatherElements, GatherND,
ScatterElements (and its opset 9-10 name Scatter), ScatterND. Index inputs get no gradient.

A gather's backward sends every gathered element's gradient back to where it came from: the same
gather applied to a map of x's flat positions says where (the `index_map` of scatter.py), and
those positions are scattered into zeros. Repeated positions add up, which needs ScatterElements'
reduction (opset 16); with constant indices and a static shape the repeats are found at build
time, so a file below opset 16 that gathers each element at most once still differentiates.

A scatter with reduction "none" overwrites: the data gradient is g with the overwritten
positions zeroed, the updates gradient is g gathered at them. Repeated indices are undefined for
reduction "none" in ONNX, so no rule has to choose which update wins.

Gather with indices that may repeat in opsets 11-15 (no scatter reduction yet) takes another
route: a one-hot matrix product, in which repeats add up by themselves.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import helper

from ..registry import RuleContext, rule
from .scatter import index_map, scatter_flat

STATIC_MAP_LIMIT = 1 << 22  # largest x (elements) whose index map is built at build time


def positions_map(ctx: RuleContext, x: str) -> str:
    """An int64 tensor shaped like x holding each element's flat position: computed at run time
    from opset 11 (Range), a constant before that when x's shape is static and not too large."""
    if ctx.opset >= 11:
        return index_map(ctx, x)
    shape = ctx.view.static_shape(x)
    if shape is None:
        ctx.needs_shapes(f"below opset 11 (no Range) the positions of '{x}' are built from its static shape")
    if int(np.prod(shape)) > STATIC_MAP_LIMIT:
        ctx.unsupported(f"below opset 11 its gradient holds a map of the positions of '{x}', which has more than "
                        f"{STATIC_MAP_LIMIT} elements; convert the model to opset 11 or later (onnx.version_converter)")
    return ctx.emitter.const(np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape), name="positions")


def may_repeat(ctx: RuleContext, x: str, select: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> bool:
    """Whether the gather can pick an element of x twice. With constant indices and a static
    shape, `select(positions, indices)` (the gather in NumPy) answers it; otherwise assume yes."""
    indices = ctx.const(1)
    shape = ctx.view.static_shape(x)
    if indices is None or shape is None or int(np.prod(shape)) > STATIC_MAP_LIMIT:
        return True
    chosen = np.ravel(select(np.arange(int(np.prod(shape))).reshape(shape), indices.astype(np.int64)))
    return len(np.unique(chosen)) != len(chosen)


def _gather_back(ctx: RuleContext, g: str, gathered_positions: str, repeats: bool) -> list:
    return [scatter_flat(ctx, ctx.x, gathered_positions, g, repeats=repeats), None]


@rule("Gather")
def gather(ctx: RuleContext, g):
    """Data side only; negative and scalar indices select as numpy.take does."""
    axis = ctx.attr("axis", 0)
    repeats = _gather_repeats(ctx, axis)
    if repeats and 11 <= ctx.opset < 16:  # no scatter-add yet: sum the repeats with a one-hot product
        return [_gather_grad_one_hot(ctx, g, axis % ctx.rank(ctx.x)), None]
    chosen = ctx.op("Gather", [positions_map(ctx, ctx.x), ctx.input(1)], axis=axis)
    return _gather_back(ctx, g, chosen, repeats)


def _gather_grad_one_hot(ctx: RuleContext, g: str, axis: int) -> str:
    """Gather's data gradient as a product: with x viewed as (P, n, Q) around the gathered axis,
    the k indices as a one-hot (k, n) matrix H and g viewed as (P, k, Q), x_grad = H^T g.
    Repeated indices add up by themselves; costs size(g) * n multiply-adds."""
    e = ctx.emitter
    x, indices = ctx.x, ctx.op("Cast", [ctx.input(1)], to=onnx.TensorProto.INT64)
    shape = ctx.op("Shape", [x])
    n = e.slice(shape, [axis], [axis + 1], [0])
    wrapped = ctx.op("Where", [ctx.op("Less", [indices, e.ints([0], name="zero")]), ctx.op("Add", [indices, n]), indices])
    columns = ctx.op("Range", [e.const(0, dtype="int64", name="zero"), e.squeeze(n, [0]), e.const(1, dtype="int64", name="one")])
    idx_rank = ctx.rank(ctx.input(1))
    hits = ctx.op("Equal", [e.unsqueeze(wrapped, [idx_rank]), columns])
    one_hot = ctx.op("Flatten", [ctx.op("Cast", [hits], to=helper.np_dtype_to_tensor_dtype(ctx.dtype))], axis=idx_rank)
    rank = ctx.rank(x)
    outer = _dims_product(ctx, shape, 0, axis)
    inner = _dims_product(ctx, shape, axis + 1, rank)
    g3 = ctx.op("Reshape", [g, ctx.op("Concat", [outer, e.ints([-1], name="k"), inner], axis=0)])
    return e.reshape_like(ctx.op("MatMul", [e.transpose(one_hot, [1, 0]), g3]), x)


def _dims_product(ctx: RuleContext, shape: str, start: int, stop: int) -> str:
    """The product of dims start..stop-1 of a shape tensor, as a 1-element int64 tensor."""
    if start >= stop:
        return ctx.emitter.ints([1], name="one")
    return ctx.emitter.reduce("ReduceProd", ctx.emitter.slice(shape, [start], [stop], [0]), [0], keepdims=1)


def _gather_repeats(ctx: RuleContext, axis: int) -> bool:
    """Gather repeats an element exactly when its indices, taken modulo the axis length, repeat."""
    idx = ctx.const(1)
    if idx is None:
        return True
    flat = np.ravel(idx).astype(np.int64)
    shape = ctx.shape(ctx.x)
    dim = shape[axis % len(shape)] if shape is not None else None
    if isinstance(dim, int):
        flat = np.where(flat < 0, flat + dim, flat)
    elif np.any(flat < 0):
        return True  # -1 and n-1 may be the same element
    return len(np.unique(flat)) != len(flat)


def _take_along(axis: int):
    """GatherElements in NumPy: out[i] = data[i with i[axis] replaced by indices[i]]."""

    def select(data, indices):
        where = list(np.indices(indices.shape, sparse=True))
        where[axis % data.ndim] = indices
        return data[tuple(where)]

    return select


@rule("GatherElements")
def gather_elements(ctx: RuleContext, g):
    axis = ctx.attr("axis", 0)
    chosen = ctx.op("GatherElements", [positions_map(ctx, ctx.x), ctx.input(1)], axis=axis)
    return _gather_back(ctx, g, chosen, may_repeat(ctx, ctx.x, _take_along(axis)))


def _gather_nd(batch_dims: int):
    """The positions GatherND picks (in any order: only whether they repeat matters)."""

    def select(data, indices):
        data_b = data.reshape((-1,) + data.shape[batch_dims:])
        indices_b = indices.reshape((-1,) + indices.shape[batch_dims:])
        picked = []
        for d, ind in zip(data_b, indices_b):
            for tup in ind.reshape(-1, ind.shape[-1]):
                picked.append(np.ravel(d[tuple(tup)]))
        return np.concatenate(picked) if picked else np.zeros(0, dtype=np.int64)

    return select


@rule("GatherND")
def gather_nd(ctx: RuleContext, g):
    batch_dims = ctx.attr("batch_dims", 0)
    chosen = ctx.op("GatherND", [positions_map(ctx, ctx.x), ctx.input(1)], batch_dims=batch_dims or None)
    return _gather_back(ctx, g, chosen, may_repeat(ctx, ctx.x, _gather_nd(batch_dims)))


def _reduction(ctx: RuleContext) -> str:
    red = ctx.attr("reduction", "none")
    red = red.decode() if isinstance(red, bytes) else red
    if red not in ("none", "add"):
        ctx.unsupported(f"scatter reduction '{red}' is not differentiated (only 'none' and 'add' are)")
    return red


@rule("ScatterElements", "Scatter")
def scatter_elements(ctx: RuleContext, g):
    """data_grad: g with the scattered positions zeroed ('none') or g itself ('add');
    updates_grad: g gathered at those positions."""
    axis = ctx.attr("axis", 0)
    red = _reduction(ctx)
    data_grad = updates_grad = None
    if ctx.wants[0]:
        data_grad = g if red == "add" else ctx.op("ScatterElements", [g, ctx.input(1), ctx.zeros_like(ctx.input(2))], axis=axis)
    if ctx.wants[2]:
        if ctx.opset < 11:
            ctx.unsupported("the gradient of the scattered updates needs GatherElements (opset 11); "
                            "convert the model to opset 11 or later")
        updates_grad = ctx.op("GatherElements", [g, ctx.input(1)], axis=axis)
    return [data_grad, None, updates_grad]


@rule("ScatterND")
def scatter_nd(ctx: RuleContext, g):
    red = _reduction(ctx)
    data_grad = updates_grad = None
    if ctx.wants[0]:
        data_grad = g if red == "add" else ctx.op("ScatterND", [g, ctx.input(1), ctx.zeros_like(ctx.input(2))])
    if ctx.wants[2]:
        updates_grad = ctx.op("GatherND", [g, ctx.input(1)])
    return [data_grad, None, updates_grad]
