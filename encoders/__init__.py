"""Encoders: text embeddings with a cache keyed by (model, text hash), collaborative embeddings (BPR-MF, or
implicit's ALS or BPR), and the content-to-ID mapper that gives cold items and sparse users stand-in embeddings,
warmed by synthetic interactions.

Names load on first use, so that the entry layer can choose the text backend (`use_text_backend`) without pulling in
torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from encoders._cf import BPRMF, BPRConfig, CFEmbeddings
    from encoders._implicit import CFConfig, ImplicitConfig, ImplicitMF, cf_model
    from encoders._mapper import ContentMapper, MapperConfig, Transform, fold_in_users, stand_in_users
    from encoders._text import (
        EMBEDDING_DIM,
        MODEL_NAME,
        TEXT_BACKENDS,
        EmbeddingCache,
        choose_text_backend,
        current_text_model,
        encode_texts,
        item_text,
        load_text_model,
        text_backend_of,
        text_hash,
        text_model_name,
        use_text_backend,
    )
    from encoders._warming import WarmingConfig, prepare_warming, simulate_users, simulated_interactions, warm_items

_SOURCES = {
    "BPRMF": "encoders._cf",
    "EMBEDDING_DIM": "encoders._text",
    "MODEL_NAME": "encoders._text",
    "TEXT_BACKENDS": "encoders._text",
    "BPRConfig": "encoders._cf",
    "CFConfig": "encoders._implicit",
    "ImplicitConfig": "encoders._implicit",
    "ImplicitMF": "encoders._implicit",
    "cf_model": "encoders._implicit",
    "CFEmbeddings": "encoders._cf",
    "ContentMapper": "encoders._mapper",
    "EmbeddingCache": "encoders._text",
    "MapperConfig": "encoders._mapper",
    "Transform": "encoders._mapper",
    "WarmingConfig": "encoders._warming",
    "choose_text_backend": "encoders._text",
    "current_text_model": "encoders._text",
    "encode_texts": "encoders._text",
    "fold_in_users": "encoders._mapper",
    "item_text": "encoders._text",
    "load_text_model": "encoders._text",
    "prepare_warming": "encoders._warming",
    "simulate_users": "encoders._warming",
    "simulated_interactions": "encoders._warming",
    "stand_in_users": "encoders._mapper",
    "text_backend_of": "encoders._text",
    "text_hash": "encoders._text",
    "text_model_name": "encoders._text",
    "use_text_backend": "encoders._text",
    "warm_items": "encoders._warming",
}

__all__ = [
    "BPRMF",
    "EMBEDDING_DIM",
    "MODEL_NAME",
    "TEXT_BACKENDS",
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
    "choose_text_backend",
    "current_text_model",
    "encode_texts",
    "fold_in_users",
    "item_text",
    "load_text_model",
    "prepare_warming",
    "simulate_users",
    "simulated_interactions",
    "stand_in_users",
    "text_backend_of",
    "text_hash",
    "text_model_name",
    "use_text_backend",
    "warm_items",
]


def __getattr__(name: str) -> Any:
    if name not in _SOURCES:
        raise AttributeError(f"module 'encoders' has no attribute {name!r}")
    value = getattr(importlib.import_module(_SOURCES[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
