"""Convolutions: Conv (grouped, depthwise, strided, dilated, padded, auto_pad) and ConvTranspose.

The input gradient of a Conv is a ConvTranspose with the same weights; that of a ConvTranspose
is a Conv with the same weights. Only data gradients are built: weights are constants here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..registry import RuleContext, rule


@dataclass
class Geometry:
    kernel: list[int]
    strides: list[int]
    dilations: list[int]
    begin: list[int]
    end: list[int]

    @property
    def extent(self) -> list[int]:
        """Effective kernel extent (k - 1) * d + 1 per spatial axis."""
        return [(k - 1) * d + 1 for k, d in zip(self.kernel, self.dilations)]

    @property
    def pads(self) -> list[int]:
        return self.begin + self.end


def _auto_pad(ctx: RuleContext) -> str:
    v = ctx.attr("auto_pad", "NOTSET")
    return v.decode() if isinstance(v, bytes) else v


def geometry(ctx: RuleContext, spatial_in: list[int] | None, kernel: list[int]) -> Geometry:
    """Kernel, strides, dilations and explicit pads of a Conv/Pool node (auto_pad resolved)."""
    n = len(kernel)
    strides = list(ctx.attr("strides", [1] * n))
    dilations = list(ctx.attr("dilations", [1] * n))
    pads = list(ctx.attr("pads", [0] * (2 * n)))
    mode = _auto_pad(ctx)
    if mode in ("SAME_UPPER", "SAME_LOWER"):
        if spatial_in is None:
            ctx.needs_shapes("auto_pad SAME needs static spatial sizes")
        begin, end = [], []
        for i in range(n):
            out = -(-spatial_in[i] // strides[i])
            total = max((out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - spatial_in[i], 0)
            small = total // 2
            begin.append(small if mode == "SAME_UPPER" else total - small)
            end.append(total - begin[-1])
        return Geometry(kernel, strides, dilations, begin, end)
    if mode == "VALID":
        pads = [0] * (2 * n)
    return Geometry(kernel, strides, dilations, pads[:n], pads[n:])


def spatial(ctx: RuleContext, name: str) -> list[int] | None:
    s = ctx.view.static_shape(name)
    if s is None:
        shape = ctx.shape(name)
        if shape is None or any(not isinstance(d, int) for d in shape[2:]):
            return None
        return list(shape[2:])
    return list(s[2:])


def transpose_back(ctx: RuleContext, g: str, x: str, y: str, weight: str, geo: Geometry, group: int) -> str:
    """Adjoint of a Conv-like op with this geometry: a ConvTranspose that lands exactly on x's shape."""
    xs, ys = spatial(ctx, x), spatial(ctx, y)
    attrs = dict(strides=geo.strides, dilations=geo.dilations, group=group, kernel_shape=geo.kernel)
    if xs is not None and ys is not None:
        end, extra = [], []
        for i in range(len(geo.kernel)):
            # full ConvTranspose length s*(ys-1)+extent; crop `begin` in front and the rest behind.
            rest = geo.strides[i] * (ys[i] - 1) + geo.extent[i] - geo.begin[i] - xs[i]
            end.append(max(rest, 0))
            extra.append(max(-rest, 0))
        return ctx.op("ConvTranspose", [g, weight], pads=geo.begin + end, output_padding=extra, **attrs)
    if _auto_pad(ctx) in ("SAME_UPPER", "SAME_LOWER"):
        ctx.needs_shapes("auto_pad SAME with dynamic spatial sizes")
    # Dynamic spatial sizes: overshoot by stride-1 at the end, then crop to x's run-time shape.
    extra = [s - 1 if s > 1 else 0 for s in geo.strides]
    full = ctx.op("ConvTranspose", [g, weight], pads=geo.begin + [0] * len(geo.end), output_padding=extra, **attrs)
    e = ctx.emitter
    n = len(geo.kernel)
    ends = e.op("Slice", [e.op("Shape", [x]), e.ints([2]), e.ints([2 + n])])
    return e.op("Slice", [full, e.ints([0] * n), ends, e.ints(list(range(2, 2 + n)))])


