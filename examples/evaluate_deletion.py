"""Deletion curves (Petsiuk et al. 2018) of five attribution methods, with onnxsal.evaluate.

For each method (gradient, guided backprop, SmoothGrad, Integrated Gradients, Grad-CAM) the pixels of
each image are set to zero in the order of the method's map, most relevant first, 2% of them per
step, and the probability of the image's top class is followed; the curve is the mean over images,
and a low area under it (AUC) means the map found the pixels the model needs. Two models: the
bundled MNIST CNN on its ten bundled digits, and torchvision's MobileNetV2 with its ImageNet weights
(offline checkpoint) on scikit-image's chelsea, coffee and astronaut, taking pixels in [0, 1].

    python examples/evaluate_deletion.py --out out/ [--small] [--figure docs/figures/deletion_curves.png]

Writes to --out: deletion_curves.png (or --figure), deletion_curves.json (AUCs, curves, timings).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import _common as common
import onnxsal
from onnxsal.data import mnist_model, mnist_samples
from onnxsal.evaluate.report import Evaluation

METHODS = ("gradient", "guided_backprop", "smoothgrad", "integrated_gradients", "gradcam")
PHOTOS = ("chelsea", "coffee", "astronaut")


def options(ap) -> None:
    ap.add_argument("--figure", default=None, help="where to write the PNG (default: OUT/deletion_curves.png)")
    ap.add_argument("--steps", type=int, default=None, help="points on each curve minus one (default 50; 20 with --small)")


def run(name: str, model, x: np.ndarray, args, timer) -> Evaluation:
    samples = 10 if args.small else 50
    opts = {"smoothgrad": {"n_samples": samples, "seed": 0}, "integrated_gradients": {"n_steps": samples}}
    with timer(f"{name}: deletion curves of {len(METHODS)} methods on {len(x)} images"):
        result = onnxsal.evaluate(model, x, METHODS, ["deletion"], method_options=opts,
                                  steps=args.steps or (20 if args.small else 50), batch_size=8, providers=args.providers)
    print(result.table())
    return result


def main() -> int:
    args = common.parse_args(__doc__, options)
    timer = common.Timer()
    digits, _ = mnist_samples()
    results = {"MNIST CNN (10 digits)": run("mnist", mnist_model(), digits, args, timer)}
    _, proto = common.torch_mobilenet_onnx(timer)
    photos = np.stack([common.photo(p) for p in PHOTOS]).astype(np.float32) / 255.0
    results["MobileNetV2 (chelsea, coffee, astronaut)"] = run("mobilenet", proto, photos.transpose(0, 3, 1, 2).copy(),
                                                              args, timer)

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), dpi=120)
    canvas = FigureCanvasAgg(fig)
    for i, (title, result) in enumerate(results.items()):
        ax = fig.add_subplot(1, len(results), i + 1)
        for m in METHODS:
            c = result.curves[m]["deletion"]
            ax.plot(c.fractions, c.scores.mean(0), label=f"{m} (AUC {c.auc.mean():.3f})")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("fraction of pixels set to zero, most relevant first")
        ax.set_ylabel("probability of the top class")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Deletion curves (lower area = the map found what the model needs)", fontsize=11)
    fig.tight_layout()
    figure = Path(args.figure) if args.figure else args.out / "deletion_curves.png"
    figure.parent.mkdir(parents=True, exist_ok=True)
    canvas.print_png(str(figure))
    common.saved(figure)
    summary = {title: {"auc": {m: round(float(r.values[m]["deletion"].mean()), 4) for m in METHODS},
                       "seconds": {m: {k: round(v, 2) for k, v in r.seconds[m].items()} for m in METHODS},
                       "images": r.images, "steps": r.settings["steps"]} for title, r in results.items()}
    summary["timings"] = timer.steps
    common.write_json(summary, args.out / "deletion_curves.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
