"""Shapley Value Sampling (Castro et al. 2009; Captum's `ShapleyValueSampling`).

For each of n_samples random orders of the F features (ids 0..max of the feature mask), start at
the baseline and add the features back one by one in that order; a feature's attribution is the
mean, over the orders, of the score's change when it is added. The orders are drawn with NumPy
from `seed` (`permutations`), the same for every sample of the batch, as in Captum.
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidInputError
from .masks import baseline_for, dense_ids, mask_of
from .runner import prepare


def permutations(n_features: int, n_samples: int, seed: int = 0) -> np.ndarray:
    """[n_samples, n_features] random orders of the features, reproducible from `seed`."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(n_features) for _ in range(n_samples)]) if n_samples else np.zeros((0, n_features), np.int64)


def shapley_value_sampling(explainer, feeds, target, softmax="identity", wrt=None, batch_size=None, *, feature_mask=None,
                           superpixels=None, superpixel_options=None, baselines=None, n_samples=25, seed=0,
                           perturbations_per_eval=None, progress=None):
    """({input: attribution of the input's shape}, {"feature_mask": ..., "permutations": [S, F]})."""
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
        raise InvalidInputError(f"n_samples must be a positive integer, not {n_samples!r}.")
    pb = prepare(explainer, feeds, target, softmax, wrt, perturbations_per_eval, progress)
    x = pb.value
    mask = dense_ids(mask_of(x, feature_mask, superpixels, superpixel_options))
    base = baseline_for(x, baselines)
    n_features = int(mask.max()) + 1
    orders = permutations(n_features, int(n_samples), seed)
    ranks = np.argsort(orders, axis=1)  # ranks[s, f]: the step at which feature f is added in order s
    steps = n_samples * n_features
    n_idx = np.repeat(np.arange(pb.n), steps)
    s_idx = np.tile(np.repeat(np.arange(n_samples), n_features), pb.n)
    j_idx = np.tile(np.arange(n_features), pb.n * n_samples)

    def make(idx):
        n, s, j = n_idx[idx], s_idx[idx], j_idx[idx]
        m = mask[n] if mask.shape[0] > 1 else mask[np.zeros_like(n)]
        added = np.take_along_axis(ranks[s], m.reshape(len(idx), -1), axis=1).reshape(m.shape) <= j.reshape((-1,) + (1,) * (m.ndim - 1))
        return np.where(added, x[n], base[n])

    scores = pb.scores(make, n_idx, "Shapley value sampling").reshape(pb.n, n_samples, n_features)
    start = pb.clean_scores(base)
    gains = np.diff(np.concatenate([np.broadcast_to(start[:, None, None], (pb.n, n_samples, 1)), scores], axis=2), axis=2)
    by_feature = np.take_along_axis(gains, np.broadcast_to(ranks[None], gains.shape), axis=2).mean(axis=1)  # [N, F]
    m = mask if mask.shape[0] > 1 else np.broadcast_to(mask, (pb.n,) + mask.shape[1:])
    attribution = np.stack([by_feature[i][m[i]] for i in range(pb.n)]).astype(x.dtype)
    return {pb.x: attribution}, {"feature_mask": mask, "permutations": orders}
