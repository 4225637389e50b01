"""The repair and specialise stages of onnxsal.prepare, on dynamic models built here.

Each specialised model is differentiated and its gradient compared with torch.autograd (the
seed is a random tensor of the output's shape: the vector-Jacobian product is checked whole).
Where a rule needs shapes the file leaves dynamic, the test asserts that too: specialising is
what makes it differentiable.
"""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from onnxsal.autodiff import GRADIENT, SeedSpec, differentiate
from onnxsal.autodiff.graph import GraphView
from onnxsal.errors import InvalidInputError, ModelLoadError, NeedsShapesError
from onnxsal.model_io import load_model
from onnxsal.prepare import repair, specialise

SHAPE = (1, 3, 32, 48)


# -- torch models with dynamic height and width ---------------------------------------------------------
class UNetNeck(nn.Module):
    """A U-Net/FPN-style neck: a skip joined by F.interpolate(size=skip.shape[-2:]), an
    nn.Upsample(scale_factor=2), adaptive average pooling and x.view(x.size(0), -1)."""

    def __init__(self, pooled: int):
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.up = nn.Upsample(scale_factor=2)
        self.c3 = nn.Conv2d(8, 4, 1)
        self.pool = nn.AdaptiveAvgPool2d(pooled)
        self.fc = nn.Linear(4 * pooled * pooled, 5)

    def forward(self, x):
        a = F.relu(self.c1(x))
        b = F.relu(self.c2(a))
        u = F.interpolate(b, size=a.shape[-2:], mode="bilinear", align_corners=False)
        c = self.c3(torch.cat([a, u], 1)) + self.up(b)
        p = self.pool(c)
        return self.fc(p.view(p.size(0), -1))