def data_and_kernel(ctx: RuleContext) -> tuple[str, str, list[int]]:
    """The data input, the weights and the kernel's spatial shape of a Conv or ConvTranspose, whose
    weight and bias gradients onnxsal does not build (weights are constants to attribution)."""
    x, w = ctx.input(0), ctx.input(1)
    if any(ctx.wants[1:]):
        ctx.unsupported("gradients with respect to convolution weights or bias are not built by onnxsal")
    ws = ctx.view.static_shape(w)
    return x, w, list(ctx.attr("kernel_shape", ws[2:] if ws else []))


@rule("Conv")
def conv(ctx: RuleContext, g):
    x, w, kernel = data_and_kernel(ctx)
    if not kernel:
        ctx.needs_shapes("the kernel shape is unknown")
    geo = geometry(ctx, spatial(ctx, x), kernel)
    group = ctx.attr("group", 1)
    gx = correlate_back(ctx, g, w, geo, group)
    if gx is None:
        gx = transpose_back(ctx, g, x, ctx.y, w, geo, group)
    return [gx, None, None]


def correlate_back(ctx: RuleContext, g: str, w: str, geo: Geometry, group: int) -> str | None:
    """The input gradient of a stride-1 Conv with constant weights, as a Conv: full correlation of g
    with the weights flipped in space and transposed within each group, prepared once here.
    ONNX Runtime's Conv kernels are much faster than its ConvTranspose (above all for depthwise
    convolutions). None when the conv is strided or its weights are computed at run time."""
    weights = ctx.const(1)
    if weights is None or any(s != 1 for s in geo.strides):
        return None
    begin = [e - 1 - b for e, b in zip(geo.extent, geo.begin)]
    end = [e - 1 - b for e, b in zip(geo.extent, geo.end)]
    if min(begin + end) < 0:  # padding wider than the kernel: the transposed form handles it
        return None
    m, per_group = weights.shape[:2]
    spatial_axes = tuple(range(2, weights.ndim))
    grouped = weights.reshape((group, m // group, per_group) + weights.shape[2:])
    flipped = np.flip(grouped.swapaxes(1, 2), axis=tuple(a + 1 for a in spatial_axes))
    kernel = np.ascontiguousarray(flipped.reshape((group * per_group, m // group) + weights.shape[2:]))
    return ctx.op("Conv", [g, ctx.emitter.const(kernel, name="flipped_weights")], pads=begin + end,
                  dilations=geo.dilations, group=group, kernel_shape=geo.kernel)


@rule("ConvTranspose")
def conv_transpose(ctx: RuleContext, g):
    x, w, kernel = data_and_kernel(ctx)
    xs, ys = spatial(ctx, x), spatial(ctx, ctx.y)
    n = len(kernel)
    strides = list(ctx.attr("strides", [1] * n))
    dilations = list(ctx.attr("dilations", [1] * n))
    begin = list(ctx.attr("pads", [0] * (2 * n)))[:n]
    if ctx.attr("output_shape") is not None or _auto_pad(ctx) in ("SAME_UPPER", "SAME_LOWER"):
        if xs is None or ys is None:
            ctx.needs_shapes("output_shape/auto_pad need static spatial sizes")
        upper = _auto_pad(ctx) == "SAME_UPPER"  # the spec (and onnxruntime): NOTSET splits like SAME_LOWER
        begin = []
        for i in range(n):
            total = strides[i] * (xs[i] - 1) + ctx.attr("output_padding", [0] * n)[i] + (kernel[i] - 1) * dilations[i] + 1 - ys[i]
            begin.append(total // 2 if upper else total - total // 2)
    if xs is not None and ys is not None:
        # y[o] gathers x[i] at o = i*s + j*d - begin: a Conv over y padded by `begin`, sized to x.
        end = [max((xs[i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - ys[i] - begin[i], 0) for i in range(n)]
    else:
        end = list(ctx.attr("pads", [0] * (2 * n)))[n:]
    gx = ctx.op("Conv", [g, w], strides=strides, dilations=dilations, pads=begin + end, group=ctx.attr("group", 1), kernel_shape=kernel)
    return [gx, None, None]
