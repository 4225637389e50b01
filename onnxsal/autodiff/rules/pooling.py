"""Pooling: MaxPool (first maximum, ceil_mode, overlap, every opset with Indices), AveragePool,
global average and max."""

from __future__ import annotations

import functools

import numpy as np
from onnx import helper

from ..registry import RuleContext, rule
from .conv import Geometry, geometry, spatial, transpose_back
from .scatter import NO_ADD_KERNEL, scatter_flat

# Which exact backward an overlapping MaxPool gets where both can be built (opset >= 16):
# "scatter" (ScatterElements with reduction="add") or "offsets" (the one-hot ConvTranspose of
# `offset_scatter`). On resnet50's stem pool (1x64x112x112, 3x3 stride 2 pad 1, onnxruntime CPU,
# one thread) the whole backward, the MaxPool that recovers the Indices included (5 ms of it),
# takes 7-13 ms with the scatter and 13-22 ms with the offsets (batch 8: 66-99 ms and 114-211 ms),
# so the scatter is kept where the opset has it.
OVERLAP_BACKWARD = "scatter"


@rule("MaxPool")
def max_pool(ctx: RuleContext, g):
    """The gradient of each window goes to its first maximum (PyTorch's and TensorFlow's choice).

    Windows that do not overlap select every element at most once: a plain ScatterElements of g at
    MaxPool's Indices (opset >= 9). Overlapping windows (3x3 stride 2) may select an element
    several times and those contributions add up, which ScatterElements can only do with its
    reduction (opset 16); at every opset with Indices (>= 8) `offset_scatter` sums them exactly.

    float16 (and bfloat16) models keep their precision: every node is emitted in the model's type.
    onnxruntime's CPU provider has float16 kernels for some ops and computes the others (Conv,
    ConvTranspose, Gemm, Mul, ... on x86) in float32 behind casts it inserts itself, except
    ScatterElements with reduction="add", which it refuses for float16 at run time: those models get
    the ConvTranspose form at every opset (all in float16, rather than a float32 scatter).
    """
    if ctx.opset < 8:
        ctx.unsupported("MaxPool has no Indices output before opset 8, which its gradient reads; "
                        "convert the model to opset 8 or newer (onnx.version_converter)")
    xs = spatial(ctx, ctx.x)
    geo = pool_geometry(ctx, xs, list(ctx.attr("kernel_shape")))
    indices = _first_maxima(ctx)
    overlap = any(e > s for e, s in zip(geo.extent, geo.strides))
    if overlap and ctx.opset >= 16 and OVERLAP_BACKWARD == "scatter" and ctx.dtype not in NO_ADD_KERNEL:
        return [scatter_flat(ctx, ctx.x, indices, g, repeats=True)]
    if overlap or ctx.opset < 9:  # opset 8 has no Scatter
        return [offset_scatter(ctx, indices, g, geo, xs)]
    return [scatter_flat(ctx, ctx.x, indices, g, repeats=False)]


