"""LRP from any framework (issue 13): the same network gets the same relevance whoever exported it.

1. Keras vs PyTorch twin: one small CNN (Conv2D + bias, BatchNormalization with non-trivial
   statistics, ReLU, MaxPool, Conv2D, ReLU, global average pooling, Dense) built in Keras and in
   PyTorch with the same weights. tf2onnx writes NHWC with Transposes around the convolutions, the
   BatchNormalization as a Mul and an Add, the Dense as MatMul + Add; torch's exporter writes NCHW,
   folds the BatchNormalization into the Conv and writes a Gemm. onnxsal's LRP maps
   (EpsilonPlus, EpsilonPlusFlat, EpsilonAlpha2Beta1) of the two files agree once the Keras map is
   transposed to NCHW.
2. Conservation on Keras exports: with every bias zero (conv/dense biases, BN beta and moving
   mean) and composite Epsilon with a tiny epsilon, the input relevance of each sample sums to its
   target logit: the small CNN and keras.applications MobileNetV2 (alpha 0.35, 96x96, depthwise
   convolutions, ReLU6, residual adds, a softmax head explained at its logit).
3. Compiled LRP: EpsilonPlusFlat on a model with BatchNormalization and a residual Add, compiled
   by `Explainer.compile` and by `onnxsal compile --method lrp`, runs in a process that never
   imports onnxsal and gives Explainer.attribute's numbers.

TensorFlow never enters this process (it and torch in one process can crash): one subprocess per
module builds the Keras models, exports them through converters.keras_export (tf2onnx) and writes
the weights, the inputs and Keras' own logits to .npz files.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

torch = pytest.importorskip("torch")

import torch.nn as nn  # noqa: E402

import onnxsal  # noqa: E402
from converters.torch_export import export_torch  # noqa: E402
from onnxsal.relevance.canonize import canonize  # noqa: E402
from tests.test_cli import cli  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TWIN_TOL = 1e-4  # max|keras map - torch map| / max|torch map|
CONSERVATION_TOL = 1e-4  # |sum of input relevance - logit| / |logit|, per sample
COMPILED_TOL = 1e-6
TWIN_COMPOSITES = ("EpsilonPlus", "EpsilonPlusFlat", "EpsilonAlpha2Beta1")
TWIN_TARGETS = [1, 4, 2]  # one class per sample of the twin's batch of 3
BN_EPS = 1e-3  # Keras' default; the torch twin's BatchNorm2d is given the same
TINY = {"epsilon": 1e-9, "stabilizer": 1e-9}  # composite Epsilon close to LRP-0

needs_tf = pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is None or importlib.util.find_spec("tf2onnx") is None,
    reason="needs tensorflow and tf2onnx (the 'tensorflow' extra)",
)


def rel(ours, ref) -> float:
    """max|ours - ref| / max|ref|, in float64."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


# ---------------------------------------------------------------------------------------------------
# the TensorFlow side, run once per module in its own process

