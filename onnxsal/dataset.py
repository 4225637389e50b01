"""Explaining image datasets on Ray Data: the local folder explainer's work, spread over a cluster.

    results = onnxsal.explain_dataset("model.onnx", "photos/", "out/", method="guided_backprop")
    onnxsal explain model.onnx photos/ --engine ray [--address auto | ray://head:10001] -o out/

Ray Data does the distribution (no scheduler of our own): a Ray Data reader reads the sources
(`read_binary_files` for a folder, a glob or a list of files; `read_parquet` for Parquet), and
`map_batches` sends bounded batches to a pool of actors built from the callable class
`DatasetWorker`, so each actor loads the model and builds its ONNX Runtime session once. An
actor takes a GPU (`num_gpus`) when the cluster has one, else CPUs.

The worker runs the very functions of the local path (onnxsal/batch.py: `plan`, decoding by
`images.load`, `explain_loaded`, `output_paths`), so the PNG overlays and `.npy` maps land under
the same names with the same numbers. Each batch also writes one Parquet part into
`<out>/<method>.parquet/` (one row per image: source, stem, predicted class, label, score, error,
the attribution as a fixed-shape tensor, the names of its PNG and .npy files in `<out>`), atomically and under a name derived from the batch's
sources, so a batch that Ray retries after its actor died overwrites its own part instead of
adding a second one.

Every file is written atomically. An image that cannot be read or explained gets a row with its
error; the others go on. An item is done when its PNG, its `.npy` and an error-free row exist;
`resume=True` skips those (and before a run, rows of the items about to be redone are taken out of
the Parquet folder, so it holds one row per item). A killed actor is restarted by Ray and its batch
retried (`max_retries`).

Ray is an optional extra (`pip install onnxsal[ray]`); it is imported only here, inside functions.
"""

from __future__ import annotations

import glob as _glob
import hashlib
import io
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .batch import Explained, explain_loaded, graph_cache, output_paths, output_stems, plan
from .errors import InvalidInputError, OnnxsalError
from .images import collect, load
from .io_utils import write_bytes_atomic

ENGINES = ("ray", "local")
PATH_COLUMN = "path"  # a Parquet source: the image's path or id (required)
BYTES_COLUMNS = ("image", "bytes")  # ... and optionally its encoded bytes (else the file at `path` is read)


class EngineUnavailableError(OnnxsalError):
    """The requested dataset engine (Ray) or a package it needs (pyarrow) is not installed here."""


def results_dir(out_dir, method: str) -> Path:
    """The Parquet folder a dataset run writes: `<out>/<method>.parquet/` (one part per batch)."""
    return Path(out_dir) / f"{method}.parquet"


def read_results(out_dir, method: str):
    """All rows of a dataset run as one pyarrow Table, one row per image (`attribution_arrays` turns its
    fixed-shape tensor column into arrays)."""
    pq = _pyarrow()[1]
    import pyarrow as pa

    parts = _parts(results_dir(out_dir, method))
    if not parts:
        raise InvalidInputError(f"no results in {str(results_dir(out_dir, method))!r}.")
    return pa.concat_tables([pq.read_table(p) for p in parts])


def attribution_arrays(table) -> list:
    """The `attribution` column of `read_results` as one numpy array per row (None for a row with an error)."""
    import pyarrow.compute as pc

    col = table["attribution"].combine_chunks()
    valid = pc.is_valid(col)
    dense = iter(col.filter(valid).to_numpy_ndarray()) if pc.any(valid).as_py() else iter(())
    return [next(dense) if ok else None for ok in valid.to_pylist()]


# -- sources -----------------------------------------------------------------------------------------

@dataclass
class Sources:
    """What a run reads: image files, or Parquet files whose rows name (and maybe hold) images."""

    paths: list[Path]  # as given, in order: the names the outputs are derived from (local path's rule)
    keys: list[str]  # one identity per item (absolute path for files, the `path` column for Parquet)
    parquet: list[str] = field(default_factory=list)  # the Parquet files, when the source is Parquet
    bytes_column: str | None = None


