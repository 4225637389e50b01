"""Explaining folders of image files: every output written atomically, failures reported, resumable.

The model side is a `Plan`: the image input it takes, its preprocessing and class names, and a
function from a batch to (scores, maps). A plan comes from the graph cache when an entry is there
(no graph is built and onnx is not even imported: the warm start of `onnxsal explain`), else from
an Explainer, whose graph is then stored in the cache for the next process.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import visualize as viz
from .errors import InvalidInputError, OnnxsalError
from .cache import GRAPH
from .images import ImageInput, collect, image_input, load, preprocess, preset_from_metadata
from .io_utils import write_bytes_atomic


@dataclass
class Explained:
    """The outcome for one image file."""

    image: Path
    predicted: int | None = None
    label: str | None = None
    score: float | None = None
    written: list[Path] = field(default_factory=list)
    skipped: bool = False  # outputs were already there (resume)
    error: str | None = None


def class_names(explainer) -> list[str] | None:
    """Names of the output classes: the model's 'classes' metadata, or ImageNet's for 1000 classes."""
    meta = {p.key: p.value for p in explainer.model.metadata_props}
    if "classes" in meta:
        return [c.strip() for c in meta["classes"].split(",")]
    if explainer.n_classes() == 1000:
        from .data import read_bytes

        return read_bytes("imagenet_classes.txt").decode().splitlines()
    return None


def output_stems(paths: list[Path]) -> list[str]:
    """A unique, stable file stem per image: its name; `folder__name` where names repeat."""
    counts: dict[str, int] = {}
    for p in paths:
        counts[p.stem] = counts.get(p.stem, 0) + 1
    stems, seen = [], set()
    for p in paths:
        stem = p.stem if counts[p.stem] == 1 else f"{p.parent.name}__{p.stem}"
        base, i = stem, 2
        while stem in seen:
            stem, i = f"{base}_{i}", i + 1
        seen.add(stem)
        stems.append(stem)
    return stems


def heat_map(attribution: np.ndarray, layout: str) -> np.ndarray:
    """One [H,W] map in [0, 1] for display: max |·| over channels, clipped at the 99th percentile."""
    maps = viz.reduce_channels(attribution[None], how="max_abs", layout=layout)
    return viz.normalize(maps, how="percentile", percentile=99)[0]


def _save_npy(array: np.ndarray, path: Path) -> Path:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return write_bytes_atomic(buf.getvalue(), path)


@dataclass
class Plan:
    """How one model explains image batches: `run(x, classes)` -> (scores [N, K], maps like x)."""

    spec: ImageInput
    batch_size: int
    preset: str
    names: list[str] | None
    run: Callable[[np.ndarray, np.ndarray | None], tuple[np.ndarray, np.ndarray]]


def _live_plan(ex, spec: ImageInput, batch_size: int, preset: str, method: str, target, softmax: str,
               modifier: str | None, options: dict) -> Plan:
    """A plan that runs the Explainer: a forward pass for the classes, then the attribution."""
    def run(x, classes):
        scores = ex.predict(x)
        flat = scores.reshape(len(scores), scores.shape[1], -1).sum(-1) if scores.ndim > 2 else scores
        chosen = flat.argmax(1) if classes is None else classes
        maps = ex.attribute(x, target=chosen.astype(np.int64), method=method, softmax=softmax, modifier=modifier,
                            **options)
        return flat, maps

    return Plan(spec, batch_size, preset, class_names(ex), run)


def _cached_plan(entry, providers, batch_size: int, method: str, session=None) -> Plan:
    """A plan that runs a cached attribution graph in one ONNX Runtime session (argmax or target
    inside): the session given, or one read from the entry's file."""
    from .runtime import create_session_from_file, run as run_session

    m = entry.manifest
    if session is None:
        session = create_session_from_file(entry.graph_path, providers, optimised=m["optimised"])
    spec = ImageInput(**m["spec"])

    def run(x, classes):
        feeds = {spec.name: x}
        if m["target_input"] is not None:
            feeds[m["target_input"]] = classes.astype(np.int64)
        scores, maps = run_session(session, [m["output"], m["attribution"]], feeds)
        if classes is not None and classes.size and classes.max() >= scores.shape[1]:
            raise InvalidInputError(f"target class {int(classes.max())} is out of range: output {m['output']!r} "
                                    f"returns {scores.shape[1]} classes.")
        if not np.all(np.isfinite(maps)):
            import warnings

            warnings.warn(f"the {method} attribution of {spec.name!r} holds NaN or infinite values "
                          f"(the model overflows or divides by zero on these inputs).", RuntimeWarning, stacklevel=2)
        return scores, maps

    return Plan(spec, m["fixed_batch"] or batch_size, m["preset"], m["names"], run)


