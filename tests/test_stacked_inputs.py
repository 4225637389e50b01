"""SmoothGrad and Integrated Gradients, host-side and compiled, with inputs that carry no batch axis.

The compiled graphs stack S+1 copies of each sample along the batch; the other inputs must be
stacked as the Explainer batches them: a scalar gain and a mask shared by all samples fed as they
are, a recurrent state [1, N, H] tiled along its batch axis 1. Each case is checked against a NumPy
computation of the definition: SmoothGrad's mean gradient over the same seeded noise, and IG's
closed form on models quadratic in x.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper

import onnxsal
from onnxsal.methods.smoothgrad import standard_noise
from tiny import F, make_model

N_IN, N_OUT, HIDDEN = 5, 4, 3
RNG = np.random.default_rng(7)
W = RNG.standard_normal((N_IN, N_OUT)).astype(np.float32)
U = RNG.standard_normal((HIDDEN, N_OUT)).astype(np.float32)
B = RNG.standard_normal(N_OUT).astype(np.float32)


def _squeeze(x: str, out: str, opset: int):
    if opset >= 13:
        return [helper.make_node("Constant", [], ["zero_axis"], value=helper.make_tensor("v", 7, [1], [0])),
                helper.make_node("Squeeze", [x, "zero_axis"], [out])]
    return [helper.make_node("Squeeze", [x], [out], axes=[0])]


def gain_model(opset: int):
    """y = ((x·x) W + b) · gain, with a scalar `gain` input: dy_c/dx = 2 x W[:, c] gain."""
    nodes = [helper.make_node("Mul", ["x", "x"], ["sq"]), helper.make_node("MatMul", ["sq", "w"], ["z"]),
             helper.make_node("Add", ["z", "b"], ["zb"]), helper.make_node("Mul", ["zb", "gain"], ["y"])]
    model = make_model(nodes, [("x", F, ["N", N_IN]), ("gain", F, [])], [("y", F, ["N", N_OUT])],
                       {"w": W, "b": B}, opset=opset, ir_version=7)
    extra = {"gain": np.asarray(1.7, np.float32)}
    return model, extra, lambda x, c: 2 * x * W[:, c].T * 1.7, lambda x, c: 1.7 * (x * x @ W + B)[np.arange(len(c)), c]


def mask_model(opset: int, lead=1):
    """y = (x·x·mask) W, with a mask [1, F] shared by every sample (declared [lead, F]):
    dy_c/dx = 2 x mask W[:, c]."""
    mask = np.array([[1, 0, 1, 0.5, 2]], np.float32)
    nodes = [helper.make_node("Mul", ["x", "x"], ["sq"]), helper.make_node("Mul", ["sq", "mask"], ["m"]),
             helper.make_node("MatMul", ["m", "w"], ["y"])]
    model = make_model(nodes, [("x", F, ["N", N_IN]), ("mask", F, [lead, N_IN])], [("y", F, ["N", N_OUT])],
                       {"w": W}, opset=opset, ir_version=7)
    return model, {"mask": mask}, lambda x, c: 2 * x * mask * W[:, c].T, lambda x, c: (x * x * mask @ W)[np.arange(len(c)), c]


STATE = RNG.standard_normal((1, 3, HIDDEN)).astype(np.float32)


def state_model(opset: int):
    """y = ((x·x) W) · (h U), with a state h [1, N, H] that holds the batch on axis 1:
    dy_c/dx = 2 x W[:, c] (h U)_c, a different factor for each sample."""
    nodes = [helper.make_node("Mul", ["x", "x"], ["sq"]), helper.make_node("MatMul", ["sq", "w"], ["z"])]
    nodes += _squeeze("h", "h0", opset)
    nodes += [helper.make_node("MatMul", ["h0", "u"], ["s"]), helper.make_node("Mul", ["z", "s"], ["y"])]
    model = make_model(nodes, [("x", F, ["N", N_IN]), ("h", F, [1, "N", HIDDEN])], [("y", F, ["N", N_OUT])],
                       {"w": W, "u": U}, opset=opset, ir_version=7)
    s = STATE[0] @ U  # [N, C]
    rows = lambda c: np.arange(len(c))  # noqa: E731
    return (model, {"h": STATE}, lambda x, c: 2 * x * W[:, c].T * s[rows(c), c][:, None],
            lambda x, c: (x * x @ W * s)[rows(c), c])


MODELS = {"scalar_gain": gain_model, "shared_mask": mask_model, "state_on_axis_1": state_model}
X = np.random.default_rng(1).standard_normal((3, N_IN)).astype(np.float32)
S, NOISE = 4, 0.2


def _compiled(model, extra, feeds_x, **options):
    graph = onnxsal.compile(model, wrt="x", **options)
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([graph.graph.output[-1].name], {"x": feeds_x, **extra})[0]


def _top_classes(model, extra, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["y"], {"x": x, **extra})[0].argmax(axis=1)


def _smoothgrad_by_hand(grad, x, c):
    """mean over s of grad(x + σ_n ε_s), σ_n = noise_level × (max − min) of sample n."""
    eps = standard_noise(0, S, x.shape[1:], np.float32)
    sigma = NOISE * (x.max(axis=1) - x.min(axis=1))
    return np.mean([grad(x + eps[s] * sigma[:, None], c) for s in range(S)], axis=0)


@pytest.mark.parametrize("opset", [9, 13])
@pytest.mark.parametrize("name", list(MODELS))
def test_smoothgrad_with_inputs_without_batch(name, opset):
    model, extra, grad, _ = MODELS[name](opset)
    c = _top_classes(model, extra, X)
    want = _smoothgrad_by_hand(grad, X, c)
    assert np.abs(want).max() > 0
    options = dict(method="smoothgrad", n_samples=S, noise_level=NOISE, seed=0)
    ex = onnxsal.Explainer(model, providers="cpu")
    host = ex.attribute({"x": X, **extra}, wrt="x", **options)
    np.testing.assert_allclose(host, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(_compiled(model, extra, X, **options), host, rtol=1e-4, atol=1e-5)
    target = np.array([2, 0, 3])  # a class index per sample, compiled with target="target" too
    want = _smoothgrad_by_hand(grad, X, target)
    np.testing.assert_allclose(ex.attribute({"x": X, **extra}, target=target, wrt="x", **options), want, rtol=1e-4, atol=1e-5)
    graph = onnxsal.compile(model, wrt="x", target="target", **options)
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    target_input = next(i.name for i in graph.graph.input if i.type.tensor_type.elem_type == 7)
    got = session.run([graph.graph.output[-1].name], {"x": X, target_input: target, **extra})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("opset", [9, 13])
@pytest.mark.parametrize("name", list(MODELS))
def test_integrated_gradients_with_inputs_without_batch(name, opset):
    """Closed form: F is quadratic in x along the path, so IG = F(x) − F(0) split by coordinate:
    (x_j − 0) ∫ ∂F/∂x_j(αx) dα = x_j · ∂F/∂x_j(x) / 2 (Gauss-Legendre is exact on the linear integrand)."""
    model, extra, grad, score = MODELS[name](opset)
    c = _top_classes(model, extra, X)
    want = X * grad(X, c) / 2
    assert np.abs(want).max() > 0
    ex = onnxsal.Explainer(model, providers="cpu")
    host, delta = ex.attribute({"x": X, **extra}, wrt="x", method="integrated_gradients", n_steps=3,
                               return_convergence_delta=True)
    np.testing.assert_allclose(host, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(host.sum(axis=1), score(X, c) - score(np.zeros_like(X), c), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(delta, 0, atol=1e-4)
    np.testing.assert_allclose(_compiled(model, extra, X, method="integrated_gradients", n_steps=3), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("lead", [1, None], ids=["declared-1", "declared-free"])
@pytest.mark.parametrize("method,options", [("smoothgrad", {"n_samples": S, "noise_level": NOISE}),
                                            ("integrated_gradients", {"n_steps": 3})])
def test_shared_mask_with_one_sample(method, options, lead):
    """With N = 1 a mask [1, F] has the batch's size. Declared [1, F] it is never the batch (the file
    says it runs with every batch size); declared with a free leading dim the Explainer batches it on
    axis 0 then, and the compiled graph, built before any size is known, decides that at run time:
    one graph serves N = 1 and N = 3."""
    model, extra, grad, _ = mask_model(13, lead)
    ex = onnxsal.Explainer(model, providers="cpu")
    assert ex.batch_axes({"x": X[:1], **extra}, "x")["mask"] == (0 if lead is None else None)
    assert ex.batch_axes({"x": X, **extra}, "x")["mask"] is None
    graph = onnxsal.compile(model, wrt="x", method=method, **options)
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    for x in (X[:1], X):
        c = _top_classes(model, extra, x)
        want = _smoothgrad_by_hand(grad, x, c) if method == "smoothgrad" else x * grad(x, c) / 2
        host = ex.attribute({"x": x, **extra}, wrt="x", method=method, **options)
        assert np.abs(host).max() > 0
        np.testing.assert_allclose(host, want, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(session.run([graph.graph.output[-1].name], {"x": x, **extra})[0], want, rtol=1e-4, atol=1e-5)


def gru_model():
    """x [N, T, F] -> Transpose -> GRU (initial state h [1, N, H]) -> last state -> MatMul -> y [N, C]."""
    rng = np.random.default_rng(3)
    weights = {"gw": (0.5 * rng.standard_normal((1, 3 * HIDDEN, N_IN))).astype(np.float32),
               "gr": (0.5 * rng.standard_normal((1, 3 * HIDDEN, HIDDEN))).astype(np.float32),
               "u": U}
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
             helper.make_node("GRU", ["xt", "gw", "gr", "", "", "h"], ["", "last"], hidden_size=HIDDEN),
             helper.make_node("Constant", [], ["zero_axis"], value=helper.make_tensor("v", 7, [1], [0])),
             helper.make_node("Squeeze", ["last", "zero_axis"], ["last0"]),
             helper.make_node("MatMul", ["last0", "u"], ["y"])]
    return make_model(nodes, [("x", F, ["N", 2, N_IN]), ("h", F, [1, "N", HIDDEN])], [("y", F, ["N", N_OUT])],
                      weights, opset=13, ir_version=7)


@pytest.mark.parametrize("method,options", [("smoothgrad", {"n_samples": S, "noise_level": NOISE}),
                                            ("integrated_gradients", {"n_steps": 4})])
def test_gru_state_is_tiled_along_its_batch_axis(method, options):
    """A real GRU: its initial state [1, N, H] is stacked along axis 1; compiled = host-side, and the
    state matters (another state gives another attribution)."""
    model = gru_model()
    x = np.random.default_rng(5).standard_normal((3, 2, N_IN)).astype(np.float32)
    h = np.random.default_rng(6).standard_normal((1, 3, HIDDEN)).astype(np.float32)
    ex = onnxsal.Explainer(model, providers="cpu")
    assert ex.batch_axes({"x": x, "h": h}, "x")["h"] == 1
    graph = onnxsal.compile(model, wrt="x", method=method, **options)
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    host = ex.attribute({"x": x, "h": h}, wrt="x", method=method, **options)
    np.testing.assert_allclose(session.run([graph.graph.output[-1].name], {"x": x, "h": h})[0], host, rtol=1e-4, atol=1e-5)
    other = ex.attribute({"x": x, "h": h[:, ::-1].copy()}, wrt="x", method=method, **options)
    assert np.abs(other - host).max() > 1e-3
