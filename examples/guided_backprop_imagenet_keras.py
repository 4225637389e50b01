"""Guided backpropagation on a pretrained ImageNet CNN in Keras / TensorFlow 2 (seeds 001 and 003:
"How to apply Guided BackProp in TensorFlow 2.0?" and "Guided Backpropagation with PyTorch and
TensorFlow"), with onnxsal. The PyTorch half is guided_backprop_imagenet_torch.py.

In TF2 the posts found that `gradient_override_map` no longer works and replaced each
`layer.activation == relu` by a `@tf.custom_gradient` guidedRelu, which misses `tf.nn.relu`,
`keras.layers.ReLU` and ReLU6. Here the Keras model is exported to ONNX once
(converters.keras_export, NHWC kept) and onnxsal applies the guided rule to every rectifier of the
graph, whatever layer wrote it.

Keras' own ImageNet weights cannot be downloaded here, so the Keras model is a small
re-implementation of torchvision's MobileNetV2 (NHWC; every 3x3 conv is ZeroPadding2D(1) + a 'valid'
conv, as torch pads, where Keras' 'same' would pad stride-2 convs asymmetrically; ReLU6 as
keras.layers.ReLU(6.0); BatchNormalization with torch's epsilon 1e-5) with the weights of torchvision's
checkpoint copied in: conv kernels OIHW -> HWIO, depthwise OIHW -> HW(I)M, BatchNorm
gamma/beta/mean/var, the classifier's Linear transposed. The checkpoint is read in a separate,
torch-only process (examples/_mobilenet_npz.py writes it to an .npz, with torch's logits for the
same image); this process is TensorFlow only, and checks that the Keras and the ONNX logits match
torch's (the max difference is printed).

    python examples/guided_backprop_imagenet_keras.py --out out/ [--small]

Writes to --out: mobilenet_v2_keras.onnx, guided_backprop_keras.png, predictions_keras.json.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

import _common as common
import onnxsal

# torchvision's inverted residual settings: expansion t, output channels c, repeats n, first stride s
SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
EPS = 1e-5  # torch.nn.BatchNorm2d's default (Keras' is 1e-3)


def build_mobilenet_v2(keras, size: int = common.SIZE):
    """torchvision.models.mobilenet_v2 in Keras, NHWC, with the ImageNet mean/std step first so it
    takes RGB pixels in [0, 1] like the PyTorch example's model. Layer names follow the state_dict
    keys ("features.2.conv.1.0" -> "features_2_conv_1_0") so the weights can be copied by name."""
    L = keras.layers

    def name(key: str) -> str:
        return key.replace(".", "_")

    def conv_bn(x, key: str, filters: int, kernel: int, stride: int = 1, depthwise: bool = False, act: bool = True):
        # torch's Conv2dNormActivation: conv (no bias) at key.0, BatchNorm at key.1, ReLU6
        conv_key, bn_key = (f"{key}.0", f"{key}.1")
        if kernel == 3:
            x = L.ZeroPadding2D(1, name=name(conv_key) + "_pad")(x)
        if depthwise:
            x = L.DepthwiseConv2D(kernel, strides=stride, padding="valid", use_bias=False, name=name(conv_key))(x)
        else:
            x = L.Conv2D(filters, kernel, strides=stride, padding="valid", use_bias=False, name=name(conv_key))(x)
        x = L.BatchNormalization(epsilon=EPS, name=name(bn_key))(x)
        return L.ReLU(6.0, name=name(key) + "_relu6")(x) if act else x

    inp = keras.Input((size, size, 3), name="image")
    x = L.Normalization(mean=common.IMAGENET_MEAN.tolist(), variance=(common.IMAGENET_STD ** 2).tolist(),
                        name="imagenet_normalize")(inp)
    x = conv_bn(x, "features.0", 32, 3, stride=2)
    channels, index = 32, 1
    for t, c, n, s in SETTINGS:
        for i in range(n):
            stride = s if i == 0 else 1
            key, hidden, block_in = f"features.{index}.conv", channels * t, x
            parts = 0
            if t != 1:
                x = conv_bn(x, f"{key}.0", hidden, 1)
                parts = 1
            x = conv_bn(x, f"{key}.{parts}", hidden, 3, stride=stride, depthwise=True)
            x = L.Conv2D(c, 1, use_bias=False, name=name(f"{key}.{parts + 1}"))(x)
            x = L.BatchNormalization(epsilon=EPS, name=name(f"{key}.{parts + 2}"))(x)
            if stride == 1 and channels == c:
                x = L.Add(name=name(f"features.{index}") + "_add")([block_in, x])
            channels, index = c, index + 1
    x = conv_bn(x, "features.18", 1280, 1)
    x = L.GlobalAveragePooling2D(name="pool")(x)
    x = L.Dense(1000, name="classifier_1")(x)  # logits (torchvision has no softmax)
    return keras.Model(inp, x, name="mobilenet_v2_from_torchvision")


def load_torch_weights(model, keras, weights: dict[str, np.ndarray]) -> int:
    """Copy the state_dict arrays into the layers named after their keys; returns how many arrays."""
    used = 0
    for layer in model.layers:
        key = _torch_key(layer.name)
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            w = weights[f"{key}.weight"]  # [C, 1, 3, 3] -> [3, 3, C, 1]
            layer.set_weights([w.transpose(2, 3, 0, 1)])
            used += 1
        elif isinstance(layer, keras.layers.Conv2D):
            layer.set_weights([weights[f"{key}.weight"].transpose(2, 3, 1, 0)])  # OIHW -> HWIO
            used += 1
        elif isinstance(layer, keras.layers.BatchNormalization):
            layer.set_weights([weights[f"{key}.{p}"] for p in ("weight", "bias", "running_mean", "running_var")])
            used += 4
        elif isinstance(layer, keras.layers.Dense):
            layer.set_weights([weights[f"{key}.weight"].T, weights[f"{key}.bias"]])
            used += 2
    return used


def _torch_key(layer_name: str) -> str:
    """"features_2_conv_1_0" -> "features.2.conv.1.0"; "classifier_1" -> "classifier.1"."""
    return layer_name.replace("_", ".")


def torch_weights_and_logits(img: np.ndarray, tmp: Path) -> dict[str, np.ndarray]:
    """Run examples/_mobilenet_npz.py in its own process and read back what it wrote."""
    image, out = tmp / "image.npy", tmp / "mobilenet_v2.npz"
    np.save(image, img, allow_pickle=False)
    helper = Path(__file__).resolve().parent / "_mobilenet_npz.py"
    subprocess.run([sys.executable, str(helper), str(out), "--image", str(image)], check=True)
    with np.load(out, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def main() -> int:
    args = common.parse_args(__doc__)
    timer = common.Timer()
    img = common.photo("chelsea")
    x = (img.astype(np.float32) / 255.0)[None]  # [1,224,224,3] in [0,1], NHWC
    with tempfile.TemporaryDirectory(prefix="onnxsal-example-") as tmp:
        with timer("torch checkpoint -> npz (subprocess)"):
            weights = torch_weights_and_logits(x, Path(tmp))
    torch_logits = weights.pop("__torch_logits__")[0]

    import tensorflow as tf

    import keras

    tf.config.threading.set_inter_op_parallelism_threads(2)
    from converters.keras_export import export_keras

    with timer("build Keras model + copy weights"):
        model = build_mobilenet_v2(keras)
        used = load_torch_weights(model, keras, weights)
    if used != len(weights):
        raise SystemExit(f"copied {used} of the checkpoint's {len(weights)} arrays")
    keras_logits = model.predict(x, verbose=0)[0]
    keras_diff = float(np.abs(keras_logits - torch_logits).max())
    print(f"Keras re-implementation vs torchvision: max |logit difference| {keras_diff:.2e} "
          f"(logits span {torch_logits.min():.1f} .. {torch_logits.max():.1f})")

    path = args.out / "mobilenet_v2_keras.onnx"
    with timer("export to ONNX"):
        export_keras(model, path)
    ex = onnxsal.Explainer(str(path), providers=args.providers)
    logits = ex.predict(x)[0]
    onnx_diff = float(np.abs(logits - torch_logits).max())
    print(f"ONNX (from Keras) vs torchvision: max |logit difference| {onnx_diff:.2e}")
    labels = common.imagenet_labels()
    top = common.top5(logits, labels)
    best = top[0]["class"]
    print("chelsea: " + ", ".join(f"{t['label']} ({t['prob']:.2f})" for t in top[:3]))

    with timer("onnxsal gradient + guided backprop"):
        vanilla = ex.attribute(x, target=best, method="gradient")
        guided = ex.attribute(x, target=best, method="guided_backprop")
    title = f"Keras MobileNetV2 via ONNX: {top[0]['label']} ({100 * top[0]['prob']:.0f}%), class {best}"
    ratio, ratio_vanilla, png = common.guided_report(img, vanilla, guided, title, args.out / "guided_backprop_keras.png")

    common.write_json({
        "example": "guided_backprop_imagenet_keras", "small": args.small, "image": "chelsea", "top5": top,
        "predicted_class": best, "face_ratio": {"guided_backprop": round(ratio, 3), "gradient": round(ratio_vanilla, 3)},
        "face_box_rows_cols": common.face_box(), "max_abs_logit_diff_keras_vs_torch": keras_diff,
        "max_abs_logit_diff_onnx_vs_torch": onnx_diff, "weights_copied": used,
        "providers": ex.session_providers, "timings_s": timer.steps, "figures": [png.name],
    }, args.out / "predictions_keras.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
