"""Captum's infidelity and max-sensitivity (Yeh et al. 2019, "On the (In)fidelity and Sensitivity of
Explanations"), with Captum's definitions, on an ONNX model.

* infidelity: E_I[(I . a - (f(x) - f(x - I)))^2] over random perturbations I, for attribution a and
  the target's score f; with `normalize`, a is first scaled by the beta that minimises it
  (beta = E[(I . a)(f(x) - f(x - I))] / E[(I . a)^2]), so the value does not depend on the map's scale.
  Lower is better: the map predicts what perturbing the input does to the output.
* max-sensitivity: max over random perturbations x' in a small ball of ||a(x') - a(x)|| / ||a(x)||.
  Lower is better: the map does not jump when the input barely moves.

A perturbation function takes the repeated inputs [n x N, ...] (each sample n times in a row, as
Captum's `repeat_interleave` lays them out) and a NumPy Generator; for infidelity it returns
(perturbations I, perturbed inputs), for sensitivity the perturbed inputs (a one-argument function
is called without the Generator). The defaults are seeded. Samples are processed in groups of at
most `per_eval` copies, and the function is called once per group, in order, so a function that
draws from the Generator sees the same stream as one call on every copy at once.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..errors import InvalidInputError
from ..forward import forward_batches
from .scoring import Scorer, as_explainer, call_perturb, forward, image_input, resolve_target


def gaussian_perturbation(noise_level: float = 0.1, stdev: float | None = None) -> Callable:
    """Infidelity's default: I ~ N(0, s^2) with s = noise_level x (max - min) of each sample (or an
    absolute `stdev`), perturbed input x - I (Yeh et al.'s noisy baseline)."""

    def perturb(x: np.ndarray, rng: np.random.Generator):
        axes = tuple(range(1, x.ndim))
        s = stdev if stdev is not None else noise_level * (x.max(axis=axes, keepdims=True) - x.min(axis=axes, keepdims=True))
        noise = rng.standard_normal(x.shape) * s
        return noise, x - noise

    return perturb


def uniform_perturbation(radius: float = 0.02) -> Callable:
    """Sensitivity's default (Captum's): x + U(-radius, radius) in every element, the L-inf ball."""

    def perturb(x: np.ndarray, rng: np.random.Generator):
        return x + rng.uniform(-radius, radius, x.shape)

    return perturb


def _groups(n: int, copies: int, per_eval: int | None) -> list[np.ndarray]:
    """Sample indices in groups whose copies fit `per_eval` (at least one sample per group)."""
    size = n if per_eval is None else max(1, int(per_eval) // copies)
    return [np.arange(lo, min(lo + size, n)) for lo in range(0, n, size)]


def _check_samples(n_perturb_samples) -> int:
    if not isinstance(n_perturb_samples, (int, np.integer)) or n_perturb_samples < 1:
        raise InvalidInputError(f"n_perturb_samples must be a positive integer, not {n_perturb_samples!r}.")
    return int(n_perturb_samples)


def infidelity(model, inputs, attributions, target=None, *, perturb_func: Callable | None = None,
               n_perturb_samples: int = 10, normalize: bool = False, score: str = "raw", seed: int = 0,
               per_eval: int | None = 64, progress: bool | None = None) -> np.ndarray:
    """Infidelity of `attributions` (the inputs' shape) for each sample [N], as `captum.metrics.infidelity`.

    `perturb_func(x_repeated, rng) -> (I, x_perturbed)`; default `gaussian_perturbation()`. `score`
    "raw" compares the model's output itself, as Captum does ("probability", "softmax": see `Scorer`)."""
    ex = as_explainer(model)
    name, x = image_input(ex, inputs)
    a = np.asarray(attributions, np.float64)
    if a.shape != x.shape:
        raise InvalidInputError(f"infidelity needs attributions of the inputs' shape {x.shape}, not {a.shape}.")
    n_samples = _check_samples(n_perturb_samples)
    perturb = perturb_func or gaussian_perturbation()
    rng = np.random.default_rng(seed)
    clean = forward(ex, name, x)
    t = resolve_target(target, clean)
    scorer = Scorer(score, clean)
    f_x = scorer(clean, t)
    sums = np.zeros((4, len(x)))  # per sample, over the perturbations: sums of (I.a)^2, (I.a)df, df^2, (I.a - df)^2
    for group in _groups(len(x), n_samples, per_eval):
        reps = np.repeat(group, n_samples)
        pert, perturbed = _pair(call_perturb(perturb, x[reps], rng), len(reps), x.shape[1:])
        feeds = perturbed.astype(x.dtype)
        out = forward_batches(ex, lambda idx: {name: feeds[idx]}, len(reps), per_eval, progress=progress,
                              desc="infidelity")
        df = (f_x[reps] - scorer(out, t[reps])).reshape(len(group), n_samples)
        ia = (pert.reshape(len(reps), -1) * a[reps].reshape(len(reps), -1)).sum(axis=1).reshape(len(group), n_samples)
        sums[:, group] = [(ia * ia).sum(1), (ia * df).sum(1), (df * df).sum(1), ((ia - df) ** 2).sum(1)]
    if normalize:
        beta = sums[1] / np.where(sums[0] != 0, sums[0], 1.0)  # Captum's safe_div
        return (beta * beta * sums[0] - 2 * beta * sums[1] + sums[2]) / n_samples
    return sums[3] / n_samples


def _pair(result, count: int, sample_shape: tuple) -> tuple[np.ndarray, np.ndarray]:
    """An infidelity perturbation's (I, perturbed inputs), checked."""
    if not (isinstance(result, tuple) and len(result) == 2):
        raise InvalidInputError("an infidelity perturb_func must return (perturbations, perturbed inputs).")
    pert, perturbed = (np.asarray(r, np.float64) for r in result)
    if pert.shape != (count, *sample_shape) or perturbed.shape != (count, *sample_shape):
        raise InvalidInputError(f"perturb_func returned shapes {pert.shape} and {perturbed.shape}; "
                                f"both must be {(count, *sample_shape)}.")
    return pert, perturbed


def _norm(v: np.ndarray, norm_ord) -> np.ndarray:
    """Norm of each row: "fro" (the default, L2 of the flattened map, as torch.norm does) or a p."""
    if norm_ord in ("fro", 2, 2.0):
        return np.sqrt((v * v).sum(axis=1))
    if isinstance(norm_ord, str):
        raise InvalidInputError(f"norm_ord must be 'fro' or a number (1, 2, inf, ...), not {norm_ord!r}.")
    return np.linalg.norm(v, ord=norm_ord, axis=1)


def sensitivity_max(model, inputs, method: str = "gradient", target=None, *, perturb_func: Callable | None = None,
                    perturb_radius: float = 0.02, n_perturb_samples: int = 10, norm_ord="fro", seed: int = 0,
                    attributions=None, explanation_func: Callable | None = None, batch_size: int | None = None,
                    per_eval: int | None = 64, method_options: dict | None = None) -> np.ndarray:
    """Max-sensitivity of `method`'s maps for each sample [N], as `captum.metrics.sensitivity_max`.

    The explanation is `explainer.attribute(x, target=..., method=method, **method_options)`, each copy for
    its sample's target (the top class on the clean input unless given), or `explanation_func(x,
    target)`. `perturb_func(x_repeated, rng) -> x_perturbed`; default `uniform_perturbation(perturb_radius)`.
    `attributions`: the clean inputs' maps when already computed."""
    ex = as_explainer(model)
    name, x = image_input(ex, inputs)
    n_samples = _check_samples(n_perturb_samples)
    perturb = perturb_func or uniform_perturbation(perturb_radius)
    rng = np.random.default_rng(seed)
    t = resolve_target(target, forward(ex, name, x))

    def explain(batch: np.ndarray, classes: np.ndarray) -> np.ndarray:
        if explanation_func is not None:
            return np.asarray(explanation_func(batch, classes), np.float64)
        maps = ex.attribute(batch, target=classes, method=method, batch_size=batch_size, **(method_options or {}))
        return np.asarray(maps, np.float64)

    a = np.asarray(attributions, np.float64) if attributions is not None else explain(x, t)
    a = a.reshape(len(x), -1)
    a_norm = _norm(a, norm_ord)
    a_norm = np.where(a_norm == 0, 1.0, a_norm)
    result = np.empty(len(x))
    for group in _groups(len(x), n_samples, per_eval):
        reps = np.repeat(group, n_samples)
        perturbed = np.asarray(call_perturb(perturb, x[reps], rng))
        if perturbed.shape != (len(reps), *x.shape[1:]):
            raise InvalidInputError(f"perturb_func returned shape {perturbed.shape}, expected {(len(reps), *x.shape[1:])}.")
        maps = explain(perturbed.astype(x.dtype), t[reps]).reshape(len(reps), -1)
        ratio = _norm(a[reps] - maps, norm_ord) / a_norm[reps]
        result[group] = ratio.reshape(len(group), n_samples).max(axis=1)
    return result
