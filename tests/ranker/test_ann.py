"""ANN candidates (ranker.ann) against the brute force on a small clustered catalogue."""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import UTC, datetime

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp

from ranker.ann import ann_candidates, build_candidate_index
from ranker.features import RankerInputs, RankingTask, generate_candidates
from ranker.temporal import TimeFeatures

N_USERS, N_ITEMS, TOPICS, PER_SOURCE = 120, 4_000, 40, 20


def clustered_inputs(seed: int = 0, n_items: int = N_ITEMS) -> RankerInputs:
    """Items around topic centres (collaborative and text vectors tied to the topic), Zipf popularity, users who
    each read a few topics: the shape ANN has to work on, unlike uniform random vectors."""
    rng = np.random.default_rng(seed)
    topic = rng.integers(0, TOPICS, n_items)
    centres_cf, centres_text = rng.normal(size=(TOPICS, 16)), rng.normal(size=(TOPICS, 32))
    popularity = np.floor(200.0 / rng.permutation(np.arange(1, n_items + 1))).astype(np.float64)
    cf = centres_cf[topic] + 0.5 * rng.normal(size=(n_items, 16))
    item_cf = np.hstack([cf, 0.1 * np.log1p(popularity)[:, None]]).astype(np.float32)
    standin = np.hstack([centres_cf[topic] + 0.8 * rng.normal(size=(n_items, 16)), np.zeros((n_items, 1))])
    text = (centres_text[topic] + 0.7 * rng.normal(size=(n_items, 32))).astype(np.float32)
    user_topics = rng.integers(0, TOPICS, (N_USERS, 2))
    rows, cols = [], []
    warm = np.flatnonzero(popularity > 0)
    for user in range(N_USERS):
        mine = warm[np.isin(topic[warm], user_topics[user])]
        picked = rng.choice(mine, min(mine.size, int(rng.integers(1, 30))), replace=False)
        rows += [user] * picked.size
        cols += picked.tolist()
    history = sp.csr_array((np.ones(len(rows), np.float32), (rows, cols)), shape=(N_USERS, n_items))
    user_cf = np.hstack(
        [centres_cf[user_topics].mean(axis=1) + 0.3 * rng.normal(size=(N_USERS, 16)), np.ones((N_USERS, 1))]
    ).astype(np.float32)
    user_cf[:10] = 0.0  # ten users without history: their stand-in scores them
    history = sp.csr_array(sp.vstack([sp.csr_array((10, n_items), dtype=np.float32), history[10:]]))
    recent = rng.random((n_items, 3)) * (popularity > 0)[:, None]
    tfidf = sp.random_array((n_items, 300), density=0.02, rng=rng, dtype=np.float32, format="csr")
    return RankerInputs(
        history=history,
        text=text,
        user_cf=user_cf,
        item_cf=item_cf,
        item_standin=standin.astype(np.float32),
        popularity=popularity,
        title_words=np.full(n_items, 8.0, dtype=np.float32),
        tfidf=tfidf,
        time=TimeFeatures(
            now=datetime(2024, 1, 1, tzinfo=UTC),
            recent=recent.astype(np.float32),
            age_days=np.zeros(n_items, np.float32),
            user_recent=np.zeros(N_USERS, np.float32),
            release_age_days=np.full(n_items, np.nan, np.float32),
        ),
    )


@pytest.fixture(scope="module")
def inputs() -> RankerInputs:
    return clustered_inputs()


@pytest.fixture(scope="module")
def indexed(inputs: RankerInputs) -> RankerInputs:
    # The serving threshold lowered to this catalogue: 4,000 items get an index (about 250 lists, 24 searched).
    return replace(inputs, candidates=build_candidate_index(inputs))


def _exact_top(inputs: RankerInputs, users: np.ndarray, exclude: sp.csr_array | None) -> dict[str, list[set[int]]]:
    """Each source's brute-force top PER_SOURCE per user (the ranking generate_candidates takes the union of)."""
    pool = np.arange(inputs.n_items)
    known = inputs.history[users].toarray() > 0
    if exclude is not None:
        known |= exclude[users].toarray() > 0
    out: dict[str, list[set[int]]] = {}
    for as_cold in (False, True):
        for name, scores in inputs.source_scores(users, pool, as_cold).items():
            key = f"cf_{'cold' if as_cold else 'warm'}" if name == "cf" else name
            masked = np.where(known, -np.inf, scores)
            top = np.argpartition(-masked, PER_SOURCE - 1, axis=1)[:, :PER_SOURCE]
            out[key] = [set(row.tolist()) for row in top]
    return out


