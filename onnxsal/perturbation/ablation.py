"""Feature ablation (Captum's `FeatureAblation`): replace one feature group at a time by the
baseline; every element of the group gets the drop of the score, F(x) − F(x with the group ablated).

Groups come from a feature mask (`masks.feature_mask_for`: given, one mask for all samples or one
per sample), from superpixels of each image (superpixels="slic" or "quickshift", with
scikit-image's parameters in superpixel_options), or are single elements when neither is given.
"""

from __future__ import annotations

import numpy as np

from .masks import baseline_for, mask_of
from .runner import prepare


def feature_groups(mask: np.ndarray, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per sample: (its feature ids, each element's index into them)."""
    out = []
    for i in range(n):
        ids, inverse = np.unique(mask[i if mask.shape[0] > 1 else 0], return_inverse=True)
        out.append((ids, inverse.reshape(mask.shape[1:])))
    return out


def feature_ablation(explainer, feeds, target, softmax="identity", wrt=None, batch_size=None, *, feature_mask=None,
                     superpixels=None, superpixel_options=None, baselines=None, perturbations_per_eval=None, progress=None):
    """({input: attribution of the input's shape}, {"feature_mask": the mask used})."""
    pb = prepare(explainer, feeds, target, softmax, wrt, perturbations_per_eval, progress)
    x = pb.value
    mask = mask_of(x, feature_mask, superpixels, superpixel_options)
    base = baseline_for(x, baselines)
    groups = feature_groups(mask, pb.n)
    n_idx = np.concatenate([np.full(len(ids), i) for i, (ids, _) in enumerate(groups)])
    f_idx = np.concatenate([np.arange(len(ids)) for ids, _ in groups])

    def make(idx):
        out = x[n_idx[idx]].copy()
        for j, (i, f) in enumerate(zip(n_idx[idx], f_idx[idx])):
            hit = groups[i][1] == f
            out[j][hit] = base[i][hit]
        return out

    scores = pb.scores(make, n_idx, "feature ablation")
    clean = pb.clean_scores()
    attribution = np.empty(x.shape, dtype=x.dtype)
    lo = 0
    for i, (ids, inverse) in enumerate(groups):
        drops = clean[i] - scores[lo: lo + len(ids)]
        lo += len(ids)
        attribution[i] = drops[inverse]
    return {pb.x: attribution}, {"feature_mask": mask}
