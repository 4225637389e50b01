"""Files as they come: dynamic spatial sizes, inputs without a batch axis, outputs with the batch
elsewhere, declared output shapes that are wrong."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

import onnxsal
import onnxsal.explainer as explainer_module
from onnxsal.autodiff import DEFAULT_RULES, differentiate, rule_set
from onnxsal.autodiff.registry import Rule
from onnxsal.cli import main
from onnxsal.errors import InvalidInputError, NeedsShapesError
from tests.tiny import F, make_model, mlp

torch = pytest.importorskip("torch")
nn, tf = torch.nn, torch.nn.functional


def export(module, args, names, dynamic_axes) -> onnx.ModelProto:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, buf, dynamo=False, opset_version=17, input_names=names, output_names=["y"],
                          dynamic_axes=dynamic_axes)
    return onnx.load_from_string(buf.getvalue())


class Neck(nn.Module):
    """A U-Net/FPN-style merge: the coarse map resized to the skip's (run-time) size, then pooled."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        skip = torch.tanh(self.c1(x))
        coarse = torch.tanh(self.c2(skip))
        up = tf.interpolate(coarse, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.fc(tf.avg_pool2d(skip + up, 2).mean((2, 3)))


class Pooled(nn.Module):
    """Average pooling over sizes the file leaves dynamic: only the channel and spatial dims need fixing."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.c = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(tf.avg_pool2d(torch.tanh(self.c(x)), 2).mean((2, 3)))


@pytest.fixture(scope="module")
def pooled():
    net = Pooled().eval()
    return net, export(net, (torch.zeros(1, 3, 8, 8),), ["x"], {"x": {0: "N", 2: "H", 3: "W"}, "y": {0: "N"}})


@pytest.fixture(scope="module")
def neck():
    net = Neck().eval()
    return net, export(net, (torch.zeros(1, 3, 8, 8),), ["x"], {"x": {0: "N", 2: "H", 3: "W"}, "y": {0: "N"}})


def torch_grad(net, x, target):
    xt = torch.tensor(x, requires_grad=True)
    net(xt)[torch.arange(len(x)), torch.as_tensor(target)].sum().backward()
    return xt.grad.numpy()


def close(got, want, rtol=1e-4):
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= rtol * np.abs(want).max()


def images(shape, seed=1):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_dynamic_sizes_are_specialised_on_the_call(neck):
    net, model = neck
    with pytest.raises(NeedsShapesError):
        differentiate(model, rule_set("gradient", "identity"))
    ex = onnxsal.Explainer(model, providers="cpu")
    x = images((2, 3, 8, 8))
    close(ex.attribute(x, target=[0, 2]), torch_grad(net, x, [0, 2]))
    y = images((3, 3, 12, 10), seed=2)
    close(ex.attribute(y, target=1, method="saliency"), torch_grad(net, y, [1, 1, 1]))
    assert ex.check() is not None and "specialises" in ex.check()  # not refused: it says what it will do
    cam = ex.attribute(x, method="gradcam")  # the layer is chosen on the specialised graph, where maps have sizes
    assert cam.shape == (2, 1, 8, 8) and cam.min() == 0 and cam.max() == pytest.approx(1)


def test_one_graph_per_input_size(pooled, monkeypatch):
    net, model = pooled
    built = []
    real = explainer_module.differentiate

    def counting(*args, **kwargs):
        graph = real(*args, **kwargs)
        built.append(graph)
        return graph

    monkeypatch.setattr(explainer_module, "differentiate", counting)
    ex = onnxsal.Explainer(model, providers="cpu")
    ex.attribute(images((2, 3, 8, 8)), target=[0, 1])
    assert len(built) == 1  # the file's own shapes refused, the specialised model built
    ex.attribute(images((2, 3, 8, 8), seed=3), target=[1, 1])
    x = images((5, 3, 8, 8))
    close(ex.attribute(x, target=[0] * 5, batch_size=2), torch_grad(net, x, [0] * 5))  # a smaller last chunk
    assert len(built) == 1  # the batch axis stayed free
    ex.attribute(images((2, 3, 16, 12)), target=[0, 1])
    assert len(built) == 2


def test_compile_with_and_without_input_shapes(neck, pooled):
    net, model = neck
    with pytest.raises(NeedsShapesError) as info:
        onnxsal.compile(model, target="target")
    text = str(info.value)
    assert "AveragePool" in text and "input_shapes=" in text and "--input-shape" in text and "\n" not in text
    graph = onnxsal.compile(model, target="target", input_shapes={"x": (2, 3, 8, 8)})
    dims = [d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [2, 3, 8, 8]
    x = images((2, 3, 8, 8))
    sess = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run([graph.graph.output[-1].name], {"x": x, "target": np.array([2, 0], np.int64)})[0]
    close(got, torch_grad(net, x, [2, 0]))
    free_batch = onnxsal.compile(pooled[1], input_shapes=(None, 3, 8, 8))  # a None dim stays dynamic
    dims = free_batch.graph.input[0].type.tensor_type.shape.dim
    assert not dims[0].HasField("dim_value") and [d.dim_value for d in dims[1:]] == [3, 8, 8]


def test_cli_input_shape(pooled, tmp_path, capsys):
    _, model = pooled
    path = tmp_path / "neck.onnx"
    onnx.save(model, path)
    assert main(["compile", str(path), "-o", str(tmp_path / "no.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--input-shape" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "no.onnx").exists()
    out = tmp_path / "explain.onnx"
    assert main(["compile", str(path), "-o", str(out), "--input-shape", "1,3,8,8"]) == 0
    dims = [d.dim_value for d in onnx.load(out).graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 8, 8]
    assert main(["compile", str(path), "-o", str(tmp_path / "named.onnx"), "--input-shape", "x=N,3,8,8"]) == 0
    assert main(["inspect", str(path), "--input-shape", "1,3,8,8"]) == 0
    assert "differentiable: yes" in capsys.readouterr().out


class Stateful(nn.Module):
    """A GRU-style step: input x [N, 4], state h [1, N, 8] (the batch on axis 1), a scalar gain."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 3)

    def forward(self, x, h, gain):
        return self.fc2(torch.tanh(self.fc1(x) + h[0]) * gain)


@pytest.mark.parametrize("state_axes", [{1: "N"}, {}], ids=["state-names-the-batch", "state-fixed"])
def test_inputs_without_a_leading_batch_axis(state_axes):
    net = Stateful().eval()
    args = (torch.zeros(2, 4), torch.zeros(1, 2, 8), torch.tensor(1.5))
    model = export(net, args, ["x", "h", "gain"], {"x": {0: "N"}, "h": state_axes, "y": {0: "N"}})
    rng = np.random.default_rng(0)
    feeds = {"x": rng.normal(size=(2, 4)).astype(np.float32), "h": rng.normal(size=(1, 2, 8)).astype(np.float32),
             "gain": np.array(1.5, np.float32)}
    ex = onnxsal.Explainer(model, providers="cpu")
    got = ex.attribute(feeds, target=[2, 0])
    xt = torch.tensor(feeds["x"], requires_grad=True)
    net(xt, torch.tensor(feeds["h"]), torch.tensor(feeds["gain"]))[[0, 1], [2, 0]].sum().backward()
    close(got, xt.grad.numpy())
    assert ex.batch_axes(ex.feeds(feeds)) == {"x": 0, "h": 1 if state_axes else None, "gain": None}
    if state_axes:  # the state is split with the samples along the axis the file names the batch
        np.testing.assert_allclose(ex.attribute(feeds, target=[2, 0], batch_size=1), got, rtol=1e-6)
        smooth = ex.attribute(feeds, target=[2, 0], method="smoothgrad", n_samples=3, internal_batch_size=2)
        assert smooth.shape == (2, 4) and np.all(np.isfinite(smooth))


def ctc_model():
    """x [N, T, F] -> y [T, N, C] (the batch on axis 1, as a CTC head returns it)."""
    w = np.random.default_rng(4).normal(size=(3, 5)).astype(np.float32)
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0, 2], name="to_time_major"),
             helper.make_node("MatMul", ["t", "w"], ["y"], name="head")]
    return make_model(nodes, [("x", F, ["N", "T", 3])], [("y", F, ["T", "B", 5])], {"w": w}), w