KERAS_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    root, out = sys.argv[1], sys.argv[2]
    sys.path.insert(0, root)
    import keras
    from converters.keras_export import export_keras

    BN_EPS = float(sys.argv[3])
    L = keras.layers

    def small_cnn(name):
        inp = keras.Input((16, 16, 3), name="image")
        h = L.Conv2D(8, 3, padding="same", name="conv1")(inp)
        h = L.BatchNormalization(epsilon=BN_EPS, name="bn1")(h)
        h = L.ReLU(name="relu1")(h)
        h = L.MaxPooling2D(2, name="pool")(h)
        h = L.Conv2D(12, 3, padding="same", activation="relu", name="conv2")(h)
        h = L.GlobalAveragePooling2D(name="gap")(h)
        return keras.Model(inp, L.Dense(5, name="logits")(h), name=name)

    def twin_weights(rng):
        he = lambda *shape: rng.normal(size=shape) * np.sqrt(2.0 / np.prod(shape[:-1]))
        w = {"conv1/kernel": he(3, 3, 3, 8), "conv1/bias": rng.normal(size=8) * 0.2,
             "bn1/gamma": rng.uniform(0.5, 1.5, 8), "bn1/beta": rng.normal(size=8) * 0.3,
             "bn1/mean": rng.normal(size=8) * 0.5, "bn1/var": rng.uniform(0.5, 2.0, 8),
             "conv2/kernel": he(3, 3, 8, 12), "conv2/bias": rng.normal(size=12) * 0.2,
             "logits/kernel": he(12, 5), "logits/bias": rng.normal(size=5) * 0.2}
        return {k: v.astype(np.float32) for k, v in w.items()}

    def load_twin(model, w):
        model.get_layer("conv1").set_weights([w["conv1/kernel"], w["conv1/bias"]])
        model.get_layer("bn1").set_weights([w["bn1/gamma"], w["bn1/beta"], w["bn1/mean"], w["bn1/var"]])
        model.get_layer("conv2").set_weights([w["conv2/kernel"], w["conv2/bias"]])
        model.get_layer("logits").set_weights([w["logits/kernel"], w["logits/bias"]])

    def calibrate(model, x):
        # BN moving statistics from one batch, as training would leave them (an untrained deep net
        # otherwise shrinks its activations until its logits are ~1e-11): momentum 0, one
        # training-mode call
        for layer in model.layers:
            if isinstance(layer, L.BatchNormalization):
                layer.momentum = 0.0
        model(x, training=True)

    def zero_biases(model, rng):
        # every bias, BN beta and BN moving mean zero: each layer is then linear without offset and
        # LRP-0 conserves relevance; BN keeps a non-trivial gamma and divides by the root of its
        # input's second moment (var + mean^2), so activations keep their scale
        for layer in model.layers:
            if isinstance(layer, L.BatchNormalization):
                gamma, beta, mean, var = layer.get_weights()
                layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape).astype(np.float32), np.zeros_like(beta),
                                   np.zeros_like(mean), var + mean ** 2])
            elif getattr(layer, "bias", None) is not None:
                kernel, bias = layer.get_weights()
                layer.set_weights([kernel, np.zeros_like(bias)])

    def logits(model, x, head):
        # the softmax head's pre-activation: Keras' own number for what LRP explains
        layer = model.get_layer(head)
        activation, layer.activation = layer.activation, keras.activations.linear
        try:
            return model.predict(x, verbose=0)
        finally:
            layer.activation = activation

    keras.utils.set_random_seed(13)
    rng = np.random.default_rng(13)
    twin, w = small_cnn("twin"), twin_weights(rng)
    load_twin(twin, w)
    x = rng.normal(size=(3, 16, 16, 3)).astype(np.float32)
    export_keras(twin, out + "/twin.onnx")
    np.savez(out + "/twin.npz", x=x, logits=twin.predict(x, verbose=0), **w)

    zero = small_cnn("twin_zero_bias")
    load_twin(zero, w)
    zero_biases(zero, rng)
    export_keras(zero, out + "/cnn_zero.onnx")
    np.savez(out + "/cnn_zero.npz", x=x, logits=zero.predict(x, verbose=0))

    mobile = keras.applications.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3), weights=None, classes=10)
    biased = [layer.name for layer in mobile.layers if getattr(layer, "bias", None) is not None]
    xm = rng.uniform(-1, 1, size=(2, 96, 96, 3)).astype(np.float32)
    calibrate(mobile, rng.uniform(-1, 1, size=(8, 96, 96, 3)).astype(np.float32))
    zero_biases(mobile, rng)
    export_keras(mobile, out + "/mobilenetv2.onnx")
    np.savez(out + "/mobilenetv2.npz", x=xm, logits=logits(mobile, xm, "predictions"), biased=np.array(biased))
""")


@pytest.fixture(scope="module")
def keras_files(tmp_path_factory):
    """The folder with the Keras exports (.onnx) and their weights, inputs and logits (.npz)."""
    folder = tmp_path_factory.mktemp("keras_lrp")
    script = folder / "export.py"
    script.write_text(KERAS_SCRIPT)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(script), str(ROOT), str(folder), str(BN_EPS)], capture_output=True,
                          text=True, timeout=600, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert done.returncode == 0, done.stderr[-3000:]
    print(f"\nTensorFlow subprocess: {time.perf_counter() - start:.1f} s")
    return folder


def npz(path: Path) -> dict:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


# ---------------------------------------------------------------------------------------------------
# 1. the Keras / PyTorch twin


class TorchTwin(nn.Module):
    """The Keras small CNN in PyTorch, NCHW (padding 'same' of a 3x3 stride-1 conv is 1 each side)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8, eps=BN_EPS)
        self.conv2 = nn.Conv2d(8, 12, 3, padding=1)
        self.logits = nn.Linear(12, 5)

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        h = torch.relu(self.conv2(nn.functional.max_pool2d(h, 2)))
        return self.logits(h.mean(dim=(2, 3)))


