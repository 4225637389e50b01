"""Deletion curves: onnxsal.evaluate.deletion against Quantus' PixelFlipping, on the same CPU.

    python -m benchmarks.evaluate                          # resnet50, 8 photos, 4 methods, 224 steps
    python -m benchmarks.evaluate --steps 112 --repeats 3
    python -m benchmarks.evaluate --model resnet18 --size 32 --images 2 --steps 8 --reference none   # tiny

The maps of four methods (gradient, guided backprop, Integrated Gradients, Grad-CAM) are computed
once by onnxsal on torchvision's model (random weights, seeded) for scikit-image's photos, and both
libraries are handed the same maps: the benchmark times the evaluation, not the attribution. Each
side computes, for every map, the deletion curve (most relevant pixels replaced first by 0, the
target's softmax probability after each step) and its area: onnxsal with `onnxsal.evaluate.deletion`
through onnxruntime, Quantus with `PixelFlipping` on the torch model.

Both compute the same thing when:
* the map has one value per pixel and no two pixels tie: Quantus broadcasts the map over the
  channels and sorts the C x H x W values with an unstable sort, so a pixel's channels are flipped
  together only when its value is unique. Each map is therefore handed as the rank of each pixel
  under onnxsal's own ordering (max |a| over channels, ties broken by position), which is all
  either side uses of it;
* `features_in_step` is C x (pixels per step). Quantus asserts that it divides H x W, not the
  C x H x W values it flips (no multiple of 3 divides 224 x 224), so a subclass checks C x H x W;
  the curve itself is Quantus' own code;
* the baseline is the number 0.0 (Quantus' "black" is each image's minimum) and both take the
  softmax of the logits.
Then onnxsal's curve after its first point (the clean image, which Quantus does not report) is
Quantus' curve, and the difference is float32 noise. The areas are normalised differently: onnxsal
integrates over the fraction replaced, 0 to 1, from the clean image on; Quantus takes np.trapz with
dx = 1 over its points. Both are reported, and onnxsal's recomputed Quantus' way.

Other workers share this machine's CPU: in each repetition the two sides run one after the other,
in alternating order, and the times reported are medians over repetitions. Written to
benchmarks/results/evaluate.{json,md} (or `--out`). `--reference none` runs onnxsal's side only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.run import machine, torchvision_model

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("gradient", "guided_backprop", "integrated_gradients", "gradcam")
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "colorwheel",
          "retina")
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def photos(n: int, size: int) -> np.ndarray:
    """`n` scikit-image photos (cycled if more are asked), resized to size x size (bicubic) and
    normalised with ImageNet's mean and std, as float32 NCHW."""
    from PIL import Image
    from skimage import data

    out = []
    for i in range(n):
        img = Image.fromarray(getattr(data, PHOTOS[i % len(PHOTOS)])()[..., :3])
        rgb = np.asarray(img.resize((size, size), Image.Resampling.BICUBIC), np.float64) / 255.0
        out.append(((rgb - MEAN) / STD).transpose(2, 0, 1))
    return np.stack(out).astype(np.float32)


def attributions(ex, x: np.ndarray, target: np.ndarray, methods, ig_steps: int) -> dict[str, np.ndarray]:
    """Each method's raw map, computed once by onnxsal."""
    options = {"integrated_gradients": {"n_steps": ig_steps, "progress": False}}
    return {m: ex.attribute(x, target=target, method=m, **options.get(m, {})) for m in methods}


def pixel_ranks(attr: np.ndarray, x: np.ndarray) -> np.ndarray:
    """A map [N, 1, H, W] whose values order the pixels exactly as onnxsal orders `attr` (max |a|
    over channels, ties by position): the most relevant pixel gets H x W, the least 1. Distinct
    values make Quantus' unstable sort flip each pixel's channels together and in the same order."""
    from onnxsal.evaluate.curves import geometry, unit_relevance

    geom = geometry(x)
    relevance = unit_relevance(attr, geom, len(x))
    order = np.argsort(-relevance, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(order.shape[1])[None, :], axis=1)
    n_pixels = order.shape[1]
    return (n_pixels - ranks).astype(np.float32).reshape(len(x), 1, *geom.grid)


