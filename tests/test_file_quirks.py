"""Quirks of real files found in the wild, each reduced to a few nodes (see benchmarks/wild/)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxsal
from onnxsal.autodiff import GRADIENT, SeedSpec, differentiate
from onnxsal.errors import NeedsShapesError
from onnxsal.prepare import lower


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
    import onnxruntime as ort

    compiled = onnxsal.compile(model, method="gradcam")
    sess = ort.InferenceSession(compiled.SerializeToString(), providers=["CPUExecutionProvider"])
    cam = sess.run([compiled.graph.output[-1].name], {"x": x})[0]
    assert cam.shape == (1, 1, 16, 16) and np.isfinite(cam).all()


def _branching_model(on: str) -> onnx.ModelProto:
    """y = mean over L of relu(conv(x)), then an If whose branches give different ranks (so both cannot
    be computed and selected): on the sample rate `sr` (silero-vad v5), or on a dim of a shape
    (torch.squeeze(dim) exported as If(Shape(h)[2] == 1, Squeeze, Identity))."""
    rng = np.random.default_rng(0)
    const = lambda name, v: helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.array(v), name))  # noqa: E731
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3)).astype(np.float32), "W")
    nodes = [helper.make_node("Conv", ["x", "W"], ["h0"], pads=[1, 1]), helper.make_node("Relu", ["h0"], ["h"]),
             helper.make_node("ReduceMean", ["h"], ["p"], axes=[2], keepdims=1)]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "L"])]
    if on == "sr":
        inputs.append(helper.make_tensor_value_info("sr", TensorProto.INT64, []))
        nodes += [const("k16", np.int64(16000)), helper.make_node("Equal", ["sr", "k16"], ["cond"])]
    else:
        nodes += [helper.make_node("Shape", ["p"], ["shp"]), const("two", np.int64(2)),
                  helper.make_node("Gather", ["shp", "two"], ["d"], axis=0), const("one", np.int64(1)),
                  helper.make_node("Equal", ["d", "one"], ["cond"])]
    then_b = helper.make_graph([const("ax", np.array([2], np.int64)), const("two_f", np.float32(2)),
                                helper.make_node("Squeeze", ["p", "ax"], ["sq"]), helper.make_node("Mul", ["sq", "two_f"], ["t"])],
                               "then", [], [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    else_b = helper.make_graph([const("ax3", np.array([2], np.int64)), helper.make_node("ReduceSum", ["p", "ax3"], ["e"], keepdims=1)],
                               "else", [], [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)])
    nodes.append(helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=then_b, else_branch=else_b))
    graph = helper.make_graph(nodes, "if", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)])
    model.ir_version = 8
    return model


def _numeric_gradient(model, feeds, seed, h=1e-3):
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = feeds["x"].astype(np.float64)
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[i] += h
        down[i] -= h
        f = [float((sess.run(["y"], {**feeds, "x": v.astype(np.float32)})[0] * seed).sum()) for v in (up, down)]
        g[i] = (f[0] - f[1]) / (2 * h)
    return g


def test_if_on_an_integer_input_folds_for_the_call():
    """silero-vad v5 branches on its sample-rate input: the call's value is written into the
    specialised graph, so the If folds to the branch it takes; another value builds the other."""
    model = _branching_model("sr")
    ex = onnxsal.Explainer(model, providers="cpu")
    x = np.random.default_rng(2).uniform(-1, 1, (2, 3, 6)).astype(np.float32)
    for sr, seed in ((16000, np.ones((2, 4), np.float32)), (8000, np.ones((2, 4, 1), np.float32))):
        feeds = {"x": x, "sr": np.array(sr, np.int64)}
        g = ex.attribute(feeds, wrt="x", target=seed)
        ref = _numeric_gradient(model, feeds, seed)
        assert np.abs(g - ref).max() <= 1e-3 * np.abs(ref).max()
    assert len(ex._children) == 2


def test_if_on_a_shape_folds_once_shapes_are_fixed():
    model = _branching_model("shape")
    with pytest.raises(NeedsShapesError, match="branch"):
        differentiate(lower(model, GRADIENT.supports, ["x"], "y"), GRADIENT, wrt=["x"], output="y", seed=SeedSpec("tensor"))
    x = np.random.default_rng(3).uniform(-1, 1, (1, 3, 5)).astype(np.float32)
    seed = np.ones((1, 4), np.float32)
    g = onnxsal.Explainer(model, providers="cpu").attribute(x, target=seed)
    ref = _numeric_gradient(model, {"x": x}, seed)
    assert np.abs(g - ref).max() <= 1e-3 * np.abs(ref).max()


def test_broadcast_with_dynamic_shapes_below_opset_13_specialises():
    """Un-broadcasting with run-time axes needs ReduceSum's axes input (opset 13): older files are
    specialised on the call's shapes instead."""
    nodes = [helper.make_node("Mul", ["x", "x"], ["m"]), helper.make_node("Mul", ["m", "b"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "F"]),
                                           helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "F"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    model.ir_version = 4
    rng = np.random.default_rng(4)
    x, b = rng.uniform(-1, 1, (2, 3)).astype(np.float32), rng.uniform(-1, 1, (2, 1)).astype(np.float32)
    g = onnxsal.Explainer(model, providers="cpu").attribute({"x": x, "b": b}, wrt=["x", "b"], target=np.ones((2, 3), np.float32))
    np.testing.assert_allclose(g["b"][:, 0], (x * x).sum(1), rtol=1e-6)
    np.testing.assert_allclose(g["x"], 2 * x * b, rtol=1e-6)


def test_sequence_output_with_classes_on_the_last_axis_asks_for_a_seed():
    """A PP-OCR recogniser returns Softmax(logits, axis=-1) of shape [N, T, C]: the classes are on axis
    2, so "the top class on axis 1" would pick a time step by float rounding (the summed softmax is 1
    at every t). Refused with one sentence; a seed tensor explains what it says."""
    rng = np.random.default_rng(5)
    w = numpy_helper.from_array(rng.standard_normal((4, 5)).astype(np.float32), "W")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["logits"]), helper.make_node("Softmax", ["logits"], ["y"], axis=-1)]
    graph = helper.make_graph(nodes, "rec", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6, 5])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    ex = onnxsal.Explainer(model, providers="cpu")
    x = rng.uniform(-1, 1, (1, 6, 4)).astype(np.float32)
    for target in (None, 3):
        with pytest.raises(onnxsal.UnsupportedModelError, match="axis 2") as info:
            ex.attribute(x, target=target)
        assert "\n" not in str(info.value)
    seed = np.zeros((1, 6, 5), np.float32)
    seed[0, 2, 3] = 1  # class 3 at time step 2, from the logits (softmax as identity)
    g = ex.attribute(x, target=seed)
    expected = np.zeros_like(x)
    expected[0, 2] = numpy_helper.to_array(w)[:, 3]
    np.testing.assert_allclose(g, expected, rtol=1e-6)


def test_slice_on_a_dynamic_axis_at_opset_7():
    """paddle2onnx's PP-OCRv5 recogniser (opset 7) slices an axis the file leaves dynamic; opset 7 has no
    Range for a run-time position map, so the graph is specialised on the call's shapes instead."""
    rng = np.random.default_rng(6)
    w = rng.standard_normal((4, 5)).astype(np.float32)
    nodes = [helper.make_node("Slice", ["x"], ["s3"], starts=[2], ends=[3], axes=[1]),
             helper.make_node("ReduceSum", ["s3"], ["s"], axes=[1], keepdims=0),
             helper.make_node("MatMul", ["s", "W"], ["z"]), helper.make_node("Softmax", ["z"], ["y"], axis=1)]
    graph = helper.make_graph(nodes, "op7", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "L", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])], [numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 7)])
    model.ir_version = 4
    x = rng.uniform(-1, 1, (1, 6, 4)).astype(np.float32)
    g = onnxsal.Explainer(model, providers="cpu").attribute(x, target=2)
    expected = np.zeros_like(x)
    expected[0, 2] = w[:, 2]  # softmax as identity: d z_2 / d x[0, 2, :]
    np.testing.assert_allclose(g, expected, rtol=1e-6)
