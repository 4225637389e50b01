"""The bundled demo: saliency maps of the MNIST CNN shipped with onnxsal, as two PNG figures.

`mnist_saliency.png` redoes the keras-vis MNIST walkthrough (one row per digit: input | vanilla |
guided | deconvnet | negate | guided with the softmax kept), and `mnist_saliency_parts.png` the
Lasagne recipe's panels (input | abs | positive | negative, for the gradient and guided backprop).

    python -m onnxsal.demo [out_dir] [--providers auto|cpu|cuda]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from . import visualize as vis
from .data import mnist_metadata, mnist_model, mnist_samples
from .explainer import Explainer

SALIENCY_PNG = "mnist_saliency.png"
PARTS_PNG = "mnist_saliency_parts.png"
PARTS_DIGITS = (0, 2, 3, 5, 8)  # the Lasagne-style figure shows a few digits, not all ten
CELL = 112  # 28 x 4: every input pixel is a crisp 4 x 4 block


def explain_digits(ex: Explainer, images: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """The raw attributions of the demo, for each digit's true class, by column name."""
    return {
        "vanilla": ex.attribute(images, target=labels, method="gradient"),
        "guided": ex.attribute(images, target=labels, method="guided_backprop"),
        "deconvnet": ex.attribute(images, target=labels, method="deconvnet"),
        # keras-vis grad_modifier='negate' on guided saliency: where the (negated) gradient is positive,
        # i.e. the pixels whose increase lowers the class score
        "negate": ex.attribute(images, target=labels, method="guided_backprop", modifier="negative"),
        # no softmax swap: the gradient of the probability, which also rises when other classes fall
        "guided_softmax_kept": ex.attribute(images, target=labels, method="guided_backprop", softmax="keep"),
    }


def _heat(attr: np.ndarray, cmap: str = "jet") -> np.ndarray:
    """keras-vis display: max |gradient| over channels, min-max per sample, coloured."""
    return vis.apply_cmap(vis.normalize(vis.reduce_channels(attr, "max_abs")), cmap)


def saliency_figure(images, labels, pred, conf, maps, accuracy: str | None = None):
    """The keras-vis style table: a row per digit, a column per method, jet heat maps."""
    columns = ["vanilla", "guided", "deconvnet", "negate", "guided_softmax_kept"]
    heats = {c: _heat(maps[c]) for c in columns}
    rows = [[vis.to_uint8_image(images[i])] + [heats[c][i] for c in columns] for i in range(len(images))]
    titles = ["input", "vanilla", "guided", "deconvnet", "negate\nmax(-g, 0)", "guided,\nsoftmax kept"]
    row_titles = [f"digit {labels[i]}\npred {pred[i]}\n{100 * conf[i]:.1f}%" for i in range(len(images))]
    # min-max display hides the scale; the caption keeps it (the kept softmax shrinks it by ~p(1-p))
    peaks = {c: np.abs(maps[c]).reshape(len(images), -1).max(axis=1) for c in columns}
    captions = [[""] + [f"max |g| {peaks[c][i]:.2g}" for c in columns] for i in range(len(images))]
    acc = f", test accuracy {float(accuracy):.1%}" if accuracy else ""
    title = f"MNIST CNN{acc}: |saliency| for the true class (jet, min-max per map)"
    return vis.grid(rows, titles=titles, row_titles=row_titles, title=title, captions=captions, cell=CELL)


def parts_figure(images, labels, maps, digits=PARTS_DIGITS):
    """The Lasagne style panels: abs (gray), positive and negative parts (viridis), each scaled by
    its own maximum, for the plain gradient and for guided backprop."""
    rows, row_titles = [], []
    for d in digits:
        i = int(np.flatnonzero(labels == d)[0])
        row = [vis.to_uint8_image(images[i])]
        for method in ("vanilla", "guided"):
            a = maps[method][i : i + 1]
            row.append(vis.apply_cmap(vis.normalize(vis.reduce_channels(a, "max_abs"))[0], "gray"))
            for part in ("positive", "negative"):
                row.append(vis.apply_cmap(vis.normalize(vis.reduce_channels(a, part))[0], "viridis"))
        rows.append(row)
        row_titles.append(f"class {d}")
    titles = ["input"] + [f"{m}\n{p}" for m in ("gradient", "guided") for p in ("abs.", "pos.", "neg.")]
    title = "Saliency parts (Simonyan et al.; Lasagne recipe): abs. in gray, pos./neg. in viridis"
    return vis.grid(rows, titles=titles, row_titles=row_titles, title=title, cell=CELL)


def run_demo(out_dir="onnxsal-demo", providers="auto", verbose: bool = True) -> list[Path]:
    """Explain each bundled digit for its true class and write the two figures; returns their paths."""
    out = Path(out_dir)
    ex = Explainer(mnist_model(), providers=providers)
    images, labels = mnist_samples()
    probs = ex.predict(images)
    pred, conf = probs.argmax(axis=1), probs.max(axis=1)
    if verbose:
        for i in range(len(images)):
            mark = "" if pred[i] == labels[i] else "  <- wrong"
            print(f"digit {labels[i]}: predicted {pred[i]} (p = {conf[i]:.3f}){mark}")
    maps = explain_digits(ex, images, labels)
    accuracy = mnist_metadata().get("test_accuracy")
    written = [
        vis.save_png(saliency_figure(images, labels, pred, conf, maps, accuracy), out / SALIENCY_PNG),
        vis.save_png(parts_figure(images, labels, maps), out / PARTS_PNG),
    ]
    if verbose:
        for path in written:
            print(f"wrote {path}")
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m onnxsal.demo", description="Write onnxsal's MNIST saliency figures.")
    ap.add_argument("out_dir", nargs="?", default="onnxsal-demo", help="folder for the PNGs (default: onnxsal-demo)")
    ap.add_argument("--providers", default="auto", choices=["auto", "cpu", "cuda"], help="onnxruntime providers")
    args = ap.parse_args(argv)
    run_demo(args.out_dir, providers=args.providers)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