def test_output_with_the_batch_on_axis_1():
    model, w = ctc_model()
    ex = onnxsal.Explainer(model, providers="cpu")
    x = images((2, 6, 3))
    with pytest.raises(InvalidInputError, match="'y'.*axis 1.*seed tensor"):
        ex.attribute(x)
    seed = np.random.default_rng(5).normal(size=(6, 2, 5)).astype(np.float32)
    expected = np.einsum("tnc,fc->ntf", seed, w)
    np.testing.assert_allclose(ex.attribute(x, target=seed), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ex.attribute(x, target=seed, batch_size=1), expected, rtol=1e-5, atol=1e-6)


def wrongly_declared_mlp():
    """The mlp (4 classes) whose file declares 7 outputs per sample."""
    model = mlp(seed=3)
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("y", F, ["N", 7]))
    return model


def test_seeds_and_targets_follow_the_real_output():
    model = wrongly_declared_mlp()
    x = images((2, 6))
    ex = onnxsal.Explainer(model, providers="cpu")
    seed = np.zeros((2, 4), np.float32)
    seed[:, 1], seed[:, 3] = 2.0, -1.0
    expected = 2 * ex.attribute(x, target=1) - ex.attribute(x, target=3)
    np.testing.assert_allclose(ex.attribute(x, target=seed), expected, rtol=1e-4, atol=1e-6)
    with pytest.raises(InvalidInputError, match=r"shape \(2, 4\)"):
        ex.attribute(x, target=np.zeros((2, 7), np.float32))
    with pytest.raises(InvalidInputError, match="out of range.*4 classes"):
        ex.attribute(x, target=5)  # in range of what the file declares, not of what the model returns


