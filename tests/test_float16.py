"""float16 models: attribution in the model's own precision, against the float32 export.

A small CNN (Conv, BatchNormalization, Relu, an overlapping MaxPool, Gemm, Softmax) is exported
from PyTorch in float32 and converted to float16 by `to_float16` below (initializers and Constant
values cast, Casts to float retargeted to float16, declared types rewritten). The gradient graph
is then float16 throughout: onnxruntime's CPU provider runs the ops it has float16 kernels for in
float16 and the others (Conv, ConvTranspose, Gemm, ...) in float32 behind casts it inserts itself;
ScatterElements with reduction="add", which it refuses for float16, is not emitted for such models
(see the MaxPool rule).

float16 rounding may flip a decision of the forward pass (a ReLU input near 0, two close values in
a pooling window), which moves gradient elsewhere; away from such flips the maps must agree to
float16 precision: max|g16 - g32| / max|g32| <= 1e-2 on inputs where every ReLU mask and every
MaxPool choice of the float16 model equals the float32 one, and a cosine of at least 0.98 on any input.
"""

from __future__ import annotations

import io

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxsal
from onnxsal.autodiff import GRADIENT, SeedSpec, differentiate

torch = pytest.importorskip("torch")

pytestmark = [  # dynamo=False asks for the TorchScript exporter on purpose
    pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The feature will be removed:DeprecationWarning"),
]

REL_TOL = 1e-2
METHODS = ["gradient", "guided_backprop"]


class SmallCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.pool = torch.nn.MaxPool2d(3, 2, 1)  # overlapping windows, as resnet's stem
        self.fc = torch.nn.Linear(8 * 8 * 8, 5)

    def forward(self, x):
        x = self.bn(torch.relu(self.conv1(x)))  # BN after the ReLU: the exporter cannot fold it into the Conv
        x = self.pool(torch.relu(self.conv2(x)))
        return torch.softmax(self.fc(x.flatten(1)), dim=1)


def export_float32(opset: int) -> onnx.ModelProto:
    torch.manual_seed(0)
    net = SmallCNN().eval()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.2, 0.2)
        net.bn.running_var.uniform_(0.5, 1.5)
    buf = io.BytesIO()
    torch.onnx.export(net, torch.randn(1, 3, 16, 16), buf, opset_version=opset, input_names=["x"], output_names=["p"],
                      dynamic_axes={"x": {0: "n"}, "p": {0: "n"}}, dynamo=False)
    return onnx.load_from_string(buf.getvalue())


def _half(t: onnx.TensorProto) -> onnx.TensorProto:
    return numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name)


def to_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its float path in float16: float initializers and Constant values cast, Casts
    to float retargeted, graph inputs, outputs and value_info declared float16."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    for t in g.initializer:
        if t.data_type == TensorProto.FLOAT:
            t.CopyFrom(_half(t))
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT:
            vi.type.tensor_type.elem_type = TensorProto.FLOAT16
    for n in g.node:
        for a in n.attribute:
            if n.op_type == "Cast" and a.name == "to" and a.i == TensorProto.FLOAT:
                a.i = TensorProto.FLOAT16
            if n.op_type == "Constant" and a.name == "value" and a.t.data_type == TensorProto.FLOAT:
                a.t.CopyFrom(_half(a.t))
    return model


