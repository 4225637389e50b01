"""Grad-CAM (Selvaraju et al.), Grad-CAM++ (Chattopadhay et al.) and guided Grad-CAM, as one graph.

weights α_k = spatial mean of ∂y/∂A_k (Grad-CAM++: the positive gradients weighted by
g²/(2g² + ΣA·g³)); map = ReLU(Σ_k α_k A_k), upsampled to the input's spatial size (bilinear by
default), min-max normalised per sample unless normalize=False. Guided Grad-CAM multiplies guided
backprop by the upsampled map (Captum's definition), with a second backward pass from the same seed.

On a vision transformer the layer is a token map [N, T, D] (`onnxsal.vit`): the prefix tokens
(class, distillation, register) are dropped and the h·w patch tokens read as the grid [N, D, h, w]
(h, w from the patch embedding Conv, or `grid=`), then the same weights, ReLU and upsampling. The
default layer there is the input of the last attention block (pytorch-grad-cam's `blocks[-1].norm1`).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ..autodiff import GRADIENT, SeedSpec, differentiable_path, differentiate, rule_set
from ..errors import InvalidInputError
from ..layers import feature_maps, guess_layout, resolve_layer
from ..vit import TokenMap, token_layer
from . import Method, register
from .graphs import AttributionGraph, GraphEditor

INTERPOLATIONS = ("bilinear", "nearest")


def find_layer(explainer, x: str, layer: str | None, grid=None):
    """The layer: a token map on a transformer (or a named rank-3 value), else a feature map."""
    path = [n.name for n in differentiable_path(explainer.view, GRADIENT, [x], explainer.output)]
    tokens = token_layer(explainer.view, path, layer, grid)
    return tokens if tokens is not None else resolve_layer(explainer.view, feature_maps(explainer.view, path), layer)


def _weights(e, grad: str, activations: str, spatial: list[int], plus: bool, dtype) -> str:
    """α_k per sample and channel, in `dtype`. Grad-CAM++'s g³ terms underflow in half precision
    (g ~ 1e-2 gives g³ below float16's smallest normal), so they are computed in float32 there."""
    if not plus:
        return e.reduce("ReduceMean", grad, spatial, keepdims=1)
    if np.dtype(dtype).itemsize < 4:
        wide = _weights(e, e.cast(grad, np.float32), e.cast(activations, np.float32), spatial, plus, np.float32)
        return e.cast(wide, dtype)
    g2 = e.op("Mul", [grad, grad])
    g3 = e.op("Mul", [g2, grad])
    total = e.reduce("ReduceSum", activations, spatial, keepdims=1)
    eps = e.scalar(max(1e-7, float(np.finfo(dtype).tiny)), dtype, name="eps")
    denom = e.op("Add", [e.op("Add", [e.op("Add", [g2, g2]), e.op("Mul", [total, g3])]), eps])
    zero = e.scalar(0, dtype, name="zero")
    nonzero = e.op("Greater", [e.op("Abs", [grad]), zero])  # not Equal: float Equal needs opset 11
    alpha = e.op("Where", [nonzero, e.op("Div", [g2, denom]), zero])
    return e.reduce("ReduceSum", e.op("Mul", [e.op("Relu", [grad]), alpha]), spatial, keepdims=1)


def input_sized(e, cam: str, x: str, x_shape, interpolation: str, dtype, normalize: bool) -> str:
    """A map [N,1,h,w] brought to the input's size (`interpolation`), min-max normalised per sample
    when `normalize`, and to the input's layout (NHWC inputs get [N,H,W,1])."""
    x_layout = guess_layout(x_shape)
    cam = _upsample(e, cam, x, x_layout, interpolation, dtype)
    if normalize:
        lo = e.reduce("ReduceMin", cam, [1, 2, 3], keepdims=1)
        span = e.op("Max", [e.op("Sub", [e.reduce("ReduceMax", cam, [1, 2, 3], keepdims=1), lo]),
                            e.scalar(max(1e-12, float(np.finfo(dtype).tiny)), dtype, name="tiny")])
        cam = e.op("Div", [e.op("Sub", [cam, lo]), span])
    return e.transpose(cam, [0, 2, 3, 1]) if x_layout == "NHWC" else cam


def _upsample(e, cam: str, x: str, x_layout: str, interpolation: str, dtype) -> str:
    """cam [N,1,h,w] resized to x's spatial size."""
    shape_x = e.op("Shape", [x])
    lo, hi = (2, 4) if x_layout == "NCHW" else (1, 3)
    sizes = e.op("Concat", [e.slice(e.op("Shape", [cam]), [0], [2], [0]), e.slice(shape_x, [lo], [hi], [0])], axis=0)
    return e.resize(cam, sizes, "linear" if interpolation == "bilinear" else "nearest", dtype)


def build_gradcam(explainer, target_kind, softmax, wrt, layer=None, interpolation="bilinear", normalize=None,
                  plus=False, guided=False, name="gradcam", grid=None):
    if interpolation not in INTERPOLATIONS:
        raise InvalidInputError(f"interpolation must be one of {INTERPOLATIONS}, not {interpolation!r}.")
    x = wrt[0]
    x_shape = explainer.view.shape(x)
    if x_shape is None or len(x_shape) != 4:
        raise InvalidInputError(f"Grad-CAM explains image inputs of rank 4; {x!r} has shape {x_shape}.")
    fm = find_layer(explainer, x, layer, grid)
    gg = explainer.gradient_graph("gradient", softmax, target_kind, [fm.value])
    model, drop = gg.model, [gg.grads[fm.value]]
    guided_grad = None
    if guided:
        second = differentiate(model, rule_set("guided_backprop", softmax), wrt=[x], output=explainer.output,
                               seed=SeedSpec("value", gg.seed_value))
        model, guided_grad = second.model, second.grads[x]
        drop.append(guided_grad)
    ed = GraphEditor(model, prefix=f"{name}/")
    e = ed.e
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(explainer.view.elem_type(fm.value) or onnx.TensorProto.FLOAT))
    if isinstance(fm, TokenMap):  # patch tokens [N, h·w, D]: the grid's positions on axis 1, channels on axis 2
        (h, w), lo = fm.grid, fm.prefix
        acts = e.slice(fm.value, [lo], [lo + h * w], [1])
        weights = _weights(e, e.slice(gg.grads[fm.value], [lo], [lo + h * w], [1]), acts, [1], plus, dtype)
        cam = e.op("Relu", [e.reduce("ReduceSum", e.op("Mul", [weights, acts]), [2], keepdims=1)])
        cam = e.op("Reshape", [cam, e.ints([0, 1, h, w], name="grid")])
    else:
        weights = _weights(e, gg.grads[fm.value], fm.value, fm.spatial_axes, plus, dtype)
        cam = e.op("Relu", [e.reduce("ReduceSum", e.op("Mul", [weights, fm.value]), [fm.channel_axis], keepdims=1)])
        if fm.layout == "NHWC":
            cam = e.transpose(cam, [0, 3, 1, 2])
    cam = input_sized(e, cam, x, x_shape, interpolation, dtype, normalize=not guided if normalize is None else normalize)
    out = e.fresh(name)
    if guided:
        e.op("Mul", [guided_grad, cam], out=out)
    else:
        e.op("Identity", [cam], out=out)
    et = explainer.view.elem_type(x)
    shape = [x_shape[0], x_shape[1], x_shape[2], x_shape[3]]
    if not guided:
        shape[1 if guess_layout(x_shape) == "NCHW" else 3] = 1
    model = ed.finish([(out, et, shape)], drop=tuple(drop))
    return AttributionGraph(model, {x: out}, gg.target_input, gg.seed_input, {"layer": fm.value})


def _variant(name: str, plus: bool = False, guided: bool = False):
    def build(explainer, target_kind, softmax, wrt, layer=None, interpolation="bilinear", normalize=None, grid=None):
        return build_gradcam(explainer, target_kind, softmax, wrt, layer=layer, interpolation=interpolation,
                             normalize=normalize, plus=plus, guided=guided, name=name, grid=grid)

    return build


register(Method("gradcam", _variant("gradcam"), summary="ReLU(Σ_k mean(∂y/∂A_k)·A_k), upsampled"))
register(Method("gradcam_plus_plus", _variant("gradcam_plus_plus", plus=True), summary="Grad-CAM++ weights"))
register(Method("guided_gradcam", _variant("guided_gradcam", guided=True), summary="guided backprop × Grad-CAM"))