def _is_parquet(p: str) -> bool:
    path = Path(p)
    if path.suffix.lower() in (".parquet", ".pq"):
        return True
    if path.is_dir():
        files = [f for f in path.rglob("*") if f.is_file() and not f.name.startswith((".", "_"))]
        return bool(files) and all(f.suffix.lower() in (".parquet", ".pq") for f in files)
    return False


def resolve_sources(source) -> Sources:
    """A folder, files, a glob (`photos/**/*.jpg`) or Parquet (a file or a folder of parts with a
    `path` column and, optionally, an `image` or `bytes` column of encoded images)."""
    given = [os.fspath(source)] if isinstance(source, (str, os.PathLike)) else [os.fspath(s) for s in source]
    if not given:
        raise InvalidInputError("no image source was given.")
    parquet = [s for s in given if _is_parquet(s)]
    if parquet:
        if len(parquet) != len(given):
            raise InvalidInputError("give either Parquet sources or image files/folders/globs, not both.")
        return _parquet_sources(parquet)
    names: list[str | Path] = []
    for s in given:
        if not os.path.exists(s) and any(c in s for c in "*?["):
            matches = sorted(m for m in _glob.glob(s, recursive=True) if os.path.isfile(m))
            if not matches:
                raise InvalidInputError(f"no files match {s!r}.")
            names.extend(matches)
        else:
            names.append(s)
    paths, keys, seen = [], [], set()
    for p in collect(names):
        key = os.path.abspath(p)
        if key not in seen:  # a file named twice is explained once
            seen.add(key)
            paths.append(p)
            keys.append(key)
    return Sources(paths, keys)


def _parquet_sources(files: list[str]) -> Sources:
    import pyarrow.dataset as pads

    try:
        data = pads.dataset(files, format="parquet")
    except Exception as exc:  # pyarrow's errors are long; one sentence with the first line
        raise InvalidInputError(f"cannot read Parquet source {files[0]!r}: {str(exc).splitlines()[0]}") from exc
    names = data.schema.names
    if PATH_COLUMN not in names:
        raise InvalidInputError(f"a Parquet source needs a {PATH_COLUMN!r} column (the image's path or id); "
                                f"{files[0]!r} has {names}.")
    keys = [str(k) for k in data.to_table(columns=[PATH_COLUMN])[PATH_COLUMN].to_pylist()]
    if not keys:
        raise InvalidInputError(f"the Parquet source {files[0]!r} has no rows.")
    if len(set(keys)) != len(keys):
        raise InvalidInputError(f"the {PATH_COLUMN!r} column of the Parquet source repeats values; each image needs its own.")
    column = next((c for c in BYTES_COLUMNS if c in names), None)
    return Sources([Path(k) for k in keys], keys, [os.path.abspath(f) for f in files], column)


# -- the Parquet results folder -------------------------------------------------------------------------

def _pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet as pq
    except ImportError:
        raise EngineUnavailableError("dataset results are written as Parquet, which needs pyarrow: "
                                     "pip install 'onnxsal[ray]'.") from None
    return pyarrow, pq


