"""Deletion and insertion curves (Petsiuk et al. 2018, RISE) and MoRF/LeRF pixel flipping (Samek et
al. 2017): replace the input's pixels (or square patches) in the order an attribution ranks them and
follow the target's score.

* deletion: start from the image, replace the most relevant pixels first by a baseline (zeros by
  default); a good map makes the score fall fast, so a low area under the curve (AUC) is good.
* insertion: start from the baseline (zeros by default, as the design's convention says; the RISE
  paper's canvas is `baseline="blur"`) and put the most relevant pixels back first; a good map makes
  the score rise fast: a high AUC is good.
* MoRF / LeRF: most / least relevant first, by patches (uniform noise by default, as Samek et al.);
  AOPC, the mean drop f(x) - f(x_k) over the steps, is high for MoRF and low for LeRF on a good map.

Every copy is built in NumPy, for all images and steps at once in each chunk, and all copies go
through the model's one forward session in bounded chunks (`onnxsal.forward.forward_batches`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InvalidInputError
from ..forward import forward_batches
from ..layers import guess_layout
from ..visualize import REDUCTIONS, reduce_channels
from .scoring import Scorer, as_explainer, forward, image_input, resolve_target

KINDS = ("deletion", "insertion", "morf", "lerf")
BASELINES = ("zeros", "blur", "mean", "uniform")


@dataclass
class Curve:
    """The target's score [N, steps + 1] against the fraction of pixels replaced [steps + 1]."""

    kind: str
    fractions: np.ndarray
    scores: np.ndarray

    @property
    def auc(self) -> np.ndarray:
        """Area under each image's curve over the fraction replaced (trapezoid rule), [N]."""
        return area(self.fractions, self.scores)

    @property
    def aopc(self) -> np.ndarray:
        """Samek et al.'s area over the perturbation curve: the mean of f(x_0) - f(x_k) over k, [N]."""
        return (self.scores[:, :1] - self.scores).mean(axis=1)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "fractions": self.fractions.tolist(), "scores": self.scores.tolist(),
                "auc": self.auc.tolist(), "aopc": self.aopc.tolist()}


