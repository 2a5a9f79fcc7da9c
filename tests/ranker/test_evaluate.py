"""Evaluation protocols on tiny hand-made splits: who is evaluated, against which items, with what masked."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from catalog import Columns, DataError, Dataset, Segments
from ranker.baselines import PopularityScorer
from ranker.evaluate import (
    COLD_ITEM,
    COLD_USER,
    COLD_USERS,
    EVAL_BATCH_SIZE,
    EVAL_SCORES,
    HYBRID,
    SPARSE_USER,
    SPARSE_USERS,
    TEMPORAL,
    WARM,
    WARM_USER,
    EvalIndex,
    InThreads,
    InTurn,
    ProtocolSplit,
    cold_item_split,
    cold_user_split,
    eval_batch_size,
    evaluate,
    hold_out_labels,
    hybrid_split,
    sparse_user_split,
    split_validation,
    temporal_split,
    warm_split,
)
from ranker.metrics import MetricInputError, top_k

USER, ITEM = Columns.user, Columns.item


def d(rank: int) -> float:
    """DCG discount of a hit at `rank`."""
    return 1 / math.log2(rank + 1)


def pairs(mapping: dict[str, list[str]]) -> pl.DataFrame:
    rows = [(u, i) for u, items in mapping.items() for i in items]
    return pl.DataFrame(rows, schema={USER: pl.String, ITEM: pl.String}, orient="row")


def as_set(frame: pl.DataFrame) -> set[tuple[str, str]]:
    return set(frame.select(USER, ITEM).iter_rows())


# Warm items w0..w3, cold validation items c0, c1, cold test items c2, c3; users u0..u3.
ITEMS = ["w0", "w1", "w2", "w3", "c0", "c1", "c2", "c3"]
SPLITS = {
    "warm_emb": pairs({"u0": ["w0", "w1"], "u1": ["w0", "w2"], "u2": ["w1"], "u3": ["w0"]}),
    "warm_val": pairs({"u0": ["w2"], "u1": ["w3"]}),
    "warm_test": pairs({"u0": ["w3"], "u2": ["w0"]}),
    "cold_item_val": pairs({"u0": ["c0"], "u1": ["c1"], "u2": ["c0"]}),
    "cold_item_test": pairs({"u0": ["c2", "c3"], "u1": ["c2"], "u3": ["c3"]}),
}


@pytest.fixture
def tiny() -> Dataset:
    interactions = pl.concat(list(SPLITS.values()))
    items = pl.DataFrame({ITEM: ITEMS, Columns.title: [f"title {i}" for i in ITEMS]})
    users = pl.DataFrame({USER: ["u0", "u1", "u2", "u3"]})
    return Dataset("tiny", interactions, items, users, splits=dict(SPLITS))


def oracle(split: ProtocolSplit):
    """Scores 1 for held-out positives, 0 otherwise."""
    relevant = np.zeros((split.index.n_users, split.index.n_items), dtype=np.float32)
    users, items = split.index.pairs(split.truth)
    relevant[users, items] = 1.0
    return lambda u, i: relevant[np.ix_(u, i)]


def fixed_order(u: np.ndarray, i: np.ndarray) -> np.ndarray:
    """Every user prefers lower item indices: item 0 best."""
    return np.repeat(-i[None, :].astype(np.float32), u.size, axis=0)


def metric(result, name: str, segment: str = Segments.overall) -> float:
    return result.value(name, segment)


# ----------------------------------------------------------------------------------------------- cold item


def test_cold_item_split_users_candidates_and_exclusions(tiny: Dataset) -> None:
    split = cold_item_split(tiny)
    assert split.protocol == COLD_ITEM and split.name == "cold_item_test"
    # u2 has no cold-test positive, so is not evaluated.
    assert split.index.user_ids.gather(split.users).to_list() == ["u0", "u1", "u3"]
    assert split.index.item_ids.gather(split.candidates).to_list() == ["c0", "c1", "c2", "c3"]
    # Only the evaluated users' positives in the other cold split are excluded (warm items are no candidates).
    assert as_set(split.exclude) == {("u0", "c0"), ("u1", "c1")}
    assert as_set(split.truth) == as_set(SPLITS["cold_item_test"])
    assert as_set(split.train) == as_set(SPLITS["warm_emb"])

    val = cold_item_split(tiny, "cold_item_val")
    assert val.index.user_ids.gather(val.users).to_list() == ["u0", "u1", "u2"]
    assert as_set(val.exclude) == {("u0", "c2"), ("u0", "c3"), ("u1", "c2")}


def test_cold_item_oracle_scores_one(tiny: Dataset) -> None:
    split = cold_item_split(tiny)
    result = evaluate(split, oracle(split), k=2)
    assert result.n_users == 3
    for name in ("recall", "ndcg", "hit_rate"):
        assert metric(result, name) == pytest.approx(1.0)
        assert metric(result, name, Segments.cold) == pytest.approx(1.0)


def test_cold_item_hand_computed_recall_and_exclusions(tiny: Dataset) -> None:
    split = cold_item_split(tiny)
    # Everyone prefers c0 > c1 > c2 > c3. u0 loses c0 (excluded) -> [c1, c2]; u1 loses c1 -> [c0, c2]; u3 -> [c0, c1].
    result = evaluate(split, fixed_order, k=2)
    recs = {u: g.sort(Columns.rank)[ITEM].to_list() for (u,), g in result.recs.group_by(USER)}
    assert recs == {"u0": ["c1", "c2"], "u1": ["c0", "c2"], "u3": ["c0", "c1"]}
    assert metric(result, "recall") == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert metric(result, "ndcg") == pytest.approx((d(2) / (d(1) + d(2)) + d(2) / d(1) + 0) / 3)
    assert metric(result, "precision") == pytest.approx((1 / 2 + 1 / 2 + 0) / 3)
    # Coverage is over the 4 candidates (3 of them recommended), not the 8-item catalog.
    assert metric(result, "coverage") == pytest.approx(3 / 4)
    assert metric(result, "arp") == 0.0  # cold items have no training interactions


def test_excluded_items_never_recommended_even_when_scored_highest(tiny: Dataset) -> None:
    split = cold_item_split(tiny)
    excluded = as_set(split.exclude)
    users, items = split.index.pairs(split.exclude)
    boost = np.zeros((split.index.n_users, split.index.n_items), dtype=np.float32)
    boost[users, items] = 100.0
    result = evaluate(split, lambda u, i: boost[np.ix_(u, i)], k=4)
    assert not as_set(result.recs) & excluded
    # 4 candidates minus one exclusion leave u0 and u1 three items each; u3 keeps all four.
    assert result.recs.group_by(USER).len().sort(USER)["len"].to_list() == [3, 3, 4]


# ---------------------------------------------------------------------------------------------------- warm


def test_warm_split(tiny: Dataset) -> None:
    split = warm_split(tiny)
    assert split.protocol == WARM
    assert split.index.user_ids.gather(split.users).to_list() == ["u0", "u2"]
    assert split.index.item_ids.gather(split.candidates).to_list() == ["w0", "w1", "w2", "w3"]
    # u0: training w0, w1 and validation w2; u2: training w1.
    assert as_set(split.exclude) == {("u0", "w0"), ("u0", "w1"), ("u0", "w2"), ("u2", "w1")}
    val = warm_split(tiny, "warm_val")
    # u0: training w0, w1 and test w3; u1: training w0, w2.
    assert as_set(val.exclude) == {("u0", "w0"), ("u0", "w1"), ("u0", "w3"), ("u1", "w0"), ("u1", "w2")}

    # Popularity (w0: 3, w1: 2, w2: 1, w3: 0) at k=1: u0 can only get w3 (hit); u2 gets w0 (hit).
    result = evaluate(split, PopularityScorer().fit(split.train, split.index), k=1)
    assert metric(result, "recall") == 1.0
    assert metric(result, "recall", Segments.head) == 1.0  # u2's w0
    assert metric(result, "recall", Segments.cold) == 1.0  # u0's w3: no warm_emb row, so segment cold


# -------------------------------------------------------------------------------------------------- hybrid


def test_hybrid_split(tiny: Dataset) -> None:
    split = hybrid_split(tiny)
    assert split.protocol == HYBRID
    assert split.candidates.tolist() == list(range(len(ITEMS)))
    assert as_set(split.truth) == as_set(SPLITS["warm_test"]) | as_set(SPLITS["cold_item_test"])
    # Everything known but not held out: warm_emb, warm_val and cold_item_val rows of the evaluated users.
    assert as_set(split.exclude) == as_set(
        pairs({"u0": ["w0", "w1", "w2", "c0"], "u1": ["w0", "w2", "w3", "c1"], "u2": ["w1", "c0"], "u3": ["w0"]})
    )
    segments = dict(split.item_segments.iter_rows())
    # warm_emb counts w0 3, w1 2, w2 1 (6 in all): w0 and w1 reach 80%; w3 and c* have no training row.
    assert segments == {"w0": "head", "w1": "head", "w2": "tail", **{i: "cold" for i in ["w3", "c0", "c1", "c2", "c3"]}}

    result = evaluate(split, oracle(split), k=3)
    assert metric(result, "recall") == 1.0
    assert set(result.metrics[Columns.segment]) == {Segments.overall, Segments.head, Segments.cold}


# ------------------------------------------------------------------------------------------------ temporal

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def log_frame(rows: list[tuple[str, str, int]]) -> pl.DataFrame:
    return pl.DataFrame(
        [(u, i, T0 + timedelta(days=day)) for u, i, day in rows],
        schema={USER: pl.String, ITEM: pl.String, Columns.ts: pl.Datetime("us", "UTC")},
        orient="row",
    )


LOG = log_frame(
    [
        ("x", "a", 1),
        ("x", "b", 2),
        ("y", "a", 3),
        ("y", "c", 4),
        ("x", "c", 5),  # cut at day 5: test from here
        ("y", "a", 6),  # a repeat of a training pair: not a test positive
        ("z", "d", 7),  # z has no training interaction: a cold user
        ("x", "e", 8),  # e is first seen after the cut: a cold item
    ]
)
TEMPORAL_ITEMS = pl.DataFrame({ITEM: ["a", "b", "c", "d", "e"], Columns.title: ["A", "B", "C", "D", "E"]})


def test_temporal_split_with_cut() -> None:
    split = temporal_split(LOG, TEMPORAL_ITEMS, cut=T0 + timedelta(days=5), sparse_max=1)
    assert split.protocol == TEMPORAL
    assert as_set(split.train) == {("x", "a"), ("x", "b"), ("y", "a"), ("y", "c")}
    assert as_set(split.truth) == {("x", "c"), ("x", "e"), ("z", "d")}  # y's repeat of a dropped, so y is not evaluated
    assert as_set(split.exclude) == {("x", "a"), ("x", "b")}
    assert split.candidates.tolist() == [0, 1, 2, 3, 4]
    assert dict(split.user_segments.iter_rows()) == {"x": WARM_USER, "z": COLD_USER}
    assert dict(split.item_segments.iter_rows())["e"] == Segments.cold

    # Popularity a 2, b 1, c 1, d 0, e 0. x (a, b excluded) -> [c, d]: 1 of 2; z -> [a, b]: 0 of 1.
    result = evaluate(split, PopularityScorer().fit(split.train, split.index), k=2)
    assert result.n_users == 2
    assert metric(result, "recall") == pytest.approx((1 / 2 + 0) / 2)
    assert metric(result, "recall", WARM_USER) == pytest.approx(1 / 2)
    assert metric(result, "recall", COLD_USER) == 0.0
    assert metric(result, "ndcg", WARM_USER) == pytest.approx(d(1) / (d(1) + d(2)))


def test_users_with_at_most_sparse_max_training_rows_are_sparse_users() -> None:
    # x has 2 training rows: warm above sparse_max 1, sparse from 2 (the default, 5, too); z has none.
    for sparse_max, x_segment in ((1, WARM_USER), (2, SPARSE_USER), (5, SPARSE_USER)):
        split = temporal_split(LOG, TEMPORAL_ITEMS, cut=T0 + timedelta(days=5), sparse_max=sparse_max)
        assert dict(split.user_segments.iter_rows()) == {"x": x_segment, "z": COLD_USER}
    result = evaluate(split, PopularityScorer().fit(split.train, split.index), k=2)
    assert metric(result, "recall", SPARSE_USER) == pytest.approx(1 / 2)  # x alone, as warm_user was above
    assert WARM_USER not in set(result.metrics[Columns.segment])  # a segment without users has no rows


def test_temporal_default_cut_is_the_80_percent_event() -> None:
    split = temporal_split(LOG, TEMPORAL_ITEMS)
    # 8 events: the event at position int(0.8 * 8) = 6 (0-based) is day 7, so days 1-6 train.
    assert split.name == f"temporal@{(T0 + timedelta(days=7)).isoformat()}"
    assert split.train.height == 6
    assert as_set(split.truth) == {("z", "d"), ("x", "e")}


def test_temporal_end_bounds_the_test_window() -> None:
    split = temporal_split(LOG, TEMPORAL_ITEMS, cut=T0 + timedelta(days=5), end=T0 + timedelta(days=8))
    assert as_set(split.truth) == {("x", "c"), ("z", "d")}


def test_temporal_rejects_missing_timestamps() -> None:
    with pytest.raises(DataError, match="ts"):
        temporal_split(LOG.with_columns(pl.lit(None, LOG.schema[Columns.ts]).alias(Columns.ts)), TEMPORAL_ITEMS)
    with pytest.raises(DataError, match="before the cut"):
        temporal_split(LOG, TEMPORAL_ITEMS, cut=T0)


# --------------------------------------------------------------------------------------- evaluate mechanics


def test_batch_size_does_not_change_results(tiny: Dataset) -> None:
    split = hybrid_split(tiny)
    big = evaluate(split, fixed_order, k=3, batch_size=100)
    small = evaluate(split, fixed_order, k=3, batch_size=1)
    assert big.recs.equals(small.recs)
    # Means may be summed in another order (polars group_by): equal up to float rounding.
    assert_frame_equal(big.metrics, small.metrics)


def test_a_batch_of_users_holds_at_most_2_to_the_24_scores_over_a_large_catalogue(tiny: Dataset) -> None:
    assert eval_batch_size(1_000) == EVAL_BATCH_SIZE and eval_batch_size(100_000) == 167
    assert eval_batch_size(10**8) == 1  # one user at a time rather than none
    split = hybrid_split(tiny)
    seen: list[int] = []

    def recording(users: np.ndarray, items: np.ndarray) -> np.ndarray:
        seen.append(users.size * items.size)
        return fixed_order(users, items)

    default = evaluate(split, recording, k=3)
    assert max(seen) <= EVAL_SCORES and default.recs.equals(evaluate(split, fixed_order, k=3, batch_size=1).recs)


def test_partitions_rank_the_batches_they_are_given_as_one_process_does(tiny: Dataset) -> None:
    # A map of three workers cuts the users into one batch per worker at least (on a Dask cluster, one task
    # each).
    split = hybrid_split(tiny)
    seen: list[int] = []

    class Three(InTurn):
        ships = True  # as a Dask cluster's map: on threads here the batches stay as in turn

        def __call__(self, fn: Callable[[Any], Any], parts: Sequence[Any], /) -> list[Any]:
            seen.append(len(parts))
            return super().__call__(fn, parts)

    parted = evaluate(split, fixed_order, k=3, partitions=Three(workers=3))
    assert split.users.size >= 3 and seen == [3]
    assert parted.recs.equals(evaluate(split, fixed_order, k=3).recs)


def test_partitions_on_threads_rank_as_one_thread_does(tiny: Dataset) -> None:
    import threading

    split = hybrid_split(tiny)
    threads: set[str] = set()
    both = threading.Barrier(2)

    def recording(users: np.ndarray, items: np.ndarray) -> np.ndarray:
        name = threading.current_thread().name
        if name not in threads:  # each thread's first batch waits for the other's: they run at once
            threads.add(name)
            both.wait(timeout=30)
        return fixed_order(users, items)

    on_threads = evaluate(split, recording, k=3, batch_size=1, partitions=InThreads(2))
    assert len(threads) == 2 and all(name.startswith("warmstart-part") for name in threads)
    assert on_threads.recs.equals(evaluate(split, fixed_order, k=3, batch_size=1).recs)


def test_ties_go_to_the_lower_item_index(tiny: Dataset) -> None:
    split = cold_item_split(tiny)
    result = evaluate(split, lambda u, i: np.zeros((u.size, i.size), dtype=np.float32), k=2)
    assert result.recs.filter(pl.col(USER) == "u3")[ITEM].to_list() == ["c0", "c1"]


def test_bad_scorer_output_is_rejected(tiny: Dataset) -> None:
    split = cold_item_split(tiny)
    with pytest.raises(MetricInputError, match="shape"):
        evaluate(split, lambda u, i: np.zeros((u.size, i.size + 1), dtype=np.float32))
    with pytest.raises(MetricInputError, match="NaN"):
        evaluate(split, lambda u, i: np.full((u.size, i.size), np.nan, dtype=np.float32))


def test_index_rejects_unknown_and_repeated_ids() -> None:
    index = EvalIndex(pl.Series(["u0", "u1"]), pl.Series(["a", "b", "c"]))
    assert index.items(["c", "a"]).tolist() == [2, 0]
    with pytest.raises(DataError, match="not in the evaluation index"):
        index.users(["u9"])
    with pytest.raises(DataError, match="repeat"):
        EvalIndex(pl.Series(["u0", "u0"]), pl.Series(["a"]))


def test_missing_aldi_splits_are_named(tiny: Dataset) -> None:
    partial = Dataset("p", tiny.interactions, tiny.items, tiny.users, splits={"warm_emb": SPLITS["warm_emb"]})
    with pytest.raises(DataError, match="cold_item_test"):
        cold_item_split(partial)


@settings(max_examples=40, deadline=None)
@given(
    scores=st.lists(st.integers(0, 4), min_size=6 * 10, max_size=6 * 10),
    excluded=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 9)), max_size=15),
    k=st.integers(1, 12),
)
def test_top_k_matches_the_metrics_reference(scores: list[int], excluded: list[tuple[int, int]], k: int) -> None:
    """evaluate's numpy top-k equals ranker.metrics.top_k on the non-excluded scores (ids sort like indices)."""
    users = [f"u{u}" for u in range(6)]
    items = [f"i{i:02d}" for i in range(10)]
    matrix = np.array(scores, dtype=np.float32).reshape(6, 10)
    truth = pl.DataFrame({USER: users, ITEM: ["i00"] * 6})
    exclude = pl.DataFrame(
        {USER: [users[u] for u, _ in excluded], ITEM: [items[i] for _, i in excluded]},
        schema={USER: pl.String, ITEM: pl.String},
    ).unique()
    index = EvalIndex(pl.Series(users), pl.Series(items))
    split = ProtocolSplit(
        protocol="test",
        name="test",
        index=index,
        items=pl.DataFrame({ITEM: items}),
        train=truth,
        truth=truth,
        exclude=exclude.join(truth, on=[USER, ITEM], how="anti").sort(USER, ITEM),
        candidates=np.arange(10),
        item_segments=pl.DataFrame({ITEM: items, Columns.segment: ["tail"] * 10}),
    )
    result = evaluate(split, lambda u, i: matrix[np.ix_(u, i)], k=k, batch_size=4)
    long = pl.DataFrame(
        {
            USER: np.repeat(users, 10),
            ITEM: np.tile(items, 6),
            Columns.score: matrix.ravel(),
        }
    ).join(split.exclude, on=[USER, ITEM], how="anti")
    assert result.recs.sort(USER, Columns.rank).rows() == top_k(long, k).rows()


