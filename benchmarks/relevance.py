"""LRP and DeepLIFT against the reference libraries, on the same CPU.

    python -m benchmarks.relevance                     # resnet50, batch 8, 224x224
    python -m benchmarks.relevance --models resnet50 vgg16 --batch 8 --repeats 5
    python -m benchmarks.relevance --models resnet18 --batch 2 --size 32 --repeats 1 --out /tmp/r.json  # tiny

onnxsal's LRP (EpsilonPlusFlat) against Zennit's (ResNetCanonizer / VGGCanonizer), and onnxsal's
DeepLift against Captum's (zero baseline), per model at one batch size: the first call (graph build
and session creation) and the median of `--repeats` calls after it, the ratio of medians
(onnxsal / reference; the goal is <= 0.5), and the agreement of the maps (max |ours − theirs| /
max |theirs|, and ||ours − theirs|| / ||theirs||). Zennit's context (hooks, canonizers) is entered
once, on the first call, as onnxsal builds its graph once. The two sides of a line are timed interleaved: both first calls, then rounds that
alternate which side goes first (A B, B A, ...), so that load from other processes on shared cores
falls on both alike. Written to benchmarks/results/relevance.{json,md} (or `--out`).

BatchNormalization eps is set to 0: Zennit's canonizer leaves every merged BN computing
x / sqrt(1 + eps) instead of the identity, which scales its forward pass by (1 + eps)^(-1/2) per BN
(1e-4 relative on resnet50), so agreement is measured where that quirk vanishes.

Captum's DeepLift runs on a copy of the model with the same weights and the same function, rebuilt
where its module hooks would refuse or go wrong (tests/test_deeplift.py shows each on resnet18):
- torchvision's ResNet blocks call one `self.relu` two (BasicBlock) or three (Bottleneck) times,
  which Captum refuses; the copy's blocks call one nn.ReLU per use;
- a ReLU module whose output goes straight into a MaxPool module (ResNet's stem, VGG's features)
  shares that tensor with it, and the tensor's hook reads the ReLU's output gradient before the
  MaxPool's rule rewrites it; the copy puts a clone between them.
The timed Captum is its DeepLift as shipped on that copy. Its maxpool rule unpools with
max_unpool2d, which keeps one of the contributions of overlapping windows (ResNet's 3x3 stride-2
stem pool) instead of adding them, so the maps are also compared with Captum run once with its
maxpool rule's unpooling done by autograd (which adds them), and summation-to-delta
(Σ attribution = F(x) − F(0) for the target) is reported for each.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
import types
import warnings
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np

from benchmarks.run import machine, peak_rss_mb, reset_peak_rss

RESULTS = Path(__file__).resolve().parent / "results"
TIMING = ("interleaved: the first call of each side, then `repeats` rounds alternating which side goes first "
          "(onnxsal, reference; reference, onnxsal; ...); median of the rounds; peak RSS the largest over a side's calls, "
          "reset before each call")


# -- the model ------------------------------------------------------------------------------------------
def torchvision_model(name: str, size: int):
    """torchvision `name` (random weights, seeded) with randomised BN statistics and BN eps 0, and its ONNX export."""
    import torch
    import torchvision

    from converters.torch_export import export_torch

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.ReLU):  # Captum's hooks refuse in-place ReLUs
            m.inplace = False
        if isinstance(m, torch.nn.BatchNorm2d):  # non-trivial statistics, as a trained model has
            g = torch.Generator().manual_seed(1)  # the same draws for each BN (the model measured before)
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.eps = 0.0  # Zennit's canonizer leaves each merged BN as x / sqrt(1 + eps), not the identity
    return model, export_torch(model, torch.randn(1, 3, size, size))


def _clone_module():
    import torch

    class Clone(torch.nn.Module):
        """A fresh tensor between two modules Captum hooks, so that each hook sees its own gradient."""

        def forward(self, x):
            return x.clone()

    return Clone()


def _bottleneck_forward(self, x):
    """torchvision's Bottleneck.forward with one ReLU module per call (the same function)."""
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu_mid(self.bn2(self.conv2(out)))
    return self.relu_out(self.bn3(self.conv3(out)) + identity)


def _basic_block_forward(self, x):
    """torchvision's BasicBlock.forward with one ReLU module per call (the same function)."""
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    return self.relu_out(self.bn2(self.conv2(out)) + identity)


