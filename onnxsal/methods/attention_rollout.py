"""Attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers"), as one graph.

The attention probabilities A_l [N, heads, T, T] of every self-attention block on the path from the
image to the output (`onnxsal.vit.attention_blocks`: the Softmax outputs over keys) are fused
over heads (mean by default; max or min), the identity is added for the residual connection and
the rows renormalised, Â_l = (A_l + I) / rowsum, and the layers are multiplied through,
R = Â_L ··· Â_2 Â_1. The class token's row of R over the h·w patch tokens, reshaped to the patch
grid, is the map; it is upsampled to the input's size (bilinear by default) and min-max normalised
per sample unless normalize=False.

`discard_ratio` (from the widely used vit-explain implementation, not the paper) zeroes, per sample
and layer, that fraction of the lowest entries of the fused T×T map before the identity is added,
keeping the class token's attention to itself. Unlike that implementation, rows are renormalised
along the keys axis and every sample of a batch gets its own discarding.

No gradient is used and the target is not read: rollout describes how information flows from the
patches to the class token, whatever class is explained. A `target` passed to `attribute` is
accepted and ignored, and a compiled graph still takes the target input so that it can stand in
for a Grad-CAM graph. Everything runs in the graph, so the method compiles like Grad-CAM.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ..errors import InvalidInputError, NeedsShapesError
from ..layers import guess_layout
from ..perturbation.score_cam import forward_path
from ..vit import attention_blocks, patch_grid
from . import Method, register
from .gradcam import INTERPOLATIONS, input_sized
from .graphs import AttributionGraph, GraphEditor

HEAD_FUSIONS = {"mean": "ReduceMean", "max": "ReduceMax", "min": "ReduceMin"}


def build_rollout(explainer, target_kind, softmax, wrt, head_fusion="mean", discard_ratio=0.0, interpolation="bilinear",
                  normalize=True, grid=None):
    if head_fusion not in HEAD_FUSIONS:
        raise InvalidInputError(f"head_fusion must be one of {tuple(HEAD_FUSIONS)}, not {head_fusion!r}.")
    if not isinstance(discard_ratio, (int, float)) or not 0 <= discard_ratio < 1:
        raise InvalidInputError(f"discard_ratio must be a number in [0, 1), not {discard_ratio!r}.")
    if interpolation not in INTERPOLATIONS:
        raise InvalidInputError(f"interpolation must be one of {INTERPOLATIONS}, not {interpolation!r}.")
    view, x = explainer.view, wrt[0]
    x_shape = view.shape(x)
    if x_shape is None or len(x_shape) != 4:
        raise InvalidInputError(f"attention rollout explains image inputs of rank 4; {x!r} has shape {x_shape}.")
    attns = attention_blocks(view, set(forward_path(view, x, explainer.output)))
    if not attns:
        raise InvalidInputError(
            f"attention rollout needs the attention probabilities (a Softmax over keys of shape [N, heads, T, T] whose output "
            f"multiplies the values) and the path from {x!r} to {explainer.output!r} has none; export the model with eager "
            f"attention (transformers: attn_implementation='eager') so that they appear in the graph.")
    tokens = {(view.shape(a.probs) or (None,))[-1] for a in attns}
    if len(tokens) != 1 or not isinstance(next(iter(tokens)), int):
        raise NeedsShapesError("attention rollout needs the token count of the attention maps, which the file leaves dynamic "
                               "or which differs between blocks; fix the input shape (input_shapes= / --input-shape).")
    t = tokens.pop()
    (h, w), prefix = patch_grid(view, attns[0].probs, t, grid, what="attention map")
    if prefix < 1:
        raise InvalidInputError(f"attention rollout reads the class token's row, and the {t} tokens of {attns[0].probs!r} "
                                f"are all {h}x{w} patches (no class token in front); pass grid=(h, w) if that is wrong.")
    ed = GraphEditor(explainer.model, prefix="attention_rollout/")
    e = ed.e
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(view.elem_type(attns[0].probs) or onnx.TensorProto.FLOAT))
    eye = e.const(np.eye(t, dtype=dtype), name="identity")
    keep_first = e.const((np.arange(t * t) == 0).astype(dtype), name="keep_class_to_class")
    n_discard = int(t * t * discard_ratio)
    joint = None
    for a in attns:
        fused = e.reduce(HEAD_FUSIONS[head_fusion], a.probs, [1], keepdims=0)  # [N, T, T]
        if n_discard:
            flat = e.op("Reshape", [fused, e.ints([0, t * t], name="flat")])
            lowest = _lowest(e, flat, n_discard)
            ones = e.op("ConstantOfShape", [e.op("Shape", [flat])],
                        value=helper.make_tensor("value", helper.np_dtype_to_tensor_dtype(dtype), [1], [1]))
            zeros = e.zeros_like(lowest, dtype)
            mask = e.op("Max", [e.op("ScatterElements", [ones, lowest, zeros], axis=1), keep_first])
            fused = e.op("Reshape", [e.op("Mul", [flat, mask]), e.ints([0, t, t], name="square")])
        aug = e.op("Add", [fused, eye])
        aug = e.op("Div", [aug, e.reduce("ReduceSum", aug, [2], keepdims=1)])
        joint = aug if joint is None else e.op("MatMul", [aug, joint])
    row = e.slice(joint, [0, prefix], [1, prefix + h * w], [1, 2])  # the class token's row over the patches [N, 1, h·w]
    cam = e.op("Reshape", [row, e.ints([0, 1, h, w], name="grid")])
    cam = input_sized(e, cam, x, x_shape, interpolation, dtype, normalize)
    out = e.fresh("attention_rollout")
    et = view.elem_type(x)
    if et != helper.np_dtype_to_tensor_dtype(dtype):
        cam = e.op("Cast", [cam], to=et)
    e.op("Identity", [cam], out=out)
    target_input, seed_input = _ignored_target(ed, explainer, x_shape, target_kind)
    shape = list(x_shape)
    shape[1 if guess_layout(x_shape) == "NCHW" else 3] = 1
    model = ed.finish([(out, et, shape)])
    return AttributionGraph(model, {x: out}, target_input, seed_input)


def _lowest(e, flat: str, k: int) -> str:
    """Indices [N, k] of the k smallest entries of each row: TopK of the negated row (TopK's `largest`
    attribute needs opset 11; k is an input from opset 10, an attribute before)."""
    negated = e.op("Neg", [flat])
    if e.opset >= 10:
        return e.op("TopK", [negated, e.ints([k], name="k")], n_out=2, axis=-1)[1]
    return e.op("TopK", [negated], n_out=2, axis=-1, k=k)[1]


def _ignored_target(ed: GraphEditor, explainer, x_shape, target_kind: str):
    """The target input a graph of this kind takes (int64 [N] or a seed of the output's shape), which
    rollout does not read."""
    batch = x_shape[0] if isinstance(x_shape[0], str) else "N"
    if target_kind == "target":
        name = ed.e.fresh("target")
        ed.model.graph.input.append(helper.make_tensor_value_info(name, onnx.TensorProto.INT64, [batch]))
        return name, None
    if target_kind == "tensor":
        spec = next(o for o in explainer.outputs if o.name == explainer.output)
        name = ed.e.fresh(f"{explainer.output}_seed")
        shape = None if spec.shape is None else [batch] + [d if isinstance(d, int) else None for d in spec.shape[1:]]
        ed.model.graph.input.append(helper.make_tensor_value_info(name, explainer.view.elem_type(explainer.output), shape))
        return None, name
    if target_kind != "argmax":
        raise InvalidInputError(f"target must be 'argmax', 'target' or 'tensor', not {target_kind!r}.")
    return None, None


register(Method("attention_rollout", build_rollout, gradient_free=True,
                summary="class-token row of the head-fused, residual-augmented attention maps multiplied through the layers"))