# ------------------------------------------------------------------------------------------------ real data


def test_citeulike_cold_test_has_4846_users(citeulike: Dataset) -> None:
    split = cold_item_split(citeulike)
    assert split.n_users == 4846
    assert split.candidates.size == 3396
    # Exclusions are exactly the evaluated users' cold-validation positives.
    val = citeulike.splits["cold_item_val"].join(split.truth.select(USER).unique(), on=USER, how="semi")
    assert as_set(split.exclude) == as_set(val)
    assert cold_item_split(citeulike, "cold_item_val").n_users == 4801


def test_movielens_temporal_split_with_popularity(ml100k: Dataset) -> None:
    split = temporal_split(ml100k.interactions, ml100k.items)
    assert split.train.height == 79_999  # the 80,000th event's time is the cut; a tie at it goes to test
    assert set(split.user_segments[Columns.segment]) == {COLD_USER, SPARSE_USER, WARM_USER}
    result = evaluate(split, PopularityScorer().fit(split.train, split.index), k=20)
    assert result.n_users == split.n_users > 0
    assert not as_set(result.recs) & as_set(split.train)
    segments = set(result.metrics[Columns.segment])
    assert {Segments.overall, Segments.head, COLD_USER, SPARSE_USER, WARM_USER} <= segments


def test_cold_user_split_holds_out_whole_users_known_by_their_attributes(ml100k: Dataset) -> None:
    split = cold_user_split(ml100k, share=0.2, seed=0)
    held = split.truth.select(USER).unique()
    assert split.protocol == COLD_USERS and held.height == round(0.2 * 943)
    assert split.train.join(held, on=USER, how="semi").is_empty()  # none of their interactions trains
    theirs = ml100k.interactions.join(held, on=USER, how="semi")
    assert as_set(split.truth) == as_set(theirs)  # all of them are the truth
    assert split.exclude.is_empty() and set(split.user_segments[Columns.segment]) == {COLD_USER}
    attributes = split.users_table.join(held, on=USER, how="semi")[Columns.attributes]
    assert attributes.len() == held.height and attributes.null_count() == 0
    assert split.users_table[USER].to_list() == split.index.user_ids.to_list()  # one row per index user, in order
    # Seeded: the same seed draws the same users, another seed others.
    assert as_set(cold_user_split(ml100k, share=0.2, seed=0).truth) == as_set(split.truth)
    other = cold_user_split(ml100k, share=0.2, seed=1).truth.select(USER).unique()
    assert other.height == held.height and not other.equals(held.sort(USER))
    assert set(other[USER]) != set(held[USER])


