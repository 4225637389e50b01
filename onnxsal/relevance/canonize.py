"""Canonizers: rewrite a graph into the form LRP rules expect, without changing what it computes.

LRP rules treat a linear layer and its bias as one z = W x + b. Exporters split that in ways that
change the rules' result (a BatchNormalization after the convolution, a MatMul followed by an Add
of the bias), so before relevance is propagated:

- `fold_batchnorm`: a BatchNormalization (inference) folded into the Conv/ConvTranspose/Gemm that
  feeds it (W' = a·W per output channel, b' = a·b + c, with a = scale/√(var+ε), c = B − a·mean),
  or into the Conv/Gemm it feeds when that is exact (no padding: a shift is not exact at padded
  borders);
- `fold_scale`: a Mul by one constant per output channel after a Conv/ConvTranspose/Gemm/MatMul
  into its weights and bias (tf2onnx writes a Keras 3 BatchNormalization as that Mul and an Add);
- `fuse_bias`: MatMul(x, W) + b on a 2-D x into Gemm(x, W, b); Conv + b (one value per channel)
  into the Conv's bias.
Each works on the graph, so one canonizer serves every architecture and exporter (Zennit needs
one per model family). Residual additions need no rewriting: every Add/Sum on the path is seen.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..autodiff.graph import GraphView

FOLD_INTO = ("Conv", "ConvTranspose", "Gemm")


class _Rewriter:
    def __init__(self, model: onnx.ModelProto):
        self.view = GraphView(model)
        self.model = self.view.model
        self.graph = self.model.graph
        self.outputs = {o.name for o in self.graph.output}
        self.new_inits: list[onnx.TensorProto] = []
        self.removed: set[str] = set()
        self.replaced: dict[str, onnx.NodeProto] = {}
        self.notes: list[str] = []
        taken = {t.name for t in self.graph.initializer} | {v for n in self.graph.node for v in list(n.input) + list(n.output)}
        self._taken = taken

    def const(self, name: str) -> np.ndarray | None:
        return self.view.const(name)

    def only_consumer(self, value: str) -> onnx.NodeProto | None:
        users = self.view.consumers.get(value, [])
        if len(users) != 1 or value in self.outputs:
            return None
        return users[0]

    def initializer(self, base: str, value: np.ndarray) -> str:
        name, i = f"{base}/canonized", 0
        while name in self._taken:
            i += 1
            name = f"{base}/canonized_{i}"
        self._taken.add(name)
        self.new_inits.append(numpy_helper.from_array(value, name))
        return name

    def finish(self) -> onnx.ModelProto:
        nodes = []
        for n in self.graph.node:
            if n.name in self.removed:
                continue
            nodes.append(self.replaced.get(n.name, n))
        del self.graph.node[:]
        self.graph.node.extend(nodes)
        self.graph.initializer.extend(self.new_inits)
        del self.graph.value_info[:]
        return self.model


def _bn_affine(rw: _Rewriter, bn: onnx.NodeProto):
    """(a, c) with BN(x) = a·x + c per channel, or None when BN's parameters are not constants."""
    if len(bn.output) > 1 and any(bn.output[1:]) or any(a.name == "training_mode" and a.i for a in bn.attribute):
        return None
    vals = [rw.const(x) for x in bn.input[1:5]]
    if any(v is None for v in vals):
        return None
    scale, bias, mean, var = (v.astype(np.float64) for v in vals)
    eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
    a = scale / np.sqrt(var + eps)
    return a, bias - a * mean


def _with_inputs(node: onnx.NodeProto, inputs: list[str], outputs: list[str] | None = None) -> onnx.NodeProto:
    new = onnx.NodeProto()
    new.CopyFrom(node)
    del new.input[:]
    new.input.extend(inputs)
    if outputs is not None:
        del new.output[:]
        new.output.extend(outputs)
    return new


