"""Resize (nearest, linear, cubic; any coordinate mode): a separable linear map, transposed.

For fixed scales Resize is linear in x and acts on each resized axis separately, y = R_h x R_w^T.
Each axis's interpolation matrix R is read off the ONNX reference implementation at build time by
resizing an identity matrix, so its exact conventions are honoured; the backward is R^T per axis.
Upsample and Resize-10 sample like Resize-11's asymmetric mode with the nearest index rounded down
(as onnxruntime runs them); tf_crop_and_resize crops each axis to its roi, and its constant fill
outside the roi does not depend on x.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper
from onnx.reference import ReferenceEvaluator

from ..registry import RuleContext, rule


def _interpolation_matrix(
    ctx: RuleContext, axis: int, rank: int, n_in: int, n_out: int, scale: float | None, roi: tuple | None
) -> np.ndarray:
    """R of shape (n_out, n_in) for one axis, by resizing the identity placed on (other, axis)."""
    other = 0 if axis != 0 else 1
    shape = [1] * rank
    shape[axis], shape[other] = n_in, n_in
    eye = np.eye(n_in, dtype=np.float64).reshape(shape)
    attrs = {a.name: helper.get_attribute_value(a) for a in ctx.node.attribute if a.name not in ("axes", "scales")}
    if _legacy(ctx):  # Upsample and Resize-10 sample at x_out / scale, the nearest one rounded down
        attrs.update(coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    if scale is not None:
        scales = np.ones(rank, dtype=np.float32)
        scales[axis] = scale
        inputs, feeds = ["x", "", "scales"], {"scales": scales}
    else:
        sizes = np.array(shape, dtype=np.int64)
        sizes[axis] = n_out
        inputs, feeds = ["x", "", "", "sizes"], {"sizes": sizes}
    if roi is not None:  # tf_crop_and_resize: this axis's crop; the constant fill outside is no part of R
        box = np.concatenate([np.zeros(rank), np.ones(rank)]).astype(np.float32)
        box[axis], box[rank + axis] = roi
        inputs[1], feeds["roi"] = "roi", box
        attrs["extrapolation_value"] = 0.0
    node = helper.make_node("Resize", inputs, ["y"], **attrs)
    graph = helper.make_graph(
        [node], "resize_matrix",
        [helper.make_tensor_value_info("x", onnx.TensorProto.DOUBLE, shape)]
        + [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), [rank]) for k, v in feeds.items()],
        [helper.make_tensor_value_info("y", onnx.TensorProto.DOUBLE, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", max(ctx.opset, 11))])
    y = ReferenceEvaluator(model).run(None, {"x": eye, **feeds})[0]
    y = np.moveaxis(y.reshape([s for s in y.shape]), (other, axis), (0, 1)).reshape(n_in, -1)
    return y.T  # (n_out, n_in): column j is the resized j-th basis vector


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else v


def _crop_boxes(ctx: RuleContext, rank: int, axes: list[int]) -> list[tuple[float, float]] | None:
    """Per-axis (start, end) of the roi for tf_crop_and_resize; None for the other coordinate modes."""
    if _legacy(ctx) or _text(ctx.attr("coordinate_transformation_mode", "half_pixel")) != "tf_crop_and_resize":
        return None
    roi = ctx.const(1) if ctx.input(1) else None
    if roi is None:
        ctx.unsupported("tf_crop_and_resize needs a constant roi")
    roi = np.ravel(roi).astype(np.float64)
    boxes = [(0.0, 1.0)] * rank
    for i, a in enumerate(axes):
        boxes[a] = (float(roi[i]), float(roi[len(axes) + i]))
    return boxes


def _legacy(ctx: RuleContext) -> bool:
    """Upsample, and Resize before opset 11: (X, scales) inputs and the asymmetric/floor sampling."""
    return ctx.node.op_type == "Upsample" or ctx.opset < 11


@rule("Resize", "Upsample")
def resize(ctx: RuleContext, g):
    x = ctx.x
    xs, ys = ctx.shape(x), ctx.shape(ctx.y)
    if xs is None or ys is None:
        ctx.needs_shapes("Resize gradients need the ranks of the input and output")
    rank = len(xs)
    scales_in = 1 if _legacy(ctx) else 2
    scales = ctx.const(scales_in) if ctx.input(scales_in) else None
    if ctx.attr("scales") is not None:  # Upsample before opset 9
        scales = np.asarray(ctx.attr("scales"), dtype=np.float32)
    if scales is not None and scales.size == 0:
        scales = None
    axes = [a % rank for a in ctx.attr("axes")] if ctx.attr("axes") is not None else list(range(rank))
    if ctx.node.op_type == "Resize" and ctx.opset >= 18 and scales is not None:
        full = np.ones(rank, dtype=np.float32)
        full[axes] = scales
        scales = full
    if scales is None and _text(ctx.attr("keep_aspect_ratio_policy", "stretch")) != "stretch":
        ctx.unsupported("Resize with keep_aspect_ratio_policy other than 'stretch' is not differentiated")
    rois = _crop_boxes(ctx, rank, axes)
    e = ctx.emitter
    out = g
    for axis in range(rank):
        scale = None if scales is None else float(scales[axis])
        untouched = (scale is None or scale == 1.0) and (rois is None or rois[axis] == (0.0, 1.0))
        if untouched and (xs[axis] == ys[axis] or scale == 1.0):
            continue  # (a free batch axis resized by 1 is left alone)
        if not isinstance(xs[axis], int) or not isinstance(ys[axis], int):
            ctx.needs_shapes(f"axis {axis} is resized, and its sizes must be static, not {xs[axis]} -> {ys[axis]}")
        roi = None if rois is None else rois[axis]
        r = _interpolation_matrix(ctx, axis, rank, xs[axis], ys[axis], scale, roi).astype(ctx.dtype)
        if axis == rank - 1:
            out = ctx.op("MatMul", [out, e.const(r, name="resize_matrix")])
        elif axis == rank - 2:
            out = ctx.op("MatMul", [e.const(r.T, name="resize_matrix_t"), out])
        else:
            perm = list(range(rank))
            perm[axis], perm[-1] = perm[-1], perm[axis]
            moved = ctx.op("MatMul", [e.transpose(out, perm), e.const(r, name="resize_matrix")])
            out = e.transpose(moved, perm)
    return [out] + [None] * (len(ctx.node.input) - 1)
