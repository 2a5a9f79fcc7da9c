"""Baseline scorers: random, popularity, attribute-group popularity and content kNN over item vectors (TF-IDF or
sentence embeddings).

Each is a `ranker.evaluate.Scorer` once fitted: `fit(train, index)` reads a split's training interactions
(user_id, item_id) through its `EvalIndex`, and calling it with (user indices, item indices) returns float32 scores.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import timedelta
from typing import Self

import numpy as np
import polars as pl
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.preprocessing import normalize

from catalog import Columns, ConfigError, NotFittedError, has_times
from ranker.evaluate import EvalIndex, interaction_matrix
from ranker.temporal import AT_END, RequestTimes

__all__ = [
    "AGE_BANDS",
    "ArrivalPopularityScorer",
    "AttributePopularityScorer",
    "ContentKNNScorer",
    "PopularityScorer",
    "RandomScorer",
    "RecentPopularityScorer",
    "tfidf_item_vectors",
    "user_groups",
]

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


class ArrivalPopularityScorer:
    """Each user's items by their share of the events of the `days` days before the user asks (ties broken by
    all-time popularity): popularity at arrival, the line the newcomer model's recent share is held to on the
    protocols over users, whose held-out users arrive at their own times (`ProtocolSplit.requested_at`; a user
    without a time asks at the log's end). Only events strictly before a user's request count."""

    def __init__(self, days: int = 14) -> None:
        if days < 1:
            raise ConfigError(f"ArrivalPopularityScorer days must be >= 1, got {days}.")
        self.days = days
        self._times: RequestTimes | None = None
        self._overall: np.ndarray | None = None

    def fit(self, train: pl.DataFrame, index: EvalIndex, requested_at: pl.DataFrame) -> Self:
        if not has_times(train):
            raise ConfigError("ArrivalPopularityScorer needs training interactions with a 'ts'; use PopularityScorer.")
        times = RequestTimes.of(train, index.user_ids, index.item_ids, requested_at)
        end = int(times.times.max()) + 1 if times.times.size else 0
        self._times = replace(times, at=np.where(times.at == AT_END, end, times.at))
        overall = interaction_matrix(train, index).sum(axis=0).astype(np.float32)
        self._overall = overall / (overall.max() + 1.0)
        return self

    def is_fitted(self) -> bool:
        return self._times is not None

    def __call__(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        if self._times is None or self._overall is None:
            raise NotFittedError("ArrivalPopularityScorer is not fitted: call fit(train, index, requested_at) first.")
        users, items = _indices(users, "users"), _indices(items, "items")
        shares = self._times.recent(users, self.days, self._overall.size)
        # Shares in thousandths: one event of a window of at most a million is worth at least 0.001, above the
        # all-time tie-breaker scaled below 0.001.
        return (shares[:, items] + 1e-3 * self._overall[items]).astype(np.float32)


AGE_BANDS = (25.0, 35.0, 45.0, 55.0)
"""Edges of the age bands users are grouped by: <25, 25-35, 35-45, 45-55, 55+."""
_GROUP = "_group"


def _band_labels(values: pl.Series, edges: Sequence[float]) -> pl.Series:
    """Each numeric value's band between sorted `edges` ('<25', '25-35', ..., '55+'); null where not a number."""
    numbers = values.cast(pl.Float64, strict=False)
    bins = np.searchsorted(np.asarray(edges, dtype=np.float64), numbers.fill_null(np.nan).to_numpy(), side="right")
    names = [f"<{edges[0]:g}", *(f"{lo:g}-{hi:g}" for lo, hi in itertools.pairwise(edges)), f"{edges[-1]:g}+"]
    labels = pl.Series(values.name, np.asarray(names, dtype=object)[bins].tolist(), dtype=pl.String)
    return pl.select(pl.when(numbers.is_null()).then(None).otherwise(labels)).to_series().alias(values.name)


def _categorical(frame: pl.DataFrame, max_levels: int) -> list[str]:
    """Attributes whose values are not all numbers and take at most `max_levels` values (an id-like attribute, a
    zip code say, would leave every group too small to count)."""
    chosen = []
    for name in frame.columns:
        values = frame[name].drop_nulls().cast(pl.String)
        numeric = values.cast(pl.Float64, strict=False).null_count() == 0
        if values.len() and not numeric and values.n_unique() <= max_levels:
            chosen.append(name)
    return chosen


def user_groups(
    users: pl.DataFrame,
    attributes: Sequence[str] | None = None,
    *,
    bands: Mapping[str, Sequence[float]] | None = None,
    max_levels: int = 30,
) -> pl.DataFrame:
    """(user_id, group): each user's values of `attributes` (from the users table's JSON `attributes`) as one label,
    e.g. 'gender=F|age=25-35'; numeric attributes named in `bands` are cut into bands first. Null where a user lacks
    one of them. `attributes=None` takes every categorical attribute (`_categorical`)."""
    bands = {"age": AGE_BANDS} if bands is None else bands
    texts = users[Columns.attributes] if Columns.attributes in users.columns else pl.Series([None] * users.height)
    known = texts.drop_nulls()
    parsed = known.str.json_decode(infer_schema_length=None).struct.unnest() if known.len() else pl.DataFrame()
    # Values back on every user's row (null for users without attributes).
    rows = pl.DataFrame({Columns.user: users[Columns.user]}).filter(texts.is_not_null())
    table = pl.concat([rows, parsed.select(pl.all().cast(pl.String))], how="horizontal") if parsed.width else rows
    chosen = list(attributes) if attributes is not None else _categorical(table.drop(Columns.user), max_levels)
    missing = [name for name in chosen if name not in table.columns]
    if missing or not chosen:
        have = sorted(c for c in table.columns if c != Columns.user)
        raise ConfigError(
            f"user attributes {missing or chosen} are not in the users table (it has {have}); "
            "name attributes it has, or give users with categorical attributes."
        )
    table = table.with_columns(_band_labels(table[name], bands[name]) for name in chosen if name in bands)
    parts = [pl.lit(f"{name}=") + pl.col(name) for name in chosen]
    grouped = table.select(Columns.user, pl.concat_str(parts, separator="|").alias(_GROUP))
    return (
        pl.DataFrame({Columns.user: users[Columns.user]})
        .join(grouped, on=Columns.user, how="left", maintain_order="left")
        .rename({_GROUP: "group"})
    )


class AttributePopularityScorer:
    """The most popular items among the training users who share a user's attribute values (gender x age band, say):
    what a user without history can be recommended from their attributes alone. A user whose group has fewer than
    `min_users` training users, or who lacks an attribute, gets overall popularity. Within a group, all-time
    popularity breaks ties. The reference a stand-in for users without history must beat.
    """

    def __init__(
        self,
        attributes: Sequence[str] | None = None,
        *,
        bands: Mapping[str, Sequence[float]] | None = None,
        min_users: int = 20,
        max_levels: int = 30,
    ) -> None:
        if min_users < 1:
            raise ConfigError(f"min_users must be >= 1, got {min_users}.")
        self.attributes = tuple(attributes) if attributes is not None else None
        self.bands = bands
        self.min_users = min_users
        self.max_levels = max_levels
        self._rows: np.ndarray | None = None  # per index user: its row of `_table` (0: overall popularity)
        self._table: np.ndarray | None = None
        self.group_sizes: dict[str, int] = {}

    def fit(self, train: pl.DataFrame, index: EvalIndex, *, users: pl.DataFrame) -> Self:
        """Count each group's training interactions; `users` is the users table (user_id, attributes)."""
        matrix = interaction_matrix(train, index)
        overall = np.asarray(matrix.sum(axis=0)).ravel().astype(np.float32)
        tie_break = overall / (overall.max() + 1.0)
        labels = (
            pl.DataFrame({Columns.user: index.user_ids})
            .join(
                user_groups(users, self.attributes, bands=self.bands, max_levels=self.max_levels),
                on=Columns.user,
                how="left",
                maintain_order="left",
            )["group"]
            .to_numpy()
        )
        trained = np.diff(matrix.indptr) > 0
        names, codes = np.unique(np.where(labels == None, "", labels).astype(str), return_inverse=True)  # noqa: E711
        sizes = np.bincount(codes[trained], minlength=names.size)
        self.group_sizes = {str(name): int(size) for name, size in zip(names, sizes, strict=True) if name}
        counted = np.flatnonzero((sizes >= self.min_users) & (names != ""))
        member = sp.csr_array(
            (np.ones(int(trained.sum()), dtype=np.float32), (codes[trained], np.flatnonzero(trained))),
            shape=(names.size, index.n_users),
        )
        counts = np.asarray((member @ matrix).todense(), dtype=np.float32)[counted]
        self._table = np.vstack([overall, counts + tie_break[None, :]]).astype(np.float32)
        row_of_code = np.zeros(names.size, dtype=np.int64)
        row_of_code[counted] = np.arange(counted.size) + 1
        self._rows = row_of_code[codes]
        return self

    def is_fitted(self) -> bool:
        return self._table is not None

    def __call__(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        if self._table is None or self._rows is None:
            raise NotFittedError("AttributePopularityScorer is not fitted: call fit(train, index, users=...) first.")
        rows = self._rows[_indices(users, "users")]
        return self._table[np.ix_(rows, _indices(items, "items"))]


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