def _parts(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.parquet") if not p.name.startswith((".", "_"))) if folder.is_dir() else []


def _done_rows(folder: Path) -> dict[str, bool]:
    """source -> whether its row is error-free, over every part in the folder."""
    pq = _pyarrow()[1]
    state = {}
    for part in _parts(folder):
        t = pq.read_table(part, columns=["source", "error"])
        for s, e in zip(t["source"].to_pylist(), t["error"].to_pylist()):
            state[s] = e is None
    return state


def _drop_rows(folder: Path, keys: set[str]) -> None:
    """Take the rows of `keys` out of the parts (each part rewritten atomically, or removed when empty),
    so that the items about to be redone are not found twice afterwards."""
    import pyarrow.compute as pc

    pq = _pyarrow()[1]
    if not keys:
        return
    import pyarrow as pa

    drop = pa.array(sorted(keys), pa.string())
    for part in _parts(folder):
        sources = pq.read_table(part, columns=["source"])["source"]
        stale = pc.is_in(sources, value_set=drop)
        if not pc.any(stale).as_py():
            continue
        if pc.all(stale).as_py():
            part.unlink()
            continue
        table = pq.read_table(part).filter(pc.invert(stale))
        _write_table(table, part)


def _write_table(table, path: Path) -> None:
    pq = _pyarrow()[1]
    buf = io.BytesIO()
    pq.write_table(table, buf)
    write_bytes_atomic(buf.getvalue(), path)


def _part_name(keys) -> str:
    """A part's name, from the sources of its batch: a retried batch overwrites its own part."""
    return "part-" + hashlib.sha1("\0".join(sorted(keys)).encode()).hexdigest()[:24] + ".parquet"


# -- the worker ---------------------------------------------------------------------------------------

@dataclass
class Job:
    """Everything a worker needs, sent to each actor once (plain values: picklable, no sessions)."""

    model: str
    out_dir: str
    method: str = "guided_backprop"
    target: int | None = None
    preset: str = "auto"
    size: tuple[int, int] | None = None
    softmax: str = "identity"
    batch_size: int = 8
    providers: object = "auto"
    modifier: str | None = None
    cache: object = None  # None, True or a folder (a GraphCache is sent as its folder)
    cmap: str = "jet"
    alpha: float = 0.5
    options: dict = field(default_factory=dict)
    bytes_column: str | None = None
    threads: int | None = None  # ONNX Runtime's intra-op threads in each actor (CPU actors: its CPUs)


@dataclass
class Work:
    """Which rows a run does and what they are called, sent to each actor once; kept small for millions
    of images: only the stems that differ from the file's own (repeated names) and, when some items
    are already done, the set of those to do (else every row given to a worker is to do)."""

    renamed: dict[str, str] = field(default_factory=dict)
    only: set[str] | None = None

    def wants(self, key: str) -> bool:
        return self.only is None or key in self.only

    def stem(self, key: str) -> str:
        return self.renamed.get(key) or Path(key).stem


class DatasetWorker:
    """The callable class `map_batches` builds one actor from: the model plan (sessions included) is
    made once, in `__init__`; each call explains one batch of rows (`path`, and maybe encoded
    bytes), writes the overlays, maps and the batch's Parquet part, and returns a small summary."""

    def __init__(self, job: Job, work: Work, prepared=None):
        self.job = job
        if job.threads:  # before any session exists: ONNX Runtime reads it when a session is made
            os.environ.setdefault("ORT_INTRA_OP_NUM_THREADS", str(job.threads))
        self.work = work
        self.out = Path(job.out_dir)
        if prepared is None:
            prepared = plan(job.model, job.method, job.target, job.preset, job.size, job.softmax, job.batch_size,
                            job.providers, job.modifier, graph_cache(job.cache), **job.options)
        self.plan = prepared

    def decode(self, key: str, data) -> np.ndarray:
        """uint8 [H,W,C] at the model's size, as the local path decodes files (`images.load`)."""
        spec = self.plan.spec
        if data is None:
            return load(Path(key), (spec.height, spec.width), spec.channels)
        try:
            return load(io.BytesIO(bytes(data)), (spec.height, spec.width), spec.channels)
        except InvalidInputError as exc:  # the same sentence as for a file, naming the source
            cause = type(exc.__cause__).__name__ if exc.__cause__ is not None else "error"
            raise InvalidInputError(f"cannot read image {key!r}: {cause}.") from exc

    def __call__(self, batch: dict) -> dict:
        job = self.job
        keys = [str(k) for k in batch[PATH_COLUMN]]
        column = job.bytes_column if job.bytes_column in batch else "bytes" if "bytes" in batch else None
        blobs = list(batch[column]) if column else [None] * len(keys)
        rows = [(k, b) for k, b in zip(keys, blobs) if self.work.wants(k)]
        items, maps = [], []
        for start in range(0, len(rows), self.plan.batch_size):
            chunk, loaded = [], []
            for key, data in rows[start:start + self.plan.batch_size]:
                png, npy = output_paths(self.out, self.work.stem(key), job.method)
                item = (Explained(Path(key)), png, npy)
                chunk.append(item)
                try:
                    loaded.append((item, self.decode(key, data)))
                except OnnxsalError as exc:
                    item[0].error = str(exc)
            try:
                out = explain_loaded(self.plan, loaded, job.target, job.cmap, job.alpha)
            except Exception as exc:  # a failure to write or an unexpected one: reported on each row, not lost
                out = None
                for (r, _, _), _img in loaded:
                    r.error = r.error or f"{type(exc).__name__}: {exc}"
            got = {} if out is None else {id(item[0]): out[j] for j, (item, _img) in enumerate(loaded)}
            items += chunk
            maps += [got.get(id(item[0])) for item in chunk]
        if items:
            self.write_part(items, maps)
        return {
            "source": np.array([str(r.image) for r, _, _ in items], dtype=object),
            "predicted": np.array([-1 if r.predicted is None else r.predicted for r, _, _ in items], np.int64),
            "score": np.array([np.nan if r.score is None else r.score for r, _, _ in items], np.float64),
            "label": np.array([r.label or "" for r, _, _ in items], dtype=object),
            "error": np.array([r.error or "" for r, _, _ in items], dtype=object),
        }

    def attribution_shape(self) -> tuple[int, ...]:
        s = self.plan.spec
        return (s.channels, s.height, s.width) if s.layout == "NCHW" else (s.height, s.width, s.channels)

    def write_part(self, items: list, maps: list) -> None:
        """The batch's rows as one Parquet part (written after its PNG and .npy files)."""
        pa, _ = _pyarrow()
        shape = self.attribution_shape()
        ok = [m is not None and r.error is None for (r, _, _), m in zip(items, maps)]
        values = np.zeros((len(items), *shape), np.float32)
        for i, m in enumerate(maps):
            if ok[i]:
                values[i] = m
        size = int(np.prod(shape))
        storage = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), size, mask=pa.array([not o for o in ok]))
        tensor = pa.ExtensionArray.from_storage(pa.fixed_shape_tensor(pa.float32(), list(shape)), storage)
        col = {
            "source": pa.array([str(r.image) for r, _, _ in items], pa.string()),
            "stem": pa.array([self.work.stem(str(r.image)) for r, _, _ in items], pa.string()),
            "method": pa.array([self.job.method] * len(items), pa.string()),
            "predicted": pa.array([r.predicted if o else None for (r, _, _), o in zip(items, ok)], pa.int64()),
            "label": pa.array([r.label if o else None for (r, _, _), o in zip(items, ok)], pa.string()),
            "score": pa.array([r.score if o else None for (r, _, _), o in zip(items, ok)], pa.float64()),
            "error": pa.array([None if o else (r.error or "not explained") for (r, _, _), o in zip(items, ok)], pa.string()),
            "attribution": tensor,
            # the files' names, relative to the output folder (which can then be moved as a whole)
            "png": pa.array([png.name if o else None for (_, png, _), o in zip(items, ok)], pa.string()),
            "npy": pa.array([npy.name if o else None for (_, _, npy), o in zip(items, ok)], pa.string()),
        }
        folder = results_dir(self.out, self.job.method)
        _write_table(pa.table(col), folder / _part_name(str(r.image) for r, _, _ in items))