class YoloNeck(nn.Module):
    """A YOLO-style neck and head: nearest upsampling by 2 joined with a skip, and a head that views
    its map as (batch, anchors, outputs, ny, nx) from the map's own run-time shape."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.down = nn.Conv2d(6, 6, 3, stride=2, padding=1)
        self.lateral = nn.Conv2d(12, 6, 1)
        self.head = nn.Conv2d(6, 2 * 5, 1)

    def forward(self, x):
        s = F.silu(self.stem(x))
        d = F.silu(self.down(s))
        f = self.lateral(torch.cat([s, F.interpolate(d, scale_factor=2.0, mode="nearest")], 1))
        p = self.head(f)
        bs, _, ny, nx = p.shape
        p = p.view(bs, 2, 5, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
        return p.reshape(bs, -1, 5).sigmoid()


class PadCrop(nn.Module):
    """Pads computed from the input's height and width (to a multiple of 7), a crop whose Slice
    bounds come from them too, and a mean over the spatial axes."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2)

    def forward(self, x):
        h, w = x.shape[-2:]
        x = F.pad(x, [0, (7 - w % 7) % 7, 0, (7 - h % 7) % 7], mode="reflect")
        y = torch.tanh(self.conv(x))
        return y[..., : h // 3, : w // 3].mean(dim=(-2, -1))


def _export(module: nn.Module, dynamo: bool) -> onnx.ModelProto:
    """`module` exported with dynamic batch, height and width, by the legacy exporter or by dynamo."""
    torch.manual_seed(0)
    module.eval()
    x = torch.randn(*SHAPE)
    f = io.BytesIO()
    if dynamo:
        dims = {0: torch.export.Dim("N", max=64), 2: torch.export.Dim("H", min=16, max=512), 3: torch.export.Dim("W", min=16, max=512)}
        program = torch.onnx.export(module, (x,), dynamo=True, input_names=["x"], dynamic_shapes={"x": dims}, verbose=False)
        return program.model_proto
    torch.onnx.export(module, (x,), f, dynamo=False, input_names=["x"], output_names=["y"], opset_version=17,
                      dynamic_axes={"x": {0: "N", 2: "H", 3: "W"}, "y": {0: "N"}})
    return onnx.load_from_string(f.getvalue())


def _vjp_error(model: onnx.ModelProto, reference, x: np.ndarray) -> float:
    """max|onnxsal - torch| / max|torch| of the gradient of <y, seed> for a random seed."""
    onnx.checker.check_model(model)  # what specialise writes is valid ONNX
    gg = differentiate(model, GRADIENT, wrt=[model.graph.input[0].name], seed=SeedSpec("tensor"))
    xt = torch.tensor(x, requires_grad=True)
    y = reference(xt)
    seed = np.random.default_rng(1).normal(size=tuple(y.shape)).astype(np.float32)
    want = torch.autograd.grad((y * torch.tensor(seed)).sum(), xt)[0].numpy()
    session = ort.InferenceSession(gg.model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run([gg.grads[model.graph.input[0].name]], {model.graph.input[0].name: x, gg.seed_input: seed})[0]
    return float(np.abs(got - want).max() / np.abs(want).max())


def _needs_shapes(model: onnx.ModelProto) -> None:
    with pytest.raises(NeedsShapesError):
        differentiate(model, GRADIENT, seed=SeedSpec("tensor"))


@pytest.fixture(scope="module", params=[False, True], ids=["legacy", "dynamo"])
def unet(request):
    pooled = 2 if request.param else 1  # the legacy exporter cannot export a dynamic adaptive pool to 2x2
    module = UNetNeck(pooled)
    return load_model(_export(module, request.param)), module


@pytest.fixture(scope="module", params=[False, True], ids=["legacy", "dynamo"])
def yolo(request):
    module = YoloNeck()
    return load_model(_export(module, request.param)), module


@pytest.mark.parametrize("batch", [None, 2])
def test_unet_neck_differentiates_once_specialised(unet, batch):
    model, module = unet
    _needs_shapes(model)
    fixed = specialise(model, {"x": [batch, 3, 32, 48]})
    view = GraphView(fixed)
    for n in view.nodes:
        if n.op_type == "Resize":  # the rules see static spatial sizes (the batch stays free when asked)
            assert view.shape(n.output[0])[1:] in ((4, 32, 48), (4, 16, 24), (4, 32, 48)), view.shape(n.output[0])
            assert view.shape(n.output[0])[0] == (batch if batch else view.shape("x")[0])
            if batch and len(n.input) > 3 and n.input[3]:
                assert view.const(n.input[3]) is not None  # the sizes computed from the skip are constants now
    x = np.random.default_rng(0).normal(size=(batch or 3, *SHAPE[1:])).astype(np.float32)
    assert _vjp_error(fixed, module, x) <= 1e-4


@pytest.mark.parametrize("batch", [None, 2])
def test_yolo_neck_differentiates_once_specialised(yolo, batch):
    model, module = yolo
    _needs_shapes(model)
    fixed = specialise(model, {"x": [batch, 3, 32, 48]})
    view = GraphView(fixed)
    reshapes = [n for n in view.nodes if n.op_type == "Reshape"]
    assert reshapes and all(view.rank(n.output[0]) is not None for n in reshapes)
    if batch:  # the view's shape, computed from the head's height and width, is a constant
        assert all(view.const(n.input[1]) is not None for n in reshapes)
        assert not [n for n in view.nodes if n.op_type == "Shape"]
    x = np.random.default_rng(0).normal(size=(batch or 3, *SHAPE[1:])).astype(np.float32)
    assert _vjp_error(fixed, module, x) <= 1e-4


@pytest.mark.parametrize("batch", [None, 2])
@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
def test_pads_and_crops_from_the_input_shape_become_constants(dynamo, batch):
    module = PadCrop()
    model = load_model(_export(module, dynamo))
    _needs_shapes(model)
    fixed = specialise(model, {"x": [batch, 3, 32, 48]})
    view = GraphView(fixed)
    pads = [n for n in view.nodes if n.op_type == "Pad"]
    assert pads and all(view.const(n.input[1]) is not None for n in pads)
    assert [list(view.const(n.input[1])) for n in pads] == [[0, 0, 0, 0, 0, 0, 3, 1]]
    for n in view.nodes:
        if n.op_type == "Slice":
            assert all(view.const(x) is not None for x in n.input[1:] if x)
    x = np.random.default_rng(0).normal(size=(2, *SHAPE[1:])).astype(np.float32)
    assert _vjp_error(fixed, module, x) <= 1e-4


def test_specialise_refuses_shapes_that_do_not_fit(unet):
    model, _ = unet
    with pytest.raises(InvalidInputError, match="rank 4"):
        specialise(model, {"x": [1, 3, 32]})
    with pytest.raises(InvalidInputError, match="no input named"):
        specialise(model, {"image": [1, 3, 32, 48]})
    with pytest.raises(InvalidInputError, match="is 3 in the model"):
        specialise(model, {"x": [1, 4, 32, 48]})


def test_specialise_leaves_the_given_model_and_other_inputs_alone(unet):
    model, _ = unet
    before = model.SerializeToString()
    specialise(model, {"x": [2, 3, 32, 48]})
    assert model.SerializeToString() == before


# -- hand-built files: unsorted, local functions, wrong declared shapes, If on the input's shape ------
F32 = TensorProto.FLOAT


def _conv_relu_model(rng, nodes_after=(), outputs=None, **graph_kw) -> onnx.ModelProto:
    """x [N, 3, H, W] -> Conv 3x3 -> Relu -> (nodes_after) with dynamic height and width."""
    w = numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"), *nodes_after]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F32, ["N", 3, "H", "W"])],
                              outputs or [helper.make_tensor_value_info("r", F32, ["N", 4, "H", "W"])], [w], **graph_kw)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _conv_relu(x, w):
    return F.relu(F.conv2d(x, torch.tensor(w), padding=1))


def test_unsorted_nodes_load_and_differentiate():
    rng = np.random.default_rng(0)
    model = _conv_relu_model(rng, [helper.make_node("Tanh", ["r"], ["t"], name="tanh")],
                             [helper.make_tensor_value_info("t", F32, ["N", 4, "H", "W"])])
    w = numpy_helper.to_array(model.graph.initializer[0])
    nodes = list(model.graph.node)[::-1]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(model)  # the file as a fp16 converter leaves it
    loaded = load_model(model.SerializeToString())
    assert [n.op_type for n in loaded.graph.node] == ["Conv", "Relu", "Tanh"]
    x = rng.normal(size=SHAPE).astype(np.float32)
    assert _vjp_error(loaded, lambda t: torch.tanh(_conv_relu(t, w)), x) <= 1e-4


def test_cycle_is_still_refused_by_the_checker():
    nodes = [helper.make_node("Add", ["x", "b"], ["a"], name="add"), helper.make_node("Relu", ["a"], ["b"], name="relu")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F32, [2])], [helper.make_tensor_value_info("b", F32, [2])])
    with pytest.raises(ModelLoadError, match="fails the ONNX checker"):
        load_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9))


