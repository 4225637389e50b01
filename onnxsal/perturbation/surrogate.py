"""KernelSHAP (Lundberg & Lee 2017) and LIME (Ribeiro et al. 2016), as Captum defines them.

Both explain a sample by a weighted linear regression of the score on interpretable binary
vectors z ∈ {0, 1}^F (z_f = 1 keeps feature group f, 0 replaces it by the baseline); the
attribution of every element of group f is the coefficient of z_f. They differ in how z is drawn
and weighted:

* KernelSHAP (Captum's `KernelShap`): first all ones, then all zeros (weight 1e6 each, standing in
  for the infinite weights of the Shapley kernel), then vectors with k ones, k drawn with
  probability ∝ (F − 1)/(k(F − k)) for k = 1..F−1 and the k features uniformly, weight 1: drawing
  k that way puts the Shapley kernel into the sampling distribution.
* LIME (Captum's `Lime`): each z_f ~ Bernoulli(1/2); weight exp(−d²/(2·kernel_width²)) with d the
  cosine distance (1 − cosine similarity) between the flattened sample and its perturbed copy
  (or their Euclidean distance with distance_mode="euclidean").

The regression is ordinary weighted least squares with an intercept, solved in NumPy (the
minimum-norm solution when the samples do not determine it), as scikit-learn's LinearRegression
solves it. Captum's Lime defaults to a Lasso(alpha=0.01); onnxsal's LIME is that linear
regression. The draws are NumPy's, reproducible from `seed`: `kernel_shap_samples` and
`lime_samples` return the vectors one sample is explained with.
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidInputError
from .masks import baseline_for, dense_ids, mask_of
from .runner import prepare

INFINITE_WEIGHT = 1e6  # Captum's stand-in for the Shapley kernel's infinite weight at |z| = 0 and |z| = F
DISTANCES = ("cosine", "euclidean")


def kernel_shap_samples(n_features: int, n_samples: int, rng: np.random.Generator) -> np.ndarray:
    """[n_samples, F] 0/1 vectors drawn as Captum's KernelShap draws them."""
    out = np.zeros((n_samples, n_features), dtype=np.int64)
    out[0] = 1
    if n_features < 2:
        return out
    k = np.arange(1, n_features)
    probs = (n_features - 1) / (k * (n_features - k))
    probs = probs / probs.sum()
    for i in range(2, n_samples):
        chosen = rng.choice(n_features, size=rng.choice(k, p=probs), replace=False)
        out[i, chosen] = 1
    return out


def kernel_shap_weights(samples: np.ndarray) -> np.ndarray:
    count = samples.sum(axis=1)
    return np.where((count == 0) | (count == samples.shape[1]), INFINITE_WEIGHT, 1.0)


def lime_samples(n_features: int, n_samples: int, rng: np.random.Generator) -> np.ndarray:
    """[n_samples, F] vectors of independent fair coin flips (Captum's Lime default)."""
    return (rng.random((n_samples, n_features)) < 0.5).astype(np.int64)


def exp_kernel(original: np.ndarray, perturbed: np.ndarray, distance_mode: str = "cosine", kernel_width: float = 1.0) -> np.ndarray:
    """LIME's weights exp(−d²/(2w²)) of perturbed copies [S, ...] of one sample."""
    a = original.reshape(-1).astype(np.float64)
    b = perturbed.reshape(perturbed.shape[0], -1).astype(np.float64)
    if distance_mode == "cosine":
        eps = 1e-8
        d = 1 - (b @ a) / (np.maximum(np.linalg.norm(b, axis=1), eps) * max(np.linalg.norm(a), eps))
    else:
        d = np.linalg.norm(b - a, axis=1)
    return np.exp(-(d ** 2) / (2 * kernel_width ** 2))


def weighted_linear_regression(z: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, float]:
    """(coefficients, intercept) minimising Σ w (y − c − z·β)², the minimum-norm β if several do."""
    z, y, w = z.astype(np.float64), y.astype(np.float64), w.astype(np.float64)
    z_mean = (w @ z) / w.sum()
    y_mean = (w @ y) / w.sum()
    root = np.sqrt(w)[:, None]
    beta = np.linalg.lstsq((z - z_mean) * root, (y - y_mean) * root[:, 0], rcond=None)[0]
    return beta, float(y_mean - z_mean @ beta)