# -- the driver ---------------------------------------------------------------------------------------

def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise EngineUnavailableError("engine 'ray' needs Ray Data, which is not installed: "
                                     "pip install 'onnxsal[ray]' (on every node of the cluster).") from None
    return ray


def _ray_failure(exc: BaseException) -> OnnxsalError:
    """A Ray failure as one sentence: the OnnxsalError raised in an actor when there is one (Ray passes
    an actor's failed __init__ on as text: its last `onnxsal.errors.X: message` line is read back)."""
    import re

    from . import errors

    seen, todo, texts = set(), [exc], []
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OnnxsalError):
            return type(e)(str(e))
        texts += [str(e), str(getattr(e, "error_msg", "") or "")]
        todo += [e.__cause__, e.__context__, getattr(e, "cause", None)]
    raised = re.findall(r"onnxsal\.(?:errors|dataset)\.(\w+): (.+)", "\n".join(texts))
    if raised:
        name, message = raised[-1]
        kind = getattr(errors, name, None) or globals().get(name)
        kind = kind if isinstance(kind, type) and issubclass(kind, OnnxsalError) else OnnxsalError
        return kind(f"a Ray worker could not start or run: {message.strip()}")
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    first = next((line for line in text.splitlines() if line.strip()), type(exc).__name__)
    return OnnxsalError(f"the Ray job failed ({type(exc).__name__}: {first.strip()[:300]}); what was written is kept: "
                        f"rerun with resume to finish.")