@pytest.mark.parametrize("history_n", [1, 3])
def test_sparse_user_split_keeps_exactly_the_first_n_events_by_time(ml100k: Dataset, history_n: int) -> None:
    split = sparse_user_split(ml100k, history_n, share=0.2, seed=0)
    held = split.truth.select(USER).unique()
    assert split.protocol == SPARSE_USERS and held.height == round(0.2 * 943)
    theirs = ml100k.interactions.join(held, on=USER, how="semi").sort(USER, Columns.ts, ITEM)
    first = theirs.group_by(USER, maintain_order=True).head(history_n)
    kept = split.train.join(held, on=USER, how="semi")
    assert as_set(kept) == as_set(first) and kept.height == history_n * held.height
    # Every kept event is no later than any of the user's held-out events.
    last_kept = first.group_by(USER).agg(pl.col(Columns.ts).max().alias("kept"))
    rest = theirs.join(first, on=[USER, ITEM], how="anti")
    assert as_set(split.truth) == as_set(rest)
    assert rest.join(last_kept, on=USER).filter(pl.col(Columns.ts) < pl.col("kept")).is_empty()
    assert as_set(split.exclude) == as_set(first)  # what they had is known, so never recommended again
    # Other users train whole; every held-out user is a sparse_user (history_n <= sparse_max).
    others = ml100k.interactions.join(held, on=USER, how="anti")
    assert split.train.height == others.height + kept.height
    assert set(split.user_segments[Columns.segment]) == {SPARSE_USER}