def pool_geometry(ctx: RuleContext, xs: list[int] | None, kernel: list[int]) -> Geometry:
    """The pool's geometry as onnxruntime computes it. With auto_pad SAME and dilations, onnxruntime
    sizes the padding by the undilated kernel ((ceil(in/s) - 1)*s + k - in), not by the dilated
    extent that the ONNX text names; the gradient must use the pads the forward pass used."""
    geo = geometry(ctx, xs, kernel)
    mode = ctx.attr("auto_pad", "NOTSET")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode in ("SAME_UPPER", "SAME_LOWER") and any(d != 1 for d in geo.dilations):
        for i, size in enumerate(xs):
            total = max((-(-size // geo.strides[i]) - 1) * geo.strides[i] + kernel[i] - size, 0)
            geo.end[i] = total // 2 if mode == "SAME_LOWER" else total - total // 2
            geo.begin[i] = total - geo.end[i]
    return geo


def pool_output_size(ctx: RuleContext, xs: list[int], geo: Geometry) -> list[int]:
    """Output spatial sizes as onnxruntime computes them: with ceil_mode, a last window that would
    start in the end padding is dropped (as PyTorch does; ONNX shape inference keeps it)."""
    ceil = bool(ctx.attr("ceil_mode", 0)) and ctx.attr("auto_pad", "NOTSET") in ("NOTSET", b"NOTSET")
    out = []
    for size, s, b, e, ext in zip(xs, geo.strides, geo.begin, geo.end, geo.extent):
        span = size + b + e - ext
        n = (-(-span // s) if ceil else span // s) + 1
        if ceil and (n - 1) * s >= size + b:
            n -= 1
        out.append(n)
    return out


def _inferred_output_size(ctx: RuleContext, xs: list[int], geo: Geometry) -> list[int]:
    """Output spatial sizes as ONNX shape inference states them (the operator text's formula)."""
    mode = ctx.attr("auto_pad", "NOTSET")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode in ("SAME_UPPER", "SAME_LOWER"):
        return [-(-size // s) for size, s in zip(xs, geo.strides)]
    ceil = bool(ctx.attr("ceil_mode", 0))
    out = []
    for size, s, b, e, ext in zip(xs, geo.strides, geo.begin, geo.end, geo.extent):
        span = size + b + e - ext
        out.append((-(-span // s) if ceil else span // s) + 1)
    return out


def _first_maxima(ctx: RuleContext) -> str:
    """MaxPool's Indices (row-major flat positions of each window's first maximum): the node's own
    second output when it has one, else the pool run again asking for them."""
    if len(ctx.node.output) > 1 and ctx.node.output[1] and not ctx.attr("storage_order", 0):
        return ctx.node.output[1]
    keep = {a.name: ctx.attr(a.name) for a in ctx.node.attribute if a.name != "storage_order"}
    return ctx.op("MaxPool", [ctx.x], n_out=2, **keep)[1]


def offset_scatter(ctx: RuleContext, indices: str, g: str, geo: Geometry, xs: list[int] | None) -> str:
    """Adds g at the flat `indices` of x, summing repeats, without ScatterElements' reduction.

    Each output position's index is turned into the offset k of the chosen element inside its
    window (0 <= k < K = prod(kernel), row-major), g is spread over K channels as a one-hot of k,
    and a ConvTranspose with the pool's geometry whose k-th kernel is the one-hot of offset k puts
    every channel back at its offset: overlapping windows add up in the convolution, exactly.
    N*C is folded into the batch so the weights do not depend on the channel count.
    """
    e = ctx.emitter
    n = len(geo.kernel)
    ys, static = _output_sizes(ctx, xs, geo)
    if ys is not None and not static:  # the indices' inferred shape is cut to g's (a no-op at run time)
        rank = n + 2
        indices = e.op("Slice", [indices, e.ints([0] * rank, name="starts"), e.op("Shape", [g]), e.ints(list(range(rank)))])
    k_total = int(np.prod(geo.kernel))
    offset = _window_offsets(ctx, indices, geo, xs, ys, static, g)
    rows = e.ints([-1, 1] + ys, name="nc_rows") if static else _rows_shape(ctx, g, n)
    choose = e.op("Equal", [e.op("Reshape", [offset, rows]),
                            e.const(np.arange(k_total, dtype=np.int64).reshape((k_total,) + (1,) * n), name="offsets")])
    g_rows = e.op("Reshape", [g, rows])
    # A multiply by the cast mask: faster than Where in onnxruntime (as for the rectifier masks).
    spread = ctx.op("Mul", [g_rows, ctx.op("Cast", [choose], to=helper.np_dtype_to_tensor_dtype(ctx.dtype))])
    one_hot = e.const(np.eye(k_total, dtype=ctx.dtype).reshape((k_total, 1) + tuple(geo.kernel)), name="offset_kernels")
    return e.reshape_like(_place(ctx, spread, one_hot, geo, xs, ys), ctx.x)


def _output_sizes(ctx: RuleContext, xs: list[int] | None, geo: Geometry) -> tuple[list[int] | None, bool]:
    """The output's spatial sizes (None when x's are dynamic), and whether constants may be shaped by
    them: not where ONNX shape inference (which onnxruntime also runs on the gradient graph) states
    another size than the kernels compute (ceil_mode dropping a window, SAME with dilations), as such
    constants would clash with it; those shapes are then read at run time."""
    if xs is None:
        if ctx.opset < 11:
            ctx.needs_shapes("with dynamic spatial sizes the window offsets need Range (opset 11)")
        return None, False
    ys, inferred = pool_output_size(ctx, xs, geo), _inferred_output_size(ctx, xs, geo)
    if ys != inferred and ctx.opset < 10:
        ctx.unsupported(f"ONNX shape inference gives this pool output {inferred} where onnxruntime computes {ys}; "
                        f"its gradient needs opset 10 or newer (onnx.version_converter)")
    return ys, ys == inferred


def _place(ctx: RuleContext, spread: str, kernels: str, geo: Geometry, xs, ys) -> str:
    """ConvTranspose of the per-offset channels with the pool's geometry, landing exactly on x's
    spatial size: padded by the window begin and cropped (or padded with output_padding) behind."""
    attrs = dict(strides=geo.strides, dilations=geo.dilations, kernel_shape=geo.kernel)
    n = len(geo.kernel)
    if xs is not None:
        end, extra = [], []
        for i in range(n):
            rest = geo.strides[i] * (ys[i] - 1) + geo.extent[i] - geo.begin[i] - xs[i]
            end.append(max(rest, 0))
            extra.append(max(-rest, 0))
        return ctx.op("ConvTranspose", [spread, kernels], pads=geo.begin + end, output_padding=extra, **attrs)
    # Dynamic sizes: overshoot by stride - 1 behind (the uncovered tail is shorter), then crop.
    extra = [s - 1 for s in geo.strides]
    full = ctx.op("ConvTranspose", [spread, kernels], pads=geo.begin + [0] * n, output_padding=extra, **attrs)
    e = ctx.emitter
    ends = e.op("Slice", [e.op("Shape", [ctx.x]), e.ints([2], name="starts"), e.ints([2 + n], name="ends")])
    return e.op("Slice", [full, e.ints([0] * n, name="starts"), ends, e.ints(list(range(2, 2 + n)))])


def _rows_shape(ctx: RuleContext, g: str, n: int) -> str:
    """[-1, 1, *output spatial dims] at run time (read off g, the output's gradient)."""
    e = ctx.emitter
    dims = e.op("Slice", [e.op("Shape", [g]), e.ints([2], name="starts"), e.ints([2 + n], name="ends")])
    return e.op("Concat", [e.ints([-1, 1], name="nc_one"), dims], axis=0)


def _window_offsets(ctx: RuleContext, indices: str, geo: Geometry, xs, ys, static: bool, g: str) -> str:
    """int64, shaped like the pool's output: the row-major offset inside its window of each
    window's chosen element. Per spatial axis (innermost first) the coordinate is peeled off the
    flat index, the window's start o*stride - pad_begin subtracted and the result divided by the
    dilation; the per-axis offsets then combine with the kernel's row-major strides."""
    e = ctx.emitter
    n = len(geo.kernel)
    rest, total = indices, None
    for a in reversed(range(n)):
        size = e.ints([xs[a]], name="size") if xs is not None else _dim(ctx, ctx.x, 2 + a)
        above = e.op("Div", [rest, size])
        coord = e.op("Sub", [rest, e.op("Mul", [above, size])])
        rest = above
        step = e.op("Sub", [coord, _window_starts(ctx, geo, a, ys, static, g)])
        if geo.dilations[a] != 1:
            step = e.op("Div", [step, e.ints([geo.dilations[a]], name="dilation")])
        weight = int(np.prod(geo.kernel[a + 1:]))
        if weight != 1:
            step = e.op("Mul", [step, e.ints([weight], name="kernel_stride")])
        total = step if total is None else e.op("Add", [total, step])
    return total


def _dim(ctx: RuleContext, v: str, axis: int) -> str:
    """Dimension `axis` of v at run time, as a [1] int64 tensor."""
    e = ctx.emitter
    return e.op("Slice", [e.op("Shape", [v]), e.ints([axis], name="starts"), e.ints([axis + 1], name="ends")])


def _window_starts(ctx: RuleContext, geo: Geometry, a: int, ys, static: bool, g: str) -> str:
    """Where each window starts along spatial axis a, o*stride - pad_begin, shaped to broadcast
    against the output ([out_a, 1, ..., 1]): a constant when the output's size is static and
    agreed on; else a Range over the run-time size, or (opset 10, static x) the constant cut at
    the run-time size, which hides its length from shape inference."""
    e = ctx.emitter
    n = len(geo.kernel)
    trailing = (1,) * (n - 1 - a)
    if static:
        starts = np.arange(ys[a], dtype=np.int64) * geo.strides[a] - geo.begin[a]
        return e.const(starts.reshape((ys[a],) + trailing), name="window_starts")
    if ctx.opset >= 11:
        count = e.squeeze(_dim(ctx, g, 2 + a), [0])
        positions = e.op("Range", [e.const(np.int64(0), name="zero"), count, e.const(np.int64(1), name="one")])
        starts = e.op("Sub", [e.op("Mul", [positions, e.ints([geo.strides[a]], name="stride")]),
                              e.ints([geo.begin[a]], name="pad_begin")])
    else:
        every = e.const(np.arange(ys[a], dtype=np.int64) * geo.strides[a] - geo.begin[a], name="window_starts")
        starts = e.op("Slice", [every, e.ints([0], name="starts"), _dim(ctx, g, 2 + a), e.ints([0])])
    return e.op("Reshape", [starts, e.ints([-1, *trailing], name="window_axis")])


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
    spread = e.expand_like(g, x)
    xs = ctx.shape(x)
    if xs is not None and all(isinstance(d, int) for d in xs[2:]):
        return [ctx.op("Mul", [spread, ctx.scalar(1.0 / float(np.prod(xs[2:])))])]
    rank = ctx.rank(x)
    area = e.reduce("ReduceProd", e.slice(e.op("Shape", [x]), [2], [rank], [0]), [0], keepdims=0)
    return [ctx.op("Div", [spread, ctx.op("Cast", [area], to=ctx.view.elem_type(x))])]


@rule("GlobalMaxPool")
def global_max_pool(ctx: RuleContext, g):
    e = ctx.emitter
    flat = e.op("Reshape", [ctx.x, e.ints([0, 0, -1], name="nc_flat")])
    first = ctx.op("ArgMax", [flat], axis=2, keepdims=1)
    gflat = e.op("Reshape", [g, e.ints([0, 0, 1], name="nc_one")])
    spread = ctx.op("ScatterElements", [ctx.zeros_like(flat), first, gflat], axis=2)
    return [e.reshape_like(spread, ctx.x)]
