"""The public API on tiny models whose gradients are known in closed form."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import helper

import onnxsal
from tests.tiny import F, make_model, mlp, mlp_reference


@pytest.fixture(scope="module")
def model():
    return mlp(seed=1)


@pytest.fixture(scope="module")
def explainer(model):
    return onnxsal.Explainer(model, providers="cpu")


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(2).normal(size=(5, 6)).astype(np.float32)


def grad_at_hidden(model, x, target, softmax):
    """d(score of target)/d(relu output) for the mlp, in numpy."""
    h, logits, w = mlp_reference(model, x)
    onehot = np.eye(logits.shape[1])[target]
    if softmax == "identity":
        return onehot @ w["w2"].T, h, w
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    pt = (p * onehot).sum(1, keepdims=True)
    dlogits = pt * (onehot - p)
    return dlogits @ w["w2"].T, h, w


@pytest.mark.parametrize("softmax", ["identity", "keep"])
@pytest.mark.parametrize("method", ["gradient", "guided_backprop", "deconvnet"])
def test_methods_match_closed_form(model, explainer, x, method, softmax):
    target = np.array([0, 1, 2, 3, 1])
    ga, h, w = grad_at_hidden(model, x, target, softmax)
    if method == "gradient":
        gh = ga * (h > 0)
    elif method == "guided_backprop":
        gh = np.maximum(ga, 0) * (h > 0)
    else:
        gh = np.maximum(ga, 0)
    expected = gh @ w["w1"].T
    got = explainer.attribute(x, target=target, method=method, softmax=softmax)
    assert got.shape == x.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_argmax_target_is_top_class(model, explainer, x):
    _, logits, _ = mlp_reference(model, x)
    top = logits.argmax(1)
    np.testing.assert_allclose(explainer.attribute(x), explainer.attribute(x, target=top), rtol=1e-6)


def test_int_target_applies_to_every_sample(explainer, x):
    np.testing.assert_allclose(explainer.attribute(x, target=2), explainer.attribute(x, target=[2] * len(x)), rtol=1e-6)


def test_seed_tensor_is_linear_in_classes(explainer, x):
    seed = np.zeros((len(x), 4), np.float32)
    seed[:, 1], seed[:, 3] = 2.0, -1.0
    expected = 2 * explainer.attribute(x, target=1) - explainer.attribute(x, target=3)
    np.testing.assert_allclose(explainer.attribute(x, target=seed), expected, rtol=1e-4, atol=1e-6)


def test_batches_give_the_same_result(explainer, x):
    np.testing.assert_allclose(explainer.attribute(x, batch_size=2), explainer.attribute(x), rtol=1e-6)


def test_inner_tensor_gradient(model, explainer, x):
    target = np.array([3, 2, 1, 0, 0])
    ga, _, _ = grad_at_hidden(model, x, target, "identity")
    got = explainer.attribute(x, target=target, wrt=["a"])
    np.testing.assert_allclose(got["a"], ga, rtol=1e-5)


def test_predict_is_the_forward_output(model, explainer, x):
    _, logits, _ = mlp_reference(model, x)
    p = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(explainer.predict(x), p / p.sum(1, keepdims=True), rtol=1e-5)


def two_input_model():
    """y = Gemm(x * mask, w): a mask input fed as it is, not explained."""
    w = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    nodes = [helper.make_node("Mul", ["x", "mask"], ["xm"], name="apply_mask"),
             helper.make_node("Gemm", ["xm", "w"], ["y"], name="fc")]
    return make_model(nodes, [("x", F, ["N", 4]), ("mask", F, ["N", 4])], [("y", F, ["N", 3])], {"w": w}), w


def test_several_inputs_by_name():
    model, w = two_input_model()
    ex = onnxsal.Explainer(model, providers="cpu")
    x = np.ones((2, 4), np.float32)
    mask = np.array([[1, 0, 1, 0], [0, 1, 1, 1]], np.float32)
    got = ex.attribute({"x": x, "mask": mask}, target=[0, 2], wrt="x")
    np.testing.assert_allclose(got, mask * w[:, [0, 2]].T, rtol=1e-6)
    both = ex.attribute({"x": x, "mask": mask}, target=[0, 2], wrt=["x", "mask"])
    assert set(both) == {"x", "mask"}
    np.testing.assert_allclose(both["mask"], x * w[:, [0, 2]].T, rtol=1e-6)
    with pytest.raises(onnxsal.InvalidInputError, match="pass a dict"):
        ex.attribute(x)


def test_compiled_graph_names_and_versions(model):
    compiled = onnxsal.compile(model, method="guided_backprop", target="target")
    onnx.checker.check_model(compiled)
    assert compiled.ir_version == model.ir_version
    assert [(o.domain, o.version) for o in compiled.opset_import] == [(o.domain, o.version) for o in model.opset_import]
    assert [o.name for o in compiled.graph.output] == ["y", "x_grad"]
    assert [i.name for i in compiled.graph.input] == ["x", "target"]
    grad_nodes = [n.name for n in compiled.graph.node if "_grad/" in n.name]
    assert any(n.startswith("fc1_grad/") for n in grad_nodes) and any(n.startswith("relu1_grad/") for n in grad_nodes)
    assert all(n.domain in ("", "ai.onnx") for n in compiled.graph.node)


STANDALONE = """
import sys, numpy as np, onnxruntime as ort
s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
x = np.load(sys.argv[2])
y, g = s.run(None, {"x": x, "target": np.array([1, 0, 3, 2, 2], dtype=np.int64)})
np.save(sys.argv[3], g)
assert "onnxsal" not in sys.modules
"""


def test_compiled_graph_runs_without_onnxsal(model, explainer, x, tmp_path):
    path, xin, out = tmp_path / "explain.onnx", tmp_path / "x.npy", tmp_path / "g.npy"
    onnx.save(onnxsal.compile(model, method="guided_backprop", target="target"), path)
    np.save(xin, x)
    subprocess.run([sys.executable, "-c", STANDALONE, str(path), str(xin), str(out)], check=True, cwd=tmp_path)
    expected = explainer.attribute(x, target=[1, 0, 3, 2, 2], method="guided_backprop")
    np.testing.assert_array_equal(np.load(out), expected)


def test_forward_outputs_unchanged(model, explainer, x):
    import onnxruntime as ort

    compiled = onnxsal.compile(model, method="gradient")
    s = ort.InferenceSession(compiled.SerializeToString(), providers=["CPUExecutionProvider"])
    y, _ = s.run(None, {"x": x})
    np.testing.assert_allclose(y, explainer.predict(x), rtol=1e-6)


def test_sessions_are_cached(explainer, x):
    explainer.attribute(x, method="deconvnet")
    n = len(explainer._sessions)
    explainer.attribute(x, method="deconvnet")
    assert len(explainer._sessions) == n


def test_resize_with_a_free_batch_axis():
    """Only resized axes need static sizes (exported models have a symbolic batch)."""
    scales = np.array([1, 1, 2, 2], np.float32)
    nodes = [helper.make_node("Resize", ["x", "", "scales"], ["r"], mode="nearest", name="up"),
             helper.make_node("ReduceMean", ["r"], ["y"], axes=[2, 3], keepdims=0, name="mean")]
    model = make_model(nodes, [("x", F, ["N", 2, 3, 3])], [("y", F, ["N", 2])], {"scales": scales}, opset=17)
    g = onnxsal.Explainer(model, providers="cpu").attribute(np.random.rand(3, 2, 3, 3).astype(np.float32), target=0)
    expected = np.zeros((3, 2, 3, 3), np.float32)
    expected[:, 0] = 4 / 36
    np.testing.assert_allclose(g, expected, rtol=1e-6)


@pytest.mark.parametrize(("modifier", "fn"), [
    ("absolute", np.abs), ("negate", np.negative),
    ("positive", lambda a: np.maximum(a, 0)), ("negative", lambda a: np.maximum(-a, 0)),
])
def test_modifiers_in_attribute_and_compiled_graph(model, explainer, x, modifier, fn):
    """keras-vis grad_modifier semantics: applied to the finished gradient, the same in a compiled graph."""
    import onnxruntime as ort

    raw = explainer.attribute(x, target=[1, 0, 3, 2, 2], method="guided_backprop")
    assert (raw > 0).any() and (raw < 0).any()  # both signs, so every modifier changes something
    modified = explainer.attribute(x, target=[1, 0, 3, 2, 2], method="guided_backprop", modifier=modifier)
    np.testing.assert_array_equal(modified, fn(raw))
    compiled = onnxsal.compile(model, method="guided_backprop", target="target", modifier=modifier)
    onnx.checker.check_model(compiled)
    assert [o.name for o in compiled.graph.output] == ["y", "x_grad"]
    s = ort.InferenceSession(compiled.SerializeToString(), providers=["CPUExecutionProvider"])
    _, g = s.run(None, {"x": x, "target": np.array([1, 0, 3, 2, 2], dtype=np.int64)})
    np.testing.assert_array_equal(g, modified)


def test_unknown_modifier_is_refused(model, explainer, x):
    with pytest.raises(onnxsal.InvalidInputError, match="unknown modifier 'abs'"):
        explainer.attribute(x, modifier="abs")
    with pytest.raises(onnxsal.InvalidInputError, match="unknown modifier"):
        onnxsal.compile(model, modifier="flip")


def test_check_reports_problems_before_any_input(explainer):
    with pytest.raises(onnxsal.InvalidInputError, match="no option 'n_sample'"):
        explainer.check("smoothgrad", n_sample=3)
    with pytest.raises(onnxsal.InvalidInputError, match="out of range|class"):
        explainer.check("gradient", target=99)
    explainer.check("integrated_gradients", target=1, n_steps=4)


def test_gradcam_default_layer_skips_a_relayout_transpose():
    """tf2onnx ends a Keras CNN with Transpose(NCHW -> NHWC); the default Grad-CAM layer is the Relu
    it copies (same map, a name the user recognises), and inspect reports that default."""
    from tests.tiny import make_model

    from onnxsal.inspection import inspect_model

    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Transpose", ["x"], ["x_nchw"], name="to_nchw", perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["x_nchw", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Transpose", ["r"], ["r_nhwc"], name="Transpose__32", perm=[0, 2, 3, 1]),
        helper.make_node("ReduceMean", ["r_nhwc", "axes"], ["gap"], name="gap", keepdims=0),
        helper.make_node("MatMul", ["gap", "fc"], ["y"], name="fc"),
    ]
    model = make_model(nodes, [("x", F, ["N", 6, 6, 3])], [("y", F, ["N", 3])],
                       {"w": rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "axes": np.array([1, 2], np.int64),
                        "fc": rng.normal(size=(4, 3)).astype(np.float32)}, opset=18)
    ex = onnxsal.Explainer(model, providers="cpu")
    x = rng.random((2, 6, 6, 3), dtype=np.float32)
    default = ex.attribute(x, method="gradcam", target=[0, 2])
    np.testing.assert_allclose(default, ex.attribute(x, method="gradcam", target=[0, 2], layer="r"), rtol=1e-6)
    np.testing.assert_allclose(default, ex.attribute(x, method="gradcam", target=[0, 2], layer="r_nhwc"), rtol=1e-5,
                               atol=1e-7)
    report = inspect_model(model)
    assert report.gradcam_default == "r"
    assert [m["value"] for m in report.gradcam_layers][-2:] == ["r", "r_nhwc"]