def explain_dataset(
    model, source, out_dir, method: str = "guided_backprop", target=None, preset: str = "auto",
    size: tuple[int, int] | None = None, softmax: str = "identity", batch_size: int = 8, providers="auto",
    resume: bool = False, cmap: str = "jet", alpha: float = 0.5, modifier: str | None = None, cache=None,
    engine: str = "ray", address: str | None = None, actors: int | None = None, cpus_per_actor: float = 1,
    gpus_per_actor: float | None = None, max_retries: int = 3, progress: bool | None = None,
    worker_class: type | None = None, **options,
) -> list[Explained]:
    """Explain every image of `source` (a folder, files, a glob, or Parquet) on Ray Data; write
    `<stem>.<method>.png` overlays and `.npy` maps (as `explain_images` does) and the rows of
    `<out>/<method>.parquet/` (source, predicted class, score, error, attribution). Returns one
    `Explained` per image, in the sources' order (failures in `.error`, resumed ones `.skipped`).

    engine: "ray" (joins the cluster at `address`: None starts a local one unless Ray is already
    initialised, "auto" or "ray://head:10001" join one) or "local" (the same worker, in this process).
    actors: the pool size (default: one per GPU when the cluster has GPUs and providers allows
    CUDA, else one per `cpus_per_actor` CPUs). `max_retries`: restarts of a dead actor and retries of
    its batch. `worker_class`: a subclass of DatasetWorker to run instead (the tests use one that
    dies once). The other arguments are `explain_images`'.
    """
    if engine not in ENGINES:
        raise InvalidInputError(f"engine must be one of {list(ENGINES)}, not {engine!r}.")
    ray = _import_ray() if engine == "ray" else None
    _pyarrow()
    if not isinstance(model, (str, os.PathLike)) or not Path(model).is_file():
        raise InvalidInputError(f"model file {str(model)!r} does not exist (a dataset run needs a model file every worker can read).")
    if batch_size < 1 or max_retries < 0 or cpus_per_actor <= 0 or (actors is not None and actors < 1):
        raise InvalidInputError("batch_size and actors must be at least 1, cpus_per_actor positive and max_retries >= 0.")
    sources = resolve_sources(source)
    cache = str(cache.root) if hasattr(cache, "root") else os.fspath(cache) if isinstance(cache, os.PathLike) else cache
    # the model, method, options and input are checked here, once, as the local path does (one clear
    # error rather than one per image); with a cache, the graph built here is read back by the workers
    check = plan(str(model), method, target, preset, size, softmax, batch_size, "cpu" if engine == "ray" else providers,
                 modifier, graph_cache(cache), **options)
    job = Job(os.path.abspath(model), os.path.abspath(out_dir), method, target, preset, size, softmax, batch_size,
              providers, modifier, os.path.abspath(cache) if isinstance(cache, str) else cache, cmap, alpha, dict(options),
              sources.bytes_column)
    out = Path(out_dir)
    stems = dict(zip(sources.keys, output_stems(sources.paths)))
    folder = results_dir(out, method)
    rows = _done_rows(folder)
    results = {k: Explained(p) for k, p in zip(sources.keys, sources.paths)}
    todo = []
    for key in sources.keys:
        png, npy = output_paths(out, stems[key], method)
        if resume and rows.get(key) and png.exists() and npy.exists():
            results[key].skipped, results[key].written = True, [png, npy]
        else:
            todo.append(key)
    _drop_rows(folder, set(todo) & set(rows))
    folder.mkdir(parents=True, exist_ok=True)
    # a file source is read for the items to do only; a Parquet source is read whole, its done rows dropped
    only = set(todo) if sources.parquet and len(todo) < len(stems) else None
    work = Work({k: stems[k] for k in todo if stems[k] != Path(k).stem}, only)
    cls = worker_class or DatasetWorker
    if progress is None:
        progress = sys.stderr.isatty()
    if todo:
        if engine == "local":
            summaries = _run_local(cls, job, work, sources, todo, check)
        else:
            del check
            summaries = _run_ray(ray, cls, job, work, sources, todo, address, actors, cpus_per_actor, gpus_per_actor,
                                 max_retries, providers, progress)
        for s in summaries:
            r = results[s["source"]]
            if s["error"]:
                r.error = s["error"]
                continue
            r.predicted, r.score, r.label = s["predicted"], s["score"], s["label"] or None
            r.written = list(output_paths(out, stems[s["source"]], method))
        for key in todo:
            r = results[key]
            if r.error is None and not r.written:
                r.error = "no result came back for this image (its batch was lost)."
    return [results[k] for k in sources.keys]