def import_quantus():
    """Quantus, kept off TensorFlow: it imports TensorFlow whenever it is installed, and TensorFlow
    next to torch in one process crashes. A None entry in sys.modules makes find_spec say it is absent."""
    sys.modules.setdefault("tensorflow", None)
    try:
        import quantus
    except ImportError:
        raise SystemExit("the Quantus side needs quantus (pip install quantus==0.6.0); "
                         "--reference none runs onnxsal's side only.") from None
    return quantus


def whole_pixel_flipping(quantus, pixels_per_step: int, channels: int):
    """Quantus' PixelFlipping flipping `pixels_per_step` whole pixels per step (C values each).

    Quantus asserts that features_in_step divides H x W, though the values it flips number
    C x H x W; this subclass checks the count it flips instead and leaves the curve to Quantus."""

    class WholePixelFlipping(quantus.PixelFlipping):
        def custom_preprocess(self, x_batch, **kwargs):
            n_values = int(np.prod(x_batch.shape[1:]))
            if n_values % self.features_in_step:
                raise ValueError(f"features_in_step {self.features_in_step} does not divide the {n_values} values per sample.")

    return WholePixelFlipping(features_in_step=pixels_per_step * channels, normalise=False, abs=False,
                              perturb_baseline=0.0, return_auc_per_sample=False, disable_warnings=True)


def onnxsal_side(ex, x, maps, target, steps: int):
    """A call `run(method)` that returns onnxsal's deletion curves [N, steps + 1] of that method's maps
    (one run on the clean batch, then the N x (steps + 1) copies, 64 per run, through onnxruntime)."""
    from onnxsal.evaluate import deletion

    def run(method):
        return deletion(ex, x, maps[method], target, steps=steps, baseline="zeros", progress=False).scores

    return run


