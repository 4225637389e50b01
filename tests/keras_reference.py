"""TensorFlow side of tests/test_keras_models.py, run in its own process (TF and torch in one process
can crash, and the pytest process must not import TensorFlow).

    python tests/keras_reference.py OUTDIR [--models mnist,mobilenetv2,resnet50] [--batch 2]

For each model it writes OUTDIR/<name>.onnx (converters.keras_export.export_keras: NHWC kept,
dynamic batch), OUTDIR/<name>.json (what was swapped) and OUTDIR/<name>.npz with:

- ``x``: the NHWC float32 inputs; ``probs``: the Keras softmax output; ``targets/<t>`` for t in
  argmax (each sample's top class), int (``INT_TARGET`` for all), list (``LIST_TARGETS``);
- ``grad/<method>/<softmax>/<t>``: the tf.GradientTape reference evaluated at onnxruntime's forward
  state: rectifier masks and softmax probabilities from onnxruntime's run of the exported model
  (see "Masks" below);
- ``tf/<method>/<softmax>/<t>``: the plain tf.GradientTape reference (TensorFlow's own state);
- ``ort_probs``: onnxruntime's output; ``preact_margin``: per sample, the smallest |input| over all
  rectifier units in onnxruntime's run (how close the nearest unit is to flipping).

The (method, softmax) pairs computed per model are ``CASES``.

method: gradient (TensorFlow's own gradient; with softmax=identity, of the logits: the output
Dense's softmax swapped for linear, as keras-vis' ``apply_modifications`` does), guided_backprop
and deconvnet, where the gradient of EVERY rectifier (Activation('relu'), activation='relu' in a
layer, keras.layers.ReLU incl. max_value=6) is swapped through tf.custom_gradient:
guided = 1[x>0]·max(g, 0) (ReLU6: 1[0<x<6]·max(g, 0)), deconvnet = max(g, 0). The swap clones the
model with `keras.models.clone_model(clone_function=...)`: rectifier layers become `Rectifier`
layers, a layer built with activation='relu' becomes a linear copy (same weights) followed by
one. The script checks that every clone computes the model's forward output, that as many
rectifiers were swapped as the ONNX graph has Relu/Clip(min 0) nodes, and that the swap changes the
gradient.

Masks: a rectifier's gradient depends on the sign of its input. In float32, TensorFlow and
onnxruntime compute slightly different pre-activations (different kernels, BN folding), and in a
deep net with millions of rectifier units a few of them lie within rounding distance of 0 and flip;
each flip changes the input gradient over that unit's receptive field by up to a few percent of
its maximum (on these untrained MobileNetV2/ResNet50, TensorFlow's own float32 gradient is ~2e-2
away from its float64 one, and onnxsal's is ~2e-2 away from TensorFlow's). Likewise the gradient of
a small softmax probability cancels terms and amplifies the ~1e-5 relative difference of the two
runtimes' probabilities. So the ``grad/`` references evaluate 1[x>0] (1[0<x<6]) at onnxruntime's
pre-activations and the softmax Jacobian at onnxruntime's probabilities, which makes the comparison
test what onnxsal owns (the backward graph) at 1e-4. The plain references are kept in ``tf/``.

Weights are Keras' random initialisers under fixed seeds; biases and BatchNormalization gamma/beta,
which Keras initialises to 0/1, are given seeded values, and the BN moving statistics are set, as
training would, to the statistics of a seeded calibration batch (otherwise an untrained deep net
squashes its activations towards 0 until its output no longer depends on its input).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

INT_TARGET = 3
LIST_TARGETS = (1, 7)  # cycled over the batch
METHODS = ("gradient", "guided_backprop", "deconvnet")
MODES = {"gradient": "vanilla", "guided_backprop": "guided", "deconvnet": "deconvnet"}
SOFTMAX = ("identity", "keep")
TARGETS = ("argmax", "int", "list")
MODELS = ("mnist", "mobilenetv2", "resnet50")
# (method, softmax) pairs referenced per model: all of them on MNIST; on the two large models the
# softmax-output gradient is checked for the vanilla method only (each pair is two onnxsal graphs)
ALL_CASES = tuple((m, s) for m in METHODS for s in SOFTMAX)
DEEP_CASES = (("gradient", "identity"), ("gradient", "keep"), ("guided_backprop", "identity"), ("deconvnet", "identity"))
CASES = {"mnist": ALL_CASES, "mobilenetv2": DEEP_CASES, "resnet50": DEEP_CASES}

# onnxruntime's forward state read by the aligned gradients: rectifier inputs by Keras layer name,
# and the softmax output under PROBS
PREACT: dict[str, np.ndarray] = {}
PROBS = "__probs__"


# -- models -------------------------------------------------------------------------------------------
def build_mnist(keras):
    """The keras-vis MNIST model (examples/mnist/attention.ipynb), untrained."""
    L = keras.layers
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            L.Conv2D(32, kernel_size=(3, 3), activation="relu"),
            L.Conv2D(64, (3, 3), activation="relu"),
            L.MaxPooling2D(pool_size=(2, 2)),
            L.Dropout(0.25),
            L.Flatten(),
            L.Dense(128, activation="relu"),
            L.Dropout(0.5),
            L.Dense(10, activation="softmax", name="preds"),
        ],
        name="mnist",
    )


def build(name: str, keras):
    keras.utils.set_random_seed(1234)
    if name == "mnist":
        model = build_mnist(keras)
    elif name == "mobilenetv2":
        model = keras.applications.MobileNetV2(weights=None, input_shape=(96, 96, 3))
    elif name == "resnet50":
        model = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3))
    else:
        raise ValueError(f"unknown model {name!r}; expected one of {MODELS}")
    perturb(model, keras, seed=99)
    return model


def perturb(model, keras, seed: int) -> None:
    """Seeded biases and BN gamma/beta, then BN moving statistics from a calibration batch."""
    rng = np.random.default_rng(seed)
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            if layer.gamma is not None:
                layer.gamma.assign(rng.uniform(0.7, 1.3, tuple(layer.gamma.shape)).astype(np.float32))
            if layer.beta is not None:
                layer.beta.assign(rng.normal(0.0, 0.2, tuple(layer.beta.shape)).astype(np.float32))
        elif getattr(layer, "use_bias", False) and getattr(layer, "bias", None) is not None:
            layer.bias.assign(rng.normal(0.0, 0.05, tuple(layer.bias.shape)).astype(np.float32))
    if bns:
        # one training-mode pass with momentum 0 sets the moving statistics to the batch statistics
        momenta = [layer.momentum for layer in bns]
        for layer in bns:
            layer.momentum = 0.0
        shape = (16,) + tuple(model.inputs[0].shape[1:])
        model(rng.uniform(-1.0, 1.0, shape).astype(np.float32), training=True)
        for layer, momentum in zip(bns, momenta):
            layer.momentum = momentum


def make_input(name: str, shape, batch: int) -> np.ndarray:
    rng = np.random.default_rng({"mnist": 1, "mobilenetv2": 2, "resnet50": 3}[name])
    lo = 0.0 if name == "mnist" else -1.0  # MNIST pixels in [0, 1]; MobileNet/ResNet-style [-1, 1]
    return rng.uniform(lo, 1.0, (batch,) + tuple(shape)).astype(np.float32)


# -- rectifier swap ---------------------------------------------------------------------------------
def rectifier_fn(tf, mode: str, max_value, key: str, use_preact: bool):
    """max(x, 0) (or min(max(x, 0), max_value)) whose gradient follows `mode`; with `use_preact`,
    the mask is evaluated at PREACT[key] (onnxruntime's pre-activation) instead of x."""

    @tf.custom_gradient
    def rect(x):
        y = tf.nn.relu(x) if max_value is None else tf.minimum(tf.nn.relu(x), max_value)

        def grad(g):
            if mode == "deconvnet":
                return tf.nn.relu(g)
            xm = x
            if use_preact:
                xm = tf.convert_to_tensor(PREACT[key])
                if tuple(xm.shape) != tuple(x.shape):
                    raise ValueError(f"{key}: onnxruntime pre-activation {tuple(xm.shape)} vs TF {tuple(x.shape)}")
            mask = xm > 0 if max_value is None else tf.logical_and(xm > 0, xm < max_value)
            g_in = tf.nn.relu(g) if mode == "guided" else g
            return tf.cast(mask, g.dtype) * g_in

        return y, grad

    return rect


def aligned_softmax(tf):
    """softmax whose gradient diag(p) - p p^T is evaluated at onnxruntime's probabilities PREACT[PROBS]."""

    @tf.custom_gradient
    def softmax(z):
        p = tf.nn.softmax(z, axis=-1)

        def grad(g):
            q = tf.convert_to_tensor(PREACT[PROBS])
            return q * (g - tf.reduce_sum(g * q, axis=-1, keepdims=True))

        return p, grad

    return softmax


def variant(model, mode: str | None, head: str, keras, tf, use_preact: bool = False):
    """A clone of `model` (sharing its weights) whose rectifiers' gradients follow `mode`
    (None: TensorFlow's own) and whose output Dense ends in softmax ("probs") or linear ("logits").

    Returns (clone, [(original rectifier layer, max_value)] in topological order)."""
    L = keras.layers

    class Rectifier(L.Layer):
        def __init__(self, mode, max_value=None, key="", **kw):
            super().__init__(**kw)
            self.mode, self.max_value, self.key = mode, max_value, key

        def call(self, x):
            return rectifier_fn(tf, self.mode, self.max_value, self.key, use_preact)(x)

        def compute_output_shape(self, shape):
            return shape

    class Rectified(L.Layer):
        """inner (linear activation) then a Rectifier: a layer built with activation='relu'."""

        def __init__(self, inner, rect, **kw):
            super().__init__(**kw)
            self.inner, self.rect = inner, rect

        def call(self, x):
            return self.rect(self.inner(x))

        def compute_output_shape(self, shape):
            return self.inner.compute_output_shape(shape)

    relu = keras.activations.relu
    softmax = keras.activations.softmax
    linear = keras.activations.linear
    out_layers = {id(t._keras_history.operation) for t in model.outputs}
    swapped: list[tuple] = []

    def linear_copy(layer):
        config = dict(layer.get_config(), activation="linear", name=layer.name + "_linear")
        new = type(layer).from_config(config)
        new.build(tuple(layer.input.shape))
        new.set_weights(layer.get_weights())
        return new

    def clone_fn(layer):
        if isinstance(layer, L.ReLU):
            if mode is None:
                return layer
            if float(layer.negative_slope) != 0.0 or float(layer.threshold) != 0.0:
                raise ValueError(f"{layer.name}: a ReLU with negative_slope/threshold is not a plain rectifier")
            mv = None if layer.max_value is None else float(layer.max_value)
            swapped.append((layer, mv))
            return Rectifier(mode, mv, key=layer.name, name=f"{layer.name}_{mode}")
        act = getattr(layer, "activation", None)
        if act is None or act is linear:
            return layer
        if act not in (relu, softmax):
            raise ValueError(f"{layer.name}: activation {getattr(act, '__name__', act)!r} is not handled here")
        if isinstance(layer, L.Activation):
            if act is relu and mode is not None:
                swapped.append((layer, None))
                return Rectifier(mode, key=layer.name, name=f"{layer.name}_{mode}")
            if act is softmax and head == "logits" and id(layer) in out_layers:
                return L.Identity(name=layer.name + "_linear")
            return layer
        if act is relu and mode is not None:
            swapped.append((layer, None))
            return Rectified(linear_copy(layer), Rectifier(mode, key=layer.name), name=f"{layer.name}_{mode}")
        if act is softmax and head == "logits" and id(layer) in out_layers:
            return linear_copy(layer)
        return layer

    clone = keras.models.clone_model(model, clone_function=clone_fn)
    return clone, swapped


# -- onnxruntime pre-activations -------------------------------------------------------------------
def _const_value(model, name: str):
    import onnx
    from onnx import numpy_helper

    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return numpy_helper.to_array(onnx.helper.get_attribute_value(node.attribute[0]))
    return None


def onnx_rectifiers(model) -> list:
    """Relu nodes and Clip nodes with min 0, in graph order."""
    out = []
    for node in model.graph.node:
        if node.op_type == "Relu":
            out.append(node)
        elif node.op_type == "Clip" and len(node.input) > 1 and node.input[1]:
            lo = _const_value(model, node.input[1])
            if lo is not None and float(lo) == 0.0:
                out.append(node)
    return out


def ort_forward(onnx_path: Path, x: np.ndarray, swapped: list) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """onnxruntime's output and its input to each rectifier (NHWC, by the Keras layer it comes from)."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(onnx_path))
    nodes = onnx_rectifiers(model)
    if len(nodes) != len(swapped):
        raise AssertionError(f"{onnx_path.name}: {len(nodes)} ONNX rectifiers but {len(swapped)} Keras ones swapped")
    output = model.graph.output[0].name
    for node in nodes:
        model.graph.output.append(onnx.helper.make_tensor_value_info(node.input[0], onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    probs, *values = sess.run([output] + [n.input[0] for n in nodes], {model.graph.input[0].name: x})
    result = {}
    # these models' rectifiers all lie on one chain, so graph order is topological order in both
    for node, value, (layer, _) in zip(nodes, values, swapped):
        if f"/{layer.name}" not in node.name:
            raise AssertionError(f"ONNX rectifier {node.name!r} does not come from Keras layer {layer.name!r}")
        shape = (x.shape[0],) + tuple(layer.output.shape[1:])
        if value.shape == shape:
            result[layer.name] = value
        elif value.ndim == 4 and value.transpose(0, 2, 3, 1).shape == shape and value.shape[1] != value.shape[3]:
            result[layer.name] = np.ascontiguousarray(value.transpose(0, 2, 3, 1))
        else:
            raise AssertionError(f"{node.name}: ONNX pre-activation shape {value.shape} vs Keras {shape}")
    return probs, result


# -- references -------------------------------------------------------------------------------------
def gradient(fn, x: np.ndarray, targets: np.ndarray, tf) -> np.ndarray:
    xt = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = fn(xt)
        score = tf.reduce_sum(tf.gather(y, targets, axis=1, batch_dims=1))
    return tape.gradient(score, xt).numpy()


def reference(name: str, outdir: Path, batch: int, keras, tf) -> dict:
    from converters.keras_export import export_keras

    model = build(name, keras)
    fmodel = model if not isinstance(model, keras.Sequential) else keras.Model(model.inputs, model.outputs)
    onnx_path = outdir / f"{name}.onnx"
    export_keras(model, onnx_path, opset=17)

    x = make_input(name, model.inputs[0].shape[1:], batch)
    probs = model(x, training=False).numpy()
    target_sets = {
        "argmax": probs.argmax(axis=1).astype(np.int64),
        "int": np.full(batch, INT_TARGET, np.int64),
        "list": np.resize(np.asarray(LIST_TARGETS, np.int64), batch),
    }
    # the three target sets in one batch (samples are independent in inference mode)
    reps = len(target_sets)
    x_all = np.concatenate([x] * reps)
    t_all = np.concatenate(list(target_sets.values()))

    out = {"x": x, "probs": probs}
    out.update({f"targets/{k}": v for k, v in target_sets.items()})
    meta = {"model": name, "output": fmodel.output_names[0], "cases": [list(c) for c in CASES[name]], "n_rectifiers": {}}
    x_t = tf.convert_to_tensor(x)

    def grads_into(prefix: str, method: str, softmax: str, fn, expect) -> None:
        """Store the reference gradients of `fn` (checked to compute `expect` on x)."""
        np.testing.assert_allclose(fn(x_t).numpy(), expect, rtol=1e-4, atol=1e-6)
        parts = np.split(gradient(fn, x_all, t_all, tf), reps)
        for tname, g in zip(target_sets, parts):
            out[f"{prefix}/{method}/{softmax}/{tname}"] = g

    logits_ref = None
    # plain TensorFlow references: TF's own gradient, and the swapped rules at TF's own pre-activations
    for method in METHODS:
        softmaxes = [s for m, s in CASES[name] if m == method]
        mode = None if method == "gradient" else MODES[method]
        logits_model, swapped = variant(fmodel, mode, "logits", keras, tf)
        if mode is not None:
            meta["n_rectifiers"][method] = len(swapped)
        logits = logits_model(x_t, training=False).numpy()
        logits_ref = logits if logits_ref is None else logits_ref
        np.testing.assert_allclose(tf.nn.softmax(logits).numpy(), probs, rtol=1e-4, atol=1e-6)
        if "identity" in softmaxes:
            grads_into("tf", method, "identity", lambda t, m=logits_model: m(t, training=False), logits_ref)
        if "keep" in softmaxes:
            probs_model = fmodel if mode is None else variant(fmodel, mode, "probs", keras, tf)[0]
            grads_into("tf", method, "keep", lambda t, m=probs_model: m(t, training=False), probs)

    # the same references at onnxruntime's forward state (rectifier masks, softmax probabilities)
    _, swapped = variant(fmodel, "vanilla", "logits", keras, tf)
    ort_probs, preact = ort_forward(onnx_path, x, swapped)
    PREACT.clear()
    PREACT.update({k: np.concatenate([v] * reps) for k, v in preact.items()})
    PREACT[PROBS] = np.concatenate([ort_probs] * reps)
    meta["n_rectifiers"]["onnx"] = len(preact)
    out["preact_margin"] = np.array([min(np.abs(v[i]).min() for v in preact.values()) for i in range(batch)])
    out["ort_probs"] = ort_probs
    softmax_fn = aligned_softmax(tf)
    for method in METHODS:
        softmaxes = [s for m, s in CASES[name] if m == method]
        logits_model, _ = variant(fmodel, MODES[method], "logits", keras, tf, use_preact=True)
        if "identity" in softmaxes:
            grads_into("grad", method, "identity", lambda t, m=logits_model: m(t, training=False), logits_ref)
        if "keep" in softmaxes:
            grads_into("grad", method, "keep", lambda t, m=logits_model: softmax_fn(m(t, training=False)), probs)
    PREACT.clear()

    # the swap must have happened: every rectifier caught, and the gradients changed
    counts = set(meta["n_rectifiers"].values())
    if len(counts) != 1 or counts == {0}:
        raise AssertionError(f"{name}: rectifier counts disagree: {meta['n_rectifiers']}")
    for prefix in ("tf", "grad"):
        for method in METHODS[1:]:
            a, b = out[f"{prefix}/{method}/identity/argmax"], out[f"{prefix}/gradient/identity/argmax"]
            if np.abs(a - b).max() <= 1e-3 * np.abs(b).max():
                raise AssertionError(f"{name}: the {method} reference equals the vanilla gradient; the swap did nothing")
    meta["max_rel_diff_aligned_vs_plain_tf"] = {
        key[len("grad/"):]: float(np.abs(out[key] - out["tf/" + key[5:]]).max() / np.abs(out["tf/" + key[5:]]).max())
        for key in list(out) if key.startswith("grad/")
    }
    np.savez(outdir / f"{name}.npz", **out)
    # the .json comes last and atomically: its presence says the model's files are complete
    tmp = outdir / f"{name}.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, outdir / f"{name}.json")
    return meta


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args(argv)
    args.outdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

    import keras
    import tensorflow as tf

    for name in args.models.split(","):
        meta = reference(name, args.outdir, args.batch, keras, tf)
        print(json.dumps({"model": meta["model"], "n_rectifiers": meta["n_rectifiers"]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
