"""One worker process: build (or load from the cache) and check a list of cases of one backend.

Run by the runner as `python -m benchmarks.corpus.worker BACKEND RESULTS.jsonl NAME...`. Before
each case it appends {"start": name} to RESULTS, after it the case's record, so that the parent
can tell which case hangs and restart the worker past it.
"""

from __future__ import annotations

import gc
import json
import signal
import sys
import time
from pathlib import Path

from .artifact import Artifact, check, extra, first_line, opset_of
from .cases import BY_NAME, Case


class CaseTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise CaseTimeout("the case ran past its time limit")


def _builders(backend: str):
    if backend == "torch":
        from . import torch_build as module
    else:
        from . import keras_build as module
    return module


def build(case: Case, module) -> Artifact:
    """Build the case's artifact (its base first for derived files)."""
    options = dict(case.options)
    if case.builder == "derived":
        options["build_base"] = lambda base: build(BY_NAME[base], module)
    return getattr(module, case.builder)(case.name, **options)


def run_case(case: Case, module, rebuild: bool) -> dict:
    """The record of one case: how it was made, and onnxsal's verdict on it."""
    record = {"name": case.name, "family": case.family, "group": case.group, "source": case.source,
              "exporter": case.exporter, "tolerance": case.tolerance}
    t0 = time.perf_counter()
    try:
        if rebuild or not Artifact.exists(case.name):
            build(case, module)
            record["build_s"] = round(time.perf_counter() - t0, 2)
        else:
            record["build_s"] = None  # cached
        art = Artifact.load(case.name)
        record["opset"] = opset_of(art.path)
        _loads_in_onnxruntime(art)
        if art.made_by and art.made_by != case.exporter:
            record["exporter"] = art.made_by
    except CaseTimeout:
        raise
    except Exception as exc:  # the framework or its exporter failed: not onnxsal's verdict
        record.update(status="build_failed", error=first_line(exc), build_s=round(time.perf_counter() - t0, 2))
        return record
    tolerance = case.tolerance
    baseline = extra(case.name).get("fp16_baseline")
    if baseline is not None:  # an fp16 file may be as far off the float32 gradient as the framework's own fp16 one
        tolerance = max(tolerance, baseline)
        record.update(tolerance=tolerance, fp16_baseline=round(baseline, 4))
    record.update(check(art, tolerance))
    return record


def _loads_in_onnxruntime(art: Artifact) -> None:
    """Raise when onnxruntime cannot load the exported file (an exporter failure, e.g. tf2onnx leaving
    a TensorFlow op in the graph): then there is no model for onnxsal to explain."""
    import onnxruntime as ort

    try:
        ort.InferenceSession(str(art.path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise RuntimeError(f"onnxruntime cannot load the exported file: {first_line(exc)}") from None


def main(argv: list[str]) -> None:
    backend, results, timeout, rebuild, names = argv[0], Path(argv[1]), int(argv[2]), argv[3] == "1", argv[4:]
    module = _builders(backend)
    signal.signal(signal.SIGALRM, _alarm)
    for name in names:
        case = BY_NAME[name]
        _append(results, {"start": name})
        signal.alarm(timeout)
        try:
            record = run_case(case, module, rebuild)
        except CaseTimeout as exc:
            record = {"name": name, "status": "timeout", "error": str(exc)}
        finally:
            signal.alarm(0)
        _append(results, record)
        gc.collect()


def _append(path: Path, obj: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(obj) + "\n")
        f.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
