"""`python -m benchmarks.wild DIR`: see the package docstring."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import report
from .runner import explain_file, run_dir


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.wild", description=__doc__)
    p.add_argument("dir", nargs="?", help="folder searched for .onnx files (unzipped wheels)")
    p.add_argument("--out", default="benchmarks/results/wild", help="path of wild.json / wild.md, without suffix")
    p.add_argument("--only", help="only files whose path contains one of these comma-separated texts")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per file")
    p.add_argument("--batch", type=int, default=1, help="samples on the explained input's batch axis")
    p.add_argument("--reference-budget", type=int, default=60, help="seconds for each float64 onnx.reference check")
    p.add_argument("--one", help="explain this one file and print its record as JSON (what each child runs)")
    p.add_argument("--root", help="with --one: the corpus folder, for the file's relative name and package")
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(explain_file(args.one, args.root, batch=args.batch, reference_budget_s=args.reference_budget),
                         default=float))
        return 0
    if not args.dir:
        p.error("give a folder (or --one FILE)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    records = run_dir(args.dir, timeout=args.timeout, batch=args.batch, only=args.only,
                      reference_budget_s=args.reference_budget, journal=Path(args.out).with_suffix(".jsonl"))
    report.write(records, Path(args.out), args.dir)
    print(json.dumps(report.summary(records)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