def torch_twin(w: dict) -> TorchTwin:
    """The twin with Keras' weights: conv kernels HWIO -> OIHW, the dense kernel (in, out) -> (out, in)."""
    model = TorchTwin().eval()
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    with torch.no_grad():
        for name in ("conv1", "conv2"):
            getattr(model, name).weight.copy_(t(w[f"{name}/kernel"].transpose(3, 2, 0, 1)))
            getattr(model, name).bias.copy_(t(w[f"{name}/bias"]))
        model.logits.weight.copy_(t(w["logits/kernel"].T))
        model.logits.bias.copy_(t(w["logits/bias"]))
        bn = model.bn1
        bn.weight.copy_(t(w["bn1/gamma"]))
        bn.bias.copy_(t(w["bn1/beta"]))
        bn.running_mean.copy_(t(w["bn1/mean"]))
        bn.running_var.copy_(t(w["bn1/var"]))
    return model


@pytest.fixture(scope="module")
def twins(keras_files, tmp_path_factory):
    """(Keras Explainer, torch Explainer, NHWC input, Keras logits)."""
    ref = npz(keras_files / "twin.npz")
    model = torch_twin(ref)
    path = tmp_path_factory.mktemp("torch_twin") / "twin.onnx"
    export_torch(model, torch.zeros(1, 3, 16, 16), path)
    with torch.no_grad():
        torch_logits = model(torch.from_numpy(ref["x"].transpose(0, 3, 1, 2).copy())).numpy()
    # the weights were copied right: both frameworks compute the same logits
    assert rel(torch_logits, ref["logits"]) <= 1e-5
    keras_ex = onnxsal.Explainer(str(keras_files / "twin.onnx"), providers="cpu")
    torch_ex = onnxsal.Explainer(str(path), providers="cpu")
    return keras_ex, torch_ex, ref["x"], ref["logits"]


@needs_tf
def test_the_two_exports_differ(twins):
    """The comparison means something: tf2onnx's graph is not torch's (layout Transposes, MatMul)."""
    keras_ex, torch_ex, _, _ = twins
    keras_ops = [n.op_type for n in keras_ex.model.graph.node]
    torch_ops = [n.op_type for n in torch_ex.model.graph.node]
    assert "Transpose" in keras_ops and "Transpose" not in torch_ops
    assert keras_ops != torch_ops
    # tf2onnx writes Keras' BatchNormalization as Mul + Add after the Conv; the canonizer folds both
    # into the Conv (without that the maps differ by 5e-2 to 1.2e-1 of their maximum)
    canonized, notes = canonize(keras_ex.model)
    assert any("Mul" in note and "folded into Conv" in note for note in notes)
    assert {"Mul", "MatMul"}.isdisjoint(n.op_type for n in canonized.graph.node)
    x = twins[2]
    quiet = ort.SessionOptions()
    quiet.log_severity_level = 3  # the initializers the canonizer left unused
    session = ort.InferenceSession(canonized.SerializeToString(), quiet, providers=["CPUExecutionProvider"])
    assert rel(session.run(None, {keras_ex.model.graph.input[0].name: x})[0], keras_ex.predict(x)) <= 1e-6


@needs_tf
@pytest.mark.parametrize("composite", TWIN_COMPOSITES)
def test_keras_and_torch_twins_get_the_same_relevance(twins, composite):
    keras_ex, torch_ex, x, _ = twins
    nchw = x.transpose(0, 3, 1, 2).copy()
    keras_map = keras_ex.attribute(x, target=TWIN_TARGETS, method="lrp", composite=composite)
    torch_map = torch_ex.attribute(nchw, target=TWIN_TARGETS, method="lrp", composite=composite)
    assert keras_map.shape == x.shape and torch_map.shape == nchw.shape
    diff = rel(keras_map.transpose(0, 3, 1, 2), torch_map)
    print(f"\n{composite}: max|keras - torch| / max|torch| = {diff:.2e}")
    assert diff <= TWIN_TOL
    assert np.abs(torch_map).max() > 0