def captum_ready(model):
    """A copy of `model` (same weights, same function) that Captum's DeepLift hooks handle: one nn.ReLU
    per call in ResNet blocks, and a clone between a ReLU module and the MaxPool module it feeds."""
    import torch
    from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

    nn = torch.nn
    ready = copy.deepcopy(model)
    for m in list(ready.modules()):
        if isinstance(m, Bottleneck):
            m.relu, m.relu_mid, m.relu_out = nn.ReLU(), nn.ReLU(), nn.ReLU()
            m.forward = types.MethodType(_bottleneck_forward, m)
        elif isinstance(m, BasicBlock):
            m.relu, m.relu_out = nn.ReLU(), nn.ReLU()
            m.forward = types.MethodType(_basic_block_forward, m)
        elif isinstance(m, nn.Sequential):
            for i in range(len(m) - 1):
                if isinstance(m[i], nn.ReLU) and isinstance(m[i + 1], nn.MaxPool2d):
                    m[i] = nn.Sequential(nn.ReLU(), _clone_module())
    if isinstance(ready, ResNet):  # forward: conv1 -> bn1 -> relu -> maxpool
        ready.relu = nn.Sequential(nn.ReLU(), _clone_module())
    return ready.eval()


def check_same_function(model, ready, x) -> float:
    """max |ready(x) − model(x)|, which must be 0: the copy computes what the model does."""
    import torch

    with torch.no_grad():
        diff = float((ready(x) - model(x)).abs().max())
    assert diff == 0.0, f"the Captum-ready copy differs from the model by {diff}"
    return diff


# -- Captum's maxpool rule with overlapping windows added --------------------------------------------------
def maxpool_routed(module, inputs, outputs, grad_input, grad_output, eps=1e-10):
    """Captum's maxpool rule (captum.attr._core.deep_lift.maxpool), its gradient-times-Δy routed back to
    the inputs by autograd, so that an input that is the maximum of two overlapping windows gets both
    contributions (max_unpool2d writes one of them)."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        x, x_ref = inputs.chunk(2)
        y, y_ref = outputs.chunk(2)
        delta_in = torch.cat(2 * [x - x_ref])
        top = torch.max(y, y_ref)
        delta_out = torch.cat([top - y_ref, y - top])
    with torch.enable_grad():
        xin = module.input.detach().requires_grad_(True)
        pooled = F.max_pool2d(xin, module.kernel_size, module.stride, module.padding, module.dilation, module.ceil_mode)
        (routed,) = torch.autograd.grad(pooled, xin, grad_output * delta_out)
    u = torch.cat(2 * [sum(routed.chunk(2))])
    return torch.where(abs(delta_in) < eps, grad_input, u / delta_in)


@contextmanager
def captum_maxpool_rule(rule):
    """Captum's DeepLift with `rule` for nn.MaxPool2d while the block runs."""
    import captum.attr._core.deep_lift as deep_lift
    import torch

    stock = deep_lift.SUPPORTED_NON_LINEAR[torch.nn.MaxPool2d]
    deep_lift.SUPPORTED_NON_LINEAR[torch.nn.MaxPool2d] = rule
    try:
        yield
    finally:
        deep_lift.SUPPORTED_NON_LINEAR[torch.nn.MaxPool2d] = stock


# -- the reference libraries ----------------------------------------------------------------------------
def _zennit(model, name: str, x, target):
    """Zennit's EpsilonPlusFlat as a call, and what undoes it. Its context (hooks, canonizers) is entered on
    the first call and kept for the repeats, as onnxsal keeps its graph: only the attribution is timed."""
    import torch
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonPlusFlat
    from zennit.torchvision import ResNetCanonizer, VGGCanonizer

    canon = [ResNetCanonizer()] if "resnet" in name else [VGGCanonizer()]
    xt = torch.from_numpy(x)
    one_hot = torch.eye(1000)[torch.from_numpy(target)]
    context, held = ExitStack(), []

    def run():
        if not held:
            held.append(context.enter_context(Gradient(model=model, composite=EpsilonPlusFlat(canonizers=canon))))
        _, rel = held[0](xt, lambda out: out * one_hot)
        return rel.numpy()

    return run, context.close


def _captum_deeplift(model, x, target):
    import torch
    from captum.attr import DeepLift

    xt = torch.from_numpy(x)
    dl = DeepLift(model)

    def run():
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Setting forward, backward hooks")
            warnings.filterwarnings("ignore", message="Input Tensor 0 did not already require gradients")
            return dl.attribute(xt, baselines=torch.zeros_like(xt), target=torch.from_numpy(target).tolist()).detach().numpy()

    return run