def _summaries(batch: dict) -> list[dict]:
    return [{"source": str(batch["source"][i]), "predicted": int(batch["predicted"][i]), "score": float(batch["score"][i]),
             "label": str(batch["label"][i]), "error": str(batch["error"][i])} for i in range(len(batch["source"]))]


def _run_local(cls, job: Job, work: Work, sources: Sources, todo: list[str], check) -> list[dict]:
    """The same worker, in this process, over the same batches (no Ray)."""
    worker = cls(job, work, prepared=check)  # the plan made (and checked) by the caller
    out = []
    if sources.parquet:
        import pyarrow.dataset as pads

        columns = [PATH_COLUMN] + ([sources.bytes_column] if sources.bytes_column else [])
        for rb in pads.dataset(sources.parquet, format="parquet").to_batches(columns=columns, batch_size=job.batch_size):
            out += _summaries(worker({c: rb.column(c).to_pylist() for c in columns}))
        return out
    for i in range(0, len(todo), job.batch_size):
        out += _summaries(worker({PATH_COLUMN: todo[i:i + job.batch_size]}))
    return out


def _run_ray(ray, cls, job: Job, work: Work, sources: Sources, todo: list[str], address, actors, cpus_per_actor,
             gpus_per_actor, max_retries: int, providers, progress: bool) -> list[dict]:
    started = False
    if not ray.is_initialized():
        try:
            ray.init(address=address, include_dashboard=False, logging_level="warning")
        except Exception as exc:
            raise OnnxsalError(f"cannot start or join the Ray cluster at {address or 'a new local cluster'}: "
                               f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from exc
        started = True
    try:
        import ray.data as rd

        ctx = rd.DataContext.get_current()
        ctx.enable_progress_bars = bool(progress)
        resources = ray.cluster_resources()
        wants_gpu = str(providers).lower() != "cpu" if isinstance(providers, str) else any("CUDA" in str(p) for p in providers)
        gpus = gpus_per_actor if gpus_per_actor is not None else (1 if resources.get("GPU", 0) >= 1 and wants_gpu else 0)
        if not gpus and isinstance(providers, str) and providers.lower() == "auto":
            job.providers = "cpu"  # an actor without a GPU: no CUDA attempt (and no warning) on a GPU node
        if not gpus:  # as many ONNX Runtime threads as the actor holds CPUs: actors do not fight over cores
            job.threads = max(1, int(cpus_per_actor))
        if actors is None:
            actors = int(resources.get("GPU", 0) // gpus) if gpus else int(resources.get("CPU", 1) // cpus_per_actor)
            actors = max(1, min(actors, -(-len(todo) // job.batch_size)))
        # reads take no CPU slot: with every CPU held by an actor, they must still be scheduled
        if sources.parquet:
            columns = [PATH_COLUMN] + ([sources.bytes_column] if sources.bytes_column else [])
            ds = rd.read_parquet(sources.parquet, columns=columns, num_cpus=0)
        else:
            ds = rd.read_binary_files(todo, include_paths=True, num_cpus=0)
        with warnings.catch_warnings():  # Ray 2.60 takes max_restarts only as a (deprecated) remote argument
            warnings.simplefilter("ignore", DeprecationWarning)
            ds = ds.map_batches(
                cls, fn_constructor_args=(job, work), batch_size=job.batch_size, batch_format="numpy",
                compute=rd.ActorPoolStrategy(size=actors), num_cpus=cpus_per_actor, num_gpus=gpus or None,
                max_restarts=max_retries, max_task_retries=max_retries,
            )
        out = []
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                out += _summaries(batch)
        except OnnxsalError:
            raise
        except Exception as exc:
            raise _ray_failure(exc) from exc
        return out
    finally:
        if started:
            ray.shutdown()
