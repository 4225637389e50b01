"""Turning attributions into pictures with numpy and Pillow only (no matplotlib at run time).

The pipeline is: raw attribution (input's shape and layout) -> `reduce_channels` (one map per
sample) -> `normalize` (to [0, 1], per sample) -> `apply_cmap` / `overlay` -> `grid` -> `save_png`.

    >>> maps = ex.attribute(images, method="guided_backprop")        # [N, C, H, W]
    >>> heat = normalize(reduce_channels(maps))                        # [N, H, W] in [0, 1]
    >>> save_png(grid([[to_uint8_image(images[i]), apply_cmap(heat[i])] for i in range(len(heat))],
    ...               titles=["input", "guided"]), "saliency.png")
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image  # ImageDraw and ImageFont only where figures get titles

from .io_utils import write_bytes_atomic

if TYPE_CHECKING:
    from PIL import ImageDraw

__all__ = [
    "CMAPS", "apply_cmap", "colormap", "grid", "normalize", "normalize_signed", "overlay",
    "reduce_channels", "save_png", "to_uint8_image",
]


REDUCTIONS = ("max_abs", "sum_abs", "positive", "negative", "sum", "none")
_SMALL = 4  # a dimension this small (1 gray, 3 RGB, 4 RGBA) is taken for channels by layout="auto"


# -- layouts and channel reductions -------------------------------------------------------------------
def _channel_axis(shape: tuple[int, ...], layout: str) -> int:
    """The channel axis of a CHW/HWC image or NCHW/NHWC batch; "auto" looks for the one small axis
    (1, 3 or 4 channels), else for the layout whose two spatial sizes are equal, else channels first."""
    layout = layout.upper()
    first, last = (1, 3) if len(shape) == 4 else (0, 2)
    if layout in ("NCHW", "CHW"):
        return first
    if layout in ("NHWC", "HWC"):
        return last
    if layout != "AUTO":
        raise ValueError(f"layout must be 'NCHW', 'NHWC' or 'auto', not {layout!r}.")
    if shape[first] <= _SMALL < shape[last]:
        return first
    if shape[last] <= _SMALL < shape[first]:
        return last
    h, w = (shape[first + 1], shape[first + 2])  # no small axis (inner feature maps): square images
    if h == w != shape[first]:
        return first
    if shape[first] == shape[first + 1] != shape[last]:
        return last
    return first  # still ambiguous (e.g. 3x3x3): ONNX's own convention, channels first


def reduce_channels(attr, how: str = "max_abs", layout: str = "auto") -> np.ndarray:
    """One map per sample from a raw attribution: [N,C,H,W] or [N,H,W,C] -> [N,H,W]; [C,H,W] -> [H,W].

    "max_abs" (Simonyan et al., the default), "sum_abs", "positive"/"negative" (the positive part,
    and the magnitude of the negative part, of the channel sum, both >= 0), "sum" (signed, for a
    diverging colour map) or "none" (keep the channels, moved last for display as colour).
    A 2-D array is taken as one map that is already reduced.
    """
    a = np.asarray(attr)
    if a.dtype.kind not in "fiu":
        raise ValueError(f"an attribution must be a numeric array, not {a.dtype}.")
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float32)
    if how not in REDUCTIONS:
        raise ValueError(f"how must be one of {REDUCTIONS}, not {how!r}.")
    if a.ndim == 2:
        axis = None
    elif a.ndim in (3, 4):
        axis = _channel_axis(a.shape, layout)
    else:
        raise ValueError(f"expected an attribution of 2 (H,W), 3 (C,H,W / H,W,C) or 4 (N,C,H,W / N,H,W,C) "
                         f"dimensions, got shape {a.shape}.")
    if how == "none":
        return a if axis is None else np.moveaxis(a, axis, -1)
    if axis is None:
        s = a
        return {"max_abs": np.abs(s), "sum_abs": np.abs(s), "positive": np.maximum(s, 0),
                "negative": np.maximum(-s, 0), "sum": s}[how]
    if how == "max_abs":
        return np.abs(a).max(axis=axis)
    if how == "sum_abs":
        return np.abs(a).sum(axis=axis)
    s = a.sum(axis=axis)
    if how == "positive":
        return np.maximum(s, 0)
    if how == "negative":
        return np.maximum(-s, 0)
    return s


# -- normalisation ------------------------------------------------------------------------------------------
def _per_sample(maps) -> tuple[np.ndarray, bool]:
    m = np.asarray(maps, dtype=np.float64)  # float64 inside: a small span on a large offset keeps its digits
    if m.ndim < 2:
        raise ValueError(f"expected maps of shape [H,W] or [N,H,W(,C)], got shape {m.shape}.")
    if not np.isfinite(m).all():
        raise ValueError("the maps contain NaN or infinite values; check the model's outputs and gradients.")
    single = m.ndim == 2
    return (m[None] if single else m), single


def _row_percentile(flat: np.ndarray, q: float) -> np.ndarray:
    """The q-th percentile of each row, as np.percentile's default (linear) method computes it, by
    partitioning around the two ranks it needs: np.percentile sorts whole rows and imports numpy.ma
    on the way, which is a tenth of the warm start of `onnxsal explain` on a small model."""
    n = flat.shape[1]
    pos = q / 100.0 * (n - 1)
    lo = int(np.floor(pos))
    hi = min(lo + 1, n - 1)
    part = np.partition(flat, [lo, hi] if hi != lo else [lo], axis=1)
    frac = pos - lo
    low = part[:, lo].astype(np.float64)
    return low + frac * (part[:, hi] - low) if frac else low


def normalize(maps, how: str = "minmax", percentile: float = 99) -> np.ndarray:
    """Scale each sample to [0, 1]: "minmax", or "percentile" (min to the given percentile, clipped
    above, so a few hot pixels do not wash out the rest). Constant maps become zeros, never NaN.

    `maps` is one map [H,W] or a batch [N,H,W] / [N,H,W,C] (axis 0 is the sample).
    """
    m, single = _per_sample(maps)
    flat = m.reshape(len(m), -1)
    lo = flat.min(axis=1) if flat.shape[1] else np.zeros(len(m))
    if how == "minmax":
        hi = flat.max(axis=1) if flat.shape[1] else lo
    elif how == "percentile":
        if not 0 < percentile <= 100:
            raise ValueError(f"percentile must be in (0, 100], not {percentile!r}.")
        hi = _row_percentile(flat, percentile) if flat.shape[1] else lo
    else:
        raise ValueError(f"how must be 'minmax' or 'percentile', not {how!r}.")
    span = hi - lo
    ok = span > 0
    scale = np.where(ok, 1.0 / np.where(ok, span, 1.0), 0.0)
    shape = (-1,) + (1,) * (m.ndim - 1)
    out = np.clip((m - lo.reshape(shape)) * scale.reshape(shape), 0.0, 1.0).astype(np.float32)
    return out[0] if single else out


def normalize_signed(maps, percentile: float | None = None) -> np.ndarray:
    """Scale each sample to [-1, 1] by its largest |value| (or that percentile of |value|), keeping
    zero at zero, so a diverging map ("bwr") shows sign honestly. All-zero maps stay zeros."""
    m, single = _per_sample(maps)
    flat = np.abs(m.reshape(len(m), -1))
    if percentile is None:
        top = flat.max(axis=1) if flat.shape[1] else np.zeros(len(m))
    else:
        if not 0 < percentile <= 100:
            raise ValueError(f"percentile must be in (0, 100], not {percentile!r}.")
        top = _row_percentile(flat, percentile) if flat.shape[1] else np.zeros(len(m))
    ok = top > 0
    scale = np.where(ok, 1.0 / np.where(ok, top, 1.0), 0.0).reshape((-1,) + (1,) * (m.ndim - 1))
    out = np.clip(m * scale, -1.0, 1.0).astype(np.float32)
    return out[0] if single else out


# -- colour maps ------------------------------------------------------------------------------------------
def _ramp(anchors: Sequence[tuple[float, float, float]], n: int = 256, smooth: bool = False) -> np.ndarray:
    """A [n,3] uint8 table through equally spaced RGB anchors (0..1 floats): linear, or a Catmull-Rom
    spline when `smooth` (no visible kinks at the anchors for perceptual maps like viridis)."""
    a = np.asarray(anchors, dtype=np.float64)
    k = len(a) - 1
    x = np.linspace(0.0, 1.0, n) * k
    i = np.minimum(x.astype(np.intp), k - 1)
    t = (x - i)[:, None]
    if not smooth:
        table = a[i] * (1 - t) + a[i + 1] * t
    else:
        p = np.vstack([2 * a[0] - a[1], a, 2 * a[-1] - a[-2]])  # mirrored end points
        p0, p1, p2, p3 = p[i], p[i + 1], p[i + 2], p[i + 3]
        table = 0.5 * (2 * p1 + (p2 - p0) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
                       + (3 * p1 - p0 - 3 * p2 + p3) * t**3)
    return np.round(np.clip(table, 0.0, 1.0) * 255).astype(np.uint8)


def _jet(n: int = 256) -> np.ndarray:
    """MATLAB's jet, from its defining formula: each channel a clipped tent of height 1.5."""
    x = np.linspace(0.0, 1.0, n)
    rgb = [np.clip(1.5 - np.abs(4 * x - c), 0, 1) for c in (3, 2, 1)]
    return np.round(np.stack(rgb, axis=1) * 255).astype(np.uint8)


