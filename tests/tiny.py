"""Tiny ONNX models built with onnx.helper, for tests that need no framework."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

F = TensorProto.FLOAT


def make_model(nodes, inputs, outputs, initializers=(), opset: int = 17, ir_version: int = 10, domains=()) -> onnx.ModelProto:
    """A model from nodes and (name, elem_type, shape) triples; IR version kept loadable by onnxruntime."""
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in dict(initializers).items()],
    )
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = ir_version
    return model


def mlp(seed: int = 0, n_in: int = 6, n_hidden: int = 8, n_out: int = 4, softmax: bool = True) -> onnx.ModelProto:
    """x[N, n_in] -> Gemm -> Relu -> Gemm -> (Softmax) -> y[N, n_out]."""
    rng = np.random.default_rng(seed)
    inits = {
        "w1": rng.normal(size=(n_in, n_hidden)).astype(np.float32),
        "b1": rng.normal(size=(n_hidden,)).astype(np.float32),
        "w2": rng.normal(size=(n_hidden, n_out)).astype(np.float32),
        "b2": rng.normal(size=(n_out,)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["a"], name="relu1"),
        helper.make_node("Gemm", ["a", "w2", "b2"], ["logits" if softmax else "y"], name="fc2"),
    ]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["y"], name="softmax", axis=-1))
    return make_model(nodes, [("x", F, ["N", n_in])], [("y", F, ["N", n_out])], inits)


def mlp_reference(model: onnx.ModelProto, x: np.ndarray):
    """Forward values of `mlp` in numpy: (h, logits)."""
    w = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    h = x @ w["w1"] + w["b1"]
    logits = np.maximum(h, 0) @ w["w2"] + w["b2"]
    return h, logits, w


def rel(ours, ref) -> float:
    """max |ours - ref| / max |ref|, in float64; shapes must match and the reference must not be all zeros."""
    ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    scale = np.abs(ref).max()
    assert scale > 0, "the reference is all zeros"
    return float(np.abs(ours - ref).max() / scale)