def _config(method, target, preset, size, softmax, modifier, options) -> dict:
    """What an entry of the graph cache depends on besides the model and the machine."""
    return {"method": method, "target": "argmax" if target is None else "target", "preset": preset,
            "size": list(size) if size else None, "softmax": softmax, "modifier": modifier,
            "options": sorted((k, repr(v)) for k, v in options.items())}


def _store(cache, key: str, ex, model_path, spec: ImageInput, preset: str, fixed_batch, method: str, target,
           softmax: str, modifier, options: dict):
    """Build the graph the cache holds for this configuration and commit it; None when the method or
    the model is not one whose explanation is one graph run of a classifier."""
    from . import methods as _methods
    from .errors import NeedsShapesError
    from .model_io import external_files

    m = _methods.get(method)
    declared = ex.outputs[[o.name for o in ex.outputs].index(ex.output)].shape
    if m.build is None or m.attribute is not None or declared is None or len(declared) != 2:
        return None
    kind = "argmax" if target is None else "target"
    try:
        graph = ex.compile(method, target=kind, softmax=softmax, modifier=modifier, **options)
    except NeedsShapesError:
        dims = [None, spec.channels, spec.height, spec.width] if spec.layout == "NCHW" else [None, spec.height, spec.width, spec.channels]
        try:
            graph = ex.compile(method, target=kind, softmax=softmax, modifier=modifier, input_shapes={spec.name: dims},
                               **options)
        except NeedsShapesError:
            return None
    if graph.ByteSize() > (1 << 31) - (1 << 26):  # an optimised graph is saved as one protobuf: under 2 GB
        return None
    forward_in, forward_out = {s.name for s in ex.inputs}, {o.name for o in ex.outputs}
    extra_in = [i.name for i in graph.graph.input if i.name not in forward_in]
    attribution = [o.name for o in graph.graph.output if o.name not in forward_out]
    staging = cache.staging()
    # on the CPU, the session that runs this call also writes its optimised graph into the entry;
    # other providers keep the graph as built (their optimised graphs are tied to the device's session)
    optimised = list(ex.providers) == ["CPUExecutionProvider"]
    session = ex.graph_session(graph, save_optimised=staging / GRAPH if optimised else None)
    if not optimised:
        write_bytes_atomic(graph.SerializeToString(), staging / GRAPH)
    manifest = {"spec": spec.__dict__, "preset": preset, "names": class_names(ex), "fixed_batch": fixed_batch,
                "output": ex.output, "n_classes": ex.n_classes(), "attribution": attribution[0], "target_input": extra_in[0] if extra_in else None,
                "optimised": optimised}
    entry = cache.commit(key, staging, manifest, sources=external_files(model_path))
    return None if entry is None else (entry, session)


def plan(model, method: str = "guided_backprop", target=None, preset: str = "auto", size=None, softmax: str = "identity",
         batch_size: int = 8, providers="auto", modifier: str | None = None, cache=None, **options) -> Plan:
    """The plan for explaining image files with `model`; with a `GraphCache`, read from it when an entry
    is there, else built by an Explainer and stored."""
    from .runtime import resolve_providers

    cacheable = cache is not None and isinstance(model, (str, os.PathLike)) and Path(model).is_file()
    if cacheable:
        resolved = resolve_providers(providers)
        key = cache.key(model, _config(method, target, preset, size, softmax, modifier, options), resolved)
        entry = cache.load(key)
        n = entry.manifest.get("n_classes") if entry is not None else None
        if entry is not None and target is not None and not (isinstance(target, int) and n and 0 <= target < n):
            entry = None  # the full path below says what is wrong with this target, as a first run would
        if entry is not None:
            try:
                return _cached_plan(entry, resolved, batch_size, method)
            except OnnxsalError:  # ONNX Runtime refuses the file: a broken entry, rebuilt below
                cache.discard(key)
    from .explainer import Explainer
    from .methods import modifiers

    ex = model if isinstance(model, Explainer) else Explainer(model, providers=providers)
    floats = [s for s in ex.inputs if s.dtype.kind == "f"]
    if len(ex.inputs) != 1 or not floats:
        raise OnnxsalError("explaining image files needs a model with one float image input; use the Python API for others.")
    spec = image_input(floats[0], size)
    modifiers.check(modifier)
    ex.check(method, target, **options)  # a problem of the model or the options is one error, not one per image
    fixed_batch = floats[0].shape[0] if isinstance(floats[0].shape[0], int) and floats[0].shape[0] > 0 else None
    batch_size = fixed_batch or batch_size  # a model exported with a fixed batch takes exactly that many
    preset = preset_from_metadata({p.key: p.value for p in ex.model.metadata_props}) if preset == "auto" else preset
    if cacheable:
        stored = _store(cache, key, ex, model, spec, preset, fixed_batch, method, target, softmax, modifier, options)
        if stored is not None:
            return _cached_plan(stored[0], resolved, batch_size, method, session=stored[1])
    return _live_plan(ex, spec, batch_size, preset, method, target, softmax, modifier, options)


