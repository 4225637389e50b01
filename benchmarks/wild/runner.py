"""Explain one file (`explain_file`) or every file under a folder, each in its own process (`run_dir`)."""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import onnx

from . import check
from .inputs import (
    IMAGE_SIZES,
    build_feeds,
    embedding_lookup,
    explained_output,
    float_inputs,
)

ORDER = ("wrong", "crashed", "timeout", "refused", "forward_failed", "ambiguous", "unchecked", "ok")  # worst first
CHILD_MEMORY = 8 * 2**30  # address space of one child: the machine (24 GB) is shared
ILL_CONDITIONED = 1e6  # explained values beyond this: float32 sums lose the digits a difference quotient needs


def package_of(path: Path, root: Path) -> str:
    """'name version' from the nearest *.dist-info/METADATA or PKG-INFO between the file and `root`."""
    for folder in [path.parent, *path.parent.parents]:
        metas = sorted(folder.glob("*.dist-info/METADATA")) + sorted(folder.glob("PKG-INFO"))
        for meta in metas:
            fields = dict(line.split(": ", 1) for line in meta.read_text(errors="replace").splitlines()[:20] if ": " in line)
            if "Name" in fields:
                return f"{fields['Name']} {fields.get('Version', '?')}"
        if folder == root or root not in folder.parents:
            break
    rel = path.relative_to(root) if root in path.parents else path
    return rel.parts[0] if len(rel.parts) > 1 else "?"


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:400]


def _attribute(explainer, feeds, wrt, **kw) -> dict[str, np.ndarray]:
    result = explainer.attribute(feeds, wrt=list(wrt), **kw)
    return result if isinstance(result, dict) else {wrt[0]: result}


def _run_case(name: str, explainer, feeds, wrt, values, fp16, check_model, output, scalar, ties=False,
              magnitude=0.0, budget_s=60, constant_weights=False, **kw) -> dict:
    """One attribute call and its central-difference check; the record says ok/refused/crashed/wrong."""
    from onnxsal.errors import ModelLoadError, OnnxsalError

    record: dict = {"case": name}
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            grads = _attribute(explainer, feeds, wrt, **kw)
        except ModelLoadError as exc:  # the file loaded before: onnxsal built a graph onnxruntime refuses
            record.update(status="crashed", error="built a graph onnxruntime refuses: " + first_line(exc))
            return record
        except OnnxsalError as exc:
            record.update(status="refused", error=first_line(exc))
            return record
        except Exception as exc:  # anything else escaping onnxsal is a bug, whatever the model
            record.update(status="crashed", error=first_line(exc), where=traceback.format_exc().strip().splitlines()[-3:])
            return record
    record["seconds"] = round(time.perf_counter() - t0, 2)
    record["warnings"] = sorted({str(w.message)[:200] for w in caught})
    for k in wrt:
        if grads[k].shape != values[k].shape:
            record.update(status="wrong", error=f"attribution of {k!r} has shape {grads[k].shape}, input {values[k].shape}")
            return record
        if not np.all(np.isfinite(grads[k])):
            record.update(status="wrong", error=f"attribution of {k!r} is not finite")
            return record
    sess = check.session(check_model)
    record["check"] = check.directional_check(sess, output, scalar, values, grads, fp16)
    record["check64"] = _float64_check(check_model, output, scalar, values, grads, budget_s)
    verdict = record["check64"] if "passed" in record["check64"] else record["check"]
    record["status"] = "ok" if verdict["passed"] else "wrong"
    if not verdict["passed"] and ties:
        record.update(status="ambiguous", error="the top class ties (scores within 1e-4, e.g. a softmax over the "
                      "last axis sums to 1 at every index of axis 1): the default target is float rounding")
    elif not verdict["passed"] and (magnitude > ILL_CONDITIONED or constant_weights):
        record.update(status="unchecked", error=f"weights all constant (ConstantOfShape), explained values up to "
                      f"{magnitude:.2g}: every class ties and float32 cannot give the differences a check needs "
                      "(see the reweighted copy)" if constant_weights else f"the explained values reach {magnitude:.2g}: "
                      "float32 cannot give the differences a check needs")
    elif not verdict["passed"]:
        kind = "float64 reference" if verdict is record["check64"] else "float32 onnxruntime"
        record["error"] = (f"central differences ({kind}) disagree: worst relative error "
                           f"{verdict['worst_rel']:.3g} > {verdict['tolerance']:.3g}")
    return record


