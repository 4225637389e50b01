"""Token models: explaining them from their embeddings, token-level scores, coloured-token pages.

`embeddings` finds the embedding lookups of an exported token model (`wrt="embeddings"`);
the rest of the package needs neither torch nor `tokenizers` (read only when a tokenizer file is
given).
"""

from .embeddings import Embedding, embedding_output, embedding_sum, find_embeddings, resolve, token_ids_input, word_embeddings

__all__ = ["Embedding", "embedding_output", "embedding_sum", "find_embeddings", "resolve", "token_ids_input",
           "word_embeddings"]