# -- measuring -------------------------------------------------------------------------------------------
def _timed(fn, record: dict) -> None:
    reset_peak_rss()
    t0 = time.perf_counter()
    fn()
    record["times"].append(time.perf_counter() - t0)
    record["peak_rss_mb"] = max(record["peak_rss_mb"], peak_rss_mb())


def interleaved(sides: dict, repeats: int) -> dict:
    """Time the sides {name: fn} turn about: each one's first call, then `repeats` rounds whose order
    alternates (A B, B A, ...). A side whose first call raises is reported in "refused" and left out."""
    records = {n: {"times": [], "peak_rss_mb": 0.0} for n in sides}
    refused = {}
    for n, fn in sides.items():
        try:
            _timed(fn, records[n])
        except Exception as exc:  # a reference library that refuses the model
            refused[n] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            del records[n]
    names = list(records)
    for r in range(repeats):
        for n in names if r % 2 == 0 else names[::-1]:
            _timed(sides[n], records[n])
    out = {n: {"first_s": rec["times"][0], "median_s": statistics.median(rec["times"][1:] or rec["times"]),
               "times_s": rec["times"][1:], "peak_rss_mb": rec["peak_rss_mb"]} for n, rec in records.items()}
    if refused:
        out["refused"] = refused
    return out


def max_rel_diff(ours, ref) -> float:
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def rel_l2_diff(ours, ref) -> float:
    """||ours − theirs|| / ||theirs||: the agreement of the whole map, which a few outlying pixels do not set."""
    return float(np.linalg.norm((ours - ref).ravel().astype(np.float64)) / np.linalg.norm(ref.ravel().astype(np.float64)))


def summation_gap(attr, model, x, target) -> float:
    """max over samples of |Σ attribution − (F(x) − F(0))[target]| / max |F(x) − F(0)|[target]."""
    import torch

    with torch.no_grad():
        xt = torch.from_numpy(x)
        change = (model(xt) - model(torch.zeros_like(xt))).numpy()[np.arange(len(x)), target].astype(np.float64)
    gap = attr.reshape(len(x), -1).sum(1, dtype=np.float64) - change
    return float(np.abs(gap).max() / np.abs(change).max())


# -- one model -------------------------------------------------------------------------------------------
def _line(key: str, lib: str, ours_fn, ref_fn, repeats: int) -> tuple[dict, dict]:
    """Time one line interleaved; return its record and the two sides' last maps."""
    maps = {}
    timed = interleaved({"onnxsal": lambda: maps.__setitem__("onnxsal", ours_fn()),
                         lib: lambda: maps.__setitem__(lib, ref_fn())}, repeats)
    rec = {"onnxsal": timed["onnxsal"], lib: timed.get(lib)}
    if "refused" in timed:
        rec["refused"] = timed["refused"][lib]
    else:
        rec["ratio"] = timed["onnxsal"]["median_s"] / timed[lib]["median_s"]
        rec["max_rel_diff"] = max_rel_diff(maps["onnxsal"], maps[lib])
        rec["rel_l2_diff"] = rel_l2_diff(maps["onnxsal"], maps[lib])
    return rec, maps


def _report(name: str, batch: int, key: str, lib: str, rec: dict) -> None:
    o = rec["onnxsal"]
    head = f"{name} b{batch} {key}: onnxsal {o['median_s']:.2f}s (first {o['first_s']:.1f}s)"
    if "refused" in rec:
        print(f"{head}; {lib} refused: {rec['refused']}", flush=True)
        return
    t = rec[lib]
    print(f"{head}, {lib} {t['median_s']:.2f}s (first {t['first_s']:.1f}s), ratio {rec['ratio']:.2f}, "
          f"max rel diff {rec['max_rel_diff']:.1e}, rel L2 diff {rec['rel_l2_diff']:.1e}", flush=True)