def test_batch_fixed_only_when_a_rule_needs_it(monkeypatch):
    """A rule that needs every dim static, batch included: one graph per batch size fed."""

    def neg_static(ctx, g):
        ctx.static_shape(ctx.x)
        return [ctx.op("Neg", [g])]

    monkeypatch.setitem(DEFAULT_RULES, "Neg", Rule(neg_static))
    w = np.random.default_rng(6).normal(size=(3, 2)).astype(np.float32)
    nodes = [helper.make_node("Neg", ["x"], ["n"], name="neg"), helper.make_node("MatMul", ["n", "w"], ["y"], name="mm")]
    model = make_model(nodes, [("x", F, ["N", 3])], [("y", F, ["N", 2])], {"w": w})
    ex = onnxsal.Explainer(model, providers="cpu")
    x = images((5, 3))
    target = np.array([0, 1, 1, 0, 1])
    got = ex.attribute(x, target=target, batch_size=2)  # chunks of 2, 2 and 1
    np.testing.assert_allclose(got, -w.T[target], rtol=1e-6)
    batches = {dict(shapes)["x"][0] for shapes, _values in ex._children}
    assert batches == {None, 2, 1}  # the free-batch child failed to build; then one per chunk size
    assert ex.attribute(x[:3], target=target[:3]).shape == (3, 3)
    smooth = ex.attribute(x, target=target, method="smoothgrad", n_samples=3, internal_batch_size=4)
    np.testing.assert_allclose(smooth, -w.T[target], rtol=1e-5)  # a linear model: every noisy copy has that gradient


def test_scalar_input_is_not_a_batch():
    nodes = [helper.make_node("Mul", ["x", "gain"], ["y"], name="scale")]
    model = make_model(nodes, [("x", F, ["N", 3]), ("gain", F, [])], [("y", F, ["N", 3])])
    ex = onnxsal.Explainer(model, providers="cpu")
    seed = np.ones((4, 3), np.float32)
    got = ex.attribute({"x": images((4, 3)), "gain": np.array(2.5, np.float32)}, target=seed, batch_size=3)
    np.testing.assert_allclose(got, np.full((4, 3), 2.5, np.float32))


def test_input_shapes_are_checked():
    ex = onnxsal.Explainer(mlp(), providers="cpu")
    with pytest.raises(InvalidInputError, match="rank 2"):
        ex.compile(input_shapes=(1, 6, 1))
    with pytest.raises(InvalidInputError, match="fixed to"):
        ex.compile(input_shapes=(1, 5))
    with pytest.raises(InvalidInputError, match="not an input"):
        ex.compile(input_shapes={"z": (1, 6)})
