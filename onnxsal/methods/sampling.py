"""Running a gradient method over many perturbed copies of each input, in bounded batches.

SmoothGrad and Integrated Gradients both need Σ_s w_s·a(x_s) (and SmoothGrad² and VarGrad also
Σ_s w_s·a(x_s)²) over S perturbed copies x_s of every input. The N×S copies are made chunk by
chunk (at most `internal_batch_size` per graph run), so memory stays flat as N and S grow.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np

from ..errors import InvalidInputError
from ..inputs import Target, take
from ..runtime import run
from . import get

INPUT_BUDGET = 1 << 22  # elements of perturbed input per graph run, when no batch size is given


def base_graph(explainer, base: str, softmax: str, wrt, kind: str = "target"):
    """The base method's graph, taking class indices (`kind` "target") or a seed tensor ("tensor")."""
    m = get(base)
    if m.build is None:
        raise InvalidInputError(f"the base method must be one graph run (one of gradient, guided_backprop, deconvnet, input_x_gradient, ...), not {base!r}.")
    return explainer.method_graph(base, kind, softmax, wrt)


def fixed_target(explainer, feeds, target: Target) -> Target:
    """Sampling methods explain the class of the clean input: resolve the argmax once, up front."""
    return explainer.top_classes(feeds) if target.kind == "argmax" else target


def accumulate(
    explainer, feeds: dict[str, np.ndarray], target: Target, base: str, softmax: str, wrt: tuple[str, ...],
    n_samples: int, perturb: Callable[[str, np.ndarray, np.ndarray], np.ndarray], weights: np.ndarray,
    squares: bool = False, internal_batch_size: int | None = None, progress: bool | None = None, desc: str = "",
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    """Σ_s w_s·a(x_s) (and Σ_s w_s·a(x_s)² if `squares`) for every sample and wrt input.

    `perturb(name, n_idx, s_idx)` returns the perturbed copies of input `name` for the pairs
    (sample n_idx[i], perturbation s_idx[i]).
    """
    graph, session = base_graph(explainer, base, softmax, wrt, "tensor" if target.kind == "tensor" else "target")
    axes = explainer.batch_axes(feeds, wrt)  # inputs without the batch (states, scalars) are fed whole
    n = feeds[explainer._batch_input(wrt)].shape[0]
    total = n * n_samples
    per_copy = sum(int(np.prod(feeds[w].shape[1:])) for w in wrt if w in feeds) or 1
    step = int(internal_batch_size) if internal_batch_size else max(1, min(total, INPUT_BUDGET // per_copy))
    if step < 1:
        raise InvalidInputError("internal_batch_size must be a positive integer.")
    acc = {w: None for w in wrt}
    acc2 = {w: None for w in wrt} if squares else None
    names = [graph.attributions[w] for w in wrt]
    chunks = range(0, total, step)
    if progress is None:
        progress = len(chunks) > 4 and sys.stderr.isatty()
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc=desc, unit="batch", leave=False)
    for lo in chunks:
        combo = np.arange(lo, min(lo + step, total))
        n_idx, s_idx = combo // n_samples, combo % n_samples
        chunk = {name: (perturb(name, n_idx, s_idx) if name in wrt else take(value, axes[name], n_idx)) for name, value in feeds.items()}
        if target.kind == "target":
            chunk[graph.target_input] = target.take(n_idx)
        else:
            chunk[graph.seed_input] = target.take(n_idx)
        outs = run(session, names, chunk)
        w = weights[s_idx].reshape((-1,) + (1,) * (outs[0].ndim - 1)).astype(outs[0].dtype)
        bounds = np.flatnonzero(np.diff(n_idx)) + 1
        for name, a in zip(wrt, outs):
            if acc[name] is None:
                acc[name] = np.zeros((n,) + a.shape[1:], dtype=np.float64)
                if squares:
                    acc2[name] = np.zeros_like(acc[name])
            for seg_n, seg_a, seg_w in zip(np.split(n_idx, bounds), np.split(a, bounds), np.split(w, bounds)):
                acc[name][seg_n[0]] += (seg_w * seg_a).sum(axis=0, dtype=np.float64)
                if squares:
                    acc2[name][seg_n[0]] += (seg_w * seg_a * seg_a).sum(axis=0, dtype=np.float64)
    return acc, acc2
