"""The language model's user profiles (the `user_profiles` table: two sentences written from the titles of a user's
items) where they can reach a user's scores.

A profile is embedded by the same text encoder as the items (MiniLM, through the one embedding cache), and used two
ways:

    user stand-in     the profile's embedding mixed into the user's text profile (the normalised sum of the two
                      unit vectors: the profile weighs as much as all the user's items together; a user without
                      items: the profile alone), which the stand-in builder reads beside the attributes
    newcomer scores   + weight * cos(profile, item text) on the warm items of the users the newcomer model serves
                      (0 to SPARSE_MAX events)

The second is the one that reaches the users profiles exist for: the newcomer model serves every user with 0-5
events, and it reads no stand-in and no text (attributes, item-kNN over the user's items, recency:
`ranker.newcomers`); the stand-in reaches only users without history whom the ranker serves, and a user without
history has no items to be profiled from. So a profile added to the stand-in alone changes no score of a profiled
user: the term is the profile's only path to them. The control (weight 0) is the product as served.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from catalog import Columns
from encoders import EmbeddingCache, encode_texts
from ranker.evaluate import ProtocolSplit, Scorer, interaction_matrix
from ranker.features import normalise_rows
from training._fit import FittedRanker
from training._user_standins import UserStandInBuilder

PROFILE = "profile"


def profile_vectors(profiles: pl.DataFrame | None, user_ids: pl.Series, *, cache_dir: Path) -> np.ndarray:
    """(users x text width) unit embeddings of each of `user_ids`' profile (`profiles`: user_id, profile; the last
    row of a user wins), zero rows for users without one; None or no profile: an all-zero (users x 0) array."""
    if profiles is None or profiles.is_empty():
        return np.zeros((user_ids.len(), 0), dtype=np.float32)
    table = (
        profiles.select(pl.col(Columns.user).cast(pl.String), pl.col(PROFILE).cast(pl.String))
        .drop_nulls()
        .filter(pl.col(PROFILE).str.strip_chars() != "")
        .unique(Columns.user, keep="last")
    )
    wanted = pl.DataFrame({Columns.user: user_ids.cast(pl.String)}).with_row_index("_row")
    found = wanted.join(table, on=Columns.user, how="inner").sort("_row")
    if found.is_empty():
        return np.zeros((user_ids.len(), 0), dtype=np.float32)
    vectors = normalise_rows(encode_texts(found[PROFILE].to_list(), cache=EmbeddingCache.in_cache_dir(cache_dir)))
    out = np.zeros((user_ids.len(), vectors.shape[1]), dtype=np.float32)
    out[found["_row"].to_numpy()] = vectors
    return out


def has_profile(vectors: np.ndarray) -> np.ndarray:
    """Which rows of `profile_vectors` hold a profile."""
    return np.any(vectors != 0, axis=1) if vectors.shape[1] else np.zeros(vectors.shape[0], dtype=bool)


def with_profiles(text_profiles: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Users' text profiles with their profile's embedding mixed in: normalise(text profile + profile) where a user
    has a profile (both unit vectors: equal weight), the text profile unchanged elsewhere."""
    text_profiles = np.asarray(text_profiles, dtype=np.float32)
    profiled = has_profile(vectors)
    if not profiled.any():
        return text_profiles
    out = text_profiles.copy()
    out[profiled] = normalise_rows(text_profiles[profiled] + vectors[profiled])
    return out


def profiled_standins(
    builder: UserStandInBuilder, attributes: pl.Series, text_profiles: np.ndarray, vectors: np.ndarray
) -> np.ndarray:
    """Users' stand-in [vector | 1] rows from their attributes and their text profiles with their LLM profiles mixed
    in (`with_profiles`); the same as `builder.transform(attributes, text_profiles)` for users without one."""
    return builder.transform(attributes, with_profiles(text_profiles, vectors))


def reached(fitted: FittedRanker, vectors: np.ndarray) -> np.ndarray:
    """Which users (rows of the fitted product's inputs) a profile reaches: those with one whom its newcomer route
    serves (none without a route)."""
    route = fitted.ranker.newcomers
    if route is None:
        return np.zeros(vectors.shape[0], dtype=bool)
    activity = np.diff(fitted.served.inputs.history.indptr)
    return has_profile(vectors) & (activity >= route.min_events) & (activity <= route.max_events)


def profiled_scorer(fitted: FittedRanker, split: ProtocolSplit, vectors: np.ndarray, weight: float) -> Scorer:
    """The fitted product's scorer over `split` (its exclude pairs -inf, ordered as it serves) with
    weight * cos(profile, item text) added to the warm items' scores of the users its newcomer route serves who have
    a profile. Their items without history keep their places below every warm item (the route's rule), and every
    other user is scored as before; weight 0 or no profile: the product's own scores."""
    ranker, inputs = fitted.ranker, fitted.inputs_for(split)
    model = ranker.scorer(inputs, interaction_matrix(split.exclude, split.index), placed=False)
    touched = reached(fitted, vectors)

    def score(users: np.ndarray, items: np.ndarray) -> np.ndarray:
        scores = model(users, items)
        if weight:
            rows = touched[users]
            if rows.any():
                warm = ~inputs.is_cold[items]
                block = scores[rows]
                # -inf (known or excluded pairs) stays -inf; cos >= -1, so the cold items, placed below the warm
                # ones by the route, stay below them when lowered by the weight.
                block[:, warm] += weight * (vectors[users[rows]] @ inputs.text[items[warm]].T)
                block[:, ~warm] -= weight
                scores[rows] = block
        return ranker.place(scores, inputs, items)

    return score