def deeplift_line(ex, model, name: str, x, target, repeats: int) -> dict:
    """onnxsal's DeepLift against Captum's on its hook-ready copy of the model, and the agreement checks."""
    ready = captum_ready(model)
    import torch

    check_same_function(model, ready, torch.from_numpy(x[:1]))
    rec, maps = _line("deeplift", "captum", lambda: ex.attribute(x, target=target, method="deeplift"),
                      _captum_deeplift(ready, x, target), repeats)
    if "refused" in rec:
        return rec
    with captum_maxpool_rule(maxpool_routed):
        routed = _captum_deeplift(ready, x, target)()
    rec["max_rel_diff_vs_captum_routed_maxpool"] = max_rel_diff(maps["onnxsal"], routed)
    rec["captum_vs_captum_routed_maxpool"] = max_rel_diff(maps["captum"], routed)
    rec["summation_gap"] = {"onnxsal": summation_gap(maps["onnxsal"], model, x, target),
                            "captum": summation_gap(maps["captum"], model, x, target),
                            "captum_routed_maxpool": summation_gap(routed, model, x, target)}
    print(f"  deeplift vs Captum with its maxpool unpooling routed by autograd: max rel diff "
          f"{rec['max_rel_diff_vs_captum_routed_maxpool']:.1e}; summation-to-delta gap "
          + ", ".join(f"{k} {v:.1e}" for k, v in rec["summation_gap"].items()), flush=True)
    return rec


def bench(name: str, batch: int, repeats: int, size: int = 224) -> dict:
    import torch

    import onnxsal

    model, proto = torchvision_model(name, size)
    x = np.random.default_rng(0).normal(size=(batch, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        target = model(torch.from_numpy(x)).argmax(1).numpy()
    out = {"model": name, "batch": batch, "size": size, "load_average_before": list(os.getloadavg())}
    ex = onnxsal.Explainer(proto, providers="cpu")
    key = "lrp_epsilon_plus_flat"
    zennit, release = _zennit(model, name, x, target)
    try:
        out[key], _ = _line(key, "zennit", lambda: ex.attribute(x, target=target, method="lrp", composite="EpsilonPlusFlat"),
                            zennit, repeats)
    finally:
        release()  # the model back as it was (Zennit's canonizers rewrite it in place)
    _report(name, batch, key, "zennit", out[key])
    if "deeplift" in onnxsal.methods.available():
        out["deeplift"] = deeplift_line(ex, model, name, x, target, repeats)
        _report(name, batch, "deeplift", "captum", out["deeplift"])
    out["load_average_after"] = list(os.getloadavg())
    return out


# -- output ----------------------------------------------------------------------------------------------
def table(results: list[dict]) -> str:
    lines = ["| model | batch | method | onnxsal (median) | first call | reference (median) | ref. first call | ratio | max rel diff | rel L2 diff |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for key, lib in (("lrp_epsilon_plus_flat", "zennit"), ("deeplift", "captum")):
            if key not in r:
                continue
            v = r[key]
            o = v["onnxsal"]
            if "refused" in v:
                lines.append(f"| {r['model']} | {r['batch']} | {key} | {o['median_s']:.2f} s | {o['first_s']:.1f} s | "
                             f"refused: {v['refused'][:80]} | | | | |")
                continue
            t = v[lib]
            lines.append(f"| {r['model']} | {r['batch']} | {key} vs {lib} | {o['median_s']:.2f} s | {o['first_s']:.1f} s | "
                         f"{t['median_s']:.2f} s | {t['first_s']:.1f} s | {v['ratio']:.2f} | {v['max_rel_diff']:.1e} | {v['rel_l2_diff']:.1e} |")
    notes = [f"\nTiming: {TIMING}."]
    for r in results:
        v = r.get("deeplift", {})
        if "summation_gap" in v:
            gap = v["summation_gap"]
            notes.append(f"{r['model']} deeplift: vs Captum with its maxpool unpooling routed by autograd (overlapping "
                         f"windows added) {v['max_rel_diff_vs_captum_routed_maxpool']:.1e}; stock vs routed Captum "
                         f"{v['captum_vs_captum_routed_maxpool']:.1e}; summation-to-delta gap onnxsal {gap['onnxsal']:.1e}, "
                         f"Captum {gap['captum']:.1e}, routed Captum {gap['captum_routed_maxpool']:.1e}.")
        notes.append(f"{r['model']}: load average (1, 5, 15 min) before {_load(r['load_average_before'])}, "
                     f"after {_load(r['load_average_after'])}.")
    return "\n".join(lines + notes)


def _load(values) -> str:
    return " ".join(f"{v:.2f}" for v in values)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["resnet50"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--out", type=Path, default=RESULTS / "relevance.json", help="the JSON; the table goes beside it as .md")
    a = p.parse_args(argv)
    results = [bench(m, a.batch, a.repeats, a.size) for m in a.models]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {"batch": a.batch, "repeats": a.repeats, "size": a.size, "timing": TIMING}
    a.out.write_text(json.dumps({"machine": machine("cpu"), "settings": settings, "results": results}, indent=2))
    a.out.with_suffix(".md").write_text(table(results) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
