"""Grad-CAM on token maps and attention rollout on a vision transformer, with onnxsal.

The model is timm's vit_tiny_patch16_224 (12 blocks, 3 heads, 14x14 patch grid, one class token)
with RANDOM weights: no pretrained vision transformer installs offline here, and nothing is
downloaded at run time. Its qkv weights are scaled by 8 so that attention is not almost uniform (as
timm's std-0.02 initialisation leaves it). The figure therefore shows the mechanics (which layer,
the patch grid, the class token's row of the rolled-out attention, the upsampling), not what a
trained ViT looks at on the photo; with real weights exported the same way, the same calls apply.

One row on scikit-image's `chelsea`, the top class explained: input | Grad-CAM on the input of the
last attention block (`blocks[-1].norm1`, onnxsal's default on a transformer) | Grad-CAM on
`layer="blocks.5/norm1"` | attention rollout (mean over heads) | attention rollout (max over heads,
discard_ratio 0.9, as the widely used vit-explain script). Each map is overlaid on the photo,
min-max normalised. With these random weights the default layer's map is zero on every patch
(Σ_k α_k A_k < 0 everywhere before the ReLU), which the caption says; the middle block's is not.

    python examples/vit_gradcam_rollout.py --out out/ [--small] [--docs]

Writes to --out: vit_gradcam_rollout.png and .json (the layer, grid, timings); --docs also writes
docs/figures/vit_gradcam_rollout.png. --small uses a 64x64 input (a 4x4 grid).
"""

from __future__ import annotations

import io
import time

import numpy as np

import _common as common
import onnxsal
from onnxsal import visualize as vis
from onnxsal.vit import attention_blocks

DOCS_FIGURE = common.ROOT / "docs" / "figures" / "vit_gradcam_rollout.png"
MEAN = np.array([0.5, 0.5, 0.5], np.float32)  # timm's ViT normalisation
STD = np.array([0.5, 0.5, 0.5], np.float32)


def random_vit_onnx(size: int):
    """timm's vit_tiny_patch16_224 at `size` with seeded random weights (qkv scaled by 8), as ONNX."""
    import onnx
    import timm
    import torch

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=size).eval()
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight.mul_(8)
    buf = io.BytesIO()
    torch.onnx.export(model, (torch.zeros(1, 3, size, size),), buf, input_names=["pixel_values"], output_names=["logits"],
                      dynamic_axes={"pixel_values": {0: "batch"}}, opset_version=17, dynamo=False)
    return onnx.load_from_string(buf.getvalue())


def main() -> int:
    args = common.parse_args(__doc__, lambda ap: ap.add_argument(
        "--docs", action="store_true", help=f"also write the figure to {DOCS_FIGURE.relative_to(common.ROOT)}"))
    timer = common.Timer()
    size = 64 if args.small else 224
    with timer("export"):
        proto = random_vit_onnx(size)
    ex = onnxsal.Explainer(proto, providers=args.providers)
    img = common.photo("chelsea", size)
    x = ((img.astype(np.float32) / 255.0 - MEAN) / STD).transpose(2, 0, 1)[None].copy()
    k = int(ex.predict(x)[0].argmax())

    runs = {"gradcam": ("gradcam", {}), "gradcam_block5": ("gradcam", {"layer": "blocks.5/norm1"}),
            "rollout_mean": ("attention_rollout", {"head_fusion": "mean"}),
            "rollout_max_discard": ("attention_rollout", {"head_fusion": "max", "discard_ratio": 0.9})}
    maps, raw_max, ms = {}, {}, {}
    for name, (method, options) in runs.items():
        with timer(name):  # the first call builds the graph and its session
            raw_max[name] = float(ex.attribute(x, target=k, method=method, normalize=False, **options).max())
        t0 = time.perf_counter()
        maps[name] = ex.attribute(x, target=k, method=method, **options)[0, 0]
        ms[name] = round((time.perf_counter() - t0) * 1000, 1)
    graph, _ = ex.method_graph("gradcam", "target")
    layer = graph.extras["layer"]
    grid = size // 16

    titles = ["input", "Grad-CAM, default layer\n(blocks[-1].norm1)", "Grad-CAM\nlayer='blocks.5/norm1'",
              "attention rollout\nmean over heads", "attention rollout\nmax, discard 0.9"]
    row = [img] + [vis.overlay(img, maps[name], alpha=0.5) for name in runs]
    captions = [f"{size}x{size}, {grid}x{grid} patches"] + [
        "all zero (random weights)" if raw_max[name] == 0 else "" for name in runs]
    fig = vis.grid([row], titles=titles, captions=[captions], cell=200, font_size=13,
                   title="timm vit_tiny_patch16_224, RANDOM weights (none install offline): mechanics, not an explanation")
    written = [common.saved(vis.save_png(fig, args.out / "vit_gradcam_rollout.png"))]
    if args.docs:
        DOCS_FIGURE.parent.mkdir(parents=True, exist_ok=True)
        written.append(common.saved(vis.save_png(fig, DOCS_FIGURE)))
    common.write_json({
        "example": "vit_gradcam_rollout", "small": args.small, "image": "chelsea", "size": size, "weights": "random (seed 0)",
        "class": k, "gradcam_layer": layer, "grid": [grid, grid], "attention_blocks": len(attention_blocks(ex.view)),
        "map_shapes": {name: list(m.shape) for name, m in maps.items()},
        "raw_max": raw_max, "ms_per_run": ms,
        "providers": ex.session_providers, "timings_s": timer.steps, "figures": [p.name for p in written],
    }, args.out / "vit_gradcam_rollout.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