def _hot(n: int = 256) -> np.ndarray:
    """Black-red-yellow-white: red rises over the first 3/8, green over the next 3/8, blue last."""
    x = np.linspace(0.0, 1.0, n)
    rgb = [np.clip(x / 0.375, 0, 1), np.clip((x - 0.375) / 0.375, 0, 1), np.clip((x - 0.75) / 0.25, 0, 1)]
    return np.round(np.stack(rgb, axis=1) * 255).astype(np.uint8)


def _hex(*codes: str) -> list[tuple[float, float, float]]:
    return [tuple(int(c[i:i + 2], 16) / 255 for i in (0, 2, 4)) for c in codes]


# Viridis (van der Walt & Smith, CC0): nine equally spaced sample colours, as any viridis
# implementation prints them for 9 colours, joined by a Catmull-Rom spline (RMS error ~2.5/255).
_VIRIDIS_ANCHORS = _hex("440154", "472D7B", "3B528B", "2C728E", "21908C", "27AD81", "5DC863", "AADC32", "FDE725")

CMAPS: dict[str, np.ndarray] = {
    "jet": _jet(),
    "viridis": _ramp(_VIRIDIS_ANCHORS, smooth=True),
    "gray": _ramp([(0, 0, 0), (1, 1, 1)]),
    "hot": _hot(),
    # diverging: blue at -1, white at 0, red at +1 (apply to maps in [-1, 1])
    "bwr": _ramp([(0, 0, 1), (1, 1, 1), (1, 0, 0)]),
}
DIVERGING = frozenset({"bwr"})
for _table in CMAPS.values():
    _table.flags.writeable = False


