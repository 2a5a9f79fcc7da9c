"""Encoders: text embeddings with a cache keyed by (model, text hash), collaborative embeddings (BPR-MF, or
implicit's ALS or BPR), and the content-to-ID mapper that gives cold items and sparse users stand-in embeddings,
warmed by synthetic interactions."""

from encoders._cf import BPRMF, BPRConfig, CFEmbeddings
from encoders._implicit import CFConfig, ImplicitConfig, ImplicitMF, cf_model
from encoders._mapper import ContentMapper, MapperConfig, Transform, fold_in_users, stand_in_users
from encoders._text import (
    EMBEDDING_DIM,
    MODEL_NAME,
    EmbeddingCache,
    encode_texts,
    item_text,
    load_text_model,
    text_hash,
)
from encoders._warming import WarmingConfig, prepare_warming, simulate_users, simulated_interactions, warm_items

__all__ = [
    "BPRMF",
    "EMBEDDING_DIM",
    "MODEL_NAME",
    "BPRConfig",
    "CFConfig",
    "CFEmbeddings",
    "ContentMapper",
    "EmbeddingCache",
    "ImplicitConfig",
    "ImplicitMF",
    "MapperConfig",
    "Transform",
    "WarmingConfig",
    "cf_model",
    "encode_texts",
    "fold_in_users",
    "item_text",
    "load_text_model",
    "prepare_warming",
    "simulate_users",
    "simulated_interactions",
    "stand_in_users",
    "text_hash",
    "warm_items",
]
