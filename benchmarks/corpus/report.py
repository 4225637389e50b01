"""Summaries of corpus records: the per-group table (Markdown), failures grouped by cause."""

from __future__ import annotations

import re
from collections import Counter, defaultdict

STATUSES = ("ok", "wrong", "refused", "crashed", "timeout", "build_failed")


def cause(rec: dict) -> str:
    """The failure's cause with node names, tensor names and numbers blanked, so alike failures group."""
    text = rec.get("error") or ""
    text = re.sub(r"'[^']*'", "'…'", text)
    text = re.sub(r'"[^"]*"', '"…"', text)
    text = re.sub(r"\d+(\.\d+)?(e-?\d+)?", "N", text)
    return f"[{rec['status']}] {text}"


def by_group(records: list[dict]) -> dict[str, Counter]:
    groups: dict[str, Counter] = defaultdict(Counter)
    for rec in records:
        groups[rec["group"]][rec["status"]] += 1
    return groups


def markdown(records: list[dict], seconds: float, command: str) -> str:
    """corpus.md: the table per group, the totals, then every failing model with its error."""
    groups = by_group(records)
    built = [r for r in records if r["status"] != "build_failed"]
    ok = sum(r["status"] == "ok" for r in records)
    families = len({r["family"] for r in records})
    lines = [
        "# Robustness corpus: onnxsal's gradient against the framework's autograd",
        "",
        f"{len(records)} files, {families} families, built from registry packages with random weights "
        f"(`{command}`, {seconds / 60:.1f} min on this machine). A file is **ok** when onnxsal's vanilla gradient "
        "(float32, onnxruntime CPU) agrees with torch.autograd / tf.GradientTape on the same weights, input and "
        "target, run in float64 (the truth) or in float32 (the file's precision, where near-ties in max pooling "
        "and kinks may break the other way): max|diff| / max|ref| <= 1e-4 against either. fp16 files are held to the float32 model's reference with "
        "the framework's own fp16 error as the bound (torch.autograd on model.half(); at least 2e-2). Models "
        "ending in a softmax are explained from the logits (onnxsal's default softmax=\"identity\"), so the "
        "reference differentiates the pre-softmax logit. *refused*: onnxsal raised its own error; *wrong*: it ran "
        "and disagrees; *crashed*: another exception escaped onnxsal; *timeout*: no answer within the case's limit; "
        "*build_failed*: the framework or its exporter failed (or onnxruntime cannot load what it wrote), so there "
        "is no file to explain.",
        "",
        "| group | files | ok | wrong | refused | crashed | timeout | build failed | ok / built |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for group, c in groups.items():
        n_built = sum(c.values()) - c["build_failed"]
        lines.append(f"| {group} | {sum(c.values())} | " + " | ".join(str(c[s]) for s in STATUSES)
                     + f" | {_pct(c['ok'], n_built)} |")
    total = Counter(r["status"] for r in records)
    lines.append(f"| **all** | {len(records)} | " + " | ".join(str(total[s]) for s in STATUSES)
                 + f" | **{_pct(ok, len(built))}** |")
    lines += ["", "## Failures by cause", ""]
    for key, recs in failures_by_cause(records):
        lines.append(f"- **{len(recs)}** {key}: " + ", ".join(f"`{r['name']}`" for r in recs))
    lines += ["", "## Every file", "", "| file | family | exporter | opset | status | rel. error f64 | f32 | build s | check s | error |",
              "|---|---|---|---:|---|---:|---:|---:|---:|---|"]
    for r in records:
        rel = " | ".join(f"{r[k]:.1e}" if isinstance(r.get(k), float) else "" for k in ("rel_err", "rel_err32"))
        err = (r.get("error") or "").replace("|", "\\|") if r["status"] != "ok" else ""
        lines.append(f"| {r['name']} | {r['family']} | {r['exporter']} | {r.get('opset', '')} | {r['status']} | {rel} "
                     f"| {r.get('build_s') if r.get('build_s') is not None else 'cached'} | {r.get('check_s', '')} | {err} |")
    return "\n".join(lines) + "\n"


def failures_by_cause(records: list[dict]) -> list[tuple[str, list[dict]]]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for rec in records:
        if rec["status"] != "ok":
            groups[cause(rec)].append(rec)
    return sorted(groups.items(), key=lambda kv: -len(kv[1]))


def failures_text(records: list[dict], stamp: str) -> str:
    """/tmp/corpus_failures.txt: one line per failing model with its error, grouped by cause."""
    ok = sum(r["status"] == "ok" for r in records)
    built = sum(r["status"] != "build_failed" for r in records)
    out = [f"corpus run {stamp}: {ok}/{built} built files ok ({len(records)} cases)", ""]
    for key, recs in failures_by_cause(records):
        out.append(f"== {len(recs)} x {key}")
        out += [f"  {r['name']}: {r.get('error')}" for r in recs]
        out.append("")
    return "\n".join(out)


def _pct(a: int, b: int) -> str:
    return f"{a}/{b} ({100 * a / b:.0f}%)" if b else "-"
