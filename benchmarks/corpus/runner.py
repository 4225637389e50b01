"""Run cases in worker processes, one backend at a time, and guard each case with a time limit.

A worker that stays on one case past the limit (a hang in native code the worker's own alarm
cannot interrupt) is killed; the case is recorded as a timeout and a new worker takes the rest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .cases import Case

ROOT = Path(__file__).resolve().parents[2]


def run_cases(cases: list[Case], timeout: int = 300, rebuild: bool = False, log: Path | None = None,
              progress=print) -> list[dict]:
    """Records for `cases`, in order: torch cases in one worker, then TensorFlow cases in another."""
    records: dict[str, dict] = {}
    for backend in ("torch", "tf"):
        todo = [c.name for c in cases if c.backend == backend]
        while todo:
            done = _run_worker(backend, todo, timeout, rebuild, log, progress)
            records.update(done)
            todo = [n for n in todo if n not in records]
    by_name = {c.name: c for c in cases}
    out = []
    for case in cases:
        rec = records[case.name]
        for key in ("family", "group", "source", "exporter", "tolerance"):
            rec.setdefault(key, getattr(case, key))
        out.append(rec)
    assert set(by_name) == {r["name"] for r in out}
    return out


def _run_worker(backend: str, names: list[str], timeout: int, rebuild: bool, log: Path | None, progress) -> dict:
    """One worker over `names` until it ends or hangs; returns the records it finished."""
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        results = Path(f.name)
    cmd = [sys.executable, "-m", "benchmarks.corpus.worker", backend, str(results), str(timeout),
           "1" if rebuild else "0", *names]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"), TF_CPP_MIN_LOG_LEVEL="3",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONWARNINGS="ignore")
    logf = open(log, "a") if log else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=logf, stderr=subprocess.STDOUT, env=env)
    done: dict[str, dict] = {}
    current, started, seen = None, time.monotonic(), 0
    try:
        while True:
            lines = results.read_text().splitlines()
            for line in lines[seen:]:
                obj = json.loads(line)
                if "start" in obj:
                    current, started = obj["start"], time.monotonic()
                else:
                    done[obj["name"]] = obj
                    current = None
                    progress(_line(obj))
            seen = len(lines)
            if proc.poll() is not None:
                if proc.returncode != 0 and current is not None:  # the worker died inside a case
                    done[current] = {"name": current, "status": "crashed",
                                     "error": f"the worker process died (exit code {proc.returncode})"}
                    progress(_line(done[current]))
                break
            if current is not None and time.monotonic() - started > timeout + 30:
                proc.kill()
                proc.wait()
                done[current] = {"name": current, "status": "timeout", "error": f"no result after {timeout + 30} s"}
                progress(_line(done[current]))
                break
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if log:
            logf.close()
        results.unlink(missing_ok=True)
    if not done and current is None and names:  # died before starting anything: do not loop forever
        for name in names:
            done[name] = {"name": name, "status": "crashed", "error": f"the worker did not start (exit code {proc.returncode})"}
    return done


def _line(rec: dict) -> str:
    rel = rec.get("rel_err")
    rel_s = f" rel={rel:.2e}" if isinstance(rel, float) else ""
    err = f"  {rec['error']}" if rec.get("error") and rec.get("status") != "ok" else ""
    return f"{rec.get('status', '?'):12s} {rec['name']}{rel_s} (build {rec.get('build_s')}, check {rec.get('check_s')}){err}"