def test_hold_out_labels_keeps_every_user_and_item_warm_without_times() -> None:
    train = pl.DataFrame(
        {
            Columns.user: ["u1", "u1", "u1", "u2", "u2", "u3", "u4", "u4"],
            Columns.item: ["a", "b", "z", "a", "b", "a", "y", "x"],
            Columns.ts: [None] * 8,
        },
        schema_overrides={Columns.ts: pl.Datetime("us", "UTC")},
    )
    history, labels = hold_out_labels(train, share=0.2, seed=0)
    # u1 and u2 give up one pair of a shared item (a or b); u3 has one pair; u4 has only items nobody else has
    assert sorted(labels[Columns.user].to_list()) == ["u1", "u2"]
    assert set(labels[Columns.item]) <= {"a", "b"}
    assert labels.join(history, on=Columns.item, how="anti").is_empty()  # every label item stays warm
    assert history.height + labels.height == train.height


def test_hold_out_labels_cuts_one_time_for_every_user_when_every_row_has_a_time() -> None:
    times = [datetime(2024, 1, d, tzinfo=UTC) for d in (1, 2, 3, 1, 5)]
    train = pl.DataFrame(
        {Columns.user: ["u1"] * 3 + ["u2"] * 2, Columns.item: ["a", "b", "c", "c", "a"], Columns.ts: times}
    )
    history, labels = hold_out_labels(train)
    # The latest fifth of the period (from 2024-01-05) are the labels, for whoever has events there: u1's own
    # latest event (day 3) stays history, as a temporal split's cut would leave it (issue 13).
    assert labels.rows() == [("u2", "a")]
    assert history[Columns.ts].max() < datetime(2024, 1, 5, tzinfo=UTC) and history.height == 4


def test_hold_out_labels_says_when_nothing_can_be_held_out() -> None:
    train = pl.DataFrame({Columns.user: ["u1", "u2"], Columns.item: ["a", "a"]})
    with pytest.raises(DataError, match=r"every user has a single interaction.*--valid"):
        hold_out_labels(train)


def test_split_validation_separates_warm_pairs_from_cold_items_and_users() -> None:
    train = pl.DataFrame({Columns.user: ["u1", "u2"], Columns.item: ["a", "b"]})
    valid = pl.DataFrame({Columns.user: ["u1", "u2", "u9"], Columns.item: ["b", "c", "a"]})
    warm, other = split_validation(valid, train)
    assert warm.rows() == [("u1", "b")]
    assert sorted(other.rows()) == [("u2", "c"), ("u9", "a")]
