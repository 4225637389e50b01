"""Token models: explaining them from their embeddings, token-level scores, coloured-token pages.

`embeddings` finds the embedding lookups of an exported token model (`wrt="embeddings"`);
`tokens` turns an embedding attribution into per-token scores; `render` draws coloured tokens
(HTML and PNG); `explain` goes from a tokenizer file and sentences to those files. Nothing here
needs torch, and `tokenizers` is imported only when a tokenizer file is read.
"""

from .embeddings import Embedding, embedding_output, embedding_sum, find_embeddings, resolve, token_ids_input, word_embeddings
from .explain import TextResult, encode, explain_text, load_tokenizer, pad_id, token_feeds, write_text_result
from .render import TokenRow, save_tokens_html, save_tokens_png, token_colour, tokens_html, tokens_image
from .tokens import logit_seed, reference_ids, similarity_seed, token_scores

__all__ = ["Embedding", "TextResult", "TokenRow", "embedding_output", "embedding_sum", "encode", "explain_text",
           "find_embeddings", "load_tokenizer", "logit_seed", "pad_id", "reference_ids", "resolve", "save_tokens_html",
           "save_tokens_png", "similarity_seed", "token_colour", "token_feeds", "token_ids_input", "token_scores", "tokens_html",
           "tokens_image", "word_embeddings", "write_text_result"]
