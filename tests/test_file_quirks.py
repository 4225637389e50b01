"""Quirks of real files found in the wild, each reduced to a few nodes (see benchmarks/wild/)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import onnxsal


def _ir3_model() -> onnx.ModelProto:
    """An opset-9, IR-3 file as the Caffe2-era zoo wrote them: the weights listed as graph inputs too."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "W")
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Concat", ["r", "c"], ["rc"], axis=1),
             helper.make_node("MaxPool", ["rc"], ["p"], kernel_shape=[3, 3], strides=[2, 2]),
             helper.make_node("GlobalAveragePool", ["p"], ["g"]),
             helper.make_node("Flatten", ["g"], ["y"])]
    graph = helper.make_graph(nodes, "ir3", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16]),
                                             helper.make_tensor_value_info("W", TensorProto.FLOAT, [4, 3, 3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)], ir_version=3)


def test_ir3_file_with_overlapping_maxpool_differentiates():
    """onnxruntime refuses an unused initializer in an IR-3 graph: no rule may leave one behind; and the
    3x3 stride-2 MaxPool of opset 9 has an exact backward."""
    model = _ir3_model()
    x = np.random.default_rng(1).uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32)
    ex = onnxsal.Explainer(model, providers="cpu")
    g = ex.attribute(x, target=5)
    # the same graph at opset 13 (what onnx.version_converter writes) gives the same gradient
    newer = onnx.version_converter.convert_version(model, 13)
    assert np.abs(g - onnxsal.Explainer(newer, providers="cpu").attribute(x, target=5)).max() <= 1e-5 * np.abs(g).max()
    compiled = onnxsal.compile(model, method="gradcam")
    assert compiled.ir_version == 3
    used = {i for n in compiled.graph.node for i in n.input}
    declared = {i.name for i in compiled.graph.input}
    assert all(t.name in used or t.name in declared for t in compiled.graph.initializer)
