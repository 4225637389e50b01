"""Keras builders: keras.applications networks with weights=None, exported by tf2onnx (opset 13)
or by Keras' own `model.export(path, format="onnx")`, with tf.GradientTape references.

Imported only in the TensorFlow worker process (TensorFlow and torch do not share a process).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import onnx  # noqa: E402

from .artifact import Artifact  # noqa: E402

BATCH = 2
TARGET = 1


def keras_model(name: str, arch: str, size: int, exporter: str) -> Artifact:
    """Build, export, then take d logits[:, TARGET] / d input with the classifier's softmax removed
    (onnxsal's default softmax="identity" explains the pre-softmax logits)."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, arch)(weights=None, input_shape=(size, size, 3))
    _he_scale(model)
    x = np.random.default_rng(0).uniform(0, 255, (BATCH, size, size, 3)).astype(np.float32)
    if arch.startswith(("VGG", "ResNet", "Xception", "Inception", "MobileNet", "DenseNet", "NASNet")) and \
            not arch.startswith("MobileNetV3"):
        x = x / 127.5 - 1.0  # these expect preprocessed input; the others rescale inside
    proto = _tf2onnx(model, size) if exporter == "tf2onnx" else _keras_export(model, x)
    reference = _reference(arch, size, model, x)
    reference32 = _reference32(model, x)
    input_name = proto.graph.input[0].name
    return Artifact.save(name, proto, {input_name: x}, reference, None, TARGET, input_name, reference32=reference32)


def _reference(arch: str, size: int, model, x: np.ndarray) -> np.ndarray:
    """d logits[:, TARGET] / d x by tf.GradientTape, in float64, on a float64 copy of `model` (the
    same weights) with its softmax removed. Float64 makes the reference the truth the float32 file is
    measured against (a float32 reference is itself off by more than 1e-4 on deep nets)."""
    import keras
    import tensorflow as tf

    saved, policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    try:
        m64 = getattr(keras.applications, arch)(weights=None, input_shape=(size, size, 3))
        m64.set_weights([w.astype(np.float64) for w in model.get_weights()])
    finally:
        keras.config.set_floatx(saved)
        keras.config.set_dtype_policy(policy)
    _drop_softmax(m64)
    xt = tf.constant(x.astype(np.float64))
    with tf.GradientTape() as tape:
        tape.watch(xt)
        score = tf.reduce_sum(m64(xt, training=False)[:, TARGET])
    return tape.gradient(score, xt).numpy().astype(np.float32)


def _he_scale(model) -> None:
    """Redraw conv and dense kernels with He-normal scale (seeded). Keras' glorot default lets the
    signal of a deep random net shrink layer by layer: MobileNet's input gradient is ~1e-21, where
    float32 backward passes lose digits in near-subnormal intermediates and no check means much."""
    rng = np.random.default_rng(1)
    for layer in model.layers:
        for attr in ("kernel", "depthwise_kernel"):
            var = getattr(layer, attr, None) if hasattr(type(layer), attr) or hasattr(layer, attr) else None
            if var is None or len(var.shape) < 2:
                continue
            shape = tuple(var.shape)
            fan_in = int(np.prod(shape[:-1])) if attr == "kernel" else int(np.prod(shape[:2]))
            var.assign(rng.normal(0.0, np.sqrt(2.0 / fan_in), shape).astype(np.float32))
        _nontrivial_batchnorm(layer, rng)


def _nontrivial_batchnorm(layer, rng) -> None:
    """BatchNormalization statistics as a trained net has them, not Keras' zeros and ones: with zero
    shifts, dead regions give pre-activations of exactly 0, a kink where frameworks' conventions
    differ (Keras' ReLU(6) passes the gradient at 0, PyTorch's ReLU6 and onnxsal do not)."""
    for attr, draw in (("gamma", lambda n: rng.uniform(0.5, 1.5, n)), ("beta", lambda n: rng.normal(0.0, 0.1, n)),
                       ("moving_mean", lambda n: rng.normal(0.0, 0.1, n)),
                       ("moving_variance", lambda n: rng.uniform(0.5, 1.5, n))):
        var = getattr(layer, attr, None)
        if var is not None and type(layer).__name__ == "BatchNormalization":
            var.assign(draw(tuple(var.shape)).astype(np.float32))


def _reference32(model, x: np.ndarray) -> np.ndarray:
    """The same gradient in float32, on the exported model itself (its softmax removed)."""
    import tensorflow as tf

    _drop_softmax(model)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        score = tf.reduce_sum(model(xt, training=False)[:, TARGET])
    return tape.gradient(score, xt).numpy()


def _tf2onnx(model, size: int) -> onnx.ModelProto:
    """tf2onnx.convert.from_keras at opset 13 with a dynamic batch axis."""
    import tensorflow as tf
    import tf2onnx

    spec = (tf.TensorSpec((None, size, size, 3), tf.float32, name="input"),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=13)
    return proto


def _keras_export(model, x: np.ndarray) -> onnx.ModelProto:
    """Keras' own ONNX export (it needs the model to have been called once, as a user's has)."""
    model(x[:1], training=False)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        model.export(str(path), format="onnx", verbose=False)
        return onnx.load(str(path))


def _drop_softmax(model) -> None:
    """Make the last softmax activation linear, so the model returns its logits."""
    import keras

    for layer in reversed(model.layers):
        activation = getattr(layer, "activation", None)
        if activation is not None and getattr(activation, "__name__", "") == "softmax":
            layer.activation = keras.activations.linear
            return
    raise RuntimeError("no softmax layer found")