def test_model_local_function_is_inlined():
    """`Gate(x) = x * Sigmoid(alpha * x)` as a model-local function, called twice."""
    rng = np.random.default_rng(0)
    body = [helper.make_node("Constant", [], ["a"], value_float=1.5),
            helper.make_node("Mul", ["x", "a"], ["ax"]), helper.make_node("Sigmoid", ["ax"], ["s"]),
            helper.make_node("Mul", ["x", "s"], ["y"])]
    gate = helper.make_function("local", "Gate", ["x"], ["y"], body, [helper.make_opsetid("", 17)])
    model = _conv_relu_model(rng, [helper.make_node("Gate", ["r"], ["g1"], domain="local"),
                                   helper.make_node("Gate", ["g1"], ["g2"], domain="local")],
                             [helper.make_tensor_value_info("g2", F32, ["N", 4, "H", "W"])])
    model.functions.append(gate)
    model.opset_import.append(helper.make_opsetid("local", 1))
    w = numpy_helper.to_array(model.graph.initializer[0])
    fixed = repair(model)
    assert not fixed.functions and {n.op_type for n in fixed.graph.node} == {"Conv", "Relu", "Constant", "Mul", "Sigmoid"}
    assert len({n.name for n in fixed.graph.node}) == len(fixed.graph.node) and all(n.name for n in fixed.graph.node)

    def reference(t):
        for _ in range(2):
            t = t * torch.sigmoid(1.5 * t) if t.shape[1] == 4 else t
        return t

    x = rng.normal(size=SHAPE).astype(np.float32)
    assert _vjp_error(fixed, lambda t: reference(_conv_relu(t, w)), x) <= 1e-4


