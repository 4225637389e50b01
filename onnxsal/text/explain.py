"""Explaining text end to end: a tokenizer file, sentences in, coloured tokens out (`onnxsal explain
MODEL --text ... --tokenizer tokenizer.json`).

The tokenizer is a Hugging Face `tokenizer.json`, read offline by the `tokenizers` package (an
optional dependency, imported only here). Sentences are encoded with the tokenizer's own special
tokens, padded to the longest, and fed to the model's integer inputs by their role: the ids the
word embeddings read, an attention mask (1 on tokens, 0 on padding), token types (zeros) and
position ids (0..T-1). The attribution is taken with respect to the embeddings (`wrt`), reduced
to one score per token, and written as an HTML page, a PNG and a JSON file of the scores.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InvalidInputError
from ..io_utils import write_bytes_atomic
from .render import TokenRow, tokens_html, tokens_image
from .tokens import token_scores

BASELINES = ("pad", "zeros")
PAD_TOKENS = ("[PAD]", "<pad>", "<|pad|>", "<PAD>")


def load_tokenizer(path):
    """A `tokenizers.Tokenizer` read from a tokenizer.json file, or one clear error."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise InvalidInputError("reading a tokenizer file needs the 'tokenizers' package: pip install tokenizers.") from None
    p = Path(path)
    if not p.is_file():
        raise InvalidInputError(f"tokenizer file {str(path)!r} does not exist.")
    try:
        return Tokenizer.from_file(str(p))
    except Exception as exc:  # tokenizers raises its own Exception subclass with a long message
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidInputError(f"{str(path)!r} is not a Hugging Face tokenizer.json file ({why}).") from None


def pad_id(tokenizer) -> int:
    """The padding token's id: the tokenizer's padding setting, else a token named like padding, else 0."""
    padding = getattr(tokenizer, "padding", None)
    if padding and padding.get("pad_id") is not None:
        return int(padding["pad_id"])
    for token in PAD_TOKENS:
        i = tokenizer.token_to_id(token)
        if i is not None:
            return int(i)
    return 0


@dataclass
class Encoded:
    ids: np.ndarray  # [N, T] int64, padded with the padding id
    mask: np.ndarray  # [N, T] int64, 1 on tokens
    special: np.ndarray  # [N, T] bool: special tokens ([CLS], [SEP]) and padding
    tokens: list[list[str]] = field(default_factory=list)  # each text's tokens, without padding


def encode(tokenizer, texts) -> Encoded:
    """Encode `texts` with the tokenizer's post-processor (special tokens included), padded to the longest."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
        raise InvalidInputError("give at least one non-empty text to explain.")
    encodings = [tokenizer.encode(t) for t in texts]
    n, t = len(encodings), max(len(e.ids) for e in encodings)
    pad = pad_id(tokenizer)
    ids = np.full((n, t), pad, dtype=np.int64)
    mask = np.zeros((n, t), dtype=np.int64)
    special = np.ones((n, t), dtype=bool)
    for i, e in enumerate(encodings):
        k = len(e.ids)
        ids[i, :k], mask[i, :k] = e.ids, 1
        special[i, :k] = np.asarray(e.special_tokens_mask, dtype=bool) if len(e.special_tokens_mask) == k else False
    return Encoded(ids, mask, special, [list(e.tokens) for e in encodings])


def token_feeds(explainer, encoded: Encoded) -> dict[str, np.ndarray]:
    """The model's inputs for encoded texts, each integer input fed by its role."""
    from .embeddings import token_ids_input

    ids_name = token_ids_input(explainer.view)
    if ids_name is None:
        raise InvalidInputError("the model has no embedding lookup indexed by an integer input, so it does not read token ids.")
    n, t = encoded.ids.shape
    feeds = {}
    for spec in explainer.inputs:
        lower = spec.name.lower()
        if spec.name == ids_name:
            value = encoded.ids
        elif "mask" in lower:
            value = encoded.mask
        elif "type" in lower or "segment" in lower:
            value = np.zeros((n, t), dtype=np.int64)
        elif "position" in lower:
            value = np.broadcast_to(np.arange(t, dtype=np.int64), (n, t)).copy()
        else:
            raise InvalidInputError(f"input {spec.name!r} is neither the token ids ({ids_name!r}), an attention mask, "
                                    f"token types nor position ids, so a text alone cannot feed it.")
        if spec.dtype.kind == "f" and "mask" not in lower:
            raise InvalidInputError(f"input {spec.name!r} takes {spec.dtype} values, not token ids.")
        feeds[spec.name] = value.astype(spec.dtype)
    return feeds


