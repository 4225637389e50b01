"""Explaining folders of image files: every output written atomically, failures reported, resumable."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import visualize as viz
from .errors import OnnxsalError
from .explainer import Explainer
from .methods import modifiers
from .images import collect, image_input, load, preprocess, preset_from_metadata
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


def class_names(explainer: Explainer) -> list[str] | None:
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


def explain_images(
    model, images, out_dir, method: str = "guided_backprop", target=None, preset: str = "auto",
    size: tuple[int, int] | None = None, softmax: str = "identity", batch_size: int = 8, providers="auto",
    resume: bool = False, cmap: str = "jet", alpha: float = 0.5, progress: bool | None = None,
    modifier: str | None = None, **options,
) -> list[Explained]:
    """Explain image files (or folders of them); write `<stem>.<method>.png` overlays and `.npy` maps.

    A file that cannot be read or explained is reported in its `Explained.error` and nothing is
    written for it; the others go on. With `resume`, images whose outputs exist are skipped.
    """
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
    paths = collect(images)
    stems = output_stems(paths)
    out = Path(out_dir)
    names = class_names(ex)
    results = [Explained(p) for p in paths]
    todo = []
    for r, stem in zip(results, stems):
        png, npy = out / f"{stem}.{method}.png", out / f"{stem}.{method}.npy"
        if resume and png.exists() and npy.exists():
            r.skipped, r.written = True, [png, npy]
        else:
            todo.append((r, png, npy))
    chunks = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
    if progress is None:
        import sys

        progress = len(todo) > batch_size and sys.stderr.isatty()
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc=f"explain ({method})", unit="batch")
    for chunk in chunks:
        loaded = []
        for item in chunk:
            try:
                loaded.append((item, load(item[0].image, (spec.height, spec.width), spec.channels)))
            except OnnxsalError as exc:
                item[0].error = str(exc)
        if not loaded:
            continue
        pixels = np.stack([img for _, img in loaded])
        x = spec.to_model(preprocess(pixels, preset))
        try:
            scores = ex.predict(x)
            flat = scores.reshape(len(scores), scores.shape[1], -1).sum(-1) if scores.ndim > 2 else scores
            classes = flat.argmax(1) if target is None else np.broadcast_to(np.asarray(target), (len(flat),))
            maps = ex.attribute(x, target=classes.astype(np.int64), method=method, softmax=softmax, modifier=modifier,
                                **options)
        except OnnxsalError as exc:
            for (r, _, _), _img in loaded:
                r.error = str(exc)
            continue
        for i, ((r, png, npy), img) in enumerate(loaded):
            r.predicted = int(flat[i].argmax())
            r.score = float(flat[i, r.predicted])
            r.label = names[r.predicted] if names and r.predicted < len(names) else None
            heat = heat_map(maps[i], spec.layout)
            base = img if spec.channels == 3 else np.repeat(img, 3, axis=-1)
            viz.save_png(viz.overlay(base, heat, alpha=alpha, cmap=cmap, layout="HWC"), png)
            _save_npy(maps[i], npy)
            r.written = [png, npy]
    return results