def test_wrong_declared_output_shapes_are_dropped():
    """A CTC-like output [N, T, C] declared [T, N, C], and a class count declared wrong."""
    rng = np.random.default_rng(0)
    fc = numpy_helper.from_array(rng.normal(size=(4 * 8, 7)).astype(np.float32), "fc")
    after = [helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[4, 4], strides=[4, 4]),
             helper.make_node("Transpose", ["p"], ["pt"], name="to_time", perm=[0, 3, 1, 2]),
             helper.make_node("Reshape", ["pt", "seq_shape"], ["seq"], name="flatten"),
             helper.make_node("MatMul", ["seq", "fc"], ["logits"], name="fc"),
             helper.make_node("ReduceMean", ["logits"], ["scores"], name="mean", axes=[1], keepdims=0)]
    outputs = [helper.make_tensor_value_info("logits", F32, ["T", "N", 7]),
               helper.make_tensor_value_info("scores", F32, ["N", 1000])]
    model = _conv_relu_model(rng, after, outputs)
    model.graph.initializer.extend([fc, numpy_helper.from_array(np.array([0, 0, -1], np.int64), "seq_shape")])
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 32  # height fixed, width free
    model.graph.value_info.append(helper.make_tensor_value_info("seq", F32, [5, "N", 32]))
    w = numpy_helper.to_array(model.graph.initializer[0])
    loaded = load_model(model)
    view = GraphView(loaded)
    assert view.shape("scores") == ("N", 7)
    assert view.shape("logits")[0] == "N" and view.shape("logits")[2] == 7
    assert view.shape("seq")[0] == "N" and view.shape("seq")[2] == 32

    def reference(t):
        p = F.max_pool2d(_conv_relu(t, w), 4).permute(0, 3, 1, 2)
        return (p.reshape(p.shape[0], p.shape[1], -1) @ torch.tensor(numpy_helper.to_array(fc))).mean(1)

    loaded.graph.output.pop(0)  # explain the scores
    x = rng.normal(size=SHAPE).astype(np.float32)
    assert _vjp_error(loaded, reference, x) <= 1e-4


def _if_on_width_model(rng, threshold: int) -> onnx.ModelProto:
    """Relu(Conv(x)) then, if the width exceeds `threshold`, a 2x2 average pool, else a 1x2 one
    (an If on the input's shape, as scripted exports write it); then a second If on the same
    condition whose branches reuse the first one's value and node names: a 1x1 pool, or Identity."""
    def branch(name, source, kernel):
        pool = helper.make_node("AveragePool", [source], [f"{name}_out"], name=f"{name}_pool", kernel_shape=kernel, strides=kernel)
        node = pool if kernel else helper.make_node("Identity", [source], [f"{name}_out"], name=f"{name}_pool")
        return helper.make_graph([node], name, [], [helper.make_tensor_value_info(f"{name}_out", F32, ["N", 4, None, None])])

    after = [helper.make_node("Shape", ["x"], ["xs"], name="shape"),
             helper.make_node("Gather", ["xs", "three"], ["width"], name="width", axis=0),
             helper.make_node("Greater", ["width", "threshold"], ["wide"], name="wide"),
             helper.make_node("If", ["wide"], ["p1"], name="choose",
                              then_branch=branch("then", "r", [2, 2]), else_branch=branch("else", "r", [1, 2])),
             helper.make_node("If", ["wide"], ["pooled"], name="again",
                              then_branch=branch("then", "p1", [1, 1]), else_branch=branch("else", "p1", None))]
    model = _conv_relu_model(rng, after, [helper.make_tensor_value_info("pooled", F32, ["N", 4, None, None])])
    model.graph.initializer.extend([numpy_helper.from_array(np.array(3, np.int64), "three"),
                                    numpy_helper.from_array(np.array(threshold, np.int64), "threshold")])
    return model


