"""Coloured tokens: an HTML page and a PNG of per-token scores (Captum's visualize_text look).

Each token is highlighted green where it argues for the explained output and red where it argues
against it, the stronger the darker; scores are scaled per row by their largest magnitude, so
the strongest token of each row is fully coloured. WordPiece continuations ("##ing") are drawn
attached to the token before them. The page and the PNG use the same colours (`token_colour`).
Files are written atomically; the page is self-contained (no script, no external resource).
"""

from __future__ import annotations

import colorsys
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..errors import InvalidInputError
from ..io_utils import write_bytes_atomic

POSITIVE_HUE, NEGATIVE_HUE = 120, 0  # green for, red against
SATURATION = 0.75


@dataclass
class TokenRow:
    """One explained sequence: its tokens, one score per token, and what is shown beside them."""

    tokens: Sequence[str]
    scores: Sequence[float]
    label: str = ""  # e.g. "class 1 (logit 2.31)"
    total: float | None = None  # the sum of the scores, shown as "attribution score"
    notes: dict = field(default_factory=dict)


def token_colour(score: float) -> tuple[int, int, int]:
    """The RGB colour of a score in [-1, 1]: white at 0, green (hue 120) towards 1, red (hue 0)
    towards -1, lightness falling from 100% to 50% (for) or 60% (against, red is darker)."""
    s = float(np.clip(score, -1.0, 1.0)) if np.isfinite(score) else 0.0
    hue, lightness = (POSITIVE_HUE, 1.0 - 0.5 * s) if s > 0 else (NEGATIVE_HUE, 1.0 + 0.4 * s)
    r, g, b = colorsys.hls_to_rgb(hue / 360.0, lightness, SATURATION)
    return round(r * 255), round(g * 255), round(b * 255)


def _pieces(tokens: Sequence[str]) -> list[tuple[str, bool]]:
    """(text, attached to the previous token) for each token: '##' continuations attach."""
    return [(t[2:], True) if t.startswith("##") and len(t) > 2 else (t, False) for t in tokens]


def _scaled(row: TokenRow) -> np.ndarray:
    scores = np.asarray(row.scores, dtype=np.float64).reshape(-1)
    if len(scores) != len(row.tokens):
        raise InvalidInputError(f"{len(row.tokens)} tokens need {len(row.tokens)} scores, got {len(scores)}.")
    top = np.abs(scores[np.isfinite(scores)]).max(initial=0.0)
    return scores / top if top > 0 else np.zeros_like(scores)


def _rows(rows) -> list[TokenRow]:
    rows = [rows] if isinstance(rows, TokenRow) else list(rows)
    if not rows:
        raise InvalidInputError("there is nothing to draw: no token rows.")
    return rows


def tokens_html(rows, title: str = "Token attributions", legend: bool = True) -> str:
    """A self-contained HTML page: one table row per `TokenRow` (label, attribution score, tokens
    highlighted by their scores) and a legend."""
    rows = _rows(rows)
    css = ("body{font-family:sans-serif;margin:16px;color:#222}table{border-collapse:collapse}"
           "th,td{border-bottom:1px solid #ddd;padding:6px 10px;text-align:left;vertical-align:top}"
           "mark{padding:1px 3px;margin:0;line-height:1.9;color:black;border-radius:2px}"
           ".legend mark{margin-right:6px}")
    out = ["<!DOCTYPE html>", '<html><head><meta charset="utf-8">', f"<title>{html.escape(title)}</title>",
           f"<style>{css}</style></head><body>", f"<h3>{html.escape(title)}</h3>",
           "<table><tr><th>Explained</th><th>Attribution score</th><th>Token importance</th></tr>"]
    for row in rows:
        scaled = _scaled(row)
        marks = []
        for (text, attached), s, raw in zip(_pieces(row.tokens), scaled, np.asarray(row.scores, dtype=np.float64).reshape(-1)):
            colour = "rgb({},{},{})".format(*token_colour(s))
            mark = f'<mark style="background-color:{colour}" title="{raw:.4g}">{html.escape(text)}</mark>'
            marks.append(mark if attached or not marks else " " + mark)
        total = "" if row.total is None else f"{row.total:.3g}"
        out.append(f"<tr><td>{html.escape(row.label)}</td><td>{total}</td><td>{''.join(marks)}</td></tr>")
    out.append("</table>")
    if legend:
        items = [("against", -1.0), ("neutral", 0.0), ("for", 1.0)]
        out.append('<p class="legend"><b>Legend:</b> ' + "".join(
            '<mark style="background-color:rgb({},{},{})">{}</mark>'.format(*token_colour(v), name) for name, v in items) + "</p>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def tokens_image(rows, width: int = 900, font_size: int = 18, title: str | None = None, legend: bool = True) -> Image.Image:
    """The same picture as `tokens_html`, drawn with Pillow: per row, its label and the tokens on
    their colours, wrapped to `width` pixels."""
    from ..visualize import _font

    rows = _rows(rows)
    font, small = _font(font_size), _font(max(10, font_size - 4))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    pad, gap, line_h = 12, 6, int(font_size * 1.6)

    def size(text, f):
        left, top, right, bottom = probe.textbbox((0, 0), text, font=f)
        return right - left

    items = []  # (kind, payload, x, y)
    y = pad
    if title:
        items.append(("title", title, pad, y))
        y += line_h
    for row in rows:
        if row.label or row.total is not None:
            caption = row.label + ("" if row.total is None else f"   attribution score {row.total:.3g}")
            items.append(("caption", caption.strip(), pad, y))
            y += int(line_h * 0.85)
        x = pad
        for (text, attached), s in zip(_pieces(row.tokens), _scaled(row)):
            w = size(text, font) + 6
            if not attached and x > pad:
                x += gap
            if x + w > width - pad and x > pad:
                x, y = pad, y + line_h
            items.append(("token", (text, s, w), x, y))
            x += w
        y += line_h + gap
    if legend:
        items.append(("legend", None, pad, y))
        y += line_h
    img = Image.new("RGB", (width, y + pad), "white")
    draw = ImageDraw.Draw(img)
    for kind, payload, x, yy in items:
        if kind in ("title", "caption"):
            draw.text((x, yy), payload, fill=(30, 30, 30) if kind == "title" else (90, 90, 90), font=font if kind == "title" else small)
        elif kind == "token":
            text, s, w = payload
            draw.rectangle([x, yy, x + w, yy + line_h - 4], fill=token_colour(s))
            draw.text((x + 3, yy + 2), text, fill=(0, 0, 0), font=font)
        else:
            xx = x
            for name, v in (("against", -1.0), ("neutral", 0.0), ("for", 1.0)):
                w = size(name, small) + 10
                draw.rectangle([xx, yy, xx + w, yy + line_h - 6], fill=token_colour(v), outline=(200, 200, 200))
                draw.text((xx + 5, yy + 3), name, fill=(0, 0, 0), font=small)
                xx += w + gap
    return img


def save_tokens_html(rows, path, **kwargs) -> Path:
    """Write `tokens_html(rows)` to `path` atomically."""
    return write_bytes_atomic(tokens_html(rows, **kwargs).encode("utf-8"), path)


def save_tokens_png(rows, path, **kwargs) -> Path:
    """Write `tokens_image(rows)` to `path` as PNG, atomically."""
    buf = io.BytesIO()
    tokens_image(rows, **kwargs).save(buf, format="PNG")
    return write_bytes_atomic(buf.getvalue(), path)
