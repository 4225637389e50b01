"""Every compiled method at opsets 9-12 gives the numbers it gives at opset 13.

The method graphs (Grad-CAM's upsampling, SmoothGrad/IG's in-graph stacking, normalisation) are
written in whatever the file's opset can express: Slice with attributes and no Resize-11 before
opset 11, Reduce* axes as attributes, Squeeze/Unsqueeze axes as attributes before 13. The models
are exported by torch at opset 9 and brought to 10, 11 and 12 with onnx.version_converter (which
cannot go down from 13: it has no down-conversion adapter for Relu), and compared with torch's own
opset-13 export of the same weights.
"""

from __future__ import annotations

import io

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper, version_converter

import onnxsal
from onnxsal.methods import compilable

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

OLD_OPSETS = (9, 10, 11, 12)
SMALL_OPTIONS = {"smoothgrad": {"n_samples": 3}, "integrated_gradients": {"n_steps": 4},
                 "occlusion": {"sliding_window_shapes": (8, 8), "strides": 8}, "rise": {"n_masks": 8, "grid_size": 4}}
NOT_FOR_CNNS = {"attention_rollout"}  # needs attention maps; its old-opset check is in test_vit.py
# every compilable method, plus the variants whose graphs differ: nearest upsampling, a modifier
CASES = [(m, SMALL_OPTIONS.get(m, {}), None) for m in compilable() if m not in NOT_FOR_CNNS] + [
    ("gradcam", {"interpolation": "nearest"}, None),
    ("gradcam_plus_plus", {"normalize": False}, None),
    ("gradient", {}, "absolute"),
    ("smoothgrad", {"n_samples": 3, "aggregation": "variance", "base": "guided_backprop"}, None),
]


class SmallCNN(torch.nn.Module):
    """Conv/Relu/strided Conv/GlobalAveragePool/Linear: no MaxPool, a 16x16 feature map for Grad-CAM."""

    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.c2 = torch.nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, x):
        h = torch.relu(self.c2(torch.relu(self.c1(x))))
        return self.fc(h.mean(dim=(2, 3)))


def _export(module, size: int, opset: int) -> onnx.ModelProto:
    buf = io.BytesIO()
    torch.onnx.export(module, torch.zeros(1, 3, size, size), buf, opset_version=opset, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}}, dynamo=False)
    return onnx.load_from_string(buf.getvalue())


def _family(module, size: int) -> dict[int, onnx.ModelProto]:
    """The model at opset 13 (torch) and at 9 (torch), 10, 11, 12 (onnx.version_converter from 9)."""
    old = _export(module, size, 9)
    models = {9: old, 13: _export(module, size, 13)}
    for opset in OLD_OPSETS[1:]:
        models[opset] = version_converter.convert_version(old, opset)
    for opset, m in models.items():
        assert next(i.version for i in m.opset_import if i.domain in ("", "ai.onnx")) == opset
    return models


@pytest.fixture(scope="module")
def families():
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(num_classes=10).eval()
    small = SmallCNN().eval()
    rng = np.random.default_rng(0)
    return {
        "resnet18": (_family(resnet, 64), rng.standard_normal((2, 3, 64, 64)).astype(np.float32)),
        "small_cnn": (_family(small, 32), rng.standard_normal((2, 3, 32, 32)).astype(np.float32)),
    }


def _run_compiled(model: onnx.ModelProto, method: str, options: dict, modifier, x: np.ndarray) -> np.ndarray:
    graph = onnxsal.compile(model, method=method, modifier=modifier, **options)
    opset = next(i.version for i in graph.opset_import if i.domain in ("", "ai.onnx"))
    assert opset == next(i.version for i in model.opset_import if i.domain in ("", "ai.onnx"))
    onnx.checker.check_model(graph)
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([graph.graph.output[-1].name], {"x": x})[0]


