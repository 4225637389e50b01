"""LRP and DeepLIFT against the reference libraries, on the same CPU.

    python -m benchmarks.relevance                     # resnet50, batch 8
    python -m benchmarks.relevance --models resnet50 vgg16 --batch 8 --repeats 3

onnxsal's LRP (EpsilonPlusFlat) against Zennit's (ResNetCanonizer / VGGCanonizer), and onnxsal's
DeepLift against Captum's (zero baseline), per model at one batch size: first call (graph build
and session creation) and the median of `--repeats` calls after it, the ratio of medians
(onnxsal / reference; the goal is <= 0.5), and the agreement of the maps. Written to
benchmarks/results/relevance.{json,md}. BatchNormalization eps is set to 0: Zennit's canonizer
leaves every merged BN computing x / sqrt(1 + eps) instead of the identity, which scales its
forward pass by (1 + eps)^(-1/2) per BN (1e-4 relative on resnet50), so agreement is measured where
that quirk vanishes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from benchmarks.run import machine, measure, torchvision_model

RESULTS = Path(__file__).resolve().parent / "results"


def _zennit(model, name: str, x, target):
    import torch
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonPlusFlat
    from zennit.torchvision import ResNetCanonizer, VGGCanonizer

    canon = [ResNetCanonizer()] if "resnet" in name else [VGGCanonizer()]
    xt = torch.from_numpy(x)
    one_hot = torch.eye(1000)[torch.from_numpy(target)]

    def run():
        with Gradient(model=model, composite=EpsilonPlusFlat(canonizers=canon)) as attributor:
            _, rel = attributor(xt, lambda out: out * one_hot)
        return rel.numpy()

    return run


def _captum_deeplift(model, x, target):
    import torch
    from captum.attr import DeepLift

    xt = torch.from_numpy(x)
    dl = DeepLift(model)
    return lambda: dl.attribute(xt, baselines=torch.zeros_like(xt), target=torch.from_numpy(target).tolist()).detach().numpy()


def bench(name: str, batch: int, repeats: int, size: int = 224) -> dict:
    import onnxsal
    import torch

    model, proto = torchvision_model(name, size)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # non-trivial statistics, as a trained model has
            g = torch.Generator().manual_seed(1)
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.eps = 0.0  # Zennit's canonizer leaves each merged BN as x / sqrt(1 + eps), not the identity
    from converters.torch_export import export_torch

    proto = export_torch(model, torch.randn(1, 3, size, size))
    x = np.random.default_rng(0).normal(size=(batch, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        target = model(torch.from_numpy(x)).argmax(1).numpy()
    out = {"model": name, "batch": batch, "size": size}
    ex = onnxsal.Explainer(proto, providers="cpu")
    ours = {}
    rows = [("lrp_epsilon_plus_flat", lambda: ex.attribute(x, target=target, method="lrp", composite="EpsilonPlusFlat"),
             _zennit(model, name, x, target), "zennit")]
    if "deeplift" in onnxsal.methods.available():
        rows.append(("deeplift", lambda: ex.attribute(x, target=target, method="deeplift"),
                     _captum_deeplift(model, x, target), "captum"))
    for key, mine, theirs, lib in rows:
        ours_t = measure(lambda: ours.__setitem__(key, mine()), repeats)
        ref = {}
        try:
            ref_t = measure(lambda: ref.__setitem__(key, theirs()), repeats)
        except Exception as exc:  # Captum's DeepLift refuses torchvision's ResNets: one ReLU module called 3x per block
            out[key] = {"onnxsal": ours_t, lib: None, "refused": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
            print(f"{name} b{batch} {key}: onnxsal {ours_t['median_s']:.2f}s; {lib} refused: {out[key]['refused']}", flush=True)
            continue
        err = float(np.abs(ours[key] - ref[key]).max() / np.abs(ref[key]).max())
        out[key] = {"onnxsal": ours_t, lib: ref_t, "ratio": ours_t["median_s"] / ref_t["median_s"], "max_rel_diff": err}
        print(f"{name} b{batch} {key}: onnxsal {ours_t['median_s']:.2f}s (first {ours_t['first_s']:.1f}s), "
              f"{lib} {ref_t['median_s']:.2f}s, ratio {out[key]['ratio']:.2f}, max rel diff {err:.1e}", flush=True)
    return out


def table(results: list[dict]) -> str:
    lines = ["| model | batch | method | onnxsal (median) | first call | reference (median) | ratio | max rel diff |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        for key in ("lrp_epsilon_plus_flat", "deeplift"):
            if key in r:
                v = r[key]
                if "refused" in v:
                    lines.append(f"| {r['model']} | {r['batch']} | {key} | {v['onnxsal']['median_s']:.2f} s | "
                                 f"{v['onnxsal']['first_s']:.1f} s | refused: {v['refused'][:80]} | | |")
                    continue
                lib = next(k for k in v if k not in ("onnxsal", "ratio", "max_rel_diff"))
                lines.append(f"| {r['model']} | {r['batch']} | {key} vs {lib} | {v['onnxsal']['median_s']:.2f} s | "
                             f"{v['onnxsal']['first_s']:.1f} s | {v[lib]['median_s']:.2f} s | {v['ratio']:.2f} | {v['max_rel_diff']:.1e} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["resnet50"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--size", type=int, default=224)
    a = p.parse_args(argv)
    results = [bench(m, a.batch, a.repeats, a.size) for m in a.models]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "relevance.json").write_text(json.dumps({"machine": machine("cpu"), "results": results}, indent=2))
    (RESULTS / "relevance.md").write_text(table(results) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