def area(fractions: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Trapezoid area under scores [N, S] over fractions [S]."""
    f = np.asarray(fractions, np.float64)
    s = np.asarray(scores, np.float64)
    return (0.5 * (s[:, 1:] + s[:, :-1]) * np.diff(f)[None]).sum(axis=1)


# -- geometry: which positions form a unit (pixel or patch) ----------------------------------------------
@dataclass(frozen=True)
class Geometry:
    """How one sample is cut into units: pixels (or patch x patch squares) of an image [C,H,W] /
    [H,W,C], with every channel of a pixel replaced together; or, for other ranks, every element."""

    shape: tuple[int, ...]  # one sample
    channel_axis: int | None  # within the sample; None: every element is a unit
    patch: int = 1

    @property
    def grid(self) -> tuple[int, ...]:
        """The map's shape: (H, W) of an image, the sample's shape otherwise."""
        if self.channel_axis is None:
            return self.shape
        return tuple(d for i, d in enumerate(self.shape) if i != self.channel_axis)

    @property
    def unit_of_position(self) -> np.ndarray:
        """The unit id of each position of the flattened map."""
        if self.channel_axis is None or self.patch == 1:
            return np.arange(int(np.prod(self.grid)))
        h, w = self.grid
        cols = -(-w // self.patch)
        rows = np.arange(h)[:, None] // self.patch
        return (rows * cols + np.arange(w)[None, :] // self.patch).ravel()

    @property
    def n_units(self) -> int:
        return int(self.unit_of_position.max()) + 1

    def expand(self, mask: np.ndarray) -> np.ndarray:
        """A mask [c, positions] shaped to broadcast against copies [c, *shape]."""
        shape = list(self.shape)
        if self.channel_axis is not None:
            shape[self.channel_axis] = 1
        return mask.reshape(len(mask), *shape)


def geometry(x: np.ndarray, layout: str = "auto", patch: int = 1) -> Geometry:
    """The geometry of a batch `x`: images when it has rank 4 (layout NCHW/NHWC, "auto" guesses it)."""
    sample = tuple(int(d) for d in x.shape[1:])
    if x.ndim != 4:
        if patch != 1:
            raise InvalidInputError(f"patches need image inputs [N,C,H,W] or [N,H,W,C]; this input has shape {x.shape}.")
        return Geometry(sample, None)
    layout = guess_layout(x.shape) if layout == "auto" else layout.upper()
    if layout not in ("NCHW", "NHWC"):
        raise InvalidInputError(f"layout must be 'NCHW', 'NHWC' or 'auto', not {layout!r}.")
    if not isinstance(patch, (int, np.integer)) or patch < 1:
        raise InvalidInputError(f"patch must be a positive number of pixels, not {patch!r}.")
    return Geometry(sample, 0 if layout == "NCHW" else 2, int(patch))


def default_patch(geom: Geometry) -> int:
    """Samek et al.'s region size, scaled: 8 x 8 on a 224 x 224 image, single pixels on MNIST."""
    return max(1, round(min(geom.grid) / 28)) if geom.channel_axis is not None else 1


# -- relevance: attribution -> one score per unit, and the order of replacement ------------------------
def unit_relevance(attributions: np.ndarray, geom: Geometry, n: int, reduce: str = "max_abs") -> np.ndarray:
    """One relevance per unit [N, units]: channels reduced (`reduce`, as `onnxsal.visualize` does),
    then summed within each patch. A map with one channel, or already [N, H, W], is taken as it is."""
    a = np.asarray(attributions)
    if a.dtype.kind not in "fiu":
        raise InvalidInputError(f"attributions must be numeric arrays, not {a.dtype}.")
    if reduce not in REDUCTIONS or reduce == "none":
        raise InvalidInputError(f"reduce must be one of {[r for r in REDUCTIONS if r != 'none']}, not {reduce!r}.")
    a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if geom.channel_axis is None:
        if a.shape != (n, *geom.shape):
            raise InvalidInputError(f"attributions of shape {a.shape} do not fit inputs of shape {(n, *geom.shape)}.")
        flat = reduce_channels(a.reshape(n, -1), reduce)  # a 2-D array: each element as it is, |.| or a part
    elif a.ndim == 4:
        flat = reduce_channels(a, reduce, _map_layout(a, geom, n)).reshape(n, -1)
    elif a.shape == (n, *geom.grid):
        flat = reduce_channels(a.reshape(n, -1), reduce)  # already one map per sample
    else:
        raise InvalidInputError(f"attributions of shape {a.shape} do not fit inputs of shape {(n, *geom.shape)}.")
    if geom.patch == 1:
        return flat
    u = geom.n_units
    ids = geom.unit_of_position[None, :] + u * np.arange(n)[:, None]
    return np.bincount(ids.ravel(), weights=flat.ravel(), minlength=n * u).reshape(n, u)


def _map_layout(a: np.ndarray, geom: Geometry, n: int) -> str:
    """The layout of a rank-4 attribution of images of `geom`: the inputs' own, or a one-channel map
    in either layout (Grad-CAM)."""
    own = "NCHW" if geom.channel_axis == 0 else "NHWC"
    candidates = [own] + [lay for lay in ("NCHW", "NHWC") if lay != own]
    for lay in candidates:
        spatial, c = (a.shape[2:], a.shape[1]) if lay == "NCHW" else (a.shape[1:3], a.shape[3])
        if a.shape[0] == n and tuple(spatial) == geom.grid and (lay == own or c == 1):
            return lay
    raise InvalidInputError(f"attributions of shape {a.shape} do not fit inputs of shape {(n, *geom.shape)}.")


def replacement_rank(relevance: np.ndarray, geom: Geometry, most_relevant_first: bool = True) -> np.ndarray:
    """The step at which each position is replaced [N, positions]: units sorted by relevance (stable,
    ties by position), most relevant first or least relevant first."""
    key = -relevance if most_relevant_first else relevance
    order = np.argsort(key, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(order.shape[1])[None, :], axis=1)
    return rank[:, geom.unit_of_position]


def unit_counts(n_units: int, steps: int, fraction: float = 1.0) -> np.ndarray:
    """How many units are replaced at each of steps + 1 points, 0 up to fraction x units."""
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise InvalidInputError(f"steps must be a positive integer, not {steps!r}.")
    if not 0 < fraction <= 1:
        raise InvalidInputError(f"fraction must lie in (0, 1], not {fraction!r}.")
    return np.round(np.linspace(0, fraction * n_units, steps + 1)).astype(np.int64)


# -- baselines --------------------------------------------------------------------------------------------
def gaussian_blur(x: np.ndarray, sigma: float, axes: tuple[int, ...]) -> np.ndarray:
    """A separable Gaussian blur (radius 3 sigma, edges mirrored) along `axes`."""
    out = np.asarray(x, np.float64)
    radius = max(1, int(np.ceil(3 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    for axis in axes:
        n = out.shape[axis]
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="symmetric")
        out = sum(t * np.take(padded, np.arange(j, j + n), axis=axis) for j, t in enumerate(taps))
    return out


def baseline_for(x: np.ndarray, geom: Geometry, baseline, rng: np.random.Generator | None = None,
                 blur_sigma: float | None = None) -> np.ndarray:
    """The values replaced pixels take, [N, ...] like x: "zeros", "blur" (Gaussian, sigma = min(H, W)/45,
    RISE's 5 px at 224), "mean" (each image's per-channel mean), "uniform" (noise between each image's
    min and max, seeded, as Samek et al.), a number, or an array that broadcasts to x."""
    if isinstance(baseline, str):
        if baseline in ("zeros", "zero", "black"):
            return np.zeros_like(x)
        spatial = tuple(i + 1 for i in range(len(geom.shape)) if i != geom.channel_axis)
        if baseline == "blur":
            sigma = blur_sigma if blur_sigma is not None else max(1.0, min(geom.grid[-2:]) / 45)
            return gaussian_blur(x, float(sigma), spatial[-2:] if geom.channel_axis is not None else spatial).astype(x.dtype)
        if baseline == "mean":
            return np.broadcast_to(x.mean(axis=spatial, keepdims=True), x.shape).astype(x.dtype)
        if baseline == "uniform":
            rng = rng or np.random.default_rng(0)
            axes = tuple(range(1, x.ndim))
            lo, hi = x.min(axis=axes, keepdims=True), x.max(axis=axes, keepdims=True)
            return (lo + (hi - lo) * rng.random(x.shape)).astype(x.dtype)
        raise InvalidInputError(f"baseline must be one of {list(BASELINES)}, a number or an array, not {baseline!r}.")
    b = np.asarray(baseline, dtype=x.dtype)
    try:
        return np.broadcast_to(b, x.shape)
    except ValueError:
        raise InvalidInputError(f"a baseline of shape {b.shape} does not broadcast to the inputs' shape {x.shape}.") from None


# -- the curve ----------------------------------------------------------------------------------------------
def perturbation_curve(model, inputs, attributions, target=None, *, kind: str = "deletion", steps: int = 50,
                       baseline=None, patch: int | None = None, reduce: str = "max_abs", score: str = "probability",
                       fraction: float = 1.0, layout: str = "auto", blur_sigma: float | None = None, seed: int = 0,
                       per_eval: int | None = 64, progress: bool | None = None) -> Curve:
    """The `kind` curve ("deletion", "insertion", "morf", "lerf") of each sample of `inputs`.

    Units (pixels, or `patch` x `patch` squares) are ranked by `attributions` (channels reduced by
    `reduce`, summed per patch); at step k the first round(k/steps x fraction x units) of them are
    replaced by the baseline (deletion, MoRF, LeRF) or taken from the image into the baseline
    (insertion). Baselines: zeros for deletion and insertion unless given ("blur" is RISE's
    insertion canvas), uniform noise for MoRF/LeRF (Samek et al.), which use patches (8 x 8 at 224 x 224).
    `target` is each sample's top class on the clean input unless given; `score` as in `Scorer`."""
    if kind not in KINDS:
        raise InvalidInputError(f"the curve kind must be one of {list(KINDS)}, not {kind!r}.")
    ex = as_explainer(model)
    name, x = image_input(ex, inputs)
    n = len(x)
    geom = geometry(x, layout, 1)
    if patch is None:
        patch = default_patch(geom) if kind in ("morf", "lerf") else 1
    geom = geometry(x, layout, patch)
    if baseline is None:
        baseline = "zeros" if kind in ("deletion", "insertion") else "uniform"
    rng = np.random.default_rng(seed)
    base = baseline_for(x, geom, baseline, rng, blur_sigma)
    clean = forward(ex, name, x)
    t = resolve_target(target, clean)
    scorer = Scorer(score, clean)
    rank = replacement_rank(unit_relevance(attributions, geom, n, reduce), geom, most_relevant_first=kind != "lerf")
    counts = unit_counts(geom.n_units, steps, fraction)
    points = len(counts)
    keep_image = kind == "insertion"  # insertion: the first units come from the image, the rest from the baseline

    def make_chunk(idx: np.ndarray) -> dict[str, np.ndarray]:
        img, k = np.divmod(idx, points)
        chosen = geom.expand(rank[img] < counts[k][:, None])
        first, rest = (x[img], base[img]) if keep_image else (base[img], x[img])
        return {name: np.where(chosen, first, rest).astype(x.dtype, copy=False)}

    outputs = forward_batches(ex, make_chunk, n * points, per_eval, progress=progress, desc=f"{kind} curves")
    scores = scorer(outputs, np.repeat(t, points)).reshape(n, points)
    return Curve(kind, counts / geom.n_units, scores)


def deletion(model, inputs, attributions, target=None, **options) -> Curve:
    """The deletion curve (most relevant pixels replaced first, by zeros unless `baseline` is given)."""
    return perturbation_curve(model, inputs, attributions, target, kind="deletion", **options)


def insertion(model, inputs, attributions, target=None, **options) -> Curve:
    """The insertion curve (most relevant pixels put first into zeros, or into `baseline`: "blur" is RISE's)."""
    return perturbation_curve(model, inputs, attributions, target, kind="insertion", **options)


def pixel_flipping(model, inputs, attributions, target=None, order: str = "morf", **options) -> Curve:
    """Samek et al.'s region perturbation: `order` "morf" (most relevant first) or "lerf" (least)."""
    if order not in ("morf", "lerf"):
        raise InvalidInputError(f"order must be 'morf' or 'lerf', not {order!r}.")
    return perturbation_curve(model, inputs, attributions, target, kind=order, **options)
