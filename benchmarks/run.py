"""The performance harness: onnxsal against ONNX Runtime's forward pass and against Captum.

    python -m benchmarks.run                      # resnet50, mobilenet_v2, densenet121, keras MobileNetV2; batch 1, 8, 32
    python -m benchmarks.run --models mobilenet_v2 --batches 8 --repeats 5
    python -m benchmarks.run --quick              # a tiny setting (what the test suite runs)
    python -m benchmarks.run --floor --methods guided_backprop --batches 8   # with the unmasked floor

For each model and batch, in one process: the ORT forward time, onnxsal's time for gradient,
guided_backprop, smoothgrad (n samples) and integrated_gradients (n steps), Captum's time for the
same methods, and the peak RSS of each (reset before each measurement through
/proc/self/clear_refs). Times are medians over `--repeats` runs after one warm-up run; the
first call (graph building and session creation) is reported separately. Ratios are printed as
a table and everything is written as JSON. `--floor` adds the backward graph with every
rectifier mask left out, which tells how much of a method's time is masks and how much is the
convolutions' own data gradients. On a GPU (onnxruntime-gpu), `--device cuda` runs
onnxsal on the CUDA provider and Captum on torch's CUDA device.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

TORCHVISION = ("resnet50", "mobilenet_v2", "densenet121")
KERAS = ("keras_mobilenet_v2",)
METHODS = ("gradient", "guided_backprop", "smoothgrad", "integrated_gradients")
FLOOR = "unmasked_floor"  # --floor: the backward graph without rectifier masks (a diagnostic)


def reset_peak_rss() -> None:
    """Start a new peak-RSS window for this process (Linux: writing 5 to clear_refs resets VmHWM)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what platform says."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), platform.processor())
    except OSError:
        return platform.processor()


def machine(device: str) -> dict:
    """What the numbers were measured on: CPU model and count, library versions, the device."""
    import onnxruntime
    import torch

    return {"platform": platform.platform(), "processor": cpu_name(), "cpus": os.cpu_count(), "device": device,
            "onnxruntime": onnxruntime.__version__, "torch": torch.__version__}


def measure(fn, repeats: int, sync=None) -> dict:
    """First call, then a warm-up-free median over `repeats` calls, and the peak RSS of it all."""
    reset_peak_rss()
    t0 = time.perf_counter()
    fn()
    if sync:
        sync()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t0)
    return {"first_s": first, "median_s": statistics.median(times), "times_s": times, "peak_rss_mb": peak_rss_mb()}


def torchvision_model(name: str, size: int):
    import torch
    import torchvision

    from converters.torch_export import export_torch

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    for m in model.modules():  # Captum's hooks refuse in-place ReLUs
        if isinstance(m, torch.nn.ReLU):
            m.inplace = False
    proto = export_torch(model, torch.randn(1, 3, size, size))
    return model, proto


def keras_model(size: int, cache: Path):
    """Keras MobileNetV2 (weights=None) via tf2onnx, built in its own process (TF and torch do not
    share a process well)."""
    import onnx

    path = cache / f"keras_mobilenet_v2_{size}.onnx"
    if not path.exists():
        code = (
            "import sys, keras; from converters.keras_export import export_keras; "
            f"m = keras.applications.MobileNetV2(weights=None, input_shape=({size}, {size}, 3)); "
            f"export_keras(m, {str(path)!r})"
        )
        subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
    return onnx.load(str(path))


def _unmasked(ctx, g):
    """Every rectifier passes the gradient through untouched: not an attribution, only a cost floor."""
    return [g] + [None] * (len(ctx.node.input) - 1)


def bench_unmasked_floor(proto, x: np.ndarray, repeats: int, providers: str) -> dict:
    """onnxsal's backward graph with every Relu/Clip mask left out: the cost of the forward pass plus
    the convolutions' data gradients as ONNX Runtime's kernels run them, a floor that no rule set
    (guided, gradient, deconvnet) can go under on this runtime."""
    from onnxsal.autodiff import SeedSpec, differentiate, rule_set
    from onnxsal.runtime import create_session, resolve_providers

    rules = rule_set("gradient").override("unmasked_floor", Relu=_unmasked, Clip=_unmasked)
    graph = differentiate(proto, rules, seed=SeedSpec("target"))
    session = create_session(graph.model, resolve_providers(providers))
    (wrt, grad), = graph.grads.items()
    feeds = {wrt: x, graph.target_input: np.zeros(len(x), dtype=np.int64)}
    return measure(lambda: session.run([grad], feeds), repeats)


