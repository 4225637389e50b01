"""Masks shared by the perturbation methods: baselines, feature masks, superpixels, windows, upsampling.

A feature mask assigns an integer feature id to every element of a sample (Captum's convention):
elements with the same id are perturbed together. It has the input's shape, or one that
broadcasts to it ([1, 1, H, W] for all channels of an NCHW batch; a leading 1 for every sample,
N for one mask per sample); a mask of lower rank gets leading axes of 1, as in Captum.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import InvalidInputError
from ..layers import guess_layout

SUPERPIXELS = ("slic", "quickshift")


def baseline_for(x: np.ndarray, baselines) -> np.ndarray:
    """The baseline of every sample: zeros, a scalar, one array of the sample's shape, or one per sample."""
    if baselines is None:
        return np.zeros_like(x)
    b = np.asarray(baselines)
    if b.dtype.kind not in "fiub":
        raise InvalidInputError(f"baselines must be a number or an array of numbers, not {baselines!r}.")
    b = b.astype(x.dtype)
    if b.ndim == 0 or b.shape == x.shape[1:]:
        return np.broadcast_to(b, x.shape).copy()
    if b.shape == x.shape or (b.ndim == x.ndim and b.shape[0] == 1 and b.shape[1:] == x.shape[1:]):
        return np.broadcast_to(b, x.shape).copy()
    raise InvalidInputError(f"baselines must be a scalar or have shape {x.shape[1:]} or {x.shape}, not {b.shape}.")


def feature_mask_for(x: np.ndarray, feature_mask) -> np.ndarray:
    """The mask broadcast to [N or 1, *sample shape] as int64 ids (each element its own feature when None)."""
    if feature_mask is None:
        return np.arange(int(np.prod(x.shape[1:])), dtype=np.int64).reshape((1,) + x.shape[1:])
    m = np.asarray(feature_mask)
    if m.dtype.kind not in "iub" and not (m.dtype.kind == "f" and m.size and np.all(m == np.round(m))):
        raise InvalidInputError(f"feature_mask must hold integer feature ids, not {m.dtype} values.")
    m = m.astype(np.int64)
    if m.ndim > x.ndim:
        raise InvalidInputError(f"feature_mask has rank {m.ndim}, more than the input's {x.ndim} (shape {x.shape}).")
    m = m.reshape((1,) * (x.ndim - m.ndim) + m.shape)
    lead = 1 if m.shape[0] == 1 else x.shape[0]
    try:
        return np.ascontiguousarray(np.broadcast_to(m, (lead,) + x.shape[1:]))
    except ValueError:
        raise InvalidInputError(f"feature_mask of shape {np.shape(feature_mask)} does not broadcast to the input's shape "
                                f"{x.shape} (give it the input's shape, or 1 on the axes it shares).") from None


def mask_of(x: np.ndarray, feature_mask=None, superpixels=None, superpixel_options=None) -> np.ndarray:
    """The feature mask a method uses: the one given, or superpixels of each image, or one feature per element."""
    if superpixels is not None:
        if feature_mask is not None:
            raise InvalidInputError("give either feature_mask or superpixels, not both.")
        return feature_mask_for(x, superpixel_mask(x, superpixels, superpixel_options))
    if superpixel_options is not None:
        raise InvalidInputError("superpixel_options needs superpixels='slic' or 'quickshift'.")
    return feature_mask_for(x, feature_mask)


def dense_ids(mask: np.ndarray) -> np.ndarray:
    """The mask with non-negative ids, as the sampling methods (Shapley, KernelSHAP, LIME) need: features 0..max."""
    if mask.size and mask.min() < 0:
        raise InvalidInputError(f"feature ids must be non-negative for this method; the mask holds {int(mask.min())}.")
    return mask


