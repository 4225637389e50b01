"""The benchmark harness runs (on a tiny setting); its numbers are not tested, only produced."""

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