def colormap(name: str) -> np.ndarray:
    """The [256, 3] uint8 lookup table of a colour map ("jet", "viridis", "gray", "hot", "bwr")."""
    try:
        return CMAPS[name]
    except KeyError:
        raise ValueError(f"unknown colour map {name!r}; choose one of {sorted(CMAPS)}.") from None


def apply_cmap(maps, cmap: str = "jet") -> np.ndarray:
    """Colour maps of values in [0, 1] (or [-1, 1] for a diverging map such as "bwr") as uint8 RGB.

    Any shape works: [..., H, W] -> [..., H, W, 3]. Values outside the range are clipped.
    """
    table = colormap(cmap)
    m = np.asarray(maps, dtype=np.float32)
    if not np.isfinite(m).all():
        raise ValueError("the maps contain NaN or infinite values; normalise finite maps before colouring.")
    if cmap in DIVERGING:
        m = (m + 1.0) / 2.0
    idx = np.clip(np.round(m * (len(table) - 1)), 0, len(table) - 1).astype(np.intp)
    return table[idx]


# -- images -------------------------------------------------------------------------------------------------
def to_uint8_image(x, layout: str = "auto") -> np.ndarray:
    """One input image as uint8 RGB [H,W,3] for display, from [H,W], [C,H,W] or [H,W,C] (C = 1 or 3;
    a leading batch axis of 1 is dropped). Floats in [0,1] are scaled by 255, values in [0,255] are
    kept, anything else (e.g. mean-subtracted inputs) is min-max scaled; gray becomes RGB."""
    if isinstance(x, Image.Image):
        return np.asarray(x.convert("RGB"))
    a = np.asarray(x)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 3:
        a = np.moveaxis(a, _channel_axis(a.shape, layout), -1)
        if a.shape[-1] == 4:
            a = a[..., :3]
        if a.shape[-1] not in (1, 3):
            raise ValueError(f"an image needs 1 or 3 channels, got shape {np.shape(x)} (layout {layout!r}).")
    elif a.ndim != 2:
        raise ValueError(f"expected one image of shape [H,W], [C,H,W] or [H,W,C], got {np.shape(x)}.")
    if a.dtype == np.uint8:
        out = a
    else:
        f = a.astype(np.float64)
        if f.size and not np.isfinite(f).all():
            raise ValueError("the image contains NaN or infinite values.")
        lo, hi = (float(f.min()), float(f.max())) if f.size else (0.0, 0.0)
        if lo >= 0 and hi <= 1:
            f = f * 255
        elif lo >= 0 and hi <= 255:
            pass
        else:
            f = (f - lo) * (255 / (hi - lo)) if hi > lo else np.zeros_like(f)
        out = np.clip(np.round(f), 0, 255).astype(np.uint8)
    if out.ndim == 2:
        out = out[..., None]
    if out.shape[-1] == 1:
        out = np.repeat(out, 3, axis=-1)
    return np.ascontiguousarray(out)