def superpixel_mask(x: np.ndarray, method: str, options=None) -> np.ndarray:
    """Superpixels of each image in the batch (scikit-image's SLIC or quickshift), as a feature
    mask [N, 1, H, W] (NCHW) or [N, H, W, 1] (NHWC) with ids 0..F_n-1 per image.

    Each image is rescaled to [0, 1] first (model inputs are often normalised), since both
    algorithms measure colour distances on that range."""
    if method not in SUPERPIXELS:
        raise InvalidInputError(f"superpixels must be one of {SUPERPIXELS}, not {method!r}.")
    if options is not None and not isinstance(options, dict):
        raise InvalidInputError(f"superpixel_options must be a dict of {method} parameters, not {options!r}.")
    if x.ndim != 4:
        raise InvalidInputError(f"superpixels segment images (rank 4, NCHW or NHWC); the input has shape {x.shape}.")
    try:
        from skimage import segmentation
    except ImportError:
        raise InvalidInputError(f"superpixels={method!r} needs scikit-image (pip install scikit-image).") from None
    layout = guess_layout(x.shape)
    images = x.transpose(0, 2, 3, 1) if layout == "NCHW" else x
    out = np.empty(images.shape[:3], dtype=np.int64)
    for n, img in enumerate(images.astype(np.float64)):
        lo, hi = img.min(), img.max()
        img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
        gray = img.shape[-1] == 1
        kwargs = dict(options or {})
        try:
            if method == "slic":
                kwargs.setdefault("start_label", 0)
                labels = segmentation.slic(img[..., 0] if gray else img, channel_axis=None if gray else -1, **kwargs)
            else:
                if gray:
                    kwargs.setdefault("convert2lab", False)
                labels = segmentation.quickshift(np.repeat(img, 3, axis=-1) if gray else img, **kwargs)
        except TypeError as exc:
            raise InvalidInputError(f"superpixel_options are not {method} parameters: {exc}.") from None
        out[n] = np.unique(labels, return_inverse=True)[1].reshape(labels.shape)
    return out[:, None] if layout == "NCHW" else out[..., None]


# -- sliding windows (occlusion) ---------------------------------------------------------------------
def window_factors(sample_shape: Sequence[int], window: Sequence[int], strides: Sequence[int]) -> list[np.ndarray]:
    """One 0/1 matrix [positions, size] per axis: where the window lies at each of its positions.

    Positions are Captum's: ceil((size − window)/stride) + 1 starts, k·stride, the last window cut at
    the edge; the window at position (p_0, ..., p_k) of the sample is the outer product of the rows."""
    factors = []
    for size, w, s in zip(sample_shape, window, strides):
        count = int(np.ceil((size - w) / s)) + 1
        f = np.zeros((count, size), dtype=np.float32)
        for i in range(count):
            f[i, i * s: min(i * s + w, size)] = 1
        factors.append(f)
    return factors


def outer_rows(factors: list[np.ndarray], positions: np.ndarray) -> np.ndarray:
    """The windows at flat positions (C order over the factors' position axes), [len, *sample]."""
    counts = [f.shape[0] for f in factors]
    coords = np.unravel_index(positions, counts)
    k = len(factors)
    out = None
    for d, (f, c) in enumerate(zip(factors, coords)):
        rows = f[c].reshape((len(positions),) + tuple(f.shape[1] if j == d else 1 for j in range(k)))
        out = rows if out is None else out * rows
    return out


def contract_windows(values: np.ndarray, factors: list[np.ndarray]) -> np.ndarray:
    """Σ_p values[n, p] · window_p for every n: [N, P] -> [N, *sample], one axis at a time."""
    n = values.shape[0]
    t = values.reshape((n,) + tuple(f.shape[0] for f in factors))
    for f in factors:  # move the next position axis last, then replace it by the sample axis
        t = np.moveaxis(t, 1, -1) @ f.astype(np.float64)
    return t


# -- bilinear upsampling (RISE, Score-CAM) -------------------------------------------------------------
def interpolation_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] bilinear weights with half-pixel centres, clamped at the edges (as torch's
    align_corners=False and onnx Resize's half_pixel)."""
    src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    src = np.clip(src, 0, n_in - 1)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    m = np.zeros((n_out, n_in))
    np.add.at(m, (np.arange(n_out), lo), 1 - frac)
    np.add.at(m, (np.arange(n_out), hi), frac)
    return m


def spatial(shape: Sequence[int]) -> tuple[str, int, int]:
    """(layout, H, W) of an image input's shape."""
    if len(shape) != 4:
        raise InvalidInputError(f"this method explains images (rank 4, NCHW or NHWC); the input has shape {tuple(shape)}.")
    layout = guess_layout(shape)
    return (layout, shape[2], shape[3]) if layout == "NCHW" else (layout, shape[1], shape[2])


def as_map(maps: np.ndarray, layout: str) -> np.ndarray:
    """[N, H, W] maps as [N, 1, H, W] (NCHW) or [N, H, W, 1] (NHWC), like Grad-CAM's."""
    return maps[:, None] if layout == "NCHW" else maps[..., None]


def on_image(masks: np.ndarray, layout: str) -> np.ndarray:
    """[K, H, W] masks shaped to broadcast over one image's sample axes."""
    return masks[:, None] if layout == "NCHW" else masks[..., None]
