"""`python -m benchmarks.corpus [--quick] [--only SUBSTR ...] [--rebuild] [--timeout S]`

Builds (or reuses from benchmarks/corpus/cache/) every corpus file, checks onnxsal's gradient on
each against the framework's autograd, and writes benchmarks/results/corpus.json and corpus.md.
With --failures PATH, also the failing models grouped by cause.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from . import report
from .cases import ALL
from .runner import ROOT, run_cases

RESULTS = ROOT / "benchmarks" / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.corpus", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the slice the test suite runs")
    parser.add_argument("--only", nargs="*", default=None, help="cases whose name contains one of these")
    parser.add_argument("--rebuild", action="store_true", help="rebuild files even when cached")
    parser.add_argument("--timeout", type=int, default=300, help="seconds per case (build and check)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for corpus.json and corpus.md")
    parser.add_argument("--failures", type=Path, default=None, help="also write the failures list here")
    parser.add_argument("--merge", action="store_true",
                        help="replace only these cases' records in the existing corpus.json (a partial rerun)")
    parser.add_argument("--report-only", action="store_true", help="rewrite corpus.md from corpus.json, run nothing")
    args = parser.parse_args(argv)
    if args.report_only:
        summary = json.loads((args.out / "corpus.json").read_text())
        (args.out / "corpus.md").write_text(report.markdown(summary["records"], summary["seconds"], summary["command"]))
        if args.failures:
            args.failures.write_text(report.failures_text(summary["records"], summary["when"]))
        return 0

    cases = [c for c in ALL if (not args.quick or c.quick)
             and (args.only is None or any(s in c.name for s in args.only))]
    t0 = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "corpus.log"
    log.write_text("")
    records = run_cases(cases, timeout=args.timeout, rebuild=args.rebuild, log=log,
                        progress=lambda s: print(s, flush=True))
    seconds = time.perf_counter() - t0
    command = ("python -m benchmarks.corpus " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    summary = {"when": stamp, "seconds": round(seconds, 1), "command": command, "reruns": []}
    if args.merge:
        summary = json.loads((args.out / "corpus.json").read_text())
        fresh = {r["name"]: r for r in records}
        records = [fresh.get(r["name"], r) for r in summary["records"]]
        records += [r for r in fresh.values() if r["name"] not in {x["name"] for x in records}]
        summary.setdefault("reruns", []).append({"when": stamp, "command": command, "seconds": round(seconds, 1),
                                                 "cases": sorted(fresh)})
        seconds, command = summary["seconds"], summary["command"]
    summary.update(counts={g: dict(c) for g, c in report.by_group(records).items()}, records=records)
    (args.out / "corpus.json").write_text(json.dumps(summary, indent=1) + "\n")
    (args.out / "corpus.md").write_text(report.markdown(records, seconds, command))
    if args.failures:
        args.failures.write_text(report.failures_text(records, stamp))
    ok = sum(r["status"] == "ok" for r in records)
    print(f"{ok}/{len(records)} ok in {seconds:.0f} s; see {args.out / 'corpus.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