def test_ann_recalls_the_brute_force_top(indexed: RankerInputs) -> None:
    users = np.arange(10, N_USERS)  # users with history: every source ranks them
    exact = _exact_top(indexed, users, None)
    found = ann_candidates(indexed, indexed.candidates, users, per_source=PER_SOURCE)
    recalls = {}
    for name in ("cf_warm", "cf_cold", "text", "popularity", "recent", "recent_week"):
        rows, items = found[name]
        got = [set(items[rows == r].tolist()) for r in range(users.size)]
        recalls[name] = np.mean([len(g & e) / PER_SOURCE for g, e in zip(got, exact[name], strict=True)])
    # Measured 0.98-1.0 for the vector sources; the global ones are exact but for ties among equal scores.
    assert min(recalls[n] for n in ("cf_warm", "cf_cold", "text")) >= 0.9, recalls
    assert min(recalls[n] for n in ("popularity", "recent", "recent_week")) >= 0.95, recalls
    # And the union generate_candidates serves covers the brute force's union as well.
    ann_users, ann_items = generate_candidates(indexed, users, np.arange(indexed.n_items), per_source=PER_SOURCE)
    plain = replace(indexed, candidates=None)
    bf_users, bf_items = generate_candidates(plain, users, np.arange(plain.n_items), per_source=PER_SOURCE)
    ann, brute = set(zip(ann_users, ann_items, strict=True)), set(zip(bf_users, bf_items, strict=True))
    assert len(ann & brute) / len(brute) >= 0.9


def test_exclusions_are_honoured(indexed: RankerInputs) -> None:
    users = np.arange(N_USERS)
    rng = np.random.default_rng(1)
    # Exclude each user's brute-force top candidates: over-fetching must reach past them.
    exact = _exact_top(indexed, users, None)
    rows = np.repeat(users, PER_SOURCE)
    cols = np.concatenate([sorted(s) for s in exact["text"]])
    extra = rng.integers(0, indexed.n_items, (300, 2))
    exclude = sp.csr_array(
        (np.ones(rows.size + 300, np.float32), (np.r_[rows, extra[:, 0] % N_USERS], np.r_[cols, extra[:, 1]])),
        shape=(N_USERS, indexed.n_items),
    )
    pair_users, pair_items = generate_candidates(
        indexed, users, np.arange(indexed.n_items), per_source=PER_SOURCE, exclude=exclude
    )
    blocked = (indexed.history + exclude)[pair_users, pair_items]
    assert pair_users.size > 0 and not np.asarray(blocked).any()
    # Every user still gets a full list from each vector source after the exclusions.
    found = ann_candidates(indexed, indexed.candidates, users, per_source=PER_SOURCE, exclude=exclude)
    assert (np.bincount(found["cf_warm"][0], minlength=users.size) == PER_SOURCE).all()


def test_without_an_index_candidates_are_the_brute_force(inputs: RankerInputs) -> None:
    # Below the threshold serving attaches no index: the very same code path and arrays as before.
    assert inputs.candidates is None
    users, pool = np.arange(N_USERS), np.arange(inputs.n_items)
    first = generate_candidates(inputs, users, pool, per_source=PER_SOURCE)
    again = generate_candidates(clustered_inputs(), users, pool, per_source=PER_SOURCE)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])


def _positive_top(inputs: RankerInputs, users: np.ndarray, pool: np.ndarray, exclude: sp.csr_array) -> list[set[int]]:
    """Each user's PER_SOURCE best TF-IDF items of `pool` with a positive score, known and excluded ones left out:
    what the index's TF-IDF source must find exactly."""
    known = (inputs.history[users] + exclude[users]).toarray()[:, pool] > 0
    scores = np.where(known, 0.0, inputs.source_scores(users, pool, as_cold=False)["tfidf"])
    tops = []
    for row in scores:
        positive = np.flatnonzero(row > 0)
        tops.append(set(pool[positive[np.argsort(-row[positive], kind="stable")[:PER_SOURCE]]].tolist()))
    return tops


