"""Whole models with reflect, edge and wrap padding, against torch.autograd.

torch's legacy exporter (dynamo=False) writes nn.ReflectionPad2d as Pad mode "reflect" and
nn.ReplicationPad2d as Pad mode "edge", with the pads computed by a small constant subgraph
(ConstantOfShape, Concat, Reshape, Slice, Transpose, Cast), so they are constants only once the
graph is specialised. F.pad(mode="circular") it writes as Slice + Concat at every opset (19
included), never as Pad mode "wrap"; the dynamo exporter writes Pad "wrap" (opset 19), and the
wrap rule is also checked on hand-written ONNX graphs that carry torch weights. The rule table (tests/rule_cases.py) checks each mode alone.
"""

from __future__ import annotations

import io

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import onnxsal
from onnxsal.autodiff import SeedSpec, differentiate, rule_set
from onnxsal.errors import NeedsShapesError, UnsupportedModelError
from onnxsal.prepare import specialise

RTOL = 1e-4
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")  # torch's exporter


class PaddedNet(nn.Module):
    """Reflect, replicate and circular padding between convolutions, as in ResNet-style generators."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.reflect = nn.ReflectionPad2d((1, 2, 2, 1))
        self.conv1 = nn.Conv2d(3, 4, 3)
        self.replicate = nn.ReplicationPad2d(2)
        self.conv2 = nn.Conv2d(4, 4, 3)
        self.conv3 = nn.Conv2d(4, 5, 3)

    def forward(self, x):
        x = torch.relu(self.conv1(self.reflect(x)))
        x = F.relu(self.conv2(self.replicate(x)))
        x = F.pad(x, (1, 1, 2, 0), mode="circular")
        return self.conv3(x).mean(dim=(2, 3))


def _export(model: nn.Module, x: torch.Tensor, opset: int, dynamic: bool = False) -> onnx.ModelProto:
    f = io.BytesIO()
    axes = {"x": {0: "n", 2: "h", 3: "w"}} if dynamic else None
    torch.onnx.export(model, (x,), f, input_names=["x"], output_names=["y"], opset_version=opset,
                      dynamic_axes=axes, dynamo=False)
    return onnx.load_from_string(f.getvalue())


def _torch_grad(model: nn.Module, x: np.ndarray, seed: np.ndarray) -> np.ndarray:
    xt = torch.tensor(x, requires_grad=True)
    (model(xt) * torch.tensor(seed)).sum().backward()
    return xt.grad.numpy()


def _assert_close(got: np.ndarray, want: np.ndarray) -> None:
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL * float(np.max(np.abs(want))))


def _seeded_gradient(model: onnx.ModelProto, x: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """The onnxsal gradient of <y, seed> with respect to x, run by onnxruntime."""
    gg = differentiate(model, rule_set("gradient", "keep"), wrt=["x"], output="y", seed=SeedSpec("tensor"))
    sess = ort.InferenceSession(gg.model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run([gg.grads["x"]], {"x": x, gg.seed_input: seed})[0]


def _pad_modes(model: onnx.ModelProto) -> list[str]:
    return [helper.get_attribute_value(a).decode() for n in model.graph.node if n.op_type == "Pad"
            for a in n.attribute if a.name == "mode"]


@pytest.mark.parametrize("opset", [11, 17, 19])
def test_exported_reflect_and_replicate_pads_match_torch(opset):
    net = PaddedNet().eval()
    x = np.random.default_rng(opset).standard_normal((2, 3, 8, 9)).astype(np.float32)
    model = _export(net, torch.tensor(x), opset)
    assert _pad_modes(model) == ["reflect", "edge"]  # circular: Slice + Concat, no Pad
    seed = np.random.default_rng(1).standard_normal((2, 5)).astype(np.float32)
    with pytest.raises(NeedsShapesError, match="pads are computed at run time"):
        _seeded_gradient(model, x, seed)
    got = _seeded_gradient(specialise(model, {"x": list(x.shape)}), x, seed)
    _assert_close(got, _torch_grad(net, x, seed))


def test_explainer_on_dynamic_export_matches_torch():
    net = PaddedNet().eval()
    x = np.random.default_rng(7).standard_normal((3, 3, 7, 10)).astype(np.float32)
    model = _export(net, torch.tensor(x), 17, dynamic=True)
    got = onnxsal.Explainer(model, providers="cpu").attribute(x, target=2, softmax="keep")
    seed = np.zeros((3, 5), np.float32)
    seed[:, 2] = 1
    _assert_close(got, _torch_grad(net, x, seed))


def test_dynamo_export_with_pad_wrap_matches_torch():
    """torch's dynamo exporter writes F.pad(mode="circular") as Pad mode "wrap" (opset 19), with
    constant pads: the gradient builds on the file as it is."""
    net = PaddedNet().eval()
    x = np.random.default_rng(11).standard_normal((2, 3, 8, 9)).astype(np.float32)
    model = torch.onnx.export(net, (torch.tensor(x),), dynamo=True, opset_version=19, input_names=["x"],
                              output_names=["y"], verbose=False).model_proto
    assert sorted(_pad_modes(model)) == ["edge", "reflect", "wrap"]
    seed = np.random.default_rng(2).standard_normal((2, 5)).astype(np.float32)
    _assert_close(_seeded_gradient(model, x, seed), _torch_grad(net, x, seed))


def _wrap_conv_model(weight: np.ndarray, bias: np.ndarray, pads: list[int], shape, opset: int, axes=None):
    """x -> Pad(wrap, pads[, axes]) -> Conv(weight, bias) -> Relu -> y, written by hand."""
    inits = [numpy_helper.from_array(np.asarray(pads, np.int64), "pads"),
             numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")]
    pad_inputs = ["x", "pads"]
    if axes is not None:
        inits.append(numpy_helper.from_array(np.asarray(axes, np.int64), "axes"))
        pad_inputs += ["", "axes"]
    nodes = [helper.make_node("Pad", pad_inputs, ["xp"], name="circular/Pad", mode="wrap"),
             helper.make_node("Conv", ["xp", "w", "b"], ["z"], name="conv"),
             helper.make_node("Relu", ["z"], ["y"], name="relu")]
    graph = helper.make_graph(nodes, "wrap", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    return model


@pytest.mark.parametrize("opset, pads, axes, torch_pad", [
    (19, [0, 0, 2, 1, 0, 0, 1, 3], None, (1, 3, 2, 1)),  # (left, right, top, bottom) in torch's order
    (21, [1, 2, 2, 1], [3, 2], (1, 2, 2, 1)),  # the opset-18 axes input, last axis first
])
def test_wrap_pad_matches_torch_circular(opset, pads, axes, torch_pad):
    rng = np.random.default_rng(3)
    conv = nn.Conv2d(3, 4, 3)
    weight, bias = conv.weight.detach().numpy(), conv.bias.detach().numpy()
    x = rng.standard_normal((2, 3, 5, 6)).astype(np.float32)
    model = _wrap_conv_model(weight, bias, pads, list(x.shape), opset, axes)

    def net(xt):
        return torch.relu(conv(F.pad(xt, torch_pad, mode="circular")))

    with torch.no_grad():
        y = net(torch.tensor(x)).numpy()
    seed = rng.standard_normal(y.shape).astype(np.float32)
    _assert_close(_seeded_gradient(model, x, seed), _torch_grad(net, x, seed))


def test_wrap_pad_on_dynamic_sizes_needs_shapes_then_works():
    rng = np.random.default_rng(5)
    conv = nn.Conv2d(2, 3, 3)
    weight, bias = conv.weight.detach().numpy(), conv.bias.detach().numpy()
    x = rng.standard_normal((1, 2, 4, 4)).astype(np.float32)
    model = _wrap_conv_model(weight, bias, [0, 0, 1, 1, 0, 0, 1, 1], ["n", 2, "h", "w"], 19)
    seed = rng.standard_normal((1, 3, 4, 4)).astype(np.float32)
    with pytest.raises(NeedsShapesError, match="wrap padding needs the static size of axis 2"):
        _seeded_gradient(model, x, seed)
    got = _seeded_gradient(specialise(model, {"x": list(x.shape)}), x, seed)
    _assert_close(got, _torch_grad(lambda t: torch.relu(conv(F.pad(t, (1, 1, 1, 1), mode="circular"))), x, seed))


def test_reflect_pad_beyond_the_input_is_refused():
    model = _wrap_conv_model(np.ones((1, 1, 1, 1), np.float32), np.zeros(1, np.float32), [0, 0, 4, 0, 0, 0, 0, 0],
                             [1, 1, 4, 4], 19)
    for a in model.graph.node[0].attribute:
        a.s = b"reflect"
    with pytest.raises(UnsupportedModelError, match="reflect padding of 4 on axis 2 exceeds"):
        _seeded_gradient(model, np.zeros((1, 1, 4, 4), np.float32), np.zeros((1, 1, 8, 4), np.float32))