def explain_images(
    model, images, out_dir, method: str = "guided_backprop", target=None, preset: str = "auto",
    size: tuple[int, int] | None = None, softmax: str = "identity", batch_size: int = 8, providers="auto",
    resume: bool = False, cmap: str = "jet", alpha: float = 0.5, progress: bool | None = None,
    modifier: str | None = None, cache=None, **options,
) -> list[Explained]:
    """Explain image files (or folders of them); write `<stem>.<method>.png` overlays and `.npy` maps.

    A file that cannot be read or explained is reported in its `Explained.error` and nothing is
    written for it; the others go on. With `resume`, images whose outputs exist are skipped.
    `cache`: a `GraphCache` (or a folder for one, or True for the default folder) that keeps the
    built graph for the next call, in this process or another.
    """
    p = plan(model, method, target, preset, size, softmax, batch_size, providers, modifier, graph_cache(cache), **options)
    paths = collect(images)
    stems = output_stems(paths)
    out = Path(out_dir)
    results = [Explained(path) for path in paths]
    todo = []
    for r, stem in zip(results, stems):
        png, npy = output_paths(out, stem, method)
        if resume and png.exists() and npy.exists():
            r.skipped, r.written = True, [png, npy]
        else:
            todo.append((r, png, npy))
    chunks = [todo[i:i + p.batch_size] for i in range(0, len(todo), p.batch_size)]
    if progress is None:
        import sys

        progress = len(todo) > p.batch_size and sys.stderr.isatty()
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc=f"explain ({method})", unit="batch")
    spec = p.spec
    for chunk in chunks:
        loaded = []
        for item in chunk:
            try:
                loaded.append((item, load(item[0].image, (spec.height, spec.width), spec.channels)))
            except OnnxsalError as exc:
                item[0].error = str(exc)
        explain_loaded(p, loaded, target, cmap, alpha)
    return results


def graph_cache(cache):
    """`cache=` as explain_images takes it (a GraphCache, a folder, True for the default folder, or
    None/False for none) as a GraphCache or None."""
    if cache is True or isinstance(cache, (str, os.PathLike)):
        from .cache import GraphCache

        cache = GraphCache(None if cache is True else cache)
    return cache or None


def output_paths(out: Path, stem: str, method: str) -> tuple[Path, Path]:
    """Where one image's overlay and map go: `<out>/<stem>.<method>.png` and `.npy`."""
    return out / f"{stem}.{method}.png", out / f"{stem}.{method}.npy"


def explain_loaded(p: Plan, loaded: list, target, cmap: str, alpha: float) -> np.ndarray | None:
    """Explain one batch of decoded images, `loaded` = [((Explained, png, npy), uint8 [H,W,C]), ...]
    (at most `p.batch_size`): fill in each Explained and write its overlay and map. Returns the maps,
    or None when the batch failed (each Explained then holds the error) or was empty. The local
    folder explainer and the Ray workers (onnxsal/dataset.py) share it, so they write the same files."""
    if not loaded:
        return None
    spec = p.spec
    pixels = np.stack([img for _, img in loaded])
    x = spec.to_model(preprocess(pixels, p.preset))
    classes = None if target is None else np.broadcast_to(np.asarray(target, np.int64), (len(x),))
    try:
        flat, maps = p.run(x, classes)
    except OnnxsalError as exc:
        for (r, _, _), _img in loaded:
            r.error = str(exc)
        return None
    for i, ((r, png, npy), img) in enumerate(loaded):
        r.predicted = int(flat[i].argmax())
        r.score = float(flat[i, r.predicted])
        r.label = p.names[r.predicted] if p.names and r.predicted < len(p.names) else None
        heat = heat_map(maps[i], spec.layout)
        base = img if spec.channels == 3 else np.repeat(img, 3, axis=-1)
        viz.save_png(viz.overlay(base, heat, alpha=alpha, cmap=cmap, layout="HWC"), png)
        _save_npy(maps[i], npy)
        r.written = [png, npy]
    return maps