# ---------------------------------------------------------------------------------------------------
# 2. conservation on Keras exports with zero biases


def conservation_gap(folder: Path, name: str, targets) -> np.ndarray:
    """|sum of input relevance - Keras' target logit| / |logit|, per sample, composite Epsilon ~ LRP-0."""
    ref = npz(folder / f"{name}.npz")
    ex = onnxsal.Explainer(str(folder / f"{name}.onnx"), providers="cpu")
    relevance = ex.attribute(ref["x"], target=list(targets), method="lrp", composite="Epsilon", **TINY)
    total = relevance.reshape(len(relevance), -1).sum(1, dtype=np.float64)
    logit = ref["logits"][np.arange(len(targets)), targets].astype(np.float64)
    assert np.all(np.abs(logit) > 1e-3 * np.abs(ref["logits"]).max())  # no vanishing target logit
    return np.abs(total - logit) / np.abs(logit)


@needs_tf
def test_conservation_small_cnn(keras_files):
    gap = conservation_gap(keras_files, "cnn_zero", TWIN_TARGETS)
    print(f"\nsmall CNN, Epsilon: relative conservation gap per sample {gap}")
    assert gap.max() <= CONSERVATION_TOL


@needs_tf
def test_conservation_mobilenetv2(keras_files):
    ref = npz(keras_files / "mobilenetv2.npz")
    assert list(ref["biased"]) == ["predictions"]  # MobileNetV2's convolutions have no bias; the head's was zeroed
    ops = {n.op_type for n in onnx.load(str(keras_files / "mobilenetv2.onnx")).graph.node}
    assert {"Clip", "Add", "Softmax"} <= ops  # ReLU6, the residual adds and the softmax head are in the graph
    gap = conservation_gap(keras_files, "mobilenetv2", [2, 0])
    print(f"\nMobileNetV2, Epsilon: relative conservation gap per sample {gap}")
    assert gap.max() <= CONSERVATION_TOL


# ---------------------------------------------------------------------------------------------------
# 3. compiled LRP graphs in a process without onnxsal