def test_the_tfidf_source_is_exact_past_the_exclusions(indexed: RankerInputs) -> None:
    users = np.arange(N_USERS)
    pool = np.flatnonzero(indexed.popularity > 0)
    # Exclude each user's best TF-IDF items of the catalogue and of the pool: the top kept per row must reach past
    # them, and past a training history of up to 30 items.
    empty = sp.csr_array((N_USERS, indexed.n_items), dtype=np.float32)
    best = [_positive_top(indexed, users, items, empty) for items in (np.arange(indexed.n_items), pool)]
    rows = np.repeat(users, [len(a) + len(b) for a, b in zip(*best, strict=True)])
    cols = np.concatenate([sorted(a) + sorted(b) for a, b in zip(*best, strict=True)])
    exclude = sp.csr_array((np.ones(rows.size, np.float32), (rows, cols)), shape=empty.shape)
    for index, items in ((indexed.candidates, np.arange(indexed.n_items)), (indexed.pool_index(pool), pool)):
        found_users, found_items = ann_candidates(indexed, index, users, per_source=PER_SOURCE, exclude=exclude)[
            "tfidf"
        ]
        found = [set(found_items[found_users == user].tolist()) for user in users]
        expected = _positive_top(indexed, users, items, exclude)
        assert sum(map(len, expected)) > 0.9 * N_USERS * PER_SOURCE  # most users have a full list to find
        assert found == expected


def test_items_added_after_the_build_are_scored_exactly(indexed: RankerInputs) -> None:
    # Two items appended (as Recommender.add_items does), one a copy of user 50's best text match.
    user = 50
    best = int(np.argmax(indexed.text @ indexed.text_profiles[user] - 9 * (indexed.history[[user]].toarray()[0] > 0)))
    grown = replace(
        indexed,
        history=sp.csr_array(sp.hstack([indexed.history, sp.csr_array((N_USERS, 2), dtype=np.float32)])),
        text=np.vstack([indexed.text, indexed.text[[best, 0]]]),
        item_cf=np.vstack([indexed.item_cf, np.zeros((2, indexed.item_cf.shape[1]), np.float32)]),
        item_standin=np.vstack([indexed.item_standin, indexed.item_standin[[best, 0]]]),
        popularity=np.r_[indexed.popularity, 0.0, 0.0],
        title_words=np.r_[indexed.title_words, 8.0, 8.0].astype(np.float32),
        tfidf=sp.csr_array(sp.vstack([indexed.tfidf, sp.csr_array((2, 300), dtype=np.float32)])),
        time=indexed.time.with_items(pl.Series([None, None], dtype=pl.Datetime("us", "UTC"))),
    )
    found = ann_candidates(grown, grown.candidates, np.array([user]), per_source=PER_SOURCE)
    assert N_ITEMS in found["text"][1]  # the copy ties the best item: found though the index never saw it


def _pool_of_warm_items(inputs: RankerInputs) -> np.ndarray:
    """What a fit learns from: the items with history, about half of this catalogue."""
    return np.flatnonzero(inputs.popularity > 0)


def test_a_pools_index_recalls_the_brute_force_within_the_pool(inputs: RankerInputs) -> None:
    fresh = replace(inputs)  # its own pool indexes
    pool = _pool_of_warm_items(fresh)
    users = np.arange(N_USERS)
    ann_users, ann_items = generate_candidates(fresh, users, pool, per_source=PER_SOURCE, ann_min_items=pool.size)
    bf_users, bf_items = generate_candidates(fresh, users, pool, per_source=PER_SOURCE)
    assert np.isin(ann_items, pool).all()  # nothing outside the pool, though the index could have held it
    assert not np.asarray(fresh.history[ann_users, ann_items]).any()  # nor a training interaction
    ann, brute = set(zip(ann_users, ann_items, strict=True)), set(zip(bf_users, bf_items, strict=True))
    assert len(ann & brute) / len(brute) >= 0.9, len(ann & brute) / len(brute)
    assert ann != brute  # approximate: the index's path was taken, not the brute force's
    # Grouped by user in the order asked, each user's items ascending, as the brute force gives them.
    assert (np.diff(ann_users) >= 0).all()
    starts = np.flatnonzero(np.r_[True, np.diff(ann_users) != 0, True])
    assert all((np.diff(ann_items[a:b]) > 0).all() for a, b in itertools.pairwise(starts))
    # One index per pool, built once and shared by every later batch; a pool below the threshold stays exact.
    built = fresh.pool_index(pool)
    assert fresh.pool_index(pool) is built
    assert fresh.pool_index(pool[::-1].copy()) is built  # the same items in another array and order
    assert fresh.pool_index(pool) is built
    # Users shown without history (training's cold users) see the same items: the same index.
    assert fresh.without_history(users[:3]).pool_index(pool) is built
    fresh.drop_pool_indexes()  # a phase done with its pools lets them go; the next ask builds afresh
    assert fresh.pool_index(pool) is not built
    small = generate_candidates(fresh, users, pool[:100], per_source=PER_SOURCE, ann_min_items=pool.size)
    exact = generate_candidates(fresh, users, pool[:100], per_source=PER_SOURCE)
    np.testing.assert_array_equal(small[1], exact[1])


