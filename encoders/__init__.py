"""Encoders: sentence-transformers text embeddings with an embedding cache keyed by (model, text hash)."""

from encoders._text import (
    EMBEDDING_DIM,
    MODEL_NAME,
    EmbeddingCache,
    encode_texts,
    item_text,
    load_text_model,
    text_hash,
)

__all__ = [
    "EMBEDDING_DIM",
    "MODEL_NAME",
    "EmbeddingCache",
    "encode_texts",
    "item_text",
    "load_text_model",
    "text_hash",
]