@pytest.mark.parametrize("family", ["resnet18", "small_cnn"])
@pytest.mark.parametrize("method,options,modifier", CASES, ids=lambda v: str(v) if not isinstance(v, dict) else "-".join(f"{k}={w}" for k, w in v.items()))
def test_old_opset_matches_opset13(families, family, method, options, modifier):
    models, x = families[family]
    reference = _run_compiled(models[13], method, options, modifier, x)
    assert np.abs(reference).max() > 0
    for opset in OLD_OPSETS:
        got = _run_compiled(models[opset], method, options, modifier, x)
        assert got.shape == reference.shape, opset
        np.testing.assert_allclose(got, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max(),
                                   err_msg=f"{method} at opset {opset}")


def _gradcam_model(dtype, opset: int) -> onnx.ModelProto:
    """Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm, with weights in `dtype`."""
    rng = np.random.default_rng(1)
    et = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(dtype), "w")
    fc = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(dtype), "fc")
    bias = numpy_helper.from_array(np.zeros(3, dtype), "bias")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc", "bias"], ["y"], name="fc"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", et, [None, 3, 6, 6])],
                              [helper.make_tensor_value_info("y", et, [None, 3])], [w, fc, bias])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


@pytest.mark.parametrize("opset", [9, 13])
@pytest.mark.parametrize("method", ["gradcam", "gradcam_plus_plus"])
def test_gradcam_constants_follow_the_model_dtype(method, opset):
    """A float16 model's Grad-CAM graph is type-correct (its eps/zero constants are float16) and
    agrees with the float32 model's."""
    x = np.random.default_rng(2).uniform(0, 1, (2, 3, 6, 6))
    maps = {}
    for dtype in (np.float32, np.float16):
        graph = onnxsal.compile(_gradcam_model(dtype, opset), method=method)
        onnx.checker.check_model(graph, full_check=True)
        session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
        maps[dtype] = session.run([graph.graph.output[-1].name], {"x": x.astype(dtype)})[0]
    assert maps[np.float16].dtype == np.float16
    np.testing.assert_allclose(maps[np.float16].astype(np.float32), maps[np.float32], atol=2e-2)


def _resize_graph(opset: int, mode: str) -> onnx.ModelProto:
    """cam [N, C, h, w] resized to the fed `sizes` by `Emitter.resize`, every dim dynamic."""
    from onnxsal.autodiff.emitter import Emitter

    e = Emitter({"cam", "sizes"}, opset)
    out = e.resize("cam", "sizes", mode, np.float32)
    e.op("Identity", [out], out="resized")
    graph = helper.make_graph(e.nodes, "resize", [helper.make_tensor_value_info("cam", onnx.TensorProto.FLOAT, ["N", "C", "h", "w"]),
                                                   helper.make_tensor_value_info("sizes", onnx.TensorProto.INT64, [4])],
                              [helper.make_tensor_value_info("resized", onnx.TensorProto.FLOAT, ["N", "C", "H", "W"])], e.initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


@pytest.mark.parametrize("mode", ["linear", "nearest"])
@pytest.mark.parametrize("opset", [9, 10])
def test_resize_before_opset_11_matches_resize_11(opset, mode):
    """Before opset 11 the resize is two interpolation matrices built in the graph from run-time
    sizes; it matches onnxruntime's Resize (half-pixel linear / asymmetric floor nearest) on
    up- and down-sampling by integer and fractional factors."""
    sessions = {}
    for version in (opset, 13):
        model = _resize_graph(version, mode)
        onnx.checker.check_model(model)
        assert "Resize" not in {n.op_type for n in model.graph.node} or version >= 11
        sessions[version] = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(3)
    for (h, w), (hh, ww) in [((2, 2), (64, 64)), ((7, 5), (224, 31)), ((9, 12), (4, 5)), ((3, 3), (3, 3))]:
        feeds = {"cam": rng.standard_normal((2, 3, h, w)).astype(np.float32), "sizes": np.array([2, 3, hh, ww], np.int64)}
        old, new = (sessions[v].run(None, feeds)[0] for v in (opset, 13))
        assert old.shape == new.shape == (2, 3, hh, ww)
        np.testing.assert_allclose(old, new, rtol=1e-5, atol=1e-5, err_msg=f"{(h, w)} -> {(hh, ww)}")
