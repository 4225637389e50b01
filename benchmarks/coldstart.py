"""Cold start of `onnxsal explain` on one 224x224 image, measured as whole processes.

    python -m benchmarks.coldstart                          # mobilenet_v2 and resnet50, 5 rounds
    python -m benchmarks.coldstart --models mobilenet_v2 --rounds 3

Per model (torchvision, random weights, exported once), each round runs, one after the other:
- forward: a process that decodes the image and runs the plain forward pass in onnxruntime (the
  floor any tool starts from: Python, numpy, onnxruntime, Pillow, one session, one run);
- no cache: `onnxsal explain --no-cache` (the graph built and optimised in the process);
- first: `onnxsal explain` with an empty graph cache (built, optimised, and stored);
- second: `onnxsal explain` again on that cache (read back: no graph build, no onnx import).
Medians over the rounds (the kinds are interleaved, so a busy machine slows all of them alike), and
second / forward, the issue's measure (goal: at most 1.5). Written to
benchmarks/results/coldstart.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
KINDS = ("forward", "no_cache", "first", "second")

FORWARD = """\
import sys
import numpy as np
import onnxruntime as ort
from PIL import Image
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
x = np.asarray(Image.open(sys.argv[2]).convert("RGB").resize((224, 224), Image.BILINEAR), np.float32) / 255
logits = session.run(None, {session.get_inputs()[0].name: x.transpose(2, 0, 1)[None]})[0]
print(int(logits.argmax()))
"""


def _onnxsal_command() -> list[str]:
    """The installed `onnxsal` script next to this interpreter (what a user runs), else `-m onnxsal.cli`."""
    script = Path(sys.executable).with_name("onnxsal")
    return [str(script)] if script.exists() else [sys.executable, "-m", "onnxsal.cli"]


def _timed(argv: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[:3]} failed: {proc.stderr[-1000:]}")
    return elapsed


def prepare(work: Path, name: str, size: int) -> tuple[Path, Path]:
    """The exported model and the photo (scikit-image's chelsea) in `work`."""
    import onnx
    import skimage.data
    from PIL import Image

    model = work / f"{name}.onnx"
    if not model.exists():
        code = ("import onnx, sys; from benchmarks.run import torchvision_model; "
                f"onnx.save(torchvision_model({name!r}, {size})[1], sys.argv[1])")
        subprocess.run([sys.executable, "-c", code, str(model)], check=True, cwd=ROOT)
        onnx.checker.check_model(str(model))
    image = work / "chelsea.png"
    if not image.exists():
        Image.fromarray(skimage.data.chelsea()).save(image)
    return model, image


def bench_model(work: Path, name: str, size: int, rounds: int, method: str) -> dict:
    model, image = prepare(work, name, size)
    forward = work / "forward.py"
    forward.write_text(FORWARD)
    cmd = _onnxsal_command()
    times: dict[str, list[float]] = {k: [] for k in KINDS}
    for r in range(rounds):
        cache = Path(tempfile.mkdtemp(prefix="coldstart-cache-", dir=work))
        out = work / f"out-{r}"
        explain = [*cmd, "explain", str(model), str(image), "-m", method, "--providers", "cpu"]
        times["forward"].append(_timed([sys.executable, str(forward), str(model), str(image)]))
        times["no_cache"].append(_timed([*explain, "--no-cache", "-o", str(out / "no_cache")]))
        times["first"].append(_timed([*explain, "--cache-dir", str(cache), "-o", str(out / "first")]))
        times["second"].append(_timed([*explain, "--cache-dir", str(cache), "-o", str(out / "second")]))
        a = np.load(out / "first" / f"chelsea.{method}.npy")
        b = np.load(out / "second" / f"chelsea.{method}.npy")
        if not np.array_equal(a, b):
            raise RuntimeError("the cached graph gave other numbers than the run that stored it")
        shutil.rmtree(cache)
        shutil.rmtree(out)
    med = {k: float(np.median(v)) for k, v in times.items()}
    return {"model": name, "size": size, "method": method, "rounds": rounds,
            "seconds": {k: [round(t, 4) for t in v] for k, v in times.items()},
            "median_s": {k: round(v, 4) for k, v in med.items()},
            "second_vs_forward": round(med["second"] / med["forward"], 3),
            "first_vs_forward": round(med["first"] / med["forward"], 3)}


def table(results: list[dict]) -> str:
    rows = ["| model | forward process | explain --no-cache | first run | second run | second / forward |",
            "|---|---|---|---|---|---|"]
    for r in results:
        m = r["median_s"]
        rows.append(f"| {r['model']} | {m['forward']:.2f} s | {m['no_cache']:.2f} s | {m['first']:.2f} s | "
                    f"{m['second']:.2f} s | {r['second_vs_forward']:.2f}x |")
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["mobilenet_v2", "resnet50"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--method", default="guided_backprop")
    parser.add_argument("--work", type=Path, default=None, help="Folder for the exported models (default: a temporary one).")
    parser.add_argument("--out", type=Path, default=RESULTS, help="Folder for coldstart.json and coldstart.md.")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="onnxsal-coldstart-"))
    work.mkdir(parents=True, exist_ok=True)
    results = [bench_model(work, name, args.size, args.rounds, args.method) for name in args.models]
    from benchmarks.run import machine

    report = {"machine": machine("cpu"), "results": results}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "coldstart.json").write_text(json.dumps(report, indent=2) + "\n")
    text = table(results)
    (args.out / "coldstart.md").write_text(f"# Cold start of `onnxsal explain` (one {args.size}x{args.size} image, "
                                           f"{args.method}, medians of {args.rounds} rounds)\n\n{text}\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