def _resize(img: np.ndarray, size: tuple[int, int], smooth: bool) -> np.ndarray:
    """Resize an [H,W] float map or [H,W,3] uint8 image to (width, height) with Pillow."""
    if (img.shape[1], img.shape[0]) == tuple(size):
        return img
    mode = Image.Resampling.BILINEAR if smooth else Image.Resampling.NEAREST
    if img.dtype == np.uint8:
        return np.asarray(Image.fromarray(img).resize(size, mode))
    return np.asarray(Image.fromarray(img.astype(np.float32), mode="F").resize(size, mode))


def overlay(image, heat, alpha: float = 0.5, cmap: str = "jet", layout: str = "auto") -> np.ndarray:
    """Blend a coloured heat map over an image: uint8 RGB [H,W,3] = (1-alpha)·image + alpha·cmap(heat).

    `heat` is one map [h,w] in [0,1] ([-1,1] for "bwr"); it is resized (bilinear) to the image when
    the sizes differ, as Grad-CAM maps usually do.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], not {alpha!r}.")
    base = to_uint8_image(image, layout)
    h = np.asarray(heat, dtype=np.float32)
    if h.ndim != 2:
        raise ValueError(f"heat must be one map of shape [H,W], got {h.shape}; use reduce_channels first.")
    h = _resize(h, (base.shape[1], base.shape[0]), smooth=True)
    colour = apply_cmap(h, cmap).astype(np.float32)
    out = (1.0 - alpha) * base.astype(np.float32) + alpha * colour
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _as_rgb(img) -> np.ndarray:
    if isinstance(img, Image.Image):
        return np.asarray(img.convert("RGB"))
    a = np.asarray(img)
    if a.ndim == 3 and a.shape[-1] == 3 and a.dtype == np.uint8:
        return a
    return to_uint8_image(a)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: a scalable font
    except (TypeError, ValueError, OSError, AttributeError, ImportError):
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
    left, top, right, bottom = draw.multiline_textbbox((0, 0), text, font=font, spacing=2)
    return right - left, bottom


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """Each line of `text` cut (ending in an ellipsis) until it fits `width` pixels."""
    lines = []
    for line in str(text).split("\n"):
        while len(line) > 1 and _text_size(draw, line, font)[0] > width:
            line = line[:-2] + "\u2026"
        lines.append(line)
    return "\n".join(lines)


def grid(
    rows_of_images,
    titles=None,
    row_titles: Sequence[str] | None = None,
    title: str | None = None,
    captions=None,
    cell: int | tuple[int, int] = 112,
    pad: int = 6,
    font_size: int = 14,
    smooth: bool = False,
    background=(255, 255, 255),
) -> Image.Image:
    """Compose rows of images into one RGB picture with titles, for figures like the papers' tables.

    `rows_of_images`: a list of rows, each a list of images (uint8 RGB [H,W,3], any input accepted by
    `to_uint8_image`, a PIL image, or None for an empty cell), all scaled to `cell` (an int or
    (width, height)); nearest-neighbour by default so single pixels stay visible. `titles`: one
    string per column (drawn above the first row) or one list of strings per row (drawn above
    each cell). `row_titles`: one string per row, drawn on the left. `title`: one line on top.
    `captions`: one list of strings per row, drawn in a smaller font under each cell (None or ""
    leaves a cell bare). Titles may hold several lines ("\n"); a line too wide for its cell is cut with an ellipsis.
    """
    rows = [list(r) for r in rows_of_images]
    if not rows or not any(rows):
        raise ValueError("grid needs at least one row with at least one image.")
    cw, ch = (cell, cell) if isinstance(cell, int) else (int(cell[0]), int(cell[1]))
    if cw <= 0 or ch <= 0:
        raise ValueError(f"cell must be positive, not {cell!r}.")
    ncols = max(len(r) for r in rows)
    if isinstance(titles, str):
        raise ValueError("titles must be a list of strings (one per column), not one string.")
    per_cell = titles is not None and len(titles) > 0 and not isinstance(titles[0], str)
    if titles is not None and not per_cell and len(titles) > ncols:
        raise ValueError(f"{len(titles)} column titles for {ncols} columns.")
    if per_cell and len(titles) != len(rows):
        raise ValueError(f"{len(titles)} rows of titles for {len(rows)} rows of images.")
    if row_titles is not None and len(row_titles) != len(rows):
        raise ValueError(f"{len(row_titles)} row titles for {len(rows)} rows.")
    if captions is not None and (isinstance(captions, str) or len(captions) != len(rows)
                                 or any(isinstance(c, str) for c in captions)):
        raise ValueError("captions must be one list of strings per row of images.")

    font = _font(font_size)
    big = _font(int(round(font_size * 1.25)))
    small = _font(max(8, int(round(font_size * 0.8))))
    from PIL import ImageDraw

    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def block(texts) -> int:  # height of the tallest of some titles
        return max((_text_size(draw, str(t), font)[1] for t in texts if t), default=0)

    header = block(titles) + pad if titles is not None and not per_cell else 0
    above = max((block(r) for r in titles), default=0) + 3 if per_cell else 0
    below = 0
    if captions is not None:
        below = max((_text_size(draw, str(c), small)[1] for r in captions for c in r if c), default=0)
        below = below + 2 if below else 0
    left = 0
    if row_titles is not None:
        left = max(_text_size(draw, str(t), font)[0] for t in row_titles) + pad
    width = left + pad + ncols * (cw + pad)
    top = 0
    if title:
        title = _fit(draw, title, big, width - 2 * pad)
        top = _text_size(draw, title, big)[1] + pad
    height = top + header + pad + len(rows) * (above + ch + below + pad)
    canvas = Image.new("RGB", (width, height), tuple(background))
    draw = ImageDraw.Draw(canvas)

    def centred(text, x0: int, y0: int, w: int, f=font) -> None:
        text = _fit(draw, text, f, w)
        tw, _ = _text_size(draw, text, f)
        draw.multiline_text((x0 + (w - tw) // 2, y0), text, fill=(0, 0, 0), font=f, spacing=2, align="center")

    if title:
        centred(title, 0, pad // 2, width, big)
    if header:
        for j, t in enumerate(titles):
            if t:
                centred(t, left + pad + j * (cw + pad), top + pad // 2, cw)
    for i, row in enumerate(rows):
        y = top + header + pad + i * (above + ch + below + pad)
        if row_titles is not None and row_titles[i]:
            t = str(row_titles[i])
            tw, th = _text_size(draw, t, font)
            draw.multiline_text((pad + (left - pad - tw) // 2, y + above + (ch - th) // 2), t, fill=(0, 0, 0),
                                font=font, spacing=2, align="center")
        for j, img in enumerate(row):
            x = left + pad + j * (cw + pad)
            if per_cell and j < len(titles[i]) and titles[i][j]:
                centred(titles[i][j], x, y, cw)
            if captions is not None and j < len(captions[i]) and captions[i][j]:
                centred(captions[i][j], x, y + above + ch + 1, cw, small)
            if img is None:
                continue
            canvas.paste(Image.fromarray(_resize(_as_rgb(img), (cw, ch), smooth)), (x, y + above))
    return canvas


def save_png(image, path) -> Path:
    """Write a PIL image or an array (anything `to_uint8_image` takes) as PNG, atomically: a temporary
    file in the same folder replaced into place, so readers never see half a file."""
    img = image if isinstance(image, Image.Image) else Image.fromarray(_as_rgb(image))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return write_bytes_atomic(buf.getvalue(), path)