def test_inputs_with_other_stand_ins_share_what_their_pool_index_reads_of_no_stand_in(inputs: RankerInputs) -> None:
    """The line without augmentation serves the same inputs with the content stand-ins: its pool's index is built
    again for the collaborative views (cold items are seen through their stand-ins) but shares the text index,
    the global orders and the TF-IDF columns, and gives the candidates a fresh build of it gives."""
    fresh = replace(inputs)
    pool = _pool_of_warm_items(fresh)
    pool = np.union1d(pool, np.flatnonzero(fresh.popularity == 0)[:500])  # some cold items, seen by stand-in
    built = fresh.pool_index(pool)
    rng = np.random.default_rng(1)
    other = fresh.with_item_standins(
        fresh.item_standin + rng.normal(size=fresh.item_standin.shape).astype(np.float32), None
    )
    shared = other.pool_index(pool)
    assert shared.vectors["text"] is built.vectors["text"] and shared.orders is built.orders
    assert shared.tfidf_t is built.tfidf_t
    assert shared.vectors["cf_cold"] is not built.vectors["cf_cold"]
    alone = replace(other)  # its own pool indexes, nothing lent
    assert alone.pool_index(pool).vectors["text"] is not built.vectors["text"]
    users = np.arange(N_USERS)
    lent = generate_candidates(other, users, pool, per_source=PER_SOURCE, ann_min_items=pool.size)
    own = generate_candidates(alone, users, pool, per_source=PER_SOURCE, ann_min_items=pool.size)
    np.testing.assert_array_equal(lent[0], own[0])
    np.testing.assert_array_equal(lent[1], own[1])
    before = generate_candidates(fresh, users, pool, per_source=PER_SOURCE, ann_min_items=pool.size)
    assert not np.array_equal(before[1], lent[1])  # the stand-ins' index is its own


def test_pool_indexes_are_rebuilt_after_pickling_not_sent(inputs: RankerInputs) -> None:
    import pickle

    fresh = replace(inputs)
    pool = _pool_of_warm_items(fresh)
    before = generate_candidates(fresh, np.arange(N_USERS), pool, per_source=PER_SOURCE, ann_min_items=1)
    copy = pickle.loads(pickle.dumps(fresh))  # as a Dask worker receives the inputs
    after = generate_candidates(copy, np.arange(N_USERS), pool, per_source=PER_SOURCE, ann_min_items=1)
    assert copy.pool_index(pool) is not fresh.pool_index(pool)
    np.testing.assert_array_equal(before[0], after[0])  # a seeded build: the same candidates on the worker
    np.testing.assert_array_equal(before[1], after[1])


def test_the_lightgbm_ranker_learns_and_scores_from_the_pools_index(inputs: RankerInputs) -> None:
    from ranker.lightgbm_ranker import LightGBMRanker, LightGBMRankerConfig

    rng = np.random.default_rng(3)
    pool = _pool_of_warm_items(inputs)
    # Labels: for each user with history, a few warm items of the topics they read (their history's neighbours).
    rows, cols = [], []
    for user in range(10, N_USERS):
        seen = inputs.history[[user]].indices
        near = np.argsort(-(inputs.text[pool] @ inputs.text[seen].mean(axis=0)))[:40]
        near = pool[near[~np.isin(pool[near], seen)]]
        picked = rng.choice(near, 3, replace=False)
        rows += [user] * 3
        cols += picked.tolist()
    positives = sp.csr_array((np.ones(len(rows), np.float32), (rows, cols)), shape=(N_USERS, inputs.n_items))
    train = RankingTask(np.arange(10, 80), pool, positives=positives)
    valid = RankingTask(np.arange(80, N_USERS), pool, positives=positives)

    def fitted(ann_min_items: int | None) -> LightGBMRanker:
        config = LightGBMRankerConfig(
            per_source=PER_SOURCE,
            n_estimators=5,
            early_stopping_rounds=None,
            min_child_samples=5,
            ann_min_items=ann_min_items,
        )
        return LightGBMRanker(config).fit(replace(inputs), train, valid)

    indexed, exact = fitted(pool.size), fitted(None)
    task = RankingTask(np.arange(N_USERS), pool)
    users, items, scores = indexed.score_task(replace(inputs), task)
    expected = generate_candidates(replace(inputs), task.users, pool, per_source=PER_SOURCE, ann_min_items=pool.size)
    np.testing.assert_array_equal(users, expected[0])
    np.testing.assert_array_equal(items, expected[1])
    assert np.isfinite(scores).all()
    # It learnt from the index's candidates: other pairs than the brute force's.
    assert indexed.metadata["train_pairs"] != exact.metadata["train_pairs"]
