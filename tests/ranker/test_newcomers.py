"""The newcomer model on hand-made users whose tastes follow an attribute: what it recommends a user without
history, how a newcomer's few items move the list, how a ranker routes newcomers to it (and keeps that through a
save), and the holdout its weights are chosen on."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp

from catalog import Columns
from ranker.base import top_k
from ranker.baselines import ArrivalPopularityScorer
from ranker.evaluate import EvalIndex, InThreads
from ranker.features import RankerInputs
from ranker.lightgbm_ranker import LightGBMRanker, LightGBMRankerConfig
from ranker.newcomers import NewcomerConfig, newcomer_scores
from ranker.temporal import RequestTimes, TimeFeatures, time_features
from training._newcomers import choose_newcomers, choose_route, newcomer_holdout

N_ITEMS = 30


def _inputs(history: np.ndarray, attributes: np.ndarray | None) -> RankerInputs:
    n_users, n_items = history.shape
    rng = np.random.default_rng(0)
    cf = rng.normal(size=(n_users, 5)).astype(np.float32)
    return RankerInputs(
        history=sp.csr_array(history.astype(np.float32)),
        text=rng.normal(size=(n_items, 8)).astype(np.float32),
        user_cf=cf,
        item_cf=rng.normal(size=(n_items, 5)).astype(np.float32),
        item_standin=rng.normal(size=(n_items, 5)).astype(np.float32),
        popularity=history.sum(axis=0).astype(np.float32),
        title_words=np.ones(n_items, dtype=np.float32),
        user_attributes=attributes,
    )


def _two_tastes(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """40 users: the young (age -1 standardised, level a) take items 0-9, the old (+1, level b) items 10-19, and
    item 20 is taken by everyone (the most popular). Then two users without history: one young, one old."""
    history = np.zeros((42, N_ITEMS))
    young = np.arange(40) < 25  # more young users: their items are the more popular ones
    for user in range(40):
        first = 0 if young[user] else 10
        history[user, rng.choice(np.arange(first, first + 10), 6, replace=False)] = 1
    history[:40, 20] = 1
    age = np.r_[np.where(young, -1.0, 1.0), -1.0, 1.0]
    levels = np.c_[np.r_[young, True, False], np.r_[~young, False, True]].astype(np.float32)
    return history, np.c_[age, levels].astype(np.float32)


def _top(scores: np.ndarray, k: int) -> set[int]:
    return set(np.argsort(-scores, kind="stable")[:k].tolist())


def test_a_user_without_history_is_recommended_what_users_like_them_took() -> None:
    history, attributes = _two_tastes(np.random.default_rng(1))
    inputs = _inputs(history, attributes)
    config = NewcomerConfig(numeric_columns=1, numeric_scale=0.5, level_weight=1.0, history_weight=0.0)
    young, old = newcomer_scores(inputs, np.array([40, 41]), np.arange(N_ITEMS), config)
    assert _top(young, 6) <= {20, *range(10)} and _top(old, 6) <= {20, *range(10, 20)}
    # Without attributes both get popularity among the reference users: the same list, the young's items first.
    plain = _inputs(history, None)
    young, old = newcomer_scores(plain, np.array([40, 41]), np.arange(N_ITEMS), config)
    np.testing.assert_array_equal(young, old)
    assert _top(old, 6) <= {20, *range(10)}


def test_a_newcomers_few_items_pull_up_the_items_taken_with_them() -> None:
    history, _ = _two_tastes(np.random.default_rng(2))
    history[41, [12, 15]] = 1  # the last user, no attributes known, has taken two of the old users' items
    inputs = _inputs(history, None)
    items = np.arange(N_ITEMS)
    without = newcomer_scores(inputs, np.array([41]), items, NewcomerConfig(history_weight=0.0))[0]
    with_items = newcomer_scores(inputs, np.array([41]), items, NewcomerConfig(history_weight=3.0))[0]
    others = set(range(10, 20)) - {12, 15}
    assert _top(without, 6) <= {20, *range(10)}  # popularity among the references: the young's items
    with_items[[12, 15]] = -np.inf  # what they took is never recommended (the ranker's route excludes it)
    assert _top(with_items, 6) <= {20, *others}


def test_a_ranker_routes_newcomers_to_the_model_and_keeps_the_route_through_a_save(
    slice_inputs: tuple, tasks: tuple, tmp_path: Path
) -> None:
    inputs, _ = slice_inputs
    train, valid, _ = tasks
    ranker = LightGBMRanker(LightGBMRankerConfig(n_estimators=20, per_source=20)).fit(inputs, train, valid)
    activity = np.diff(inputs.history.indptr)
    max_events = int(np.quantile(activity, 0.3))
    routed, kept = np.flatnonzero(activity <= max_events)[:20], np.flatnonzero(activity > max_events)[:20]
    assert routed.size and kept.size
    users = np.r_[routed, kept]
    pool = np.arange(inputs.n_items)
    plain_scorer = ranker.scorer(inputs)
    plain = ranker.scorer(inputs, placed=False)(users, pool)
    config = NewcomerConfig(max_events=max_events, history_weight=1.0)
    ranker.with_newcomers(config)
    both = ranker.scorer(inputs, placed=False)(users, pool)
    np.testing.assert_array_equal(both[routed.size :], plain[routed.size :])
    # Newcomers' warm items: the newcomer model; their cold items: the ranker's order, below every warm item.
    warm = ~inputs.is_cold
    expected = newcomer_scores(inputs, routed, pool[warm], config)
    expected[inputs.history[routed][:, pool[warm]].toarray() > 0] = -np.inf
    np.testing.assert_array_equal(both[: routed.size, warm], expected)
    cold_scores, ranker_cold = both[: routed.size, ~warm], plain[: routed.size, ~warm]
    np.testing.assert_array_equal(np.isfinite(cold_scores), np.isfinite(ranker_cold))
    for row in range(routed.size):
        finite = np.isfinite(ranker_cold[row])
        assert cold_scores[row, finite].max() < expected[row][np.isfinite(expected[row])].min()
        by_routed = np.argsort(-cold_scores[row, finite], kind="stable")
        assert (np.diff(ranker_cold[row, finite][by_routed]) <= 0).all()  # the ranker's order (ties aside)
    # The very values of placing every item of the row by a stable sort of all its scores (the ranker's finite ones
    # are now placed among themselves alone).
    floor = newcomer_scores(inputs, routed, pool[warm], config).min(axis=1, keepdims=True)
    order = np.argsort(-plain[: routed.size], axis=1, kind="stable")
    position = np.empty_like(order)
    np.put_along_axis(position, order, np.arange(pool.size)[None, :], axis=1)
    whole_row = (floor - 1 - (position + 1) / (pool.size + 1)).astype(np.float32)
    whole_row[~np.isfinite(plain[: routed.size])] = -np.inf
    np.testing.assert_array_equal(cold_scores, whole_row[:, ~warm])
    # A pool of cold items alone is ranked for newcomers as the ranker ranks it.
    cold_pool = pool[~warm]
    lists = [top_k(scorer(routed, cold_pool), cold_pool, 20) for scorer in (ranker.scorer(inputs), plain_scorer)]
    for got, want in zip(*lists, strict=True):
        np.testing.assert_array_equal(got, want)
    loaded = LightGBMRanker.load(ranker.save(tmp_path / "version"))
    assert loaded.newcomers == config
    np.testing.assert_array_equal(loaded.scorer(inputs, placed=False)(users, pool), both)
    # Newcomers' items without history left out (where validation says so): -inf for them, nothing else moves,
    # and the ranker's cold places find none to lift into their lists.
    ranker.with_newcomers(config.model_copy(update={"cold_items": False}))
    without = ranker.scorer(inputs, placed=False)(users, pool)
    assert np.isneginf(without[: routed.size, ~warm]).all()
    np.testing.assert_array_equal(without[: routed.size, warm], both[: routed.size, warm])
    np.testing.assert_array_equal(without[routed.size :], both[routed.size :])
    placed = ranker.with_cold_slots(2).scorer(inputs)(routed, pool)
    assert np.isneginf(placed[:, ~warm]).all()


@pytest.mark.parametrize("with_times", [False, True])
def test_the_holdout_keeps_each_held_users_first_events_and_holds_out_the_rest(with_times: bool) -> None:
    rng = np.random.default_rng(3)
    history = (rng.random((60, N_ITEMS)) < 0.4).astype(np.float32)
    inputs = _inputs(history, None)
    stored = sp.csr_array(history)
    first = rng.permutation(stored.nnz).astype(np.float64) if with_times else None
    cut, held, truth = newcomer_holdout(inputs, 3, first=first, share=0.25)
    assert held.size == round(0.25 * np.sum(history.sum(axis=1) > 3))
    kept = cut.history.toarray()
    np.testing.assert_array_equal(kept + truth.toarray(), history)  # nothing lost, nothing counted twice
    others = np.setdiff1d(np.arange(60), held)
    np.testing.assert_array_equal(kept[others], history[others])
    assert (kept[held].sum(axis=1) <= 3).all() and (truth.toarray()[others] == 0).all()
    if first is not None:
        when = sp.csr_array((first, stored.indices, stored.indptr), shape=stored.shape).toarray()
        for user in held:
            taken = history[user] > 0
            if kept[user].any():
                assert when[user][kept[user] > 0].max() < when[user][taken & (kept[user] == 0)].min()
    if first is not None:
        # Serving users who arrive now, the holdout is the latest arrivals.
        _, latest, _ = newcomer_holdout(inputs, 3, first=first, arrivals=True, share=0.25)
        rows = np.repeat(np.arange(60), np.diff(stored.indptr))
        arrived = np.full(60, np.inf)
        np.minimum.at(arrived, rows, first)
        eligible = np.flatnonzero(history.sum(axis=1) > 3)
        assert arrived[latest].min() >= arrived[np.setdiff1d(eligible, latest)].max()
    choice = choose_newcomers(inputs, 3, numeric_columns=0)
    assert choice.chosen.max_events == 3 and len(choice.ndcg) == 3  # no attributes or times: the history weight


def test_the_route_serves_newcomers_only_where_validation_says_the_model_ranks_them_better(
    slice_inputs: tuple, tasks: tuple
) -> None:
    inputs, _ = slice_inputs
    train, valid, _ = tasks
    ranker = LightGBMRanker(LightGBMRankerConfig(n_estimators=20, per_source=20)).fit(inputs, train, valid)
    blank = inputs.without_history(np.arange(30))  # 30 users shown without history; what they took is the truth
    labels, pool = sp.csr_array(inputs.history), np.flatnonzero(inputs.popularity > 0)
    config = NewcomerConfig(history_weight=1.0)
    choice = choose_route(ranker, blank, config, labels, pool, None)
    assert choice.users["cold"] == 30 and ranker.newcomers is None  # the ranker is left as it was
    assert choose_route(ranker, blank, config, labels, pool, None, partitions=InThreads(2)) == choice
    for bucket, low in (("cold", 0), ("sparse", 1)):
        ndcg = choice.ndcg[bucket]
        if ndcg is None:  # too few such users to tell: the newcomer model serves them
            assert choice.users[bucket] < 20
            continue
        serves = choice.config is not None and choice.config.min_events <= low <= choice.config.max_events
        assert serves == (ndcg["newcomer model"] >= ndcg["ranker"])
    # Each way's NDCG is what that way's own scorer gives (the ranker scores each block once for all three ways).
    from training._newcomers import NEWCOMER, WITHOUT_COLD, _blocks, _ndcg_sum

    truth = sp.csr_array(labels[:, pool])
    cold = np.flatnonzero((np.diff(truth.indptr) > 0) & (np.diff(blank.history.indptr) == 0))
    without_cold = config.model_copy(update={"cold_items": False})
    for way, route in (("ranker", None), (NEWCOMER, config), (WITHOUT_COLD, without_cold)):
        scorer = ranker.with_newcomers(route).scorer(blank, None)
        total = sum(_ndcg_sum(scorer(block, pool), truth[block].toarray(), 20) for block in _blocks(cold, pool.size))
        assert choice.ndcg["cold"] is not None and choice.ndcg["cold"][way] == round(total / cold.size, 4)
    ranker.with_newcomers(None)
    assert choose_route(ranker, blank, config, labels, pool, None, min_users=301).config == config
    # Judged on a seeded sample where there are more than max_users of a kind: the same sample every time.
    sampled = choose_route(ranker, blank, config, labels, pool, None, min_users=5, max_users=10, seed=1)
    assert sampled.users["cold"] == 10
    assert sampled == choose_route(ranker, blank, config, labels, pool, None, min_users=5, max_users=10, seed=1)


def test_on_a_log_with_times_the_recent_weight_brings_what_is_taken_now_up() -> None:
    history, _ = _two_tastes(np.random.default_rng(4))
    recent = np.zeros((N_ITEMS, 3), dtype=np.float32)
    recent[25:28] = 50.0  # three items nobody in the history took, taken by everyone this fortnight
    time = TimeFeatures(
        now=datetime(2024, 1, 1, tzinfo=UTC),
        recent=recent,
        age_days=np.zeros(N_ITEMS, np.float32),
        user_recent=np.zeros(42, np.float32),
        release_age_days=np.full(N_ITEMS, np.nan, np.float32),
    )
    inputs = dataclasses.replace(_inputs(history, None), time=time)
    items, user = np.arange(N_ITEMS), np.array([40])
    before = newcomer_scores(inputs, user, items, NewcomerConfig(history_weight=0.0))[0]
    after = newcomer_scores(inputs, user, items, NewcomerConfig(history_weight=0.0, recent_weight=5.0))[0]
    assert not _top(before, 5) & {25, 26, 27} and _top(after, 3) == {25, 26, 27}


def _timed_log(rng: np.random.Generator) -> tuple[pl.DataFrame, np.ndarray]:
    """40 users each take 6 items: items 0-9 in January, items 10-19 in March (both as popular over the log)."""
    rows, history = [], np.zeros((42, N_ITEMS))
    for user in range(40):
        first, month = (0, 1) if user % 2 else (10, 3)
        for item in rng.choice(np.arange(first, first + 10), 6, replace=False):
            rows.append((str(user), str(item), datetime(2024, month, 1 + user % 20, tzinfo=UTC)))
            history[user, item] = 1
    log = pl.DataFrame(rows, schema=[Columns.user, Columns.item, Columns.ts], orient="row")
    return log, history


def test_newcomers_arriving_at_different_times_get_what_was_taken_just_before_each() -> None:
    """Two users without history who ask in early February and in early April get January's and March's items;
    events at or after a user's request (theirs or anyone's) never move their scores; serving's users ask at the
    log's end (the recent shares it always read); popularity at arrival ranks the same way."""
    log, history = _timed_log(np.random.default_rng(5))
    user_ids, item_ids = pl.Series([str(u) for u in range(42)]), pl.Series([str(i) for i in range(N_ITEMS)])
    asks = pl.DataFrame(
        {Columns.user: ["40", "41"], Columns.ts: [datetime(2024, 2, 1, tzinfo=UTC), datetime(2024, 4, 1, tzinfo=UTC)]}
    )
    served = dataclasses.replace(_inputs(history, None), time=time_features(log, user_ids, item_ids))
    inputs = dataclasses.replace(served, request_times=RequestTimes.of(log, user_ids, item_ids, asks))
    config = NewcomerConfig(history_weight=0.0, recent_weight=2.0, recent_days=28)
    items, users = np.arange(N_ITEMS), np.array([40, 41])
    february, april = newcomer_scores(inputs, users, items, config)
    assert _top(february, 6) <= set(range(10)) and _top(april, 6) <= set(range(10, 20))
    # Later events: item 25 taken by everyone from the first of February on, and user 40's own later items.
    later = pl.DataFrame(
        [(str(u), "25", datetime(2024, 2, 1 + u % 20, tzinfo=UTC)) for u in range(41)]
        + [("40", "26", datetime(2024, 2, 2, tzinfo=UTC))],
        schema=log.schema,
        orient="row",
    )
    more = pl.concat([log, later])
    moved = dataclasses.replace(inputs, request_times=RequestTimes.of(more, user_ids, item_ids, asks))
    np.testing.assert_array_equal(newcomer_scores(moved, users[:1], items, config)[0], february)
    # Serving's users ask now, at the log's end: the log's-end shares (March's items), the same as asking then.
    at_end = newcomer_scores(served, users, items, config)
    assert served.time is not None and _top(at_end[0], 6) <= set(range(10, 20))
    now = pl.DataFrame({Columns.user: ["40", "41"], Columns.ts: [served.time.now] * 2})
    asking_now = dataclasses.replace(served, request_times=RequestTimes.of(log, user_ids, item_ids, now))
    np.testing.assert_allclose(newcomer_scores(asking_now, users, items, config), at_end, rtol=1e-6)
    index = EvalIndex(user_ids, item_ids)
    line = ArrivalPopularityScorer(28).fit(log, index, asks)(users, items)
    assert _top(line[0], 6) <= set(range(10)) and _top(line[1], 6) <= set(range(10, 20))
