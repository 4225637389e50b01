"""Images per second of dataset attribution: the local folder explainer against Ray Data with 1 and 2 actors.

    python -m benchmarks.dataset                                   # mobilenet_v2 at 224x224, 64 photos
    python -m benchmarks.dataset --model mnist --images 6 --batch 3 --actors 1 --rounds 1   # tiny (the test)

The same JPEG files (crops and flips of scikit-image's photos, seeded) go through
- local: `explain_images` in this process (what `onnxsal explain` runs), and
- ray: `explain_dataset` on a local Ray cluster started here with one CPU per core, for each
  `--actors` count (each actor takes one CPU and builds its own ONNX Runtime session).
Both write the PNG overlays and .npy maps (Ray also the Parquet rows), and read the attribution
graph from one graph cache warmed beforehand, so graph building is not what is timed. A Ray run is
timed end to end (actors started and torn down inside the call), on a cluster that is up and has
run once (its first run, which starts the worker processes, is reported apart); the pool's own rate
(from its first batch's start to its last batch's end, actor start-up left out) is reported beside
it. Rounds interleave the engines (a busy machine slows all alike); medians are reported. Every
Ray run's maps must equal the local run's, else the benchmark fails. Written to
benchmarks/results/dataset.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "moon", "page", "cat", "immunohistochemistry")


def make_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """`n` distinct JPEGs: random crops (half to full size) of scikit-image's photos, some mirrored."""
    import skimage.data
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    sources = [getattr(skimage.data, name)() for name in PHOTOS if hasattr(skimage.data, name)]
    paths = []
    for i in range(n):
        img = sources[i % len(sources)]
        h, w = img.shape[:2]
        ch, cw = int(h * rng.uniform(0.5, 1)), int(w * rng.uniform(0.5, 1))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = img[y:y + ch, x:x + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        path = folder / f"img{i:05d}.jpg"
        Image.fromarray(np.ascontiguousarray(crop)).save(path, quality=90)
        paths.append(path)
    return paths


def model_file(work: Path, name: str, size: int) -> Path:
    """The bundled MNIST CNN, or a torchvision model (random weights) exported in its own process."""
    if name == "mnist":
        return ROOT / "onnxsal" / "data" / "mnist_cnn.onnx"
    path = work / f"{name}_{size}.onnx"
    if not path.exists():
        code = ("import onnx, sys; from benchmarks.run import torchvision_model; "
                f"onnx.save(torchvision_model({name!r}, {size})[1], sys.argv[1])")
        subprocess.run([sys.executable, "-c", code, str(path)], check=True, cwd=ROOT)
    return path


def machine() -> dict:
    import onnxruntime
    import pyarrow
    import ray

    from benchmarks.run import cpu_name

    load = round(os.getloadavg()[0], 1) if hasattr(os, "getloadavg") else None
    return {"platform": platform.platform(), "processor": cpu_name(), "cpus": os.cpu_count(), "onnxruntime": onnxruntime.__version__,
            "ray": ray.__version__, "pyarrow": pyarrow.__version__, "load_average_1min_at_start": load}


def _timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _same_maps(a: Path, b: Path, method: str) -> bool:
    files = sorted(a.glob(f"*.{method}.npy"))
    return bool(files) and all(np.array_equal(np.load(f), np.load(b / f.name)) for f in files)


def _timing_worker(log: str):
    """DatasetWorker that appends `start end rows` per batch to `log` (made in a function, so Ray ships
    the class by value): the pool's own rate, from its first batch's start to its last batch's end."""
    from onnxsal.dataset import DatasetWorker

    class Timed(DatasetWorker):
        def __call__(self, batch):
            start = time.time()
            out = super().__call__(batch)
            with open(log, "a") as f:
                f.write(f"{start} {time.time()} {len(out['source'])}\n")
            return out

    return Timed


def _pool_rate(log: Path) -> float:
    spans = [tuple(map(float, line.split())) for line in log.read_text().splitlines() if line.strip()]
    return sum(n for _, _, n in spans) / (max(e for _, e, _ in spans) - min(s for s, _, _ in spans))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mobilenet_v2", help="mnist (bundled) or a torchvision model name.")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--method", default="guided_backprop")
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3, help="Rounds (local and each Ray pool, interleaved); medians.")
    parser.add_argument("--work", type=Path, default=None, help="Folder for images, model and outputs (default: temporary).")
    parser.add_argument("--out", type=Path, default=RESULTS, help="Folder for dataset.json and dataset.md.")
    args = parser.parse_args(argv)
    if args.model == "mnist":
        args.size = 28  # the bundled model's own input size

    import ray

    from onnxsal.batch import explain_images
    from onnxsal.dataset import explain_dataset

    work = args.work or Path(tempfile.mkdtemp(prefix="onnxsal-dataset-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    images = work / "images"
    shutil.rmtree(images, ignore_errors=True)
    paths = make_images(images, args.images)
    model = model_file(work, args.model, args.size)
    cache = work / "graph-cache"
    common = dict(method=args.method, batch_size=args.batch, cache=str(cache), providers="cpu")
    explain_images(model, paths[:1], work / "warm", **common)  # builds the graph into the cache, untimed
    report = {"machine": machine(), "model": args.model, "size": args.size, "images": args.images, "batch": args.batch,
              "method": args.method, "rounds": args.rounds}

    init_s, _ = _timed(lambda: ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="warning"))
    report["ray_init_s"] = round(init_s, 3)
    times: dict[str, list[float]] = {"local": [], **{f"ray-{n}": [] for n in args.actors}}
    pool: dict[str, list[float]] = {f"ray-{n}": [] for n in args.actors}
    try:
        # the cluster's first run starts its worker processes (Python, Ray, pyarrow, onnxruntime imports):
        # paid once per cluster, not per run, so it is measured apart, on two images
        warm = work / "warm-images"
        warm.mkdir(exist_ok=True)
        for p in paths[:2]:
            shutil.copy(p, warm / p.name)
        report["ray_first_run_s"] = round(_timed(lambda: explain_dataset(model, warm, work / "warm-ray", actors=max(args.actors),
                                                                         **common))[0], 3)
        for r in range(args.rounds):
            local_out = work / "out-local"
            shutil.rmtree(local_out, ignore_errors=True)
            seconds, results = _timed(lambda: explain_images(model, images, local_out, **common))
            if any(x.error for x in results):
                raise RuntimeError(f"the local run failed on some images: {[x.error for x in results if x.error][:3]}")
            times["local"].append(seconds)
            print(f"round {r}: local {seconds:.2f} s", flush=True)
            for n in args.actors:
                out, log = work / f"out-ray-{n}", work / f"batches-{n}.log"
                shutil.rmtree(out, ignore_errors=True)
                log.unlink(missing_ok=True)
                seconds, results = _timed(lambda: explain_dataset(model, images, out, actors=n,
                                                                  worker_class=_timing_worker(str(log)), **common))
                if any(x.error for x in results):
                    raise RuntimeError(f"the Ray run failed on some images: {[x.error for x in results if x.error][:3]}")
                if not _same_maps(local_out, out, args.method):
                    raise RuntimeError(f"Ray with {n} actor(s) gave other maps than the local run")
                times[f"ray-{n}"].append(seconds)
                pool[f"ray-{n}"].append(_pool_rate(log))
                print(f"round {r}: ray, {n} actor(s) {seconds:.2f} s (pool {pool[f'ray-{n}'][-1]:.2f} images/s)", flush=True)
    finally:
        ray.shutdown()
    local_s = float(np.median(times["local"]))
    report["runs"] = [{"engine": "local", "actors": None, "seconds": [round(t, 3) for t in times["local"]],
                       "median_s": round(local_s, 3), "images_per_s": round(args.images / local_s, 2)}]
    for n in args.actors:
        med = float(np.median(times[f"ray-{n}"]))
        report["runs"].append({"engine": "ray", "actors": n, "seconds": [round(t, 3) for t in times[f"ray-{n}"]],
                               "median_s": round(med, 3), "images_per_s": round(args.images / med, 2),
                               "pool_images_per_s": round(float(np.median(pool[f"ray-{n}"])), 2),
                               "vs_local": round(local_s / med, 3), "same_maps_as_local": True})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "dataset.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "dataset.md").write_text(table(report) + "\n")
    print(table(report))
    return 0


def table(report: dict) -> str:
    m = report["machine"]
    rows = [f"# Dataset attribution: {report['images']} JPEGs, {report['model']} at {report['size']}x{report['size']}, "
            f"{report['method']}, batch {report['batch']}, medians of {report['rounds']} rounds",
            "",
            f"{m['processor']}, {m['cpus']} CPUs, onnxruntime {m['onnxruntime']}, Ray {m['ray']}; "
            f"load average {m['load_average_1min_at_start']} at the start (other jobs may share the machine). "
            f"Not counted: the Ray cluster's start ({report.get('ray_init_s', '?')} s) and its first run "
            f"({report.get('ray_first_run_s', '?')} s on 2 images: worker processes started).",
            "",
            "| engine | actors | wall (end to end) | images/s | vs local | images/s inside the pool (first batch to last) |",
            "|---|---|---|---|---|---|"]
    for r in report["runs"]:
        vs = f"{r['vs_local']:.2f}x" if "vs_local" in r else ""
        inside = f"{r['pool_images_per_s']:.2f}" if "pool_images_per_s" in r else ""
        rows.append(f"| {r['engine']} | {r['actors'] or ''} | {r['median_s']:.2f} s | {r['images_per_s']:.2f} | {vs} | {inside} |")
    return "\n".join(rows)


if __name__ == "__main__":
    raise SystemExit(main())
