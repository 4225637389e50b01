"""The benchmark harnesses run (on tiny settings); their timings are not tested, only produced, while
the agreement that benchmarks/relevance.py reports with Zennit and Captum is."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_harness_runs_on_a_tiny_setting(tmp_path):
    out = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "--floor", "--out", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(out.read_text())
    machine = report["machine"]
    assert machine["cpus"] >= 1 and machine["processor"] and machine["onnxruntime"] and machine["torch"]
    (result,) = report["results"]
    assert result["model"] == "mobilenet_v2" and result["batch"] == 1
    for method in ("gradient", "guided_backprop", "smoothgrad", "integrated_gradients"):
        r = result["ratios"][method]
        assert r["onnxsal_ms"] > 0 and r["captum_ms"] > 0 and r["vs_ort_forward"] > 0 and r["onnxsal_rss_mb"] > 0
    floor = result["ratios"]["unmasked_floor"]  # a diagnostic row: onnxsal only, no Captum counterpart
    assert floor["onnxsal_ms"] > 0 and floor["vs_ort_forward"] > 0 and "captum_ms" not in floor
    assert "x Captum" in run.stdout and "unmasked_floor" in run.stdout and "guided_backprop" in run.stdout


TINY_EVALUATE = ["--model", "resnet18", "--size", "32", "--images", "2", "--steps", "4", "--repeats", "1",
                 "--methods", "gradient", "gradcam"]


def _evaluate_benchmark(tmp_path, reference: str, block_quantus: bool = False, floor: bool = False):
    """benchmarks.evaluate on a tiny setting in its own process (Quantus there is kept off TensorFlow);
    with block_quantus, `import quantus` fails in that process as if it were not installed; with
    floor, the bare forward passes of each runtime are timed too."""
    args = TINY_EVALUATE + ["--reference", reference, "--out", str(tmp_path)] + (["--floor"] if floor else [])
    code = ("import sys; sys.modules['quantus'] = None; " if block_quantus else "") + \
        f"from benchmarks.evaluate import main; raise SystemExit(main({args!r}))"
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_evaluate_benchmark_runs_without_quantus(tmp_path):
    run = _evaluate_benchmark(tmp_path, "none", block_quantus=True)
    assert run.returncode == 0, run.stderr[-2000:]
    r = json.loads((tmp_path / "evaluate.json").read_text())["result"]
    assert r["steps"] == 4 and r["pixels_per_step"] == 256 and r["forward_passes_per_side"] == 2 * 2 * 4
    assert "quantus" not in r and "ratio" not in r
    for m in ("gradient", "gradcam", "total"):
        assert r["onnxsal"][m]["median_s"] > 0
    for m in ("gradient", "gradcam"):
        assert len(r["onnxsal_auc"][m]) == 2 and all(0 <= a <= 1 for a in r["onnxsal_auc"][m])
    assert "not run (--reference none)" in (tmp_path / "evaluate.md").read_text()


def test_evaluate_benchmark_against_quantus(tmp_path):
    """With Quantus installed: both sides timed and their curves the same; without it, one clear line."""
    import importlib.util

    run = _evaluate_benchmark(tmp_path, "quantus", floor=True)
    if importlib.util.find_spec("quantus") is None:
        assert run.returncode != 0 and "--reference none" in run.stderr
        return
    assert run.returncode == 0, run.stderr[-2000:]
    r = json.loads((tmp_path / "evaluate.json").read_text())["result"]
    for m in ("gradient", "gradcam", "total"):
        assert r["quantus"][m]["median_s"] > 0 and r["ratio"][m] > 0
    for m in ("gradient", "gradcam"):
        agree = r["agreement"][m]
        assert agree["max_abs_curve_diff"] < 1e-6 and agree["max_abs_auc_diff_quantus_way"] < 1e-5
    for side in ("ort_floor", "torch_floor"):
        assert r[side]["total"]["median_s"] > 0 and set(r[side]) == {"gradient", "gradcam", "total"}
    text = (tmp_path / "evaluate.md").read_text()
    assert "| total |" in text and "The forward passes alone" in text


def test_relevance_benchmark_runs_on_a_tiny_setting(tmp_path):
    """LRP vs Zennit and DeepLift vs Captum on resnet18 at 32x32, batch 2, one round: the lines are timed
    interleaved, the maps agree, and Captum's stock maxpool rule is shown losing the stem pool's overlaps."""
    out = tmp_path / "relevance.json"
    run = subprocess.run([sys.executable, "-m", "benchmarks.relevance", "--models", "resnet18", "--batch", "2",
                          "--size", "32", "--repeats", "1", "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["machine"]["cpus"] >= 1 and "interleaved" in report["settings"]["timing"]
    (result,) = report["results"]
    assert (result["model"], result["batch"], result["size"]) == ("resnet18", 2, 32)
    for key, lib in (("lrp_epsilon_plus_flat", "zennit"), ("deeplift", "captum")):
        line = result[key]
        assert "refused" not in line, line.get("refused")
        for side in ("onnxsal", lib):
            assert line[side]["first_s"] > 0 and len(line[side]["times_s"]) == 1 and line[side]["median_s"] > 0
        assert line["ratio"] == line["onnxsal"]["median_s"] / line[lib]["median_s"]
    assert result["lrp_epsilon_plus_flat"]["max_rel_diff"] <= 1e-4
    deeplift = result["deeplift"]
    assert deeplift["max_rel_diff_vs_captum_routed_maxpool"] <= 1e-4
    gap = deeplift["summation_gap"]
    assert gap["onnxsal"] <= 1e-4 and gap["captum_routed_maxpool"] <= 1e-4
    assert gap["captum"] > 1e-2 and deeplift["max_rel_diff"] > 1e-2  # max_unpool2d keeps one of two overlapping windows
    table = out.with_suffix(".md").read_text()
    assert "lrp_epsilon_plus_flat vs zennit" in table and "deeplift vs captum" in table and "interleaved" in table


def test_dataset_benchmark_runs_on_a_tiny_setting(tmp_path):
    """benchmarks.dataset: the local path and Ray with one actor on 6 photos and the bundled MNIST model;
    the Ray run's maps must equal the local run's (the harness fails otherwise)."""
    import pytest

    pytest.importorskip("ray")
    run = subprocess.run([sys.executable, "-m", "benchmarks.dataset", "--model", "mnist", "--images", "6", "--batch", "3",
                          "--actors", "1", "--rounds", "1", "--work", str(tmp_path / "work"), "--out", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads((tmp_path / "dataset.json").read_text())
    assert report["images"] == 6 and report["size"] == 28 and report["machine"]["ray"]
    local, ray_run = report["runs"]
    assert local["engine"] == "local" and local["images_per_s"] > 0
    assert ray_run["engine"] == "ray" and ray_run["actors"] == 1 and ray_run["images_per_s"] > 0
    assert ray_run["same_maps_as_local"] is True and ray_run["pool_images_per_s"] > 0 and len(ray_run["seconds"]) == 1
    assert "| ray | 1 |" in (tmp_path / "dataset.md").read_text()
