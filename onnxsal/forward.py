"""Forward passes over many perturbed copies of the inputs, in bounded batches.

Perturbation methods (occlusion, ablation, RISE, Shapley sampling, LIME) and the evaluation
metrics (deletion curves, infidelity) need the model's output on thousands of perturbed copies.
`forward_batches` makes them chunk by chunk (at most `per_eval` copies per onnxruntime run), so
memory stays flat, and shows a progress bar on long runs.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np

from .errors import InvalidInputError
from .runtime import run


def forward_batches(explainer, make_chunk: Callable[[np.ndarray], dict[str, np.ndarray]], total: int,
                    per_eval: int | None = None, output: str | None = None, progress: bool | None = None,
                    desc: str = "", session=None,
                    reduce: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """The explained output (or `output`) for `total` copies, concatenated along axis 0.

    `make_chunk(idx)` returns the model's feeds for copies `idx` (an int array, in order); it is
    called once per chunk of at most `per_eval` copies (all at once when None). `session` runs the
    chunks instead of the model's forward session (one that also returns an inner value, such as
    the logits under a softmax); `reduce(idx, out)`, when given, shrinks each chunk's output before
    it is kept (to the target's score, say), so only that is held for all copies."""
    if total < 1:
        raise InvalidInputError("there are no perturbed copies to run.")
    step = total if per_eval is None else int(per_eval)
    if step < 1:
        raise InvalidInputError(f"perturbations_per_eval must be a positive integer, not {per_eval!r}.")
    chunks = range(0, total, step)
    if progress is None:
        progress = len(chunks) > 4 and sys.stderr.isatty()
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc=desc or "forward passes", unit="batch", leave=False)
    name = output or explainer.output
    session = explainer.forward_session if session is None else session
    parts = []
    for lo in chunks:
        idx = np.arange(lo, min(lo + step, total))
        out = run(session, [name], make_chunk(idx))[0]
        parts.append(out if reduce is None else reduce(idx, out))
    return np.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]
