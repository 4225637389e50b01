"""A built corpus entry on disk, and onnxsal's gradient checked against the framework's.

An artifact is three files in the cache folder: `<name>.onnx` (the exported model),
`<name>.npz` (the feeds, and the reference gradient the framework's autograd computed for them) and
`<name>.json` (which input is explained, `wrt`, the target class). Builders write them once; reruns
only check. This module needs onnx, numpy and onnxsal only (no torch, no TensorFlow).
"""

from __future__ import annotations

import json
import os
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

CACHE = Path(os.environ.get("ONNXSAL_CORPUS_CACHE") or Path(__file__).resolve().parent / "cache")


@dataclass
class Artifact:
    """The exported file, what to feed it, and the gradient autograd found for `target`."""

    path: Path
    feeds: dict[str, np.ndarray]
    reference: np.ndarray
    wrt: str | None  # None: the (single) explained graph input; else an inner tensor or input name
    target: int
    explained: str  # the graph input, or inner tensor, the reference gradient is taken with respect to
    made_by: str | None = None  # how a derived file was really made, where it differs from the case's plan
    reference32: np.ndarray | None = None  # the same autograd run in float32 (the file's own precision)

    def save_extra(self, **values) -> None:
        """Add notes to the artifact's .json (read back by `extra`)."""
        meta_path = self.path.with_suffix(".json")
        meta = json.loads(meta_path.read_text())
        meta.setdefault("extra", {}).update(values)
        meta_path.write_text(json.dumps(meta))

    @staticmethod
    def paths(name: str, cache: Path = CACHE) -> tuple[Path, Path, Path]:
        return cache / f"{name}.onnx", cache / f"{name}.npz", cache / f"{name}.json"

    @classmethod
    def exists(cls, name: str, cache: Path = CACHE) -> bool:
        return all(p.exists() for p in cls.paths(name, cache))

    @classmethod
    def load(cls, name: str, cache: Path = CACHE) -> Artifact:
        onnx_path, npz_path, meta_path = cls.paths(name, cache)
        meta = json.loads(meta_path.read_text())
        with np.load(npz_path) as data:
            feeds = {k[len("feed:"):]: data[k] for k in data.files if k.startswith("feed:")}
            reference = data["reference"]
            reference32 = data["reference32"] if "reference32" in data.files else None
        return cls(onnx_path, feeds, reference, meta["wrt"], meta["target"], meta["explained"], meta.get("made_by"), reference32)

    @classmethod
    def save(cls, name: str, model_bytes_or_path, feeds: dict[str, np.ndarray], reference: np.ndarray,
             wrt: str | None, target: int, explained: str, cache: Path = CACHE, made_by: str | None = None,
             reference32: np.ndarray | None = None) -> Artifact:
        """Write the three files; the .json last, so a half-written artifact never counts as built."""
        cache.mkdir(parents=True, exist_ok=True)
        onnx_path, npz_path, meta_path = cls.paths(name, cache)
        if isinstance(model_bytes_or_path, onnx.ModelProto):
            onnx.save(model_bytes_or_path, onnx_path)
        elif Path(model_bytes_or_path) != onnx_path:
            Path(onnx_path).write_bytes(Path(model_bytes_or_path).read_bytes())
        extra = {} if reference32 is None else {"reference32": reference32}
        np.savez(npz_path, reference=reference, **extra, **{f"feed:{k}": v for k, v in feeds.items()})
        meta_path.write_text(json.dumps({"wrt": wrt, "target": target, "explained": explained, "made_by": made_by}))
        return cls(onnx_path, feeds, reference, wrt, target, explained, made_by, reference32)


def extra(name: str, cache: Path = CACHE) -> dict:
    """Whatever the builder noted beside the artifact (e.g. the framework's own fp16 error)."""
    return json.loads(Artifact.paths(name, cache)[2].read_text()).get("extra", {})


def first_line(exc: BaseException) -> str:
    """`Type: first line of the message`, cut to 300 characters (what the failures list shows)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]


def opset_of(path: Path) -> int | None:
    """The default-domain opset the file declares."""
    model = onnx.load(path, load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def check(art: Artifact, tolerance: float) -> dict:
    """onnxsal's vanilla gradient of `art` against its reference.

    Returns status "ok" (relative error within `tolerance`), "wrong" (it runs but disagrees, or has
    the wrong shape, or is not finite), "refused" (an OnnxsalError: onnxsal said why) or "crashed"
    (any other exception escaping onnxsal), with the error's first line and the relative error."""
    import onnxsal
    from onnxsal.errors import OnnxsalError

    record: dict = {}
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            explainer = onnxsal.Explainer(str(art.path))
            inputs = art.feeds if len(art.feeds) > 1 or art.wrt is not None else next(iter(art.feeds.values()))
            grad = explainer.attribute(inputs, target=art.target, method="gradient", wrt=art.wrt)
    except OnnxsalError as exc:
        record.update(status="refused", error=first_line(exc))
        return _timed(record, t0)
    except Exception as exc:  # anything else escaping onnxsal is a bug, whatever the model
        record.update(status="crashed", error=first_line(exc),
                      where=[line.strip() for line in traceback.format_exc().strip().splitlines()[-4:-1]])
        return _timed(record, t0)
    grad = np.asarray(grad)
    ref = art.reference
    if grad.shape != ref.shape:
        record.update(status="wrong", error=f"gradient shape {grad.shape}, reference {ref.shape}")
    elif not np.all(np.isfinite(grad)):
        record.update(status="wrong", error="gradient holds NaN or infinite values")
    elif not np.any(ref):
        record.update(status="wrong", error="reference gradient is zero everywhere (uninformative case)")
    else:
        record["rel_err"] = _relative(grad, ref)
        if art.reference32 is not None:
            record["rel_err32"] = _relative(grad, art.reference32)
        best = min(record["rel_err"], record.get("rel_err32", np.inf))
        if best <= tolerance:
            record["status"] = "ok"
        else:
            record.update(status="wrong", error=f"max|diff|/max|ref| = {best:.3g} > {tolerance:g}")
    return _timed(record, t0)


def _relative(grad: np.ndarray, ref: np.ndarray) -> float:
    """max|grad - ref| / max|ref|, in float64."""
    ref = ref.astype(np.float64)
    return float(np.max(np.abs(grad.astype(np.float64) - ref)) / np.max(np.abs(ref)))


def _timed(record: dict, t0: float) -> dict:
    record["check_s"] = round(time.perf_counter() - t0, 2)
    return record
