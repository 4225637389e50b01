"""The linear layers LRP rules modify: Conv, ConvTranspose, Gemm, and MatMul with a constant side.

An LRP rule for a linear layer y = W x + b needs three things of the node, whatever its op type:
the forward computed again with modified weights and inputs (z = W' x' + b'), and the transposed
product Wᵀ s for other weights W'. `LinearLayer` gives both. The modified forward is a copy of
the node (same attributes) with other inputs; the transposed product is the op's own vanilla
gradient rule applied to that copy, so strides, pads, groups, transposes and broadcasting are
handled once, in the gradient rules. Modified weights are computed once, at build time, when the
weights are constants (the usual case), and as graph ops otherwise.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from onnx import helper

from ..autodiff.registry import DEFAULT_RULES, RuleContext

LINEAR_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")

# name -> (NumPy form applied to constant weights, graph form applied to computed ones)
WeightMod = tuple[Callable[[np.ndarray], np.ndarray], Callable[[RuleContext, str], str]]


def _graph_relu(ctx: RuleContext, w: str) -> str:
    return ctx.op("Relu", [w])


def _graph_neg_part(ctx: RuleContext, w: str) -> str:
    return ctx.op("Neg", [ctx.op("Relu", [ctx.op("Neg", [w])])])


def positive() -> WeightMod:
    return (lambda w: np.maximum(w, 0), _graph_relu)


def negative() -> WeightMod:
    return (lambda w: np.minimum(w, 0), _graph_neg_part)


def square() -> WeightMod:
    return (lambda w: w * w, lambda ctx, w: ctx.op("Mul", [w, w]))


def ones() -> WeightMod:
    return (np.ones_like, lambda ctx, w: ctx.op("Add", [ctx.zeros_like(w), ctx.scalar(1.0)]))


def gamma(g: float, part: str) -> WeightMod:
    """w + g·w⁺ (part "+") or w + g·w⁻ (part "-"), the Gamma rule's weights."""
    clamp = np.maximum if part == "+" else np.minimum
    graph_part = _graph_relu if part == "+" else _graph_neg_part
    return (lambda w: w + g * clamp(w, 0),
            lambda ctx, w: ctx.op("Add", [w, ctx.op("Mul", [graph_part(ctx, w), ctx.scalar(g)])]))


def is_linear_layer(ctx: RuleContext) -> bool:
    """A Conv/ConvTranspose/Gemm node, or a MatMul, whose weight side is off the path (a constant)."""
    if ctx.node.op_type not in LINEAR_OPS:
        return False
    return sum(bool(w) for w in ctx.wants[:2]) == 1 and (ctx.node.op_type in ("Gemm", "MatMul") or ctx.wants[0])


class LinearLayer:
    """One linear layer of the forward graph, seen by an LRP rule."""

    def __init__(self, ctx: RuleContext):
        self.ctx = ctx
        self.node = ctx.node
        self.x_index = 0 if ctx.wants[0] else 1
        self.w_index = 1 - self.x_index
        self.x = ctx.input(self.x_index)
        self.w = ctx.input(self.w_index)
        has_bias = self.node.op_type in ("Conv", "ConvTranspose", "Gemm") and bool(ctx.input(2))
        self.b = ctx.input(2) if has_bias else None
        self._mods: dict[tuple[str, str], str] = {}
        # Gemm's alpha and beta belong to the weights and the bias (y = (αW) x + βb): the rules
        # modify αW and βb, and the op is computed again with alpha = beta = 1
        self.attrs = {a.name: helper.get_attribute_value(a) for a in self.node.attribute}
        self.scale = {"w": 1.0, "b": 1.0}
        if self.node.op_type == "Gemm":
            self.scale = {"w": float(self.attrs.pop("alpha", 1.0)), "b": float(self.attrs.pop("beta", 1.0))}
            if self.scale["w"] != 1.0:
                self.w = self.modified("w", "scaled", (lambda w: w, lambda ctx, w: w))

    # -- modified parameters ------------------------------------------------------------------------
    def modified(self, which: str, name: str, mod: WeightMod) -> str:
        """Parameter `which` ("w" or "b") under modification `name`, built once per layer."""
        key = (which, name)
        if key not in self._mods:
            source = self.ctx.input(self.w_index) if which == "w" else self.b
            value = self.ctx.const(self.w_index if which == "w" else 2)
            scale = self.scale[which]
            if value is not None:
                new = mod[0](value * np.asarray(scale, value.dtype) if scale != 1.0 else value).astype(value.dtype)
                out = self.ctx.emitter.const(new, name=f"{which}_{name}")
                self.ctx.view.know(out, new)
            else:
                scaled = source if scale == 1.0 else self.ctx.op("Mul", [source, self.ctx.scalar(scale)])
                out = mod[1](self.ctx, scaled)
            self._mods[key] = out
        return self._mods[key]

    # -- the two products a rule needs ---------------------------------------------------------------
    def forward(self, x: str, w: str, b: str | None) -> str:
        """The layer's op on input `x` with weights `w` and bias `b` (None: no bias)."""
        ins = list(self.node.input)
        ins[self.x_index], ins[self.w_index] = x, w
        if self.node.op_type == "MatMul":
            ins = ins[:2]
        elif b is None:
            ins = ins[:2]
            if self.node.op_type == "Gemm" and self.ctx.opset < 11:  # C is required before opset 11
                ins.append(self.ctx.scalar(0.0))
        else:
            ins = ins[:2] + [b]
        return self.ctx.op(self.node.op_type, ins, **self.attrs)

    def backward(self, s: str, w: str) -> str:
        """Wᵀ s for weights `w`: the vanilla input gradient of the layer with its weights replaced."""
        node = helper.make_node(self.node.op_type, list(self.node.input), list(self.node.output), name=self.node.name,
                                **self.attrs)
        node.input[self.w_index] = w
        wants = [i == self.x_index for i in range(len(node.input))]
        sub = RuleContext(node, self.ctx.view, self.ctx.emitter, [s], wants)
        return DEFAULT_RULES[node.op_type].fn(sub, s)[self.x_index]

    def relevance(self, r: str) -> list:
        """The rule's result list: relevance `r` for the layer's input, nothing for weights and bias."""
        out = [None] * len(self.node.input)
        out[self.x_index] = r
        return out