def bench_onnxsal(proto, x: np.ndarray, repeats: int, providers: str, n_samples: int, n_steps: int,
                  methods=METHODS, floor: bool = False) -> dict:
    """Each method on a fresh Explainer, the previous one freed: a method's peak RSS then holds its own
    session (weights, arena) and not those of the methods measured before it."""
    import gc

    import onnxsal

    def fresh():
        gc.collect()
        return onnxsal.Explainer(proto, providers=providers)

    ex = fresh()
    target = np.zeros(len(x), dtype=np.int64)
    out = {"providers": ex.session_providers}
    t0 = time.perf_counter()
    ex.method_graph("gradient", "target")
    out["build_gradient_graph_s"] = time.perf_counter() - t0
    del ex
    ex = fresh()
    out["forward"] = measure(lambda: ex.predict(x), repeats)
    options = {
        "gradient": {}, "guided_backprop": {},
        "smoothgrad": {"n_samples": n_samples, "progress": False},
        "integrated_gradients": {"n_steps": n_steps, "progress": False},
    }
    for name in (m for m in METHODS if m in methods):
        del ex
        ex = fresh()
        out[name] = measure(lambda: ex.attribute(x, target=target, method=name, **options[name]),
                            repeats if name in ("gradient", "guided_backprop") else max(1, repeats // 2))
    if floor:
        del ex
        gc.collect()
        out[FLOOR] = bench_unmasked_floor(proto, x, repeats, providers)
    return out


def bench_captum(model, x: np.ndarray, repeats: int, device: str, n_samples: int, n_steps: int,
                 methods=METHODS) -> dict:
    import torch
    from captum.attr import GuidedBackprop, IntegratedGradients, NoiseTunnel, Saliency

    model = model.to(device)
    xt = torch.from_numpy(x).to(device)
    target = torch.zeros(len(x), dtype=torch.long, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else None
    batch = len(x) * 8  # Captum's internal batch for the sampling methods
    runs = {
        "forward": lambda: model(xt),
        "gradient": lambda: Saliency(model).attribute(xt, target=target, abs=False),
        "guided_backprop": lambda: GuidedBackprop(model).attribute(xt, target=target),
        "smoothgrad": lambda: NoiseTunnel(Saliency(model)).attribute(xt, target=target, nt_type="smoothgrad", nt_samples=n_samples, stdevs=0.15, nt_samples_batch_size=8, abs=False),
        "integrated_gradients": lambda: IntegratedGradients(model).attribute(xt, target=target, n_steps=n_steps, internal_batch_size=batch),
    }
    out = {}
    for name, fn in runs.items():
        if name != "forward" and name not in methods:
            continue
        if name == "forward":
            with torch.no_grad():
                out[name] = measure(fn, repeats, sync)
        else:
            out[name] = measure(fn, repeats if name in ("gradient", "guided_backprop") else max(1, repeats // 2), sync)
    return out


def ratios(result: dict) -> dict:
    ours, theirs = result["onnxsal"], result.get("captum")
    fwd = ours["forward"]["median_s"]
    out = {}
    for m in (m for m in METHODS + (FLOOR,) if m in ours):
        r = {"onnxsal_ms": 1000 * ours[m]["median_s"], "vs_ort_forward": ours[m]["median_s"] / fwd, "onnxsal_rss_mb": ours[m]["peak_rss_mb"]}
        if theirs and m in theirs:
            r["captum_ms"] = 1000 * theirs[m]["median_s"]
            r["vs_captum"] = ours[m]["median_s"] / theirs[m]["median_s"]
            r["captum_rss_mb"] = theirs[m]["peak_rss_mb"]
            r["rss_vs_captum"] = ours[m]["peak_rss_mb"] / theirs[m]["peak_rss_mb"]
        out[m] = r
    return out


def table(results: list[dict]) -> str:
    head = f"{'model':<20}{'batch':>6}{'ORT fwd ms':>12}  {'method':<22}{'onnxsal ms':>11}{'x fwd':>7}{'Captum ms':>11}{'x Captum':>10}{'RSS MB':>9}{'x Captum RSS':>14}"
    lines = [head, "-" * len(head)]
    for res in results:
        fwd = 1000 * res["onnxsal"]["forward"]["median_s"]
        for i, (m, r) in enumerate(res["ratios"].items()):
            cap = f"{r['captum_ms']:>11.0f}{r['vs_captum']:>10.2f}" if "captum_ms" in r else f"{'-':>11}{'-':>10}"
            rss = f"{r['rss_vs_captum']:>14.2f}" if "rss_vs_captum" in r else f"{'-':>14}"
            first = f"{res['model']:<20}{res['batch']:>6}{fwd:>12.0f}" if i == 0 else " " * 38
            lines.append(f"{first}  {m:<22}{r['onnxsal_ms']:>11.0f}{r['vs_ort_forward']:>7.2f}{cap}{r['onnxsal_rss_mb']:>9.0f}{rss}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(TORCHVISION + KERAS))
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--samples", type=int, default=50, help="SmoothGrad samples and IG steps")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--no-captum", action="store_true")
    p.add_argument("--floor", action="store_true",
                   help="also time the backward graph with every rectifier mask left out (a cost floor, not an attribution)")
    p.add_argument("--quick", action="store_true", help="tiny setting: mobilenet_v2 at 32x32, batch 1, 1 repeat, 2 samples")
    p.add_argument("--out", default="benchmarks/results/latest.json")
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.batches, args.size, args.repeats, args.samples = ["mobilenet_v2"], [1], 32, 1, 2
    import torch  # noqa: F401  (before TensorFlow could be loaded by anything; see converters)

    rng = np.random.default_rng(0)
    cache = Path(args.out).parent / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    results = []
    for name in args.models:
        if name in KERAS:
            model, proto = None, keras_model(args.size, cache)
        elif name in TORCHVISION:
            model, proto = torchvision_model(name, args.size)
        else:
            p.error(f"unknown model {name!r}; choose from {TORCHVISION + KERAS}")
        for batch in args.batches:
            layout = (batch, args.size, args.size, 3) if name in KERAS else (batch, 3, args.size, args.size)
            x = rng.standard_normal(layout).astype(np.float32)
            res = {"model": name, "batch": batch, "size": args.size,
                   "onnxsal": bench_onnxsal(proto, x, args.repeats, args.device, args.samples, args.samples, args.methods,
                                             floor=args.floor)}
            if model is not None and not args.no_captum:
                res["captum"] = bench_captum(model, x, args.repeats, args.device, args.samples, args.samples,
                                             args.methods)
            res["ratios"] = ratios(res)
            results.append(res)
            print(table([res]), file=sys.stderr)
    report = {
        "machine": machine(args.device),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(table(results))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
