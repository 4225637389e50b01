"""Resize (nearest, linear, cubic; any coordinate mode): a separable linear map, transposed.

For fixed scales Resize is linear in x and acts on each resized axis separately, y = R_h x R_w^T.
Each axis's interpolation matrix R is read off the ONNX reference implementation at build time by
resizing an identity matrix, so its exact conventions are honoured; the backward is R^T per axis.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper
from onnx.reference import ReferenceEvaluator

from ..registry import RuleContext, rule


def _interpolation_matrix(ctx: RuleContext, axis: int, rank: int, n_in: int, n_out: int, scale: float | None) -> np.ndarray:
    """R of shape (n_out, n_in) for one axis, by resizing the identity placed on (other, axis)."""
    other = 0 if axis != 0 else 1
    shape = [1] * rank
    shape[axis], shape[other] = n_in, n_in
    eye = np.eye(n_in, dtype=np.float64).reshape(shape)
    attrs = {a.name: helper.get_attribute_value(a) for a in ctx.node.attribute if a.name != "axes"}
    if scale is not None:
        scales = np.ones(rank, dtype=np.float32)
        scales[axis] = scale
        inputs, feeds = ["x", "", "scales"], {"scales": scales}
    else:
        sizes = np.array(shape, dtype=np.int64)
        sizes[axis] = n_out
        inputs, feeds = ["x", "", "", "sizes"], {"sizes": sizes}
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


@rule("Resize", "Upsample")
def resize(ctx: RuleContext, g):
    x = ctx.x
    xs, ys = ctx.view.static_shape(x), ctx.view.static_shape(ctx.y)
    if xs is None or ys is None:
        ctx.unsupported("Resize gradients need static input and output shapes")
    rank = len(xs)
    scales_in = 1 if ctx.node.op_type == "Upsample" else 2
    scales = ctx.const(scales_in) if ctx.input(scales_in) else None
    if scales is not None and scales.size == 0:
        scales = None
    if ctx.node.op_type == "Resize" and ctx.opset >= 18 and ctx.attr("axes") is not None and scales is not None:
        full = np.ones(rank, dtype=np.float32)
        for a, s in zip(ctx.attr("axes"), scales):
            full[a % rank] = s
        scales = full
    e = ctx.emitter
    out = g
    for axis in range(rank):
        scale = None if scales is None else float(scales[axis])
        if xs[axis] == ys[axis] and (scale is None or scale == 1.0):
            continue
        r = _interpolation_matrix(ctx, axis, rank, xs[axis], ys[axis], scale).astype(ctx.dtype)
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