@pytest.mark.parametrize("batch", [None, 1])
@pytest.mark.parametrize("threshold", [40, 64])
def test_if_on_the_input_shape_is_folded(threshold, batch):
    rng = np.random.default_rng(0)
    model = load_model(_if_on_width_model(rng, threshold))
    w = numpy_helper.to_array(model.graph.initializer[0])
    fixed = specialise(model, {"x": [batch, 3, 32, 48]})
    assert not [n for n in fixed.graph.node if n.op_type in ("If", "Shape")]
    view = GraphView(fixed)
    pools = [n for n in view.nodes if n.op_type == "AveragePool"]
    kernel = (2, 2) if 48 > threshold else (1, 2)
    assert view.shape("pooled")[1:] == (4, 32 // kernel[0], 24)
    assert pools[0].output[0] == "p1" and pools[0].name.startswith("choose/")
    assert [n.op_type for n in view.nodes if n.output[0] == "pooled"] == ["AveragePool" if 48 > threshold else "Identity"]
    assert len({o for n in view.nodes for o in n.output}) == sum(len(n.output) for n in view.nodes)  # names stay unique
    onnx.checker.check_model(fixed)
    x = rng.normal(size=SHAPE).astype(np.float32)
    assert _vjp_error(fixed, lambda t: F.avg_pool2d(_conv_relu(t, w), kernel), x) <= 1e-4


# -- tf2onnx: shapes that ONNX's inference loses --------------------------------------------------------
TF_EXPORT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    import tf2onnx

    tf.random.set_seed(0)
    inp = tf.keras.Input((None, None, 3), name="image")
    x = tf.keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inp)
    small = tf.keras.layers.Conv2D(4, 3, strides=2, padding="same", activation="relu")(x)
    up = tf.keras.layers.Lambda(lambda t: tf.image.resize(t[0], tf.shape(t[1])[1:3], method="bilinear"))([small, x])
    y = tf.keras.layers.Concatenate()([x, up])
    y = tf.keras.layers.GlobalAveragePooling2D(keepdims=True)(y)
    y = tf.keras.layers.Dense(5)(y)
    # tf.squeeze without axes: the rank of what follows is unknown to ONNX's shape inference
    y = tf.keras.layers.Lambda(lambda t: tf.nn.softmax(tf.squeeze(t), axis=-1), output_shape=(5,))(y)
    model = tf.keras.Model(inp, y)
    spec = (tf.TensorSpec((None, None, None, 3), tf.float32, name="image"),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=13)
    x = np.random.default_rng(0).normal(size=(2, 32, 48, 3)).astype(np.float32)
    with tf.GradientTape() as tape:
        xt = tf.constant(x)
        tape.watch(xt)
        out = model(xt)
        seed = np.random.default_rng(1).normal(size=out.shape).astype(np.float32)
        total = tf.reduce_sum(out * seed)
    grad = tape.gradient(total, xt).numpy()
    open(sys.argv[1], "wb").write(proto.SerializeToString())
    np.savez(sys.argv[2], x=x, seed=seed, grad=grad)
""")


def test_tf2onnx_resize_to_a_skip_shape(tmp_path):
    """A Keras neck exported by tf2onnx (in its own process: TensorFlow and torch must not share one)."""
    script = tmp_path / "export.py"
    script.write_text(TF_EXPORT)
    path, data = tmp_path / "tf.onnx", tmp_path / "ref.npz"
    done = subprocess.run([sys.executable, str(script), str(path), str(data)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    model = load_model(str(path))
    ref = np.load(data)
    _needs_shapes(model)  # the rank after the Squeeze is unknown
    name = model.graph.input[0].name
    _needs_shapes(specialise(model, {name: [None, 32, 48, 3]}))  # (a batch of 1 would squeeze the batch axis too)
    fixed = specialise(model, {name: [2, 32, 48, 3]})
    assert GraphView(fixed).shape(fixed.graph.output[0].name) == (2, 5)
    onnx.checker.check_model(fixed)  # the output of unknown rank has its shape now
    gg = differentiate(fixed, GRADIENT, seed=SeedSpec("tensor"))
    session = ort.InferenceSession(gg.model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run([gg.grads[name]], {name: ref["x"], gg.seed_input: ref["seed"]})[0]
    assert float(np.abs(got - ref["grad"]).max() / np.abs(ref["grad"]).max()) <= 1e-4
