"""The model-parameter randomisation sanity check (Adebayo et al. 2018) on the bundled MNIST CNN.

The weights of the model's four layers are re-initialised one more at each step, top layer first
(preds, fc1, conv2, conv1: "cascading"; `--mode independent` re-initialises one layer at a time),
and five methods (gradient, guided backprop, SmoothGrad, Integrated Gradients, Grad-CAM) explain
the original model's top class of each bundled digit on every step's model. Each map is compared
with the original one: Spearman rank correlation of the magnitudes (max |.| over channels) and of
the signed maps, and SSIM of the min-max scaled magnitudes. A map that explains what the model
learned must lose its similarity as the weights go; the paper found that guided backprop's does
not (it keeps drawing the digit's edges), the plain gradient's does.

    python examples/sanity_randomisation.py --out out/ [--small] [--figure docs/figures/randomisation_cascade.png]

Writes to --out: randomisation_cascade.png (or --figure): one digit's maps per method (rows) for
the original model and each step (columns), then the three metrics against the step, mean over
the digits with their spread; randomisation_cascade.json (the metrics per step and digit, how much
each step changed the output, timings).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

import _common as common
import onnxsal
from onnxsal.data import mnist_model, mnist_samples
from onnxsal.evaluate.randomisation import METRICS, CascadeResult, randomisation_cascade
from onnxsal.visualize import normalize, reduce_channels

METHODS = ("gradient", "guided_backprop", "smoothgrad", "integrated_gradients", "gradcam")
LABELS = {"gradient": "gradient", "guided_backprop": "guided backprop", "smoothgrad": "SmoothGrad",
          "integrated_gradients": "Integrated\nGradients", "gradcam": "Grad-CAM"}
COLOURS = {"gradient": "tab:blue", "guided_backprop": "tab:orange", "smoothgrad": "tab:green",
           "integrated_gradients": "tab:red", "gradcam": "tab:purple"}
METRIC_TITLES = {"spearman_abs": "rank correlation of |map|", "spearman": "rank correlation of the signed map",
                 "ssim": "SSIM of |map|"}


def options(ap) -> None:
    ap.add_argument("--figure", default=None, help="where to write the PNG (default: OUT/randomisation_cascade.png)")
    ap.add_argument("--mode", default="cascading", choices=["cascading", "independent"], help="randomisation mode")
    ap.add_argument("--seed", type=int, default=0, help="seed of the re-initialisation")
    ap.add_argument("--sample", type=int, default=0, help="which digit's maps the figure shows (0-9)")


def method_options(small: bool) -> dict[str, dict]:
    """SmoothGrad's samples and IG's steps: the library defaults, fewer with --small. (SmoothGrad's
    noise is seeded by its own default seed, 0: a `seed` here would reach the cascade's `seed`.)"""
    return {"smoothgrad": {"n_samples": 10 if small else 50},
            "integrated_gradients": {"n_steps": 20 if small else 50}}


def run(ex, x: np.ndarray, args, timer) -> dict[str, CascadeResult]:
    """One cascade per method, maps kept for the figure."""
    results, opts = {}, method_options(args.small)
    for m in METHODS:
        with timer(f"{m}: {args.mode} randomisation on {len(x)} digits"), warnings.catch_warnings():
            # IG warns when its sum misses F(x) - F(0) on a randomised model; the map is still the one compared
            warnings.filterwarnings("ignore", message="Integrated Gradients completeness gap")
            results[m] = randomisation_cascade(ex, x, m, seed=args.seed, mode=args.mode, keep_maps=True,
                                               **opts.get(m, {}))
        r = results[m]
        print(f"  {m:<21}" + "  ".join(f"{k} {' '.join(f'{v:+.2f}' for v in r.mean(k))}" for k in METRICS))
    return results


def step_label(name: str, op_type: str) -> str:
    """'/conv2/Conv' -> 'conv2 (Conv)'."""
    short = name.strip("/").split("/")[0] or name
    return f"{short} ({op_type})"


def draw(results: dict[str, CascadeResult], image: np.ndarray, sample: int, mode: str, path: Path) -> Path:
    """Maps (rows: methods; columns: input, original, step 1..K) over the metric curves."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    first = next(iter(results.values()))
    labels = [step_label(n, t) for n, t in zip(first.steps, first.op_types)]
    n_cols = len(labels) + 2
    fig = Figure(figsize=(10.5, 1.6 * len(results) + 4.4), dpi=120)
    FigureCanvasAgg(fig)
    outer = fig.add_gridspec(2, 1, height_ratios=[1.6 * len(results), 3.4], hspace=0.16)
    maps = outer[0].subgridspec(len(results), n_cols, wspace=0.04, hspace=0.3)
    step_word = "+" if mode == "cascading" else "only"
    titles = ["input", "original"] + [f"{k}: {step_word} {lab}" for k, lab in enumerate(labels, 1)]
    for row, (m, r) in enumerate(results.items()):
        mags = normalize(reduce_channels(np.asarray(r.maps[:, sample], np.float64), "max_abs"))
        for col in range(n_cols):
            ax = fig.add_subplot(maps[row, col])
            ax.set_xticks([]), ax.set_yticks([])
            if col == 0:
                ax.imshow(image, cmap="gray")
                ax.set_ylabel(LABELS[m], fontsize=10, color=COLOURS[m], fontweight="bold")
            else:
                ax.imshow(mags[col - 1], cmap="inferno", vmin=0, vmax=1)
            if col >= 2:  # this digit's numbers under its map
                ax.set_xlabel(f"ρ {r.spearman_abs[col - 2, sample]:.2f}  SSIM {r.ssim[col - 2, sample]:.2f}",
                              fontsize=7.5, labelpad=2)
            if row == 0:
                ax.set_title(titles[col], fontsize=9)
    curves = outer[1].subgridspec(1, len(METRICS), wspace=0.25)
    x = np.arange(len(labels) + 1)
    for j, metric in enumerate(METRICS):
        ax = fig.add_subplot(curves[j])
        for m, r in results.items():
            per = np.asarray(r.metrics[metric], np.float64)
            mean = np.concatenate([[1.0], np.nanmean(per, axis=1)])
            std = np.concatenate([[0.0], np.nanstd(per, axis=1)])
            ax.plot(x, mean, marker="o", ms=4, color=COLOURS[m], label=LABELS[m].replace("\n", " "))
            ax.fill_between(x, mean - std, mean + std, color=COLOURS[m], alpha=0.12)
        ax.axhline(0.0, color="gray", lw=0.6)
        ax.set_ylim(-0.4, 1.05)
        ax.set_title(METRIC_TITLES[metric], fontsize=10)
        ax.set_xticks(x)
        ax.set_xticklabels(["original"] + [f"{step_word} {lab.split(' ')[0]}" for lab in labels], fontsize=8)
        ax.grid(alpha=0.3)
        if j == 0:
            ax.set_ylabel(f"similarity to the original map\n(mean ± std over {per.shape[1]} digits)", fontsize=9)
    fig.legend(*ax.get_legend_handles_labels(), loc="lower center", ncol=len(results), fontsize=9,
               bbox_to_anchor=(0.5, 0.0), frameon=False)
    fig.suptitle(f"Model-parameter randomisation ({mode}, top layer first) on the bundled MNIST CNN: "
                 f"does the map change when the weights go?", fontsize=11, y=0.995)
    fig.subplots_adjust(left=0.08, right=0.99, top=0.95, bottom=0.075)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path), format="png")
    return common.saved(path)


def summary(results: dict[str, CascadeResult], seconds: dict[str, float], n: int, args) -> dict:
    out = {"model": "onnxsal.data.mnist_model()", "digits": n, "mode": args.mode, "seed": args.seed,
           "method_options": method_options(args.small), "methods": {}}
    for m, r in results.items():
        d = r.to_dict()
        d["mean"] = {k: [round(v, 4) if v is not None else None for v in d["metrics"][k]["mean"]] for k in METRICS}
        d["seconds"] = seconds[m]
        out["methods"][m] = d
    out["steps"] = next(iter(results.values())).steps
    return out


def main() -> int:
    args = common.parse_args(__doc__, options)
    timer = common.Timer()
    digits, labels = mnist_samples()
    x = digits[:4] if args.small else digits
    if not 0 <= args.sample < len(x):
        raise SystemExit(f"--sample must be in 0..{len(x) - 1}")
    ex = onnxsal.Explainer(mnist_model(), providers=args.providers)
    results = run(ex, x, args, timer)
    seconds = {m: timer.steps[f"{m}: {args.mode} randomisation on {len(x)} digits"] for m in METHODS}
    figure = Path(args.figure) if args.figure else args.out / "randomisation_cascade.png"
    with timer("figure"):
        draw(results, x[args.sample, 0], args.sample, args.mode, figure)
    data = summary(results, seconds, len(x), args)
    data["labels"] = labels[:len(x)].tolist()
    data["figures"] = [figure.name]
    data["timings"] = timer.steps
    common.write_json(data, args.out / "randomisation_cascade.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