def _float64_check(model, output, scalar, values, grads, budget_s: int = 60) -> dict:
    """`check.float64_check` within a time budget; {"skipped": why} when onnx.reference cannot run it."""
    if budget_s <= 0:
        return {"skipped": "the float64 reference was not run (budget 0)"}

    def expire(signum, frame):
        raise TimeoutError(f"onnx.reference took over {budget_s} s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(budget_s)
    try:
        return check.float64_check(model, output, scalar, values, grads)
    except Exception as exc:  # an op onnx.reference lacks, or the budget ran out: the float32 check decides
        return {"skipped": first_line(exc)}
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def explain_file(path: str | Path, root: str | Path | None = None, batch: int = 1, reference_budget_s: int = 60) -> dict:
    """Explain one file as a new user would and check the gradient; returns its record.

    `reference_budget_s` bounds each float64 onnx.reference check (the float32 one decides past it)."""
    import onnxruntime as ort

    import onnxsal

    path = Path(path).resolve()
    root = Path(root).resolve() if root else path.parent
    record: dict = {"file": str(path.relative_to(root)) if root in path.parents else path.name,
                    "package": package_of(path, root), "size_mb": round(path.stat().st_size / 2**20, 2)}
    model = onnx.load(str(path))
    record["opset"] = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    record["producer"] = f"{model.producer_name} {model.producer_version}".strip()
    fp16 = check.computes_in_float16(model)
    record["float16"] = fp16
    output = explained_output(model)
    wrt = float_inputs(model)
    inner = []
    if not wrt:
        lookup = embedding_lookup(model)
        if lookup is None:
            record.update(status="refused", error="the file has no float input and no embedding lookup to explain")
            return record
        wrt, inner = [lookup], [lookup]
    record["wrt"] = wrt
    try:
        forward = check.session(check.with_outputs(model, [output, *inner]))
    except Exception as exc:
        record.update(status="forward_failed", error=first_line(exc))
        return record
    for image in IMAGE_SIZES:  # free image sizes: the first that the file accepts
        feeds = build_feeds(model, batch=batch, image=image)
        try:
            outs = forward.run(None, feeds)
            break
        except Exception as exc:
            failure = exc
    else:
        record.update(status="forward_failed", error=first_line(failure))
        return record
    record.update(output=output, inputs={k: [str(v.dtype), list(v.shape)] for k, v in feeds.items()})
    scores = outs[0]
    record["output_shape"] = list(scores.shape)
    values = {**feeds, **dict(zip(inner, outs[1:]))}
    cut = check.cut_at(model, inner, values)
    check_values = {k: v for k, v in values.items() if k in {i.name for i in cut.graph.input}}
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    try:
        explainer = onnxsal.Explainer(str(path), providers="cpu", output=output, session_options=opts)
    except onnxsal.errors.OnnxsalError as exc:
        record.update(status="refused", error=first_line(exc), cases=[])
        return record
    logits = check.logits_view(cut, output)
    magnitude = float(np.abs(check.session(logits).run([output], check_values)[0]).max())
    record["logit_magnitude"] = magnitude
    degenerate = constant_weights(model)
    cases = []
    if scores.ndim >= 2:
        cases.append(_run_case("default", explainer, feeds, wrt, check_values, fp16, logits, output,
                               check.top_class_scalar(scores), ties=check.top_class_ties(scores), magnitude=magnitude,
                               budget_s=reference_budget_s, constant_weights=degenerate))
    else:
        cases.append({"case": "default", "status": "refused",
                      "error": f"(not tried: output {output!r} has rank {scores.ndim}, no class axis)"})
    seed = np.random.default_rng(1).standard_normal(scores.shape).astype(scores.dtype)
    cases.append(_run_case("seeded", explainer, feeds, wrt, check_values, fp16, cut, output,
                           check.seeded_scalar(seed), magnitude=magnitude, budget_s=reference_budget_s,
                           constant_weights=degenerate, target=seed, softmax="keep"))
    record["cases"] = cases
    tried = [c for c in cases if not c.get("error", "").startswith("(not tried")]
    worst = min(tried, key=lambda c: ORDER.index(c["status"]))
    record["status"] = worst["status"]
    if "error" in worst:
        record["error"] = worst["error"]
    return record


def constant_weights(model: onnx.ModelProto) -> bool:
    """Whether the Conv/Gemm weights are ConstantOfShape fills (onnx's "light" zoo files: 0.02 everywhere)."""
    fills = {n.output[0] for n in model.graph.node if n.op_type == "ConstantOfShape"}
    weighted = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul") and len(n.input) > 1]
    return bool(weighted) and all(n.input[1] in fills for n in weighted)


def onnx_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.onnx") if p.is_file())


def run_one_in_child(path: Path, root: Path, timeout: float, batch: int, reference_budget_s: int = 60) -> dict:
    """`explain_file` in a fresh interpreter, so that a crash or a hang of one file ends only that file."""
    cmd = [sys.executable, "-m", "benchmarks.wild", "--one", str(path), "--root", str(root), "--batch", str(batch),
           "--reference-budget", str(reference_budget_s)]
    t0 = time.perf_counter()
    base = {"file": str(path.relative_to(root)), "package": package_of(path, root)}
    def limit_memory():  # a MemoryError (the float64 check then gives way) rather than the OOM killer
        resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY, CHILD_MEMORY))
    try:
        proc = subprocess.run(cmd, check=False, preexec_fn=limit_memory, capture_output=True, text=True, timeout=timeout, cwd=Path(__file__).parents[2])
    except subprocess.TimeoutExpired:
        return {**base, "status": "timeout", "error": f"no result within {timeout:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {**base, "status": "crashed", "error": f"child exited {proc.returncode}: {tail[:300]}"}
    record = json.loads(lines[-1])
    record["wall_s"] = round(time.perf_counter() - t0, 1)
    return record


def run_dir(folder: str | Path, timeout: float = 300.0, batch: int = 1, only: str | None = None, log=print,
            reference_budget_s: int = 60, journal: Path | None = None) -> list[dict]:
    """Every .onnx file under `folder` (or those whose path holds one of the comma-separated `only`),
    each in a child process; each record is also appended to `journal` (JSON lines) as it comes."""
    folder = Path(folder).resolve()
    records = []
    for path in onnx_files(folder):
        if only and not any(part in str(path) for part in only.split(",")):
            continue
        record = run_one_in_child(path, folder, timeout, batch, reference_budget_s)
        log(f"{record['status']:>14}  {record['file']}  {record.get('error', '')[:160]}")
        records.append(record)
        if journal is not None:
            with open(journal, "a") as f:
                f.write(json.dumps(record, default=float) + "\n")
    return records