def quantus_side(model, x, maps, target, steps: int):
    """A call `run(method)` that returns Quantus' pixel-flipping curves [N, steps] of that method's maps
    (one torch forward pass of the whole batch per step; the clean image is not a point of it)."""
    quantus = import_quantus()
    n_pixels = x.shape[2] * x.shape[3]
    metric = whole_pixel_flipping(quantus, n_pixels // steps, x.shape[1])

    def run(method):
        curves = metric(model=model, x_batch=x, y_batch=target, a_batch=maps[method], channel_first=True,
                        softmax=True, device="cpu", batch_size=len(x))
        return np.asarray(curves, np.float64)

    return run


def floor_sides(ex, model, x, steps: int, per_eval: int = 64) -> dict:
    """Two diagnostic sides that only run the forward passes a curve needs, with no perturbation, no
    ranking and no scoring: `ort_floor` (onnxsal's forward session on N x (steps + 1) copies, `per_eval`
    per run, as `deletion` feeds them) and `torch_floor` (the torch model on `steps` batches of N, as
    Quantus runs them). Their ratio is what any deletion code on each runtime can reach."""
    import torch

    from onnxsal.runtime import run as ort_run

    copies = np.resize(x, (len(x) * (steps + 1), *x.shape[1:]))
    session, name, feed = ex.forward_session, ex.output, ex.inputs[0].name

    def ort_floor(method):
        for lo in range(0, len(copies), per_eval):
            ort_run(session, [name], {feed: copies[lo:lo + per_eval]})

    batch = torch.from_numpy(x)

    def torch_floor(method):
        with torch.no_grad():
            for _ in range(steps):
                model(batch).softmax(1)

    return {"ort_floor": ort_floor, "torch_floor": torch_floor}


def interleaved(sides: dict, methods, repeats: int) -> tuple[dict, dict]:
    """Run every side on every method `repeats` times, the sides' order flipped each repetition
    (the CPU is shared: drift then falls on both). Returns (times {side: {method: [s]}},
    curves {side: {method: array}} of the last repetition)."""
    times = {s: {m: [] for m in methods} for s in sides}
    curves = {s: {} for s in sides}
    names = list(sides)
    for rep in range(repeats):
        for side in (names if rep % 2 == 0 else names[::-1]):
            for m in methods:
                t0 = time.perf_counter()
                curves[side][m] = sides[side](m)
                times[side][m].append(time.perf_counter() - t0)
                print(f"  rep {rep + 1}/{repeats} {side:<8} {m:<22} {times[side][m][-1]:7.2f} s", flush=True)
    return times, curves


def summary(times: dict) -> dict:
    """Per method and in total: each repetition's seconds and their median."""
    total = [sum(ts) for ts in zip(*times.values())]
    out = {m: {"median_s": statistics.median(ts), "times_s": ts} for m, ts in times.items()}
    out["total"] = {"median_s": statistics.median(total), "times_s": total}
    return out


def quantus_auc(curves: np.ndarray) -> np.ndarray:
    """Quantus' area under its curves: `utils.calculate_auc`, np.trapz with dx = 1 over the points.
    Quantus 0.6.0 calls np.trapz, which NumPy 2.4 has removed, so its np.trapezoid is called here."""
    return np.trapezoid(curves, dx=1, axis=1)


def agreement(ours: dict, theirs: dict) -> dict:
    """How far onnxsal's curves (after the clean point) are from Quantus', and both areas."""
    from onnxsal.evaluate.curves import area

    out, ours_auc, theirs_auc = {}, [], []
    for m, q in theirs.items():
        o = ours[m]
        steps = q.shape[1]
        auc_o = area(np.linspace(0, 1, steps + 1), o)
        auc_q = quantus_auc(q)
        out[m] = {"max_abs_curve_diff": float(np.abs(o[:, 1:] - q).max()),
                  "max_rel_curve_diff": float(np.abs(o[:, 1:] - q).max() / np.abs(q).max()),
                  "onnxsal_auc": auc_o.tolist(), "quantus_auc": auc_q.tolist(),
                  "max_abs_auc_diff_quantus_way": float(np.abs(quantus_auc(o[:, 1:]) - auc_q).max())}
        ours_auc.append(auc_o)
        theirs_auc.append(auc_q)
    a, b = np.concatenate(ours_auc), np.concatenate(theirs_auc)
    out["all"] = {"max_abs_curve_diff": max(v["max_abs_curve_diff"] for v in out.values()),
                  "max_rel_curve_diff": max(v["max_rel_curve_diff"] for v in out.values()),
                  "auc_pearson": float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else None}
    return out


def bench(args) -> dict:
    import torch

    import onnxsal
    from onnxsal.evaluate.curves import area

    torch.manual_seed(0)
    model, proto = torchvision_model(args.model, args.size)
    x = photos(args.images, args.size)
    n_pixels = args.size * args.size
    if n_pixels % args.steps:
        raise SystemExit(f"--steps {args.steps} must divide the {n_pixels} pixels of a {args.size}x{args.size} image.")
    fractions = np.linspace(0, 1, args.steps + 1)
    ex = onnxsal.Explainer(proto, providers="cpu")
    with torch.no_grad():
        target = model(torch.from_numpy(x)).argmax(1).numpy()
    ex.predict(x)  # the forward session exists before anything is timed, as torch's model does
    t0 = time.perf_counter()
    maps = {m: pixel_ranks(a, x) for m, a in attributions(ex, x, target, args.methods, args.ig_steps).items()}
    print(f"{args.model}: {len(x)} images, maps of {len(maps)} methods in {time.perf_counter() - t0:.1f} s; "
          f"{args.steps} steps of {n_pixels // args.steps} pixels", flush=True)
    sides = {"onnxsal": onnxsal_side(ex, x, maps, target, args.steps)}
    if args.reference == "quantus":
        sides["quantus"] = quantus_side(model, x, maps, target, args.steps)
    if args.floor:
        sides |= floor_sides(ex, model, x, args.steps)
    times, curves = interleaved(sides, args.methods, args.repeats)
    out = {"model": args.model, "size": args.size, "images": [PHOTOS[i % len(PHOTOS)] for i in range(len(x))],
           "methods": list(args.methods), "steps": args.steps, "pixels_per_step": n_pixels // args.steps,
           "forward_passes_per_side": len(x) * len(args.methods) * args.steps, "repeats": args.repeats,
           "target": target.tolist(), "onnxsal": summary(times["onnxsal"]),
           "onnxsal_auc": {m: area(fractions, curves["onnxsal"][m]).tolist() for m in args.methods}}
    if "quantus" in sides:
        out["quantus"] = summary(times["quantus"])
        out["ratio"] = {m: out["onnxsal"][m]["median_s"] / out["quantus"][m]["median_s"] for m in out["onnxsal"]}
        out["agreement"] = agreement(curves["onnxsal"], curves["quantus"])
    for side in ("ort_floor", "torch_floor"):
        if side in sides:
            out[side] = summary(times[side])
    return out


def table(r: dict) -> str:
    """The markdown table of one run: median seconds per method and in total, the ratio, the agreement."""
    quantus = "quantus" in r
    lines = [f"{r['model']} at {r['size']}x{r['size']}, {len(r['images'])} images, deletion curves of "
             f"{r['steps']} steps ({r['pixels_per_step']} pixels each, baseline 0, softmax probability): "
             f"{r['forward_passes_per_side']} forward passes per side; medians of {r['repeats']} repetitions, "
             "the two sides alternating (the CPU is shared with other work).", "",
             "| method | onnxsal (median) | Quantus PixelFlipping (median) | ratio | max abs curve diff | mean AUC (onnxsal) |",
             "|---|---|---|---|---|---|"]
    for m in list(r["methods"]) + ["total"]:
        ours = f"{r['onnxsal'][m]['median_s']:.2f} s"
        auc = f"{np.mean(r['onnxsal_auc'][m]):.4f}" if m in r["onnxsal_auc"] else ""
        if quantus:
            diff = r["agreement"]["all" if m == "total" else m]["max_abs_curve_diff"]
            lines.append(f"| {m} | {ours} | {r['quantus'][m]['median_s']:.2f} s | {r['ratio'][m]:.2f} | {diff:.1e} | {auc} |")
        else:
            lines.append(f"| {m} | {ours} | not run (--reference none) | | | {auc} |")
    if "ort_floor" in r:
        ort, tor = r["ort_floor"]["total"]["median_s"], r["torch_floor"]["total"]["median_s"]
        lines += ["", f"The forward passes alone, for all methods (`--floor`): onnxruntime {ort:.2f} s, torch {tor:.2f} s "
                      f"(ratio {ort / tor:.2f}); onnxsal spends {r['onnxsal']['total']['median_s'] / ort:.2f}x its floor"
                      + (f", Quantus {r['quantus']['total']['median_s'] / tor:.2f}x its own." if quantus else ".")]
    if quantus and r["agreement"]["all"]["auc_pearson"] is not None:
        lines += ["", f"Pearson correlation of the per-image AUCs (onnxsal's over the fraction replaced, Quantus' "
                      f"np.trapz over its points): {r['agreement']['all']['auc_pearson']:.6f}."]
    return "\n".join(lines)


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet50", help="a torchvision classifier (random weights, seeded)")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--steps", type=int, default=224, help="steps per curve; must divide size x size")
    p.add_argument("--ig-steps", type=int, default=20, help="Integrated Gradients steps (the maps are not timed)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--reference", choices=["quantus", "none"], default="quantus",
                   help="'none' runs onnxsal's side only (no Quantus needed)")
    p.add_argument("--floor", action="store_true",
                   help="also time the bare forward passes on each runtime (onnxruntime, torch), nothing else")
    p.add_argument("--out", default=str(RESULTS), help="folder for evaluate.json and evaluate.md")
    args = p.parse_args(argv)
    import torch  # torch first; Quantus is kept off TensorFlow, see import_quantus

    result = bench(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = machine("cpu") | {"torch_threads": torch.get_num_threads(), "quantus": _version("quantus")}
    (out / "evaluate.json").write_text(json.dumps({"machine": info, "settings": vars(args) | {"out": None},
                                                   "result": result}, indent=1))
    (out / "evaluate.md").write_text(table(result) + "\n")
    print(table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