def _check(n_samples, distance_mode="cosine", kernel_width=1.0):
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
        raise InvalidInputError(f"n_samples must be a positive integer, not {n_samples!r}.")
    if distance_mode not in DISTANCES:
        raise InvalidInputError(f"distance_mode must be one of {DISTANCES}, not {distance_mode!r}.")
    if not isinstance(kernel_width, (int, float)) or kernel_width <= 0:
        raise InvalidInputError(f"kernel_width must be a positive number, not {kernel_width!r}.")


def surrogate(pb, mask, base, draw, weigh, n_samples: int, seed: int, desc: str):
    """Per sample: draw the vectors, score the copies, weigh them, regress; the attribution and the draws."""
    x = pb.value
    n_features = int(mask.max()) + 1
    rng = np.random.default_rng(seed)
    draws = [draw(n_features, n_samples, rng) for _ in range(pb.n)]
    n_idx = np.repeat(np.arange(pb.n), n_samples)
    z_all = np.concatenate(draws)

    def copies(idx):
        n = n_idx[idx]
        m = mask[n] if mask.shape[0] > 1 else mask[np.zeros_like(n)]
        keep = np.take_along_axis(z_all[idx], m.reshape(len(idx), -1), axis=1).reshape(m.shape).astype(bool)
        return np.where(keep, x[n], base[n])

    scores = pb.scores(copies, n_idx, desc).reshape(pb.n, n_samples)
    attribution = np.empty(x.shape, dtype=x.dtype)
    for i in range(pb.n):
        rows = np.arange(i * n_samples, (i + 1) * n_samples)
        beta, _ = weighted_linear_regression(draws[i], scores[i], weigh(i, draws[i], lambda: (copies(r) for r in np.array_split(rows, max(1, n_samples // 256)))))
        attribution[i] = beta[mask[i if mask.shape[0] > 1 else 0]]
    return attribution, np.stack(draws)


def kernel_shap(explainer, feeds, target, softmax="identity", wrt=None, batch_size=None, *, feature_mask=None,
                superpixels=None, superpixel_options=None, baselines=None, n_samples=200, seed=0,
                perturbations_per_eval=None, progress=None):
    """({input: attribution}, {"feature_mask": ..., "samples": [N, S, F] the vectors drawn})."""
    _check(n_samples)
    pb = prepare(explainer, feeds, target, softmax, wrt, perturbations_per_eval, progress)
    mask = dense_ids(mask_of(pb.value, feature_mask, superpixels, superpixel_options))
    base = baseline_for(pb.value, baselines)
    attribution, draws = surrogate(pb, mask, base, kernel_shap_samples, lambda i, z, _: kernel_shap_weights(z),
                                   int(n_samples), seed, "KernelSHAP")
    return {pb.x: attribution}, {"feature_mask": mask, "samples": draws}


def lime(explainer, feeds, target, softmax="identity", wrt=None, batch_size=None, *, feature_mask=None,
         superpixels=None, superpixel_options=None, baselines=None, n_samples=200, seed=0, distance_mode="cosine",
         kernel_width=1.0, perturbations_per_eval=None, progress=None):
    """({input: attribution}, {"feature_mask": ..., "samples": [N, S, F] the vectors drawn})."""
    _check(n_samples, distance_mode, kernel_width)
    pb = prepare(explainer, feeds, target, softmax, wrt, perturbations_per_eval, progress)
    x = pb.value
    mask = dense_ids(mask_of(x, feature_mask, superpixels, superpixel_options))
    base = baseline_for(x, baselines)

    def weigh(i, z, copies):
        return np.concatenate([exp_kernel(x[i], c, distance_mode, float(kernel_width)) for c in copies()])

    attribution, draws = surrogate(pb, mask, base, lime_samples, weigh, int(n_samples), seed, "LIME")
    return {pb.x: attribution}, {"feature_mask": mask, "samples": draws}