def _out_channel_axis(node: onnx.NodeProto, weight: np.ndarray) -> int | None:
    """The axis of the weight that holds output channels (None: cannot be told)."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1 if attrs.get("group", 1) == 1 else None
    if node.op_type == "Gemm":
        if attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            return None
        return 0 if attrs.get("transB", 0) else 1
    return None


def fold_batchnorm(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """Fold each BatchNormalization into an adjacent linear layer where that is exact."""
    rw = _Rewriter(model)
    for bn in rw.view.nodes:
        if bn.op_type != "BatchNormalization" or bn.name in rw.removed:
            continue
        affine = _bn_affine(rw, bn)
        if affine is None:
            continue
        a, c = affine
        src = rw.view.producer.get(bn.input[0])
        if src is not None and src.op_type in FOLD_INTO and src.name not in rw.removed and rw.only_consumer(bn.input[0]) is bn:
            if _fold_after(rw, src, bn, a, c):
                continue
        user = rw.only_consumer(bn.output[0])
        if user is not None and user.op_type in ("Conv", "Gemm") and user.name not in rw.removed:
            _fold_before(rw, bn, user, a, c)
    return rw.finish(), rw.notes


def _fold_after(rw: _Rewriter, layer: onnx.NodeProto, bn: onnx.NodeProto, a: np.ndarray, c: np.ndarray) -> bool:
    layer = rw.replaced.get(layer.name, layer)
    w = rw.const(layer.input[1]) if layer.name not in rw.replaced else None
    if w is None or w.dtype.kind != "f":
        return False
    axis = _out_channel_axis(layer, w)
    if axis is None or w.shape[axis] != a.size:
        return False
    b = rw.const(layer.input[2]) if len(layer.input) > 2 and layer.input[2] else np.zeros(a.size, w.dtype)
    if b is None or b.size != a.size:
        return False
    shape = [1] * w.ndim
    shape[axis] = a.size
    w_new = (w.astype(np.float64) * a.reshape(shape)).astype(w.dtype)
    b_new = (a * b.reshape(-1).astype(np.float64) + c).astype(w.dtype)
    inputs = [layer.input[0], rw.initializer(layer.input[1], w_new), rw.initializer(f"{layer.name}/bias", b_new)]
    rw.replaced[layer.name] = _with_inputs(layer, inputs, [bn.output[0]])
    rw.removed.add(bn.name)
    rw.notes.append(f"BatchNormalization '{bn.name}' folded into {layer.op_type} '{layer.name}'")
    return True


def _fold_before(rw: _Rewriter, bn: onnx.NodeProto, layer: onnx.NodeProto, a: np.ndarray, c: np.ndarray) -> bool:
    """y = W(a·x + c) + b = (W·a) x + (W c + b): exact for a Gemm and for a Conv without padding."""
    attrs = {x.name: helper.get_attribute_value(x) for x in layer.attribute}
    w = rw.const(layer.input[1])
    if w is None or w.dtype.kind != "f" or layer.name in rw.replaced:
        return False
    if layer.op_type == "Conv":
        pad = attrs.get("auto_pad", b"NOTSET")
        pad = pad.decode() if isinstance(pad, bytes) else pad
        if any(attrs.get("pads", [])) or pad in ("SAME_UPPER", "SAME_LOWER") or attrs.get("group", 1) != 1 or w.shape[1] != a.size:
            return False
        w64 = w.astype(np.float64)
        w_new = w64 * a.reshape((1, -1) + (1,) * (w.ndim - 2))
        shift = (w64 * c.reshape((1, -1) + (1,) * (w.ndim - 2))).sum(axis=tuple(range(1, w.ndim)))
    else:
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            return False
        wt = w.astype(np.float64).T if attrs.get("transB", 0) else w.astype(np.float64)  # [in, out]
        if wt.shape[0] != a.size:
            return False
        w_new = (a[:, None] * wt)
        w_new = w_new.T if attrs.get("transB", 0) else w_new
        shift = c @ wt
    b = rw.const(layer.input[2]) if len(layer.input) > 2 and layer.input[2] else np.zeros(shift.size, w.dtype)
    if b is None or b.size != shift.size:
        return False
    b_new = (b.reshape(-1).astype(np.float64) + shift).astype(w.dtype)
    inputs = [bn.input[0], rw.initializer(layer.input[1], w_new.astype(w.dtype)), rw.initializer(f"{layer.name}/bias", b_new)]
    rw.replaced[layer.name] = _with_inputs(layer, inputs)
    rw.removed.add(bn.name)
    rw.notes.append(f"BatchNormalization '{bn.name}' folded into the {layer.op_type} '{layer.name}' after it")
    return True


def fold_scale(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """Mul(layer(x), s), s one constant per output channel, into the layer: W' = s·W, b' = s·b.
    Without it a Keras BatchNormalization (Mul + Add after tf2onnx) would get the `scaling` and `sum`
    rules instead of being part of the layer's z, and Keras and PyTorch twins would differ."""
    rw = _Rewriter(model)
    for mul in rw.view.nodes:
        if mul.op_type != "Mul" or len(mul.input) != 2:
            continue
        for side in (0, 1):
            src = rw.view.producer.get(mul.input[side])
            scale = rw.const(mul.input[1 - side])
            if src is None or src.op_type not in FOLD_INTO + ("MatMul",) or scale is None or scale.dtype.kind != "f":
                continue
            if rw.only_consumer(mul.input[side]) is mul and src.name not in rw.replaced and _fold_scale(rw, src, mul, scale):
                break
    return rw.finish(), rw.notes


