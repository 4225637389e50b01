"""A slice of the robustness corpus (benchmarks/corpus): models built from registry packages with
random weights, exported to ONNX, and onnxsal's gradient checked against torch.autograd or
tf.GradientTape. The whole corpus runs as `python -m benchmarks.corpus`; this slice builds its files
afresh in a temporary folder (one torch process and one TensorFlow process)."""

from __future__ import annotations

import numpy as np
import pytest

# the builders import torch (timm, transformers) and TensorFlow in worker processes of their own: never here
from benchmarks.corpus import report
from benchmarks.corpus.artifact import Artifact, check
from benchmarks.corpus.cases import ALL
from benchmarks.corpus.runner import run_cases

QUICK = [c for c in ALL if c.quick]


@pytest.fixture(scope="module")
def slice_run(tmp_path_factory):
    cache = tmp_path_factory.mktemp("corpus")
    mp = pytest.MonkeyPatch()
    mp.setenv("ONNXSAL_CORPUS_CACHE", str(cache))
    try:
        records = run_cases(QUICK, timeout=240, progress=lambda s: None)
    finally:
        mp.undo()
    return cache, {r["name"]: r for r in records}


def test_slice_covers_every_kind_of_file():
    groups = {c.group for c in QUICK}
    assert {"timm", "transformers", "recurrent", "detection", "derived"} <= groups
    assert any(c.backend == "tf" for c in QUICK) and len(QUICK) >= 8
    assert len({c.family for c in ALL}) >= 60


@pytest.mark.parametrize("name", [c.name for c in QUICK])
def test_gradient_agrees_with_autograd(slice_run, name):
    record = slice_run[1][name]
    assert record["status"] == "ok", f"{name}: {record['status']}: {record.get('error')}"
    assert record["rel_err"] <= record["tolerance"]


def test_the_check_catches_a_wrong_gradient(slice_run):
    """References that differ from the truth by 1e-3 of their scale must read as wrong, not ok."""
    cache, _ = slice_run
    art = Artifact.load("timm-resnet18", cache)
    assert art.reference32 is not None
    for field in ("reference", "reference32"):  # ok needs agreement with either, so bump both
        bumped = getattr(art, field).copy()
        bumped.flat[int(np.argmax(np.abs(bumped)))] *= 1.001
        setattr(art, field, bumped)
    record = check(art, 1e-4)
    assert record["status"] == "wrong" and 5e-4 < record["rel_err"] < 2e-3


def test_report_counts_every_record(slice_run):
    records = list(slice_run[1].values())
    text = report.markdown(records, 60.0, "python -m benchmarks.corpus --quick")
    assert f"| **all** | {len(records)} |" in text
    assert all(f"| {r['name']} |" in text for r in records)
