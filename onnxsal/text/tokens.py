"""Token-level results: per-token scores from an embedding attribution, and targets of token models.

An attribution with respect to embeddings has one value per token and hidden unit ([N, T, H]). A
token's score is the sum over the hidden axis (what Captum's tutorials show: it keeps the sign, and
the scores of Integrated Gradients then sum to F(x) − F(baseline)) or its L2 norm (a magnitude).
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidInputError

REDUCTIONS = ("sum", "norm")


def token_scores(attribution, reduce: str = "sum", normalise: bool = False, mask=None) -> np.ndarray:
    """One score per token: `attribution` [N, T, H] (or [T, H]) reduced over the hidden axis.

    `reduce`: "sum" (signed) or "norm" (L2, unsigned). `normalise`: divide each sample's scores by
    their largest magnitude (so they lie in [-1, 1], as the coloured-token page shows them).
    `mask` ([N, T], e.g. the attention mask): tokens where it is 0 (padding) get score 0."""
    a = np.asarray(attribution, dtype=np.float64)
    if a.ndim < 2:
        raise InvalidInputError(f"token scores need an attribution of shape [N, T, hidden] or [T, hidden], got {a.shape}.")
    if reduce == "sum":
        s = a.sum(axis=-1)
    elif reduce == "norm":
        s = np.sqrt((a * a).sum(axis=-1))
    else:
        raise InvalidInputError(f"reduce must be one of {REDUCTIONS}, not {reduce!r}.")
    if mask is not None:
        m = np.asarray(mask)
        if m.shape != s.shape:
            raise InvalidInputError(f"the mask must have the scores' shape {s.shape}, got {m.shape}.")
        s = np.where(m != 0, s, 0.0)
    if normalise:
        top = np.abs(s).max(axis=-1, keepdims=True)
        s = s / np.where(top > 0, top, 1.0)
    return s


def logit_seed(output_shape, position, token) -> np.ndarray:
    """A seed tensor that explains the logit of `token` at sequence `position` of a language
    model's output [N, T, vocab] (a generated token: position -1 is the last), one (position,
    token) per sample or the same for all. Pass it as `target=`."""
    shape = tuple(int(d) for d in output_shape)
    if len(shape) != 3:
        raise InvalidInputError(f"a token's logit is explained on an output [N, T, vocab], not of shape {shape}.")
    n, t, v = shape
    pos = np.broadcast_to(np.asarray(position, dtype=np.int64), (n,))
    tok = np.broadcast_to(np.asarray(token, dtype=np.int64), (n,))
    if np.any((pos < -t) | (pos >= t)):
        raise InvalidInputError(f"position {position} is outside the sequence of {t} tokens.")
    if np.any((tok < 0) | (tok >= v)):
        raise InvalidInputError(f"token {token} is outside the vocabulary of {v} tokens.")
    seed = np.zeros(shape, dtype=np.float32)
    seed[np.arange(n), pos % t, tok] = 1.0
    return seed


def similarity_seed(reference, normalise: bool = True) -> np.ndarray:
    """A seed tensor that explains the similarity of each sample's embedding e to `reference` r (one
    embedding [D] for all samples, or one per sample [N, D]): the explained score is Σ seed·e, with
    seed = r/|r| (or r as it is with normalise=False). For a model whose output is L2-normalised
    (sentence-transformers' Normalize), that is the cosine similarity cos(e, r). Pass it as `target=`;
    a shared reference is repeated per sample with `np.broadcast_to(seed, (N, D))`."""
    r = np.asarray(reference, dtype=np.float32)
    if r.ndim not in (1, 2) or r.size == 0:
        raise InvalidInputError(f"the reference must be one embedding [D] or one per sample [N, D], got shape {r.shape}.")
    if normalise:
        norm = np.linalg.norm(r, axis=-1, keepdims=True)
        if np.any(norm == 0):
            raise InvalidInputError("the reference embedding is all zeros: it has no direction to compare with.")
        r = r / norm
    return r


def reference_ids(ids, pad_id: int, keep=()) -> np.ndarray:
    """The baseline ids LayerIntegratedGradients users build: every token replaced by the padding
    token except those in `keep` (the special tokens [CLS], [SEP], which stay in place)."""
    ids = np.asarray(ids)
    if ids.dtype.kind not in "iu":
        raise InvalidInputError(f"token ids must be integers, got {ids.dtype}.")
    return np.where(np.isin(ids, np.asarray(list(keep), dtype=ids.dtype)), ids, np.asarray(pad_id, dtype=ids.dtype))