def _fold_scale(rw: _Rewriter, layer: onnx.NodeProto, mul: onnx.NodeProto, scale: np.ndarray) -> bool:
    w = rw.const(layer.input[1])
    rank = rw.view.rank(layer.output[0])
    if w is None or w.dtype.kind != "f" or rank is None or rw.const(layer.input[0]) is not None:
        return False
    if layer.op_type == "MatMul" and (w.ndim != 2 or rank != 2):
        return False
    axis = 1 if layer.op_type == "MatMul" else _out_channel_axis(layer, w)  # of the weight's output channels
    if axis is None or scale.ndim > rank:
        return False
    m = w.shape[axis]
    # one value per output channel (axis 1 of the output), broadcast right-aligned
    shape = (1,) * (rank - scale.ndim) + tuple(scale.shape)
    if any(d != 1 for i, d in enumerate(shape) if i != 1) or shape[1] not in (1, m):
        return False
    s = np.broadcast_to(scale.reshape(-1).astype(np.float64), (m,))
    w_shape = [1] * w.ndim
    w_shape[axis] = m
    inputs = [layer.input[0], rw.initializer(layer.input[1], (w.astype(np.float64) * s.reshape(w_shape)).astype(w.dtype))]
    if len(layer.input) > 2 and layer.input[2]:
        b = rw.const(layer.input[2])
        if b is None or b.size != m:
            return False
        inputs.append(rw.initializer(f"{layer.name}/bias", (b.reshape(-1).astype(np.float64) * s).astype(w.dtype)))
    rw.replaced[layer.name] = _with_inputs(layer, inputs, [mul.output[0]])
    rw.removed.add(mul.name)
    rw.notes.append(f"the Mul '{mul.name}' by a per-channel constant folded into {layer.op_type} '{layer.name}'")
    return True


