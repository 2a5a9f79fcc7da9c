"""Serving: recommendations from a saved model version (the entry side: it composes ranker, encoders and catalog;
no stage package imports it)."""

from serving._artifacts import SERVING_ARRAYS, SERVING_MANIFEST, ServingInputs, load_serving_inputs, save_serving_inputs
from serving._http import API_KEY_HEADER, create_app
from serving._live import WorkspaceFollower
from serving._recommender import (
    CONTENT_STANDIN,
    ID_EMBEDDING,
    PRECOMPUTED_K,
    STATED_TEXT,
    SYNTHETIC_WARMED,
    Recommender,
)

__all__ = [
    "API_KEY_HEADER",
    "CONTENT_STANDIN",
    "ID_EMBEDDING",
    "PRECOMPUTED_K",
    "SERVING_ARRAYS",
    "SERVING_MANIFEST",
    "STATED_TEXT",
    "SYNTHETIC_WARMED",
    "Recommender",
    "ServingInputs",
    "WorkspaceFollower",
    "create_app",
    "load_serving_inputs",
    "save_serving_inputs",
]
