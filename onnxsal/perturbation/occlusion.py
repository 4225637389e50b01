"""Occlusion (Zeiler & Fergus; Captum's `Occlusion`): slide a window over the input, replace what
it covers by the baseline, and give every element the mean drop of the score, F(x) − F(x_occluded),
over the windows that cover it.

Windows and positions are Captum's (`masks.window_factors`). A window has the sample's rank;
for an image, a window of rank 2 (height, width) covers all channels. Occlusion is a fixed set of
perturbations, so it also compiles to one graph (`build_occlusion`) that gives the same numbers.
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidInputError
from ..layers import guess_layout
from .masks import baseline_for, contract_windows, outer_rows, window_factors
from .runner import explained_input, prepare


def _ints(value, name: str) -> tuple[int, ...]:
    try:
        out = tuple(int(v) for v in (value if isinstance(value, (list, tuple, np.ndarray)) else [value]))
    except (TypeError, ValueError):
        raise InvalidInputError(f"{name} must be an int or a tuple of ints, not {value!r}.") from None
    return out


def windows(sample_shape: tuple, sliding_window_shapes, strides) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The window and strides checked against the sample's shape (an image window of rank 2 covers all channels)."""
    if sliding_window_shapes is None:
        raise InvalidInputError("occlusion needs sliding_window_shapes: (3, 8, 8) on an NCHW image, say, or (8, 8) for all its channels.")
    window = _ints(sliding_window_shapes, "sliding_window_shapes")
    rank = len(sample_shape)
    if len(window) == rank - 1 and rank == 3:  # (h, w) on an image: all channels at once
        layout = guess_layout((1,) + tuple(sample_shape))
        window = (sample_shape[0],) + window if layout == "NCHW" else window + (sample_shape[-1],)
    if len(window) != rank:
        raise InvalidInputError(f"sliding_window_shapes {tuple(window)} must have one size per sample axis "
                                f"({rank}: the input's sample shape is {tuple(sample_shape)}).")
    stride = (1,) * rank if strides is None else _ints(strides, "strides")
    if len(stride) == 1:
        stride = stride * rank
    if len(stride) != rank:
        raise InvalidInputError(f"strides {stride} must be one int or one per sample axis ({rank}).")
    for size, w, s in zip(sample_shape, window, stride):
        if not 1 <= w <= size:
            raise InvalidInputError(f"the occlusion window {tuple(window)} does not fit the sample shape {tuple(sample_shape)}: "
                                    f"each size must lie between 1 and the input's.")
        if s < 1 or (w < size and s > w):
            raise InvalidInputError(f"strides {stride} must be at least 1 and at most the window {tuple(window)} "
                                    f"(else some elements are never occluded).")
    return window, stride


def occlusion(explainer, feeds, target, softmax="identity", wrt=None, batch_size=None, *, sliding_window_shapes=None,
              strides=None, baselines=None, perturbations_per_eval=None, progress=None):
    """{input: attribution of the input's shape}: mean score drop over the windows covering each element."""
    pb = prepare(explainer, feeds, target, softmax, wrt, perturbations_per_eval, progress)
    x = pb.value
    window, stride = windows(x.shape[1:], sliding_window_shapes, strides)
    factors = window_factors(x.shape[1:], window, stride)
    base = baseline_for(x, baselines)
    positions = int(np.prod([f.shape[0] for f in factors]))
    n_idx = np.repeat(np.arange(pb.n), positions)
    p_idx = np.tile(np.arange(positions), pb.n)

    def make(idx):
        m = outer_rows(factors, p_idx[idx]).astype(x.dtype)
        xs, bs = x[n_idx[idx]], base[n_idx[idx]]
        return xs + (bs - xs) * m

    drops = pb.clean_scores()[:, None] - pb.scores(make, n_idx, "occlusion").reshape(pb.n, positions)
    counts = contract_windows(np.ones((1, positions)), factors)
    return {pb.x: (contract_windows(drops, factors) / counts).astype(x.dtype)}


def build_occlusion(explainer, target_kind, softmax, wrt, sliding_window_shapes=None, strides=None, baselines=None):
    """The compiled occlusion: the model runs once on [x ; all occluded copies], stacked in the graph."""
    from .compiled import Perturbed

    x = explained_input(explainer, wrt)
    shape = explainer.view.shape(x)
    if shape is None or not all(isinstance(d, int) and d > 0 for d in shape[1:]):
        raise InvalidInputError(f"a compiled occlusion needs the sample shape of {x!r} fixed (pass input_shapes=), not {shape}.")
    sample = tuple(shape[1:])
    window, stride = windows(sample, sliding_window_shapes, strides)
    factors = window_factors(sample, window, stride)
    positions = int(np.prod([f.shape[0] for f in factors]))
    pg = Perturbed(explainer, x, positions, "occlusion", softmax)
    e = pg.e
    dtype = pg.dtype
    k = len(factors)
    masks = None  # [P_0, ..., P_k-1, D_0, ..., D_k-1] as the outer product of the factors, then [P, *sample]
    for d, f in enumerate(factors):
        dims = [f.shape[0] if j == d else 1 for j in range(k)] + [f.shape[1] if j == d else 1 for j in range(k)]
        part = e.const(f.astype(dtype).reshape(dims), name="window")
        masks = part if masks is None else e.op("Mul", [masks, part])
    masks = e.op("Reshape", [masks, e.ints([positions] + list(sample), name="masks_shape")])
    base = pg.baseline(baselines)
    diff = e.op("Sub", [base, x])  # [N, *sample]
    copies = e.op("Add", [e.unsqueeze(x, [0]), e.op("Mul", [e.unsqueeze(diff, [0]), e.unsqueeze(masks, [1])])])
    scores = pg.run(copies, target_kind)  # [P + 1, N]
    drops = e.op("Sub", [e.slice(scores, [0], [1], [0]), e.slice(scores, [1], [positions + 1], [0])])  # [P, N]
    t = e.op("Reshape", [e.transpose(drops, [1, 0]), e.ints([-1] + [f.shape[0] for f in factors], name="positions")])
    for f in factors:
        t = e.op("MatMul", [e.transpose(t, [0] + list(range(2, k + 1)) + [1]), e.const(f.astype(dtype), name="window")])
    counts = contract_windows(np.ones((1, positions)), factors)[0]
    out = e.fresh(f"{x}_occlusion")
    e.op("Div", [t, e.const(counts.astype(dtype), name="counts")], out=out)
    return pg.finish(out, list(shape))
