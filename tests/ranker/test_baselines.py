"""Baseline scorers on hand cases: popularity, content kNN (both aggregations), seeded random, TF-IDF vectors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp

from catalog import Columns, ConfigError, NotFittedError
from ranker.baselines import (
    AttributePopularityScorer,
    ContentKNNScorer,
    PopularityScorer,
    RandomScorer,
    RecentPopularityScorer,
    tfidf_item_vectors,
    user_groups,
)
from ranker.evaluate import EvalIndex

USER, ITEM = Columns.user, Columns.item


def train_of(mapping: dict[str, list[str]]) -> pl.DataFrame:
    rows = [(u, i) for u, items in mapping.items() for i in items]
    return pl.DataFrame(rows, schema={USER: pl.String, ITEM: pl.String}, orient="row")


def test_popularity_ranks_the_most_popular_first() -> None:
    index = EvalIndex(pl.Series(["u0", "u1", "u2"]), pl.Series(["a", "b", "c"]))
    # b: 3 users, c: 2, a: 1; u0's repeat of b counts once.
    train = train_of({"u0": ["b", "b", "c"], "u1": ["b", "c"], "u2": ["b", "a"]})
    model = PopularityScorer().fit(train, index)
    scores = model(np.array([0, 2]), np.array([0, 1, 2]))
    assert scores.dtype == np.float32
    assert scores.tolist() == [[1.0, 3.0, 2.0], [1.0, 3.0, 2.0]]
    assert model(np.array([1]), np.array([2, 0])).tolist() == [[2.0, 1.0]]


def test_recent_popularity_counts_the_last_days_and_breaks_ties_by_all_time_counts() -> None:
    index = EvalIndex(pl.Series(["u0", "u1", "u2"]), pl.Series(["a", "b", "c"]))
    day = datetime(2024, 1, 31, tzinfo=UTC)
    rows = [("u0", "a", 30), ("u1", "a", 29), ("u2", "a", 20), ("u0", "b", 1), ("u1", "c", 2), ("u2", "c", 25)]
    train = pl.DataFrame(
        {USER: [r[0] for r in rows], ITEM: [r[1] for r in rows], Columns.ts: [day - timedelta(days=r[2]) for r in rows]}
    )
    # In the 7 days before the latest event (1 day ago): b once, c once, a never; c has more overall: c > b > a.
    scores = RecentPopularityScorer(days=7).fit(train, index)(np.array([0]), np.array([0, 1, 2]))[0]
    assert scores.argsort().tolist() == [0, 1, 2]
    assert np.floor(scores).tolist() == [0, 1, 1]
    # Over the 28 days before the latest event (1 day ago): a once (20; 29 and 30 are out), b once, c twice.
    wide = RecentPopularityScorer(days=28).fit(train, index)(np.array([0]), np.array([0, 1, 2]))[0]
    assert np.floor(wide).tolist() == [1, 1, 2]
    with pytest.raises(ConfigError, match="ts"):
        RecentPopularityScorer().fit(train.drop(Columns.ts), index)


def test_unfitted_models_say_call_fit() -> None:
    with pytest.raises(NotFittedError, match="fit"):
        PopularityScorer()(np.array([0]), np.array([0]))
    with pytest.raises(NotFittedError, match="fit"):
        ContentKNNScorer(np.eye(2))(np.array([0]), np.array([0]))


# Items h1, h2, h3 (history) and candidates x, y; 2-d vectors, so cosines are easy to check by hand.
KNN_ITEMS = ["h1", "h2", "h3", "x", "y"]
KNN_VECTORS = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 2.0], [1.0, 0.0], [0.6, 0.8]], dtype=np.float32)
KNN_INDEX = EvalIndex(pl.Series(["u", "new"]), pl.Series(KNN_ITEMS))
KNN_TRAIN = train_of({"u": ["h1", "h2"]})


def test_content_knn_ranks_the_similar_item_first() -> None:
    # Mean similarity: x = (1 + 0) / 2 = 0.5, y = (0.6 + 0.8) / 2 = 0.7: y first.
    profile = ContentKNNScorer(KNN_VECTORS).fit(KNN_TRAIN, KNN_INDEX)
    assert profile(np.array([0]), np.array([3, 4])) == pytest.approx(np.array([[0.5, 0.7]]))
    # Top-1 similarity: x = max(1, 0) = 1, y = max(0.6, 0.8) = 0.8: x, the twin of h1, first.
    nearest = ContentKNNScorer(KNN_VECTORS, neighbors=1).fit(KNN_TRAIN, KNN_INDEX)
    assert nearest(np.array([0]), np.array([3, 4])) == pytest.approx(np.array([[1.0, 0.8]]))


def test_content_knn_top_n_mean_and_normalisation() -> None:
    # h3 = (0, 2) is normalised to (0, 1). History h1, h2, h3; top 2 for y: (0.8 + 0.8) / 2; for x: (1 + 0) / 2.
    train = train_of({"u": ["h1", "h2", "h3"]})
    model = ContentKNNScorer(KNN_VECTORS, neighbors=2).fit(train, KNN_INDEX)
    assert model(np.array([0]), np.array([3, 4])) == pytest.approx(np.array([[0.5, 0.8]]))
    # More neighbours than history items: the mean over all of them.
    wide = ContentKNNScorer(KNN_VECTORS, neighbors=10).fit(train, KNN_INDEX)
    assert wide(np.array([0]), np.array([3, 4])) == pytest.approx(np.array([[1 / 3, (0.6 + 0.8 + 0.8) / 3]]))


@pytest.mark.parametrize("neighbors", [None, 1, 2])
def test_content_knn_sparse_equals_dense_and_new_users_score_zero(neighbors: int | None) -> None:
    dense = ContentKNNScorer(KNN_VECTORS, neighbors=neighbors).fit(KNN_TRAIN, KNN_INDEX)
    sparse = ContentKNNScorer(sp.csr_array(KNN_VECTORS), neighbors=neighbors).fit(KNN_TRAIN, KNN_INDEX)
    users, items = np.array([0, 1]), np.arange(5)
    assert sparse(users, items) == pytest.approx(dense(users, items))
    assert dense(users, items)[1].tolist() == [0.0] * 5  # "new" has no training item


def test_content_knn_checks_vector_rows() -> None:
    with pytest.raises(ConfigError, match="rows"):
        ContentKNNScorer(np.eye(3)).fit(KNN_TRAIN, KNN_INDEX)
    with pytest.raises(ConfigError, match="neighbors"):
        ContentKNNScorer(np.eye(5), neighbors=0)


def test_random_is_seeded_reproducible_and_batch_independent() -> None:
    users, items = np.arange(50), np.arange(200)
    first = RandomScorer(seed=7)(users, items)
    assert first.dtype == np.float32 and first.shape == (50, 200)
    assert np.array_equal(first, RandomScorer(seed=7)(users, items))
    assert not np.array_equal(first, RandomScorer(seed=8)(users, items))
    # A pure function of (seed, user, item): any batch or candidate subset sees the same values.
    assert np.array_equal(RandomScorer(seed=7)(users[10:20], items[::3]), first[10:20, ::3])
    assert first.min() >= 0.0 and first.max() < 1.0
    assert first.mean() == pytest.approx(0.5, abs=0.02)
    # No structure across users: each user's ranking differs.
    assert len({tuple(np.argsort(row)[:5]) for row in first}) == 50


def test_tfidf_vectors_are_normalised_and_similar_titles_are_close() -> None:
    titles = ["Deep learning for recommender systems", "Recommender systems with deep learning", "Protein folding"]
    vectors = tfidf_item_vectors(titles, min_df=1)
    assert vectors.shape[0] == 3
    assert np.linalg.norm(vectors.toarray(), axis=1) == pytest.approx([1.0, 1.0, 1.0])
    similarity = (vectors @ vectors.T).toarray()
    assert similarity[0, 1] > 0.3 > similarity[0, 2]
    assert tfidf_item_vectors(pl.Series(titles), min_df=1).shape == vectors.shape


def _users_table(attributes: dict[str, str | None]) -> pl.DataFrame:
    return pl.DataFrame({USER: list(attributes), Columns.attributes: list(attributes.values())})


def test_attribute_popularity_ranks_each_group_by_its_own_popularity_and_small_groups_by_all() -> None:
    women = {f"f{n}": '{"gender":"F","age":"30","zip":"1000' + str(n) + '"}' for n in range(3)}
    men = {f"m{n}": '{"gender":"M","age":"31","zip":"2000' + str(n) + '"}' for n in range(4)}
    lone = {"old": '{"gender":"F","age":"70","zip":"30000"}'}  # a group of one: too small to count
    new = {"nf": '{"gender":"F","age":"33","zip":"1"}', "nm": '{"gender":"M","age":"26","zip":"2"}', "nobody": None}
    users = _users_table(women | men | lone | new)
    # Women all rated a; men all rated b and c; the lone user rated c: overall b and c lead, then a.
    train = train_of({**{user: ["a"] for user in women}, **{user: ["b", "c"] for user in men}, "old": ["c"]})
    index = EvalIndex(users[USER], pl.Series(["a", "b", "c", "d"]))
    scorer = AttributePopularityScorer(["gender", "age"], min_users=2).fit(train, index, users=users)
    assert scorer.group_sizes == {"gender=F|age=25-35": 3, "gender=F|age=55+": 1, "gender=M|age=25-35": 4}
    rows = index.users(["nf", "nm", "old", "nobody"])
    scores = scorer(rows, np.arange(4))
    best = [int(np.argmax(row)) for row in scores]
    assert best[0] == 0  # a woman of 25-35: her group's favourite, a
    assert best[1] == 2  # a man of 25-35: b and c tie in his group; all-time popularity (c: 5 users) breaks it
    popularity = PopularityScorer().fit(train, index)(rows[2:], np.arange(4))
    assert scores[2:].tolist() == popularity.tolist()  # too small a group, or no attributes: overall popularity
    # Without names, every categorical attribute (gender; age is numeric, zip has too many values).
    assert set(user_groups(users, max_levels=5)["group"].drop_nulls()) == {"gender=F", "gender=M"}
    with pytest.raises(ConfigError, match="not in the users table"):
        AttributePopularityScorer(["income"]).fit(train, index, users=users)
