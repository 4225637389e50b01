"""SmoothGrad (Smilkov et al.): average a gradient method over noisy copies of the input.

noise ~ N(0, σ²) with σ = noise_level × (max − min) of each sample (default 0.15), or an absolute
`stdev`; n_samples copies (default 50); seeded. Aggregations: "mean" (SmoothGrad), "square"
(SmoothGrad², mean of squares) and "variance" (VarGrad). Captum's names (smoothgrad,
smoothgrad_sq, vargrad) are accepted too.
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidInputError
from . import Method, register
from .expand import build_smoothgrad
from .sampling import accumulate, fixed_target

AGGREGATIONS = {"mean": "mean", "smoothgrad": "mean", "square": "square", "smoothgrad_sq": "square",
                "variance": "variance", "vargrad": "variance"}


def noise_scale(x: np.ndarray, noise_level: float, stdev) -> np.ndarray:
    """σ per sample: absolute `stdev`, else noise_level × (max − min) of each sample."""
    if stdev is not None:
        return np.full(x.shape[0], float(stdev), dtype=x.dtype)
    flat = x.reshape(x.shape[0], -1)
    return (noise_level * (flat.max(axis=1) - flat.min(axis=1))).astype(x.dtype)


def standard_noise(seed: int, n_samples: int, sample_shape: tuple, dtype) -> np.ndarray:
    """The N(0, 1) draws shared by every sample of a batch: (n_samples, *sample_shape), seeded."""
    return np.random.default_rng(seed).standard_normal((n_samples,) + tuple(sample_shape)).astype(dtype)


def _check(n_samples, noise_level, aggregation):
    if int(n_samples) < 1:
        raise InvalidInputError(f"n_samples must be at least 1, not {n_samples}.")
    if noise_level < 0:
        raise InvalidInputError(f"noise_level must be >= 0, not {noise_level}.")
    if aggregation not in AGGREGATIONS:
        raise InvalidInputError(f"aggregation must be one of {sorted(AGGREGATIONS)}, not {aggregation!r}.")


def smoothgrad(explainer, feeds, target, softmax="identity", wrt=None, batch_size=None, *, base="gradient",
               n_samples=50, noise_level=0.15, stdev=None, aggregation="mean", seed=0, noise=None,
               internal_batch_size=None, progress=None):
    _check(n_samples, noise_level, aggregation)
    wrt = explainer._wrt(wrt)
    if any(name not in feeds for name in wrt):  # an inner tensor (a token model's embeddings) gets the noise itself
        from .inner import on_cut

        child, child_feeds = on_cut(explainer, feeds, wrt)
        return smoothgrad(child, child_feeds, target, softmax, wrt, batch_size, base=base, n_samples=n_samples,
                          noise_level=noise_level, stdev=stdev, aggregation=aggregation, seed=seed, noise=noise,
                          internal_batch_size=internal_batch_size, progress=progress)
    n_samples = int(n_samples)
    target = fixed_target(explainer, feeds, target)
    perturbations = {}
    for i, name in enumerate(wrt):
        x = feeds[name]
        if noise is not None:
            given = np.asarray(noise[name] if isinstance(noise, dict) else noise, dtype=x.dtype)
            if given.shape == (n_samples,) + x.shape:  # per sample: (S, N, ...)
                perturbations[name] = ("per_sample", given)
            elif given.shape == (n_samples,) + x.shape[1:]:  # shared by the batch: (S, ...)
                perturbations[name] = ("shared", given)
            else:
                raise InvalidInputError(
                    f"noise for {name!r} must have shape {(n_samples,) + x.shape[1:]} or {(n_samples,) + x.shape}, got {given.shape}."
                )
        else:
            eps = standard_noise(seed + i, n_samples, x.shape[1:], x.dtype)
            scale = noise_scale(x, noise_level, stdev)
            perturbations[name] = ("scaled", (eps, scale))

    def perturb(name, n_idx, s_idx):
        kind, data = perturbations[name]
        x = feeds[name][n_idx]
        if kind == "per_sample":
            return x + data[s_idx, n_idx]
        if kind == "shared":
            return x + data[s_idx]
        eps, scale = data
        return x + eps[s_idx] * scale[n_idx].reshape((-1,) + (1,) * (x.ndim - 1))

    how = AGGREGATIONS[aggregation]
    acc, acc2 = accumulate(explainer, feeds, target, base, softmax, wrt, n_samples, perturb,
                           np.ones(n_samples), squares=how != "mean",
                           internal_batch_size=internal_batch_size or batch_size, progress=progress, desc="SmoothGrad")
    out = {}
    for name in wrt:
        mean = acc[name] / n_samples
        if how == "mean":
            result = mean
        elif how == "square":
            result = acc2[name] / n_samples
        else:
            result = acc2[name] / n_samples - mean * mean
        out[name] = result.astype(feeds[name].dtype if name in feeds else np.float32)
    return out


register(Method("smoothgrad", build_smoothgrad, smoothgrad, summary="mean of a gradient method over noisy copies"))