def decisions(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    """Every ReLU mask and every MaxPool's chosen index, read from the model run on x."""
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    names = []
    for n in probe.graph.node:
        if n.op_type == "Relu":
            names.append(n.output[0])
        if n.op_type == "MaxPool":
            if len(n.output) < 2:
                n.output.append(f"{n.name}_indices")
            names.append(n.output[1])
    probe.graph.output.extend(onnx.ValueInfoProto(name=v) for v in names)
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    return [v > 0 if v.dtype.kind == "f" else v for v in sess.run(names, {"x": x})]


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(["p"], {"x": x})[0]


@pytest.fixture(scope="module", params=[13, 17], ids=["opset13", "opset17"])
def models(request):
    m32 = export_float32(request.param)
    m16 = to_float16(m32)
    assert {n.op_type for n in m16.graph.node} >= {"Conv", "BatchNormalization", "Relu", "MaxPool", "Gemm", "Softmax"}
    return m32, m16, onnxsal.Explainer(m32, providers="cpu"), onnxsal.Explainer(m16, providers="cpu")


def _flip_free_input(m32, m16) -> np.ndarray:
    """The first of a few seeded inputs on which float16 makes every decision float32 makes."""
    for seed in range(20):
        x = np.random.default_rng(seed).random((2, 3, 16, 16)).astype(np.float32)
        same = [np.array_equal(a, b) for a, b in zip(decisions(m32, x), decisions(m16, x.astype(np.float16)))]
        if all(same):
            return x
    raise AssertionError("no input among 20 where float16 keeps every ReLU mask and MaxPool choice")


@pytest.mark.parametrize("method", METHODS)
def test_float16_map_matches_float32(models, method):
    m32, m16, e32, e16 = models
    x = _flip_free_input(m32, m16)
    g32 = e32.attribute(x, method=method, target=[1, 3])
    g16 = e16.attribute(x.astype(np.float16), method=method, target=[1, 3])
    assert g16.dtype == np.float16 and g16.shape == x.shape
    rel = float(np.max(np.abs(g16.astype(np.float32) - g32)) / np.max(np.abs(g32)))
    assert rel <= REL_TOL, f"{method}: max|g16 - g32| / max|g32| = {rel:.2e}"


@pytest.mark.parametrize("method", METHODS)
def test_float16_map_points_the_same_way_on_any_input(models, method):
    _, _, e32, e16 = models
    x = np.random.default_rng(100).random((4, 3, 16, 16)).astype(np.float32)
    g32 = e32.attribute(x, method=method).reshape(4, -1)
    g16 = e16.attribute(x.astype(np.float16), method=method).astype(np.float32).reshape(4, -1)
    cosine = np.sum(g16 * g32, axis=1) / (np.linalg.norm(g16, axis=1) * np.linalg.norm(g32, axis=1))
    assert np.all(cosine >= 0.98), cosine


def test_float16_gradient_graph_stays_in_float16(models):
    _, m16, _, e16 = models
    gg = e16.gradient_graph("gradient")
    types = {o.name: o.type.tensor_type.elem_type for o in gg.model.graph.output}
    assert types[gg.grads["x"]] == TensorProto.FLOAT16
    scatters = [n for n in gg.model.graph.node if n.op_type == "ScatterElements"
                and any(a.name == "reduction" and a.s != b"none" for a in n.attribute)]
    assert not scatters, "float16 MaxPool backward must not use ScatterElements with reduction (no CPU kernel)"
    floats = [t.name for t in gg.model.graph.initializer if t.data_type == TensorProto.FLOAT]
    assert not floats, f"float32 constants in a float16 gradient graph: {floats}"


def test_float16_forward_outputs_unchanged(models):
    _, m16, _, e16 = models
    x = np.random.default_rng(7).random((2, 3, 16, 16)).astype(np.float16)
    graph, session = e16.method_graph("gradient", "argmax")
    expected = _run(m16, x)
    got = session.run(["p"], {"x": x})[0]
    np.testing.assert_array_equal(got, expected)


def test_converter_keeps_the_float_model_equal_up_to_rounding(models):
    m32, m16, _, _ = models
    x = np.random.default_rng(8).random((2, 3, 16, 16)).astype(np.float32)
    p32 = _run(m32, x)
    p16 = _run(m16, x.astype(np.float16))
    assert p16.dtype == np.float16
    np.testing.assert_allclose(p16.astype(np.float32), p32, atol=5e-3)
    onnx.checker.check_model(m16)


def test_repeated_selection_sums_in_float32_under_float16():
    """Gather with repeated indices at opset 17 needs ScatterElements(reduction="add"), which the CPU
    provider refuses for float16: the sum is taken in float32 and cast back (rules/scatter.py)."""
    def model(elem):
        node = helper.make_node("Gather", ["x", "i"], ["y"], name="gather", axis=0)
        graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", elem, [4, 3])],
                                  [helper.make_tensor_value_info("y", elem, [5, 3])],
                                  initializer=[numpy_helper.from_array(np.array([0, 2, 0, 3, 0], np.int64), "i")])
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 10
        return m

    x = np.random.default_rng(0).random((4, 3)).astype(np.float32)
    seed = np.random.default_rng(1).random((5, 3)).astype(np.float32)
    grads = {}
    for elem, dtype in ((TensorProto.FLOAT, np.float32), (TensorProto.FLOAT16, np.float16)):
        gg = differentiate(model(elem), GRADIENT, wrt=["x"], output="y", seed=SeedSpec("tensor"))
        sess = ort.InferenceSession(gg.model.SerializeToString(), providers=["CPUExecutionProvider"])
        grads[dtype] = sess.run([gg.grads["x"]], {"x": x.astype(dtype), gg.seed_input: seed.astype(dtype)})[0]
    assert grads[np.float16].dtype == np.float16
    np.testing.assert_allclose(grads[np.float16].astype(np.float32), grads[np.float32], rtol=2e-3, atol=2e-3)
    assert grads[np.float32][0].sum() == pytest.approx(seed[[0, 2, 4]].sum(), rel=1e-6)  # three rows add up at row 0