@dataclass
class TextResult:
    rows: list[TokenRow]
    attribution: np.ndarray  # [N, T, hidden]
    scores: np.ndarray  # [N, T] per-token scores (padding 0)
    target: np.ndarray  # the explained class (or dimension) per text
    written: list[Path] = field(default_factory=list)


def explain_text(model, texts, tokenizer, method: str = "integrated_gradients", target=None, wrt: str = "embeddings",
                 baseline: str = "pad", reduce: str = "sum", providers="auto", explainer=None, **options) -> TextResult:
    """Explain `texts` (a string or a list) with a token model: per-token scores of the explained
    class (`target`: None for each text's top class, or an index: a class, a sentence-embedding
    dimension). `tokenizer`: a path to tokenizer.json or a `tokenizers.Tokenizer`. `baseline`
    (Integrated Gradients): "pad" (every non-special token replaced by the padding token, run
    through the same embeddings) or "zeros" (zero embeddings)."""
    from ..explainer import Explainer

    tok = load_tokenizer(tokenizer) if isinstance(tokenizer, (str, Path)) else tokenizer
    ex = explainer or Explainer(model, providers=providers)
    encoded = encode(tok, texts)
    feeds = token_feeds(ex, encoded)
    if method == "integrated_gradients" and "baselines" not in options:
        if baseline not in BASELINES:
            raise InvalidInputError(f"baseline must be one of {BASELINES}, not {baseline!r}.")
        if baseline == "pad":  # special tokens and padding stay, every other token becomes padding
            from .embeddings import token_ids_input

            options["baselines"] = {token_ids_input(ex.view): np.where(encoded.special, encoded.ids, pad_id(tok))}
    scores_out = ex.predict(feeds)
    if scores_out.ndim != 2:
        raise InvalidInputError(f"output {ex.output!r} has shape {scores_out.shape}; texts are explained here for an "
                                f"output [texts, classes or dims]: for a language model's token logits, pass "
                                f"target=onnxsal.text.logit_seed(...) to Explainer.attribute.")
    if target is None:
        target = scores_out.argmax(axis=1)
    given = np.asarray(target)
    if given.dtype.kind not in "iu" or given.ndim > 1 or (given.ndim == 1 and len(given) != len(encoded.tokens)):
        raise InvalidInputError(f"target must be a class (or dimension) index, or one per text ({len(encoded.tokens)}), "
                                f"not {target!r}.")
    target = np.broadcast_to(given.astype(np.int64), (len(encoded.tokens),)).copy()
    attribution = ex.attribute(feeds, target=target, method=method, wrt=wrt, **options)
    if attribution.ndim != 3 or attribution.shape[:2] != encoded.ids.shape:
        raise InvalidInputError(f"the explained tensor has shape {attribution.shape}, not [texts, tokens, hidden] "
                                f"{encoded.ids.shape}: name a per-token tensor with wrt=.")
    scores = token_scores(attribution, reduce, mask=encoded.mask)
    rows = []
    for i, tokens in enumerate(encoded.tokens):
        k = len(tokens)
        label = f"class {target[i]} (score {float(scores_out[i, target[i]]):.3g}; top class {int(scores_out[i].argmax())})"
        rows.append(TokenRow(tokens, scores[i, :k], label, float(scores[i, :k].sum())))
    return TextResult(rows, attribution, scores, target)


def write_text_result(result: TextResult, out_dir, stem: str = "tokens", title: str = "Token attributions") -> list[Path]:
    """Write `stem`.html, `stem`.png and `stem`.json (tokens, scores, targets) to `out_dir`; each
    file is built in memory first and written atomically."""
    out = Path(out_dir)
    page = tokens_html(result.rows, title=title).encode("utf-8")
    image = tokens_image(result.rows, title=title)
    record = [{"tokens": list(r.tokens), "scores": [float(s) for s in r.scores], "target": int(t), "label": r.label}
              for r, t in zip(result.rows, result.target)]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidInputError(f"cannot create the output folder {str(out)!r}: {exc.strerror or exc}.") from None
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    written = [write_bytes_atomic(page, out / f"{stem}.html"), write_bytes_atomic(buf.getvalue(), out / f"{stem}.png"),
               write_bytes_atomic(json.dumps(record, indent=1).encode("utf-8"), out / f"{stem}.json")]
    result.written = written
    return written

