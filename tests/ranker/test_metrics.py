"""Hand-computed checks of ranker.metrics; expected values are written as the arithmetic that gives them."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from catalog._columns import Columns, Segments
from catalog.errors import DataError
from ranker.metrics import (
    ACCURACY_METRICS,
    BEYOND_ACCURACY_METRICS,
    MetricInputError,
    accuracy_metrics,
    aplt,
    arp,
    beyond_accuracy_metrics,
    bootstrap_difference,
    coverage,
    evaluate_ranking,
    gini,
    novelty,
    per_user_accuracy,
    top_k,
)

USER, ITEM, RANK = Columns.user, Columns.item, Columns.rank


def d(rank: int) -> float:
    """DCG discount of a hit at `rank`."""
    return 1 / math.log2(rank + 1)


def recs_of(lists: dict[str, list[str]]) -> pl.DataFrame:
    """Ranked lists {user: [best, second, ...]} as a recs frame."""
    rows = [(u, item, r) for u, items in lists.items() for r, item in enumerate(items, start=1)]
    return pl.DataFrame(rows, schema={USER: pl.String, ITEM: pl.String, RANK: pl.Int64}, orient="row")


def truth_of(pairs: dict[str, list[str]]) -> pl.DataFrame:
    rows = [(u, item) for u, items in pairs.items() for item in items]
    return pl.DataFrame(rows, schema={USER: pl.String, ITEM: pl.String}, orient="row")


def segments_of(mapping: dict[str, str]) -> pl.DataFrame:
    return pl.DataFrame({ITEM: list(mapping), Columns.segment: list(mapping.values())})


def popularity_of(counts: dict[str, int]) -> pl.DataFrame:
    return pl.DataFrame({ITEM: list(counts), Columns.n_interactions: list(counts.values())})


def as_dict(frame: pl.DataFrame) -> dict[tuple[str, str], float]:
    """(segment, metric) -> value, checking that k is constant."""
    assert frame.columns == [Columns.segment, Columns.metric, Columns.k, "value"]
    return {(s, m): v for s, m, _, v in frame.iter_rows()}


# ------------------------------------------------------------------------------------------------ top_k


def test_top_k_orders_by_score_and_breaks_ties_by_item_id() -> None:
    scores = pl.DataFrame(
        {
            USER: ["u1", "u1", "u1", "u1", "u2", "u2"],
            ITEM: ["c", "a", "d", "b", "y", "x"],
            Columns.score: [0.5, 0.5, 0.9, 0.5, 1.0, 1.0],
        }
    )
    recs = top_k(scores, 3)
    assert recs.columns == [USER, ITEM, RANK]
    assert recs.rows() == [("u1", "d", 1), ("u1", "a", 2), ("u1", "b", 3), ("u2", "x", 1), ("u2", "y", 2)]
    # Row order of the input must not matter.
    assert top_k(scores.reverse(), 3).rows() == recs.rows()


def test_top_k_rejects_nan_scores_and_repeated_candidates() -> None:
    with pytest.raises(ValueError, match="NaN"):
        top_k(pl.DataFrame({USER: ["u"], ITEM: ["a"], Columns.score: [float("nan")]}), 1)
    with pytest.raises(ValueError, match="repeats"):
        top_k(pl.DataFrame({USER: ["u", "u"], ITEM: ["a", "a"], Columns.score: [1.0, 2.0]}), 1)


# --------------------------------------------------------------------------------------------- accuracy

# u1 hits a@1 and c@3 out of 3 positives; u2 hits a@2 out of 1; u3 has no positives (excluded);
# u4 has a positive but no recommendations (counts as 0). truth repeats (u1, a) to check deduplication.
RECS = recs_of({"u1": ["a", "b", "c"], "u2": ["d", "a"], "u3": ["e"]})
TRUTH = truth_of({"u1": ["a", "c", "f", "a"], "u2": ["a"], "u4": ["b"]})


def test_per_user_accuracy_by_hand() -> None:
    per_user = per_user_accuracy(RECS, TRUTH, 3)
    assert per_user.columns == [USER, "n_pos", "hits", "recall", "ndcg", "precision", "hit_rate"]
    assert per_user[USER].to_list() == ["u1", "u2", "u4"]
    assert per_user["n_pos"].to_list() == [3, 1, 1]
    assert per_user["hits"].to_list() == [2, 1, 0]
    assert per_user["recall"].to_list() == pytest.approx([2 / 3, 1 / 1, 0])
    assert per_user["ndcg"].to_list() == pytest.approx([(d(1) + d(3)) / (d(1) + d(2) + d(3)), d(2) / d(1), 0])
    assert per_user["precision"].to_list() == pytest.approx([2 / 3, 1 / 3, 0])
    assert per_user["hit_rate"].to_list() == [1.0, 1.0, 0.0]


def test_accuracy_metrics_average_over_users_with_positives() -> None:
    got = as_dict(accuracy_metrics(RECS, TRUTH, 3))
    expected = {
        "recall": (2 / 3 + 1 + 0) / 3,
        "ndcg": ((d(1) + d(3)) / (d(1) + d(2) + d(3)) + d(2) / d(1) + 0) / 3,
        "precision": (2 / 3 + 1 / 3 + 0) / 3,
        "hit_rate": (1 + 1 + 0) / 3,
    }
    assert list(got) == [(Segments.overall, m) for m in ACCURACY_METRICS]
    for metric, value in expected.items():
        assert got[(Segments.overall, metric)] == pytest.approx(value), metric


def test_accuracy_metrics_only_read_rank_le_k() -> None:
    got = as_dict(accuracy_metrics(RECS, TRUTH, 1))
    # Top 1: u1 -> a (hit), u2 -> d (miss), u4 -> nothing.
    assert got[(Segments.overall, "recall")] == pytest.approx((1 / 3 + 0 + 0) / 3)
    # Ideal DCG at k=1 holds min(1, 3) = 1 relevant item, so u1's NDCG is 1.
    assert got[(Segments.overall, "ndcg")] == pytest.approx((d(1) / d(1) + 0 + 0) / 3)
    assert got[(Segments.overall, "precision")] == pytest.approx((1 / 1 + 0 + 0) / 3)
    assert got[(Segments.overall, "hit_rate")] == pytest.approx(1 / 3)


def test_k_larger_than_list() -> None:
    recs = recs_of({"u": ["x", "a"]})
    truth = truth_of({"u": ["a"]})
    row = per_user_accuracy(recs, truth, 5).row(0, named=True)
    # Precision divides by k (5), not by the list length (2).
    assert row["precision"] == pytest.approx(1 / 5)
    # Ideal DCG is over min(k, n_pos) = 1 item: a single hit at rank 1.
    assert row["ndcg"] == pytest.approx(d(2) / d(1))
    assert row["recall"] == 1.0


def test_user_with_positives_but_no_recommendations_counts_zero() -> None:
    recs = recs_of({"u1": ["a"]})
    truth = truth_of({"u1": ["a"], "u2": ["a"]})
    got = as_dict(accuracy_metrics(recs, truth, 2))
    assert got[(Segments.overall, "recall")] == pytest.approx((1 + 0) / 2)
    assert got[(Segments.overall, "hit_rate")] == pytest.approx((1 + 0) / 2)
    assert got[(Segments.overall, "precision")] == pytest.approx((1 / 2 + 0) / 2)


def test_users_without_positives_are_excluded() -> None:
    recs = recs_of({"u1": ["a"], "u2": ["b"], "u3": ["c"]})
    truth = truth_of({"u1": ["a"]})
    got = as_dict(accuracy_metrics(recs, truth, 1))
    # Averaged over u1 alone, not over the three users that have lists.
    assert got == {(Segments.overall, m): 1.0 for m in ACCURACY_METRICS}


# Segments: a, b head; c, d tail; e, f cold.
SEGMENTS = segments_of({"a": "head", "b": "head", "c": "tail", "d": "tail", "e": "cold", "f": "cold"})
SEG_RECS = recs_of({"u1": ["a", "c", "e"], "u2": ["b", "d", "a"]})
# u1: head {a}, cold {e, f}; u2: tail {c, d}; u3: head {b} and no list.
SEG_TRUTH = truth_of({"u1": ["a", "e", "f"], "u2": ["d", "c"], "u3": ["b"]})


def test_per_segment_accuracy_by_hand() -> None:
    got = as_dict(accuracy_metrics(SEG_RECS, SEG_TRUTH, 3, SEGMENTS))
    assert [key[0] for key in got][::4] == ["overall", "head", "tail", "cold"]
    expected = {
        # u1: hits a@1, e@3 of 3; u2: hit d@2 of 2; u3: nothing.
        ("overall", "recall"): (2 / 3 + 1 / 2 + 0) / 3,
        ("overall", "ndcg"): ((d(1) + d(3)) / (d(1) + d(2) + d(3)) + d(2) / (d(1) + d(2)) + 0) / 3,
        ("overall", "precision"): (2 / 3 + 1 / 3 + 0) / 3,
        ("overall", "hit_rate"): (1 + 1 + 0) / 3,
        # head users u1 (a@1 of {a}) and u3 (no list).
        ("head", "recall"): (1 + 0) / 2,
        ("head", "ndcg"): (d(1) / d(1) + 0) / 2,
        ("head", "precision"): (1 / 3 + 0) / 2,
        ("head", "hit_rate"): (1 + 0) / 2,
        # tail user u2: d@2 of {c, d}; the head items b and a in the list are not tail hits.
        ("tail", "recall"): 1 / 2,
        ("tail", "ndcg"): d(2) / (d(1) + d(2)),
        ("tail", "precision"): 1 / 3,
        ("tail", "hit_rate"): 1.0,
        # cold user u1: e@3 (its rank in the full list) of {e, f}.
        ("cold", "recall"): 1 / 2,
        ("cold", "ndcg"): d(3) / (d(1) + d(2)),
        ("cold", "precision"): 1 / 3,
        ("cold", "hit_rate"): 1.0,
    }
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value), key


def test_segment_without_users_is_skipped() -> None:
    truth = truth_of({"u2": ["d"]})
    got = accuracy_metrics(SEG_RECS, truth, 3, SEGMENTS)
    assert got[Columns.segment].unique(maintain_order=True).to_list() == ["overall", "tail"]
    assert got[Columns.k].to_list() == [3] * 8


def test_segment_validation() -> None:
    with pytest.raises(ValueError, match="'z'"):
        accuracy_metrics(SEG_RECS, truth_of({"u1": ["z"]}), 3, SEGMENTS)
    with pytest.raises(ValueError, match="'warm'"):
        accuracy_metrics(SEG_RECS, SEG_TRUTH, 3, segments_of({"a": "warm"}))
    two_labels = pl.concat([SEGMENTS, segments_of({"a": "tail"})])
    with pytest.raises(ValueError, match="'a'"):
        accuracy_metrics(SEG_RECS, SEG_TRUTH, 3, two_labels)


# -------------------------------------------------------------------------------------- beyond accuracy


def test_coverage() -> None:
    recs = recs_of({"u1": ["a", "b", "z"], "u2": ["a", "c"]})
    # Top 2 holds a, b, c (z is at rank 3).
    assert coverage(recs, 2, 10) == pytest.approx(3 / 10)
    assert coverage(recs, 3, 10) == pytest.approx(4 / 10)
    assert coverage(recs.clear(), 2, 10) == 0.0
    with pytest.raises(ValueError, match="catalog_size"):
        coverage(recs, 3, 3)


def test_gini_uniform_exposure_is_zero() -> None:
    recs = recs_of({"u1": ["a", "b"], "u2": ["c", "d"]})
    assert gini(recs, 2, ["a", "b", "c", "d"]) == pytest.approx(0.0)


def test_gini_one_item_takes_all_exposure() -> None:
    n = 4
    recs = recs_of({"u1": ["a"], "u2": ["a"], "u3": ["a"]})
    assert gini(recs, 1, ["a", "b", "c", "d"]) == pytest.approx((n - 1) / n)


def test_gini_counts_never_recommended_items() -> None:
    recs = recs_of({"u1": ["a", "b", "c"], "u2": ["a"]})
    # k=2: exposure a=2, b=1, never-recommended c=0 (its rank 3 is cut); sorted [0, 1, 2], n=3, sum=3.
    expected = ((2 * 1 - 3 - 1) * 0 + (2 * 2 - 3 - 1) * 1 + (2 * 3 - 3 - 1) * 2) / (3 * 3)
    assert gini(recs, 2, pl.Series(["c", "b", "a"])) == pytest.approx(expected)
    # Without c in the catalog the same lists are less concentrated: sorted [1, 2], n=2.
    assert gini(recs, 2, ["a", "b"]) == pytest.approx(((2 - 2 - 1) * 1 + (4 - 2 - 1) * 2) / (2 * 3))


def test_gini_rejects_items_outside_the_catalog() -> None:
    recs = recs_of({"u1": ["a", "zz"]})
    with pytest.raises(ValueError, match="'zz'"):
        gini(recs, 2, ["a", "b"])


def test_aplt_divides_by_list_length() -> None:
    recs = recs_of({"u1": ["a", "c", "d"], "u2": ["c"]})
    tail = ["c", "d"]
    assert aplt(recs, 3, tail) == pytest.approx((2 / 3 + 1 / 1) / 2)
    assert aplt(recs, 2, tail) == pytest.approx((1 / 2 + 1 / 1) / 2)
    assert aplt(recs, 3, []) == 0.0


def test_arp_counts_absent_items_as_zero() -> None:
    recs = recs_of({"u1": ["a", "b"], "u2": ["c", "z"]})
    popularity = popularity_of({"a": 10, "b": 4, "c": 1})
    assert arp(recs, 2, popularity) == pytest.approx(((10 + 4) / 2 + (1 + 0) / 2) / 2)
    assert arp(recs, 1, popularity) == pytest.approx((10 + 1) / 2)


def test_novelty_with_cold_items() -> None:
    n_users = 10
    recs = recs_of({"u1": ["a", "b"], "u2": ["c", "z"]})
    # c has 0 interactions and z is absent: both cold, p = 1/n_users.
    popularity = popularity_of({"a": 5, "b": 10, "c": 0})
    u1 = (-math.log2(5 / n_users) - math.log2(10 / n_users)) / 2
    u2 = (-math.log2(1 / n_users) - math.log2(1 / n_users)) / 2
    assert novelty(recs, 2, popularity, n_users) == pytest.approx((u1 + u2) / 2)


def test_novelty_caps_probability_at_one() -> None:
    recs = recs_of({"u1": ["a"]})
    # 30 interactions by 10 users (repeat interactions): p capped at 1, novelty 0 rather than negative.
    assert novelty(recs, 1, popularity_of({"a": 30}), 10) == 0.0


def test_beyond_accuracy_metrics_and_evaluate_ranking() -> None:
    popularity = popularity_of({"a": 6, "b": 3, "c": 1, "d": 1})
    catalog = ["a", "b", "c", "d", "e", "f"]
    beyond = beyond_accuracy_metrics(
        SEG_RECS, 2, catalog_items=catalog, item_popularity=popularity, tail_items=["c", "d"], n_users=8
    )
    got = as_dict(beyond)
    assert list(got) == [(Segments.overall, m) for m in BEYOND_ACCURACY_METRICS]
    # Top 2: u1 -> a, c; u2 -> b, d. Exposure a=b=c=d=1, e=f=0: sorted [0, 0, 1, 1, 1, 1], n=6, sum=4.
    gini_value = sum((2 * i - 6 - 1) * x for i, x in enumerate([0, 0, 1, 1, 1, 1], start=1)) / (6 * 4)
    expected = {
        "coverage": 4 / 6,
        "gini": gini_value,
        "aplt": (1 / 2 + 1 / 2) / 2,
        "arp": ((6 + 1) / 2 + (3 + 1) / 2) / 2,
        "novelty": ((-math.log2(6 / 8) - math.log2(1 / 8)) / 2 + (-math.log2(3 / 8) - math.log2(1 / 8)) / 2) / 2,
    }
    for metric, value in expected.items():
        assert got[(Segments.overall, metric)] == pytest.approx(value), metric

    everything = evaluate_ranking(
        SEG_RECS,
        SEG_TRUTH,
        2,
        item_segments=SEGMENTS,
        catalog_items=catalog,
        item_popularity=popularity,
        n_users=8,
    )
    accuracy = accuracy_metrics(SEG_RECS, SEG_TRUTH, 2, SEGMENTS)
    assert everything.schema == pl.Schema(
        {Columns.segment: pl.String, Columns.metric: pl.String, Columns.k: pl.Int64, "value": pl.Float64}
    )
    # The tail items come from item_segments (c, d), so the beyond rows equal the ones above.
    assert everything.equals(pl.concat([accuracy, beyond]))


# ------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize("k", [0, -3])
def test_k_must_be_positive(k: int) -> None:
    with pytest.raises(ValueError, match="k must be >= 1"):
        accuracy_metrics(RECS, TRUTH, k)
    with pytest.raises(ValueError, match="k must be >= 1"):
        top_k(pl.DataFrame({USER: ["u"], ITEM: ["a"], Columns.score: [1.0]}), k)


def test_missing_columns_name_frame_and_column() -> None:
    with pytest.raises(ValueError, match=r"recs is missing column\(s\) 'rank'"):
        per_user_accuracy(RECS.drop(RANK), TRUTH, 3)
    with pytest.raises(ValueError, match=r"truth is missing column\(s\) 'item_id'"):
        accuracy_metrics(RECS, TRUTH.drop(ITEM), 3)
    with pytest.raises(ValueError, match=r"scores is missing column\(s\) 'score'"):
        top_k(RECS, 3)
    with pytest.raises(ValueError, match=r"item_segments is missing column\(s\) 'segment'"):
        accuracy_metrics(RECS, TRUTH, 3, SEGMENTS.drop(Columns.segment))
    with pytest.raises(ValueError, match=r"item_popularity is missing column\(s\) 'n_interactions'"):
        arp(RECS, 3, pl.DataFrame({ITEM: ["a"], "count": [1]}))


def test_errors_are_data_errors_too() -> None:
    # The CLI prints DataError messages as one line; callers catching ValueError also work.
    with pytest.raises(DataError):
        accuracy_metrics(RECS, TRUTH, 0)
    assert issubclass(MetricInputError, ValueError)


def test_malformed_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="repeats"):
        per_user_accuracy(recs_of({"u": ["a", "a"]}), TRUTH, 2)
    with pytest.raises(ValueError, match="ranks must be distinct"):
        per_user_accuracy(pl.DataFrame({USER: ["u", "u"], ITEM: ["a", "b"], RANK: [1, 1]}), TRUTH, 2)
    with pytest.raises(ValueError, match="integer"):
        per_user_accuracy(RECS.with_columns(pl.col(RANK).cast(pl.Float64)), TRUTH, 2)
    with pytest.raises(ValueError, match="nulls"):
        per_user_accuracy(
            RECS, pl.DataFrame({USER: ["u1"], ITEM: [None]}, schema={USER: pl.String, ITEM: pl.String}), 2
        )
    with pytest.raises(ValueError, match="truth has no rows"):
        accuracy_metrics(RECS, TRUTH.clear(), 2)
    with pytest.raises(ValueError, match="at least one row"):
        gini(RECS.clear(), 2, ["a"])
    with pytest.raises(ValueError, match="n_users must be >= 1"):
        novelty(RECS, 2, popularity_of({"a": 1}), 0)
    with pytest.raises(ValueError, match="negative"):
        arp(RECS, 2, popularity_of({"a": -1}))


# ------------------------------------------------------------------------------------------- properties


def reference_row(items: list[str], positives: set[str], k: int) -> tuple[float, float, float, float]:
    """Textbook per-user recall, NDCG, precision, hit rate, written independently of the library."""
    hit_ranks = [r for r, item in enumerate(items[:k], start=1) if item in positives]
    dcg = sum(d(r) for r in hit_ranks)
    idcg = sum(d(r) for r in range(1, min(k, len(positives)) + 1))
    hits = len(hit_ranks)
    return hits / len(positives), dcg / idcg, hits / k, float(hits > 0)


ITEMS = [f"i{n}" for n in range(8)]
user_case = st.tuples(
    st.lists(st.sampled_from(ITEMS), unique=True, max_size=8),  # ranked list
    st.sets(st.sampled_from(ITEMS), min_size=1, max_size=8),  # positives
)


@settings(max_examples=80, deadline=None)
@given(cases=st.lists(user_case, min_size=1, max_size=5), k=st.integers(1, 10))
def test_per_user_accuracy_matches_reference_and_is_bounded(cases: list[tuple[list[str], set[str]]], k: int) -> None:
    recs = recs_of({f"u{n}": items for n, (items, _) in enumerate(cases)})
    truth = truth_of({f"u{n}": sorted(pos) for n, (_, pos) in enumerate(cases)})
    per_user = per_user_accuracy(recs, truth, k)
    assert per_user.height == len(cases)
    for (items, positives), row in zip(cases, per_user.iter_rows(named=True), strict=True):
        values = (row["recall"], row["ndcg"], row["precision"], row["hit_rate"])
        assert all(0.0 <= v <= 1.0 + 1e-12 for v in values)
        assert values == pytest.approx(reference_row(items, positives, k))


@settings(max_examples=50, deadline=None)
@given(positives=st.lists(st.sampled_from(ITEMS), min_size=1, unique=True), k=st.integers(1, 10))
def test_ndcg_is_one_when_the_top_list_is_the_positives(positives: list[str], k: int) -> None:
    # The first min(k, n_pos) positives, in any order, are an ideal list.
    recs = recs_of({"u": positives})
    row = per_user_accuracy(recs, truth_of({"u": positives}), k).row(0, named=True)
    assert row["ndcg"] == pytest.approx(1.0)
    assert row["recall"] == pytest.approx(min(k, len(positives)) / len(positives))


def test_bootstrap_difference_brackets_the_mean_and_tightens_with_agreement() -> None:
    rng = np.random.default_rng(1)
    first = rng.random(400)
    # A constant shift: every resample has the same mean difference, so the interval is that point.
    mean, low, high = bootstrap_difference(first + 0.1, first)
    assert mean == pytest.approx(0.1) and low == pytest.approx(0.1) and high == pytest.approx(0.1)
    # Noisy differences around 0.05: the interval holds the mean, excludes 0 here, and is seeded.
    second = first - 0.05 + rng.normal(0, 0.1, 400)
    mean, low, high = bootstrap_difference(first, second)
    assert low < mean < high and low > 0
    assert bootstrap_difference(first, second) == (mean, low, high)
    with pytest.raises(MetricInputError, match="equal 1-d"):
        bootstrap_difference(first, second[:10])
