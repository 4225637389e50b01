"""Seeds at opsets 7 and 8, where OneHot (opset 9) and Range (opset 11) do not exist.

The models are built with onnx.helper from ops whose opset-7 versions onnxruntime still runs
(Conv, Relu, Flatten, Gemm, Softmax), in an IR 3 file as old exporters wrote them (weights listed
as graph inputs too), and compared with the very same nodes at opset 13: the gradient for the top
class, for a class index and for a seed tensor, through the Explainer and through a compiled graph
that onnxruntime loads.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

import onnxsal
from onnxsal.errors import NeedsShapesError

F = onnx.TensorProto.FLOAT


def _model(nodes, x_shape, y_shape, weights: dict, opset: int) -> onnx.ModelProto:
    """An IR 3 file below opset 9 (weights declared as inputs too), IR 7 at opset 13."""
    inits = [numpy_helper.from_array(v, k) for k, v in weights.items()]
    inputs = [helper.make_tensor_value_info("x", F, x_shape)]
    if opset < 9:
        inputs += [helper.make_tensor_value_info(t.name, F, list(t.dims)) for t in inits]
    graph = helper.make_graph(nodes, "old", inputs, [helper.make_tensor_value_info("y", F, y_shape)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=3 if opset < 9 else 7)


def classifier(opset: int, classes: int = 5) -> onnx.ModelProto:
    """x [N, 3, 6, 6] -> Conv -> Relu -> Flatten -> Gemm -> Softmax -> y [N, classes]."""
    rng = np.random.default_rng(1)
    weights = {"w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
               "fc": (0.2 * rng.standard_normal((4 * 6 * 6, classes))).astype(np.float32),
               "bias": rng.standard_normal(classes).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fc", "bias"], ["z"], name="fc"),
             helper.make_node("Softmax", ["z"], ["y"], name="softmax")]
    return _model(nodes, ["N", 3, 6, 6], ["N", classes], weights, opset)


def segmenter(opset: int) -> onnx.ModelProto:
    """x [N, 3, 6, 6] -> Conv -> Relu -> Conv -> y [N, 4, 6, 6]: the class's whole map is seeded."""
    rng = np.random.default_rng(2)
    weights = {"w1": rng.standard_normal((5, 3, 3, 3)).astype(np.float32),
               "w2": rng.standard_normal((4, 5, 1, 1)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2")]
    return _model(nodes, ["N", 3, 6, 6], ["N", 4, 6, 6], weights, opset)


def free_classes(opset: int) -> onnx.ModelProto:
    """x [N, F] -> Relu -> Exp -> Softmax -> y [N, F]: the class count is the input's feature count,
    which the file leaves free."""
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Exp", ["r"], ["z"], name="exp"),
             helper.make_node("Softmax", ["z"], ["y"], name="softmax")]
    return _model(nodes, ["N", "F"], ["N", "F"], {}, opset)


X = np.random.default_rng(0).standard_normal((3, 3, 6, 6)).astype(np.float32)


def _targets(classes: int, out_shape) -> list:
    seed = np.random.default_rng(3).standard_normal(out_shape).astype(np.float32)
    return [None, 2, np.array([0, classes - 1, 1]), seed]


@pytest.mark.parametrize("opset", [7, 8])
@pytest.mark.parametrize("build,classes,out_shape", [(classifier, 5, (3, 5)), (segmenter, 4, (3, 4, 6, 6))],
                         ids=["classifier", "segmenter"])
def test_gradient_below_opset_9_matches_opset_13(build, classes, out_shape, opset):
    old, new = onnxsal.Explainer(build(opset), providers="cpu"), onnxsal.Explainer(build(13), providers="cpu")
    for target in _targets(classes, out_shape):
        want = new.attribute(X, target=target)
        assert np.abs(want).max() > 0
        np.testing.assert_allclose(old.attribute(X, target=target), want, rtol=1e-5, atol=1e-6,
                                   err_msg=f"target {target if target is None or np.ndim(target) < 2 else 'seed'}")


def _compiled_run(model: onnx.ModelProto, target: str, extra=None, **options) -> np.ndarray:
    graph = onnxsal.compile(model, target=target, **options)
    assert next(i.version for i in graph.opset_import if i.domain in ("", "ai.onnx")) == \
        next(i.version for i in model.opset_import if i.domain in ("", "ai.onnx"))
    onnx.checker.check_model(graph)
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {"x": X}
    if extra is not None:
        feeds[next(i.name for i in graph.graph.input if i.name not in {"x"} | {t.name for t in graph.graph.initializer})] = extra
    return session.run([graph.graph.output[-1].name], feeds)[0]


@pytest.mark.parametrize("opset", [7, 8])
@pytest.mark.parametrize("method,options", [("gradient", {}), ("smoothgrad", {"n_samples": 3}),
                                            ("integrated_gradients", {"n_steps": 4}), ("guided_backprop", {})])
@pytest.mark.parametrize("build,classes", [(classifier, 5), (segmenter, 4)], ids=["classifier", "segmenter"])
def test_compiled_graph_below_opset_9_loads_and_matches_opset_13(build, classes, method, options, opset):
    seed = np.random.default_rng(3).standard_normal((3, classes) + (6, 6) * (build is segmenter)).astype(np.float32)
    for target, extra in [("argmax", None), ("target", np.array([1, classes - 1, 0], np.int64)), ("tensor", seed)]:
        want = _compiled_run(build(13), target, extra, method=method, **options)
        assert np.abs(want).max() > 0
        got = _compiled_run(build(opset), target, extra, method=method, **options)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max(), err_msg=f"{method} {target}")


def test_seed_below_opset_9_has_no_onehot():
    graph = onnxsal.compile(classifier(7), method="smoothgrad", target="target", n_samples=2)
    assert not {"OneHot", "Range", "Expand"} & {n.op_type for n in graph.graph.node}


@pytest.mark.parametrize("opset", [7, 8])
def test_dynamic_class_count_below_opset_9_is_specialised(opset):
    """The class count follows from the input: specialising on the call's shapes makes it static, so
    the Explainer explains it; compile() asks for input_shapes, and builds with them."""
    x = np.random.default_rng(4).standard_normal((2, 6)).astype(np.float32)
    ex = onnxsal.Explainer(free_classes(opset), providers="cpu")
    with pytest.raises(NeedsShapesError, match="class count"):
        ex.gradient_graph()
    assert ex.specialised({"x": [None, 6]}).view.shape("y")[1] == 6
    reference = onnxsal.Explainer(free_classes(13), providers="cpu")
    for target in (None, 4):
        want = reference.attribute(x, target=target)
        assert np.abs(want).max() > 0
        np.testing.assert_allclose(ex.attribute(x, target=target), want, rtol=1e-5, atol=1e-6)
    # by hand: z = exp(relu(x)), the top class c of each row: dz_c/dx_c = exp(x_c) where x_c > 0, other entries 0
    top = x.argmax(axis=1)
    assert np.all(x[np.arange(2), top] > 0)
    by_hand = np.zeros_like(x)
    by_hand[np.arange(2), top] = np.exp(x[np.arange(2), top])
    np.testing.assert_allclose(ex.attribute(x), by_hand, rtol=1e-6)
    with pytest.raises(NeedsShapesError, match="input_shapes"):
        onnxsal.compile(free_classes(opset))
    graph = onnxsal.compile(free_classes(opset), input_shapes={"x": [None, 6]}, method="smoothgrad", n_samples=2)
    ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
