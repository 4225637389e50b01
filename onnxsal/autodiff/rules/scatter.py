"""Shared backward of selection ops (MaxPool, Slice, Gather, ReduceMax): scatter into zeros."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from ..registry import RuleContext

# Element types whose ScatterElements(reduction="add") onnxruntime's CPU provider refuses at run time.
NO_ADD_KERNEL = {np.dtype(np.float16), np.dtype(helper.tensor_dtype_to_np_dtype(TensorProto.BFLOAT16))}


def scatter_flat(ctx: RuleContext, x: str, flat_indices: str, g: str, repeats: bool) -> str:
    """Zeros shaped like x with g added at flat_indices (an index tensor shaped like g).

    `repeats` says an element of x may be selected more than once; those contributions add up,
    which needs ScatterElements' reduction (opset 16). For float16 and bfloat16 gradients that sum
    is taken in float32 (onnxruntime's CPU provider has no float16 kernel for it) and cast back.
    """
    e = ctx.emitter
    flat = e.ints([-1], name="flat")
    if repeats and ctx.opset < 16:
        ctx.unsupported("elements selected more than once need ScatterElements with reduction (opset >= 16)")
    wide = repeats and ctx.dtype in NO_ADD_KERNEL
    updates = e.op("Reshape", [g, flat])
    if wide:
        updates = e.op("Cast", [updates], to=TensorProto.FLOAT)
    zeros = e.zeros_like(e.op("Reshape", [x, flat]), np.float32 if wide else ctx.dtype)
    out = e.op(
        "ScatterElements",
        [zeros, e.op("Reshape", [flat_indices, flat]), updates],
        axis=0,
        reduction="add" if repeats else None,
    )
    if wide:
        out = e.op("Cast", [out], to=ctx.view.elem_type(ctx.y) or helper.np_dtype_to_tensor_dtype(ctx.dtype))
    return e.reshape_like(out, x)


def index_map(ctx: RuleContext, x: str) -> str:
    """An int64 tensor shaped like x whose entries are their own flat positions."""
    e = ctx.emitter
    if ctx.opset < 11:  # no Range: a constant map of the static shape (opset-7..10 files are small)
        shape = ctx.view.static_shape(x)
        if shape is None:
            ctx.needs_shapes(f"below opset 11 (no Range) the positions of '{x}' need its static shape")
        return e.const(np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape), name="positions")
    size = e.op("Size", [x])
    positions = e.op("Range", [e.const(0, dtype="int64", name="zero"), size, e.const(1, dtype="int64", name="one")])
    return e.reshape_like(positions, x)
