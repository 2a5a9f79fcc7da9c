"""Baseline scorers: random, popularity and content kNN over item vectors (TF-IDF or sentence embeddings).

Each is a `ranker.evaluate.Scorer` once fitted: `fit(train, index)` reads a split's training interactions
(user_id, item_id) through its `EvalIndex`, and calling it with (user indices, item indices) returns float32 scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Self

import numpy as np
import polars as pl
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.preprocessing import normalize

from catalog import Columns, ConfigError, NotFittedError, has_times
from ranker.evaluate import EvalIndex, interaction_matrix

__all__ = ["ContentKNNScorer", "PopularityScorer", "RandomScorer", "RecentPopularityScorer", "tfidf_item_vectors"]

ItemVectors = np.ndarray | sp.csr_matrix | sp.csr_array
# Users per similarity block in top-n scoring: bounds memory to about chunk x mean history x candidates floats.
_TOP_N_CHUNK = 128


def _indices(values: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise ConfigError(f"{name} must be a 1-d integer array of indices, got {array.dtype} of shape {array.shape}.")
    return array.astype(np.int64, copy=False)


class RandomScorer:
    """Uniform random scores in [0, 1), a pure function of (seed, user, item): batching and order do not matter."""

    def __init__(self, seed: int = 0) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
            raise ConfigError(f"RandomScorer seed must be an int in [0, 2**64), got {seed!r}.")
        self.seed = seed

    def fit(self, train: pl.DataFrame, index: EvalIndex) -> Self:
        """Nothing to learn; here so that every baseline is fitted the same way."""
        return self

    def is_fitted(self) -> bool:
        return True

    def __call__(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        u = _indices(users, "users").astype(np.uint64)[:, None]
        i = _indices(items, "items").astype(np.uint64)[None, :]
        # splitmix64 finaliser over a mix of (seed, user, item): cheap, vectorised, well spread.
        # uint64 arrays (not scalars) so that the intended wrap-around raises no overflow warning.
        x = np.full((1, 1), self.seed, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        x = x + u * np.uint64(0xBF58476D1CE4E5B9) + i * np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
        return ((x >> np.uint64(40)).astype(np.float32) / np.float32(1 << 24)).astype(np.float32)


class PopularityScorer:
    """Scores every item by its number of training interactions (distinct users), the same for every user."""

    def __init__(self) -> None:
        self._counts: np.ndarray | None = None

    def fit(self, train: pl.DataFrame, index: EvalIndex) -> Self:
        self._counts = interaction_matrix(train, index).sum(axis=0).astype(np.float32)
        return self

    def is_fitted(self) -> bool:
        return self._counts is not None

    def __call__(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        if self._counts is None:
            raise NotFittedError("PopularityScorer is not fitted: call fit(split.train, split.index) first.")
        row = self._counts[_indices(items, "items")]
        return np.repeat(row[None, :], _indices(users, "users").size, axis=0)


class RecentPopularityScorer(PopularityScorer):
    """Popularity over the last `days` of the training log (ties broken by all-time popularity): what the
    population rates now, the reference a ranker on a time-ordered log must beat."""

    def __init__(self, days: int = 28) -> None:
        super().__init__()
        if days < 1:
            raise ConfigError(f"RecentPopularityScorer days must be >= 1, got {days}.")
        self.days = days

    def fit(self, train: pl.DataFrame, index: EvalIndex) -> Self:
        if not has_times(train):
            raise ConfigError("RecentPopularityScorer needs training interactions with a 'ts'; use PopularityScorer.")
        latest = train[Columns.ts].max()
        recent = train.filter(pl.col(Columns.ts) > latest - timedelta(days=self.days))  # type: ignore[operator]
        counts = interaction_matrix(recent, index).sum(axis=0).astype(np.float32)
        overall = interaction_matrix(train, index).sum(axis=0).astype(np.float32)
        # All-time counts only break ties: they stay below one recent event.
        self._counts = counts + overall / (overall.max() + 1.0)
        return self


class ContentKNNScorer:
    """Content kNN: how similar item i is to the items user u interacted with in training (cosine of item vectors).

    `neighbors=None` scores by the mean similarity to all of the user's items (= the user's mean item vector dotted
    with i's); `neighbors=n` by the mean of the n highest similarities (the sum ranks identically, since it differs
    by a per-user factor). Rows of `item_vectors` are index items (row i = item i), dense or sparse; they are
    L2-normalised here. A user without training items scores 0 everywhere.
    """

    def __init__(self, item_vectors: ItemVectors, *, neighbors: int | None = None) -> None:
        if neighbors is not None and neighbors < 1:
            raise ConfigError(f"neighbors must be None (all of the user's items) or >= 1, got {neighbors}.")
        if item_vectors.ndim != 2:
            raise ConfigError(f"item_vectors must be 2-d (items, dims), got shape {item_vectors.shape}.")
        self.neighbors = neighbors
        if sp.issparse(item_vectors):
            self._vectors: ItemVectors = sp.csr_array(normalize(item_vectors, norm="l2").astype(np.float32))
        else:
            self._vectors = normalize(np.asarray(item_vectors, dtype=np.float32), norm="l2")
        self._history: sp.csr_array | None = None

    def fit(self, train: pl.DataFrame, index: EvalIndex) -> Self:
        if self._vectors.shape[0] != index.n_items:
            raise ConfigError(
                f"item_vectors has {self._vectors.shape[0]} rows but the index has {index.n_items} items; "
                "build them from split.items (one row per index item, in order)."
            )
        self._history = interaction_matrix(train, index)
        return self

    def is_fitted(self) -> bool:
        return self._history is not None

    def _similarity(self, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Dense (len(rows), len(items)) cosine similarities between items."""
        product = self._vectors[rows] @ self._vectors[items].T
        return np.asarray(product.toarray() if sp.issparse(product) else product, dtype=np.float32)

    def __call__(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        if self._history is None:
            raise NotFittedError("ContentKNNScorer is not fitted: call fit(split.train, split.index) first.")
        users, items = _indices(users, "users"), _indices(items, "items")
        history = self._history[users]
        if self.neighbors is None:
            # Mean similarity to all history items = (mean history vector) . item vector: one product per batch.
            counts = np.maximum(history.sum(axis=1), 1.0)
            profile = sp.diags_array(1.0 / counts).astype(np.float32) @ history @ self._vectors
            scores = profile @ self._vectors[items].T
            return np.asarray(scores.toarray() if sp.issparse(scores) else scores, dtype=np.float32)
        scores = np.zeros((users.size, items.size), dtype=np.float32)
        for start in range(0, users.size, _TOP_N_CHUNK):
            chunk = history[start : start + _TOP_N_CHUNK]
            scores[start : start + _TOP_N_CHUNK] = self._top_n_mean(chunk, items)
        return scores

    def _top_n_mean(self, history: sp.csr_array, items: np.ndarray) -> np.ndarray:
        """Mean of each user's `neighbors` highest similarities to each item."""
        # Similarities of every history item of the chunk to the items, computed once for the chunk.
        seen = np.unique(history.indices)
        similarity = self._similarity(seen, items)
        local = np.searchsorted(seen, history.indices)
        scores = np.zeros((history.shape[0], items.size), dtype=np.float32)
        n = self.neighbors
        for row in range(history.shape[0]):
            rows = local[history.indptr[row] : history.indptr[row + 1]]
            if rows.size == 0:
                continue
            block = similarity[rows]
            if rows.size > n:
                block = np.partition(block, rows.size - n, axis=0)[rows.size - n :]
            scores[row] = block.mean(axis=0)
        return scores


def tfidf_item_vectors(
    texts: Sequence[str] | pl.Series,
    *,
    min_df: int = 2,
    sublinear_tf: bool = True,
    stop_words: str | None = "english",
    ngram_range: tuple[int, int] = (1, 2),
) -> sp.csr_array:
    """L2-normalised TF-IDF rows (float32, sparse), one per text, fitted on these texts (item text is known upfront).

    The defaults (word uni+bigrams seen in 2+ texts, sublinear tf, English stop words) scored best of a small grid
    on CiteULike's cold_item_val (benchmarks/cold_start.py re-checks the grid on every run).
    """
    values = texts.fill_null("").to_list() if isinstance(texts, pl.Series) else list(texts)
    vectorizer = TfidfVectorizer(
        min_df=min_df, sublinear_tf=sublinear_tf, stop_words=stop_words, ngram_range=ngram_range, dtype=np.float32
    )
    return sp.csr_array(vectorizer.fit_transform(values))