def fuse_bias(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """MatMul + Add(bias) into a Gemm (2-D input); Conv + Add(bias per channel) into the Conv."""
    rw = _Rewriter(model)
    for add in rw.view.nodes:
        if add.op_type != "Add" or len(add.input) != 2:
            continue
        for side in (0, 1):
            src = rw.view.producer.get(add.input[side])
            bias = rw.const(add.input[1 - side])
            if src is None or bias is None or bias.dtype.kind != "f" or rw.only_consumer(add.input[side]) is not add:
                continue
            if src.name in rw.replaced or src.name in rw.removed:
                continue
            if src.op_type == "MatMul" and _fuse_matmul(rw, src, add, bias):
                break
            if src.op_type == "Conv" and _fuse_conv(rw, src, add, bias):
                break
    return rw.finish(), rw.notes


def _fuse_matmul(rw: _Rewriter, mm: onnx.NodeProto, add: onnx.NodeProto, bias: np.ndarray) -> bool:
    w = rw.const(mm.input[1])
    if w is None or w.ndim != 2 or rw.view.rank(mm.input[0]) != 2 or rw.const(mm.input[0]) is not None:
        return False
    if bias.size not in (1, w.shape[1]) or bias.ndim > 2 or (bias.ndim == 2 and bias.shape[0] != 1):
        return False
    b = np.broadcast_to(bias.reshape(-1), (w.shape[1],)).astype(w.dtype)
    gemm = helper.make_node("Gemm", [mm.input[0], mm.input[1], rw.initializer(f"{mm.name}/bias", b)], [add.output[0]],
                            name=mm.name)
    rw.replaced[mm.name] = gemm
    rw.removed.add(add.name)
    rw.notes.append(f"MatMul '{mm.name}' and the Add '{add.name}' of its bias fused into a Gemm")
    return True


def _fuse_conv(rw: _Rewriter, conv: onnx.NodeProto, add: onnx.NodeProto, bias: np.ndarray) -> bool:
    w = rw.const(conv.input[1])
    rank = rw.view.rank(conv.input[0])
    if w is None or rank is None:
        return False
    m = w.shape[0]
    # a per-channel bias broadcast against [N, M, *spatial]: right-aligned, 1 everywhere but axis 1
    if bias.ndim > rank:
        return False
    shape = (1,) * (rank - bias.ndim) + tuple(bias.shape)
    if any(d != 1 for i, d in enumerate(shape) if i != 1) or shape[1] not in (1, m):
        return False
    squeezed = bias.reshape(-1)
    old = rw.const(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else np.zeros(m, w.dtype)
    if old is None:
        return False
    b = (old.reshape(-1) + np.broadcast_to(squeezed, (m,))).astype(w.dtype)
    rw.replaced[conv.name] = _with_inputs(conv, [conv.input[0], conv.input[1], rw.initializer(f"{conv.name}/bias", b)],
                                          [add.output[0]])
    rw.removed.add(add.name)
    rw.notes.append(f"the Add '{add.name}' of a per-channel bias fused into Conv '{conv.name}'")
    return True


def _candidates(model: onnx.ModelProto) -> tuple[bool, bool, bool]:
    """Whether the graph holds anything `fold_scale` / `fuse_bias` / `fold_batchnorm` could rewrite: a cheap scan,
    so that a model with nothing to canonize is not copied (big models take seconds to copy)."""
    consts = {t.name for t in model.graph.initializer} | {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    bias = any(n.op_type == "Add" and len(n.input) == 2 and any(x in consts for x in n.input)
               and any(producers.get(x) in ("MatMul", "Conv") for x in n.input) for n in model.graph.node)
    scale = any(n.op_type == "Mul" and len(n.input) == 2 and any(x in consts for x in n.input)
                and any(producers.get(x) in FOLD_INTO + ("MatMul",) for x in n.input) for n in model.graph.node)
    return scale, bias, any(n.op_type == "BatchNormalization" for n in model.graph.node)


def canonize(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """All canonizers, in order; returns the rewritten model and one note per rewrite."""
    notes: list[str] = []
    for i, step in enumerate((fold_scale, fuse_bias, fold_batchnorm)):
        if _candidates(model)[i]:  # rescanned: a folded Mul leaves a Conv + Add for fuse_bias
            model, more = step(model)
            notes += more
    return model, notes