def residual_model(path: Path) -> Path:
    """conv-BN-ReLU stem, a residual block (conv-BN-ReLU, conv-BN, + the stem), GAP, dense; the
    BatchNormalizations are nodes of their own (torch's exporter would fold them: the canonizer
    should do it here)."""
    rng = np.random.default_rng(5)
    values = {"w0": rng.normal(size=(8, 3, 3, 3)) * 0.4, "b0": rng.normal(size=8) * 0.2,
              "w1": rng.normal(size=(8, 8, 3, 3)) * 0.2, "w2": rng.normal(size=(8, 8, 3, 3)) * 0.2,
              "wd": rng.normal(size=(8, 4)) * 0.5, "bd": rng.normal(size=4) * 0.2}
    for i in range(3):
        values.update({f"g{i}": rng.uniform(0.5, 1.5, 8), f"t{i}": rng.normal(size=8) * 0.3,
                       f"m{i}": rng.normal(size=8) * 0.5, f"v{i}": rng.uniform(0.5, 2.0, 8)})
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in values.items()]

    def conv_bn(x, w, b, i, out):
        conv = helper.make_node("Conv", [x, w] + b, [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1])
        return [conv, helper.make_node("BatchNormalization", [f"c{i}", f"g{i}", f"t{i}", f"m{i}", f"v{i}"], [out],
                                       name=f"bn{i}")]

    nodes = conv_bn("x", "w0", ["b0"], 0, "n0") + [helper.make_node("Relu", ["n0"], ["h0"], name="relu0")]
    nodes += conv_bn("h0", "w1", [], 1, "n1") + [helper.make_node("Relu", ["n1"], ["h1"], name="relu1")]
    nodes += conv_bn("h1", "w2", [], 2, "n2")
    nodes += [helper.make_node("Add", ["n2", "h0"], ["s"], name="residual"),
              helper.make_node("Relu", ["s"], ["h2"], name="relu2"),
              helper.make_node("GlobalAveragePool", ["h2"], ["g"], name="gap"),
              helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
              helper.make_node("Gemm", ["f", "wd", "bd"], ["y"], name="dense")]
    graph = helper.make_graph(nodes, "residual", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 12, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return path


RUNNER = textwrap.dedent("""
    import sys
    import numpy as np
    import onnxruntime as ort
    assert "onnxsal" not in sys.modules
    folder = sys.argv[1]
    x, target = np.load(folder + "/x.npy"), np.load(folder + "/target.npy")
    for name, feeds in (("api", {"x": x, "target": target}), ("cli", {"x": x})):
        session = ort.InferenceSession(f"{folder}/{name}.onnx", providers=["CPUExecutionProvider"])
        print(name, *[i.name for i in session.get_inputs()], "->", *[o.name for o in session.get_outputs()])
        np.save(f"{folder}/{name}_out.npy", session.run(None, feeds)[-1])
    assert "onnxsal" not in sys.modules
""")


def test_compiled_lrp_runs_without_onnxsal(tmp_path):
    model = residual_model(tmp_path / "residual.onnx")
    ex = onnxsal.Explainer(str(model), providers="cpu")
    assert [n.op_type for n in ex.model.graph.node].count("BatchNormalization") == 3
    report = json.loads(cli("inspect", model, "--composite", "EpsilonPlusFlat", "--json").stdout)
    rules = {row["node"]: row["rule"] for row in report["lrp_rules"]}
    assert rules["conv0"].startswith("flat") and rules["residual"].startswith("norm") and not any("bn" in n for n in rules)
    assert sum("BatchNormalization" in note and "folded" in note for note in report["canonized"]) == 3
    onnx.save(ex.compile("lrp", target="target", composite="EpsilonPlusFlat"), tmp_path / "api.onnx")
    done = cli("compile", model, "--method", "lrp", "--option", "composite=EpsilonPlusFlat", "-o", tmp_path / "cli.onnx")
    assert done.returncode == 0, done.stderr
    x = np.random.default_rng(8).normal(size=(3, 3, 12, 12)).astype(np.float32)
    target = np.array([0, 3, 1], dtype=np.int64)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "target.npy", target)
    run = subprocess.run([sys.executable, "-I", "-c", RUNNER, str(tmp_path)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split("\n")[:2] == ["api x target -> y x_relevance", "cli x -> y x_relevance"], run.stdout
    expected = {"api": ex.attribute(x, target=target, method="lrp", composite="EpsilonPlusFlat"),
                "cli": ex.attribute(x, target=None, method="lrp", composite="EpsilonPlusFlat")}
    for name, want in expected.items():
        got = np.load(tmp_path / f"{name}_out.npy")
        diff = rel(got, want)
        print(f"\ncompiled LRP ({name}) vs Explainer.attribute: {diff:.1e}")
        assert diff <= COMPILED_TOL
    assert rel(expected["api"], expected["cli"]) > 1e-2  # the targets differ from the argmax somewhere


def test_a_batchnorm_written_as_mul_and_add_folds_into_the_conv():
    """Conv -> Mul(s) -> Add(t), one value per channel (tf2onnx's Keras BatchNormalization): one Conv
    after canonizing, computing the same; the Add becomes a Conv + bias only once the Mul is folded."""
    rng = np.random.default_rng(2)
    values = {"w": rng.normal(size=(4, 3, 3, 3)), "s": rng.normal(size=(1, 4, 1, 1)), "t": rng.normal(size=(4, 1, 1))}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Mul", ["s", "c"], ["m"], name="bn_mul"),  # the constant on the left
             helper.make_node("Add", ["m", "t"], ["y"], name="bn_add")]
    graph = helper.make_graph(nodes, "conv_bn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in values.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    canonized, notes = canonize(model)
    assert [n.op_type for n in canonized.graph.node] == ["Conv"] and len(notes) == 2
    x = rng.normal(size=(2, 3, 6, 6)).astype(np.float32)
    quiet = ort.SessionOptions()
    quiet.log_severity_level = 3
    before, after = (ort.InferenceSession(m.SerializeToString(), quiet, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
                     for m in (model, canonized))
    assert rel(after, before) <= 1e-6
