"""Segment detection against hand-computed cases and invariants."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from catalog import Columns, Dataset, detect_segments, entity_segments, popularity_segments, summarize_segments

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def interactions_for(counts: dict[str, int]) -> pl.DataFrame:
    items = [item for item, n in counts.items() for _ in range(n)]
    return pl.DataFrame(
        {Columns.user: [f"u{i}" for i in range(len(items))], Columns.item: items},
        schema={Columns.user: pl.String, Columns.item: pl.String},
    )


def items_frame(ids: list[str], first_seen: list[datetime | None] | None = None) -> pl.DataFrame:
    return pl.DataFrame(
        {Columns.item: ids, Columns.first_seen: first_seen or [None] * len(ids)},
        schema={Columns.item: pl.String, Columns.first_seen: pl.Datetime("us", "UTC")},
    )


def segments_of(frame: pl.DataFrame) -> dict[str, str]:
    return dict(frame.select("entity_id", Columns.segment).iter_rows())


def test_hand_case() -> None:
    # 100 interactions: a=50, b=30, c=10, d=6, e=3, f=1, g=0.
    counts = {"a": 50, "b": 30, "c": 10, "d": 6, "e": 3, "f": 1}
    items = items_frame([*counts, "g"])
    result = entity_segments(interactions_for(counts), items, key=Columns.item, kind="item", sparse_max=5)
    # Head: a (0 before, < 80) and b (50 before, < 80); c has 80 before, so it is not head.
    assert segments_of(result) == {
        "a": "head",
        "b": "head",
        "c": "tail",
        "d": "tail",
        "e": "sparse",
        "f": "sparse",
        "g": "cold",
    }
    assert dict(result.select("entity_id", Columns.n_interactions).iter_rows())["g"] == 0


def test_threshold_crossing_entity_is_head() -> None:
    counts = {"a": 70, "b": 20, "c": 10}  # a alone holds 70% < 80%, so b (crossing to 90%) is head too.
    result = entity_segments(interactions_for(counts), items_frame(list(counts)), key=Columns.item, kind="item")
    assert segments_of(result) == {"a": "head", "b": "head", "c": "tail"}


def test_ties_are_broken_by_id() -> None:
    # 50 interactions, head threshold 40: a, b, c, d have 0, 10, 20, 30 before them; e has 40, so it is tail.
    counts = {"e": 10, "b": 10, "a": 10, "d": 10, "c": 10}
    result = entity_segments(interactions_for(counts), items_frame(list(counts)), key=Columns.item, kind="item")
    assert segments_of(result) == {"a": "head", "b": "head", "c": "head", "d": "head", "e": "tail"}


def test_new_is_first_seen_after_the_watermark() -> None:
    counts = {"a": 10, "b": 2}
    items = items_frame(["a", "b", "c"], [T0, datetime(2024, 2, 1, tzinfo=UTC), datetime(2024, 3, 1, tzinfo=UTC)])
    result = entity_segments(
        interactions_for(counts), items, key=Columns.item, kind="item", watermark=datetime(2024, 1, 15, tzinfo=UTC)
    )
    assert dict(result.select("entity_id", "is_new").iter_rows()) == {"a": False, "b": True, "c": True}
    no_watermark = entity_segments(interactions_for(counts), items, key=Columns.item, kind="item")
    assert not no_watermark["is_new"].any()


def test_bad_parameters() -> None:
    with pytest.raises(ValueError, match="head_share"):
        entity_segments(interactions_for({"a": 1}), items_frame(["a"]), key=Columns.item, kind="item", head_share=0)
    with pytest.raises(ValueError, match="sparse_max"):
        entity_segments(interactions_for({"a": 1}), items_frame(["a"]), key=Columns.item, kind="item", sparse_max=-1)


def test_popularity_segments_have_no_sparse() -> None:
    counts = {"a": 50, "b": 30, "c": 10, "d": 6, "e": 3, "f": 1}
    result = popularity_segments(interactions_for(counts), items_frame([*counts, "g"]))
    assert dict(result.iter_rows()) == {
        "a": "head",
        "b": "head",
        "c": "tail",
        "d": "tail",
        "e": "tail",
        "f": "tail",
        "g": "cold",
    }


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=30), st.integers(0, 6))
def test_every_entity_gets_one_segment_and_head_holds_its_share(counts: list[int], sparse_max: int) -> None:
    named = {f"i{n:02d}": c for n, c in enumerate(counts)}
    result = entity_segments(
        interactions_for(named), items_frame(list(named)), key=Columns.item, kind="item", sparse_max=sparse_max
    )
    assert result.height == len(named)
    assert result["entity_id"].n_unique() == len(named)
    by_id = dict(result.select("entity_id", Columns.segment).iter_rows())
    for item, count in named.items():
        if count == 0:
            assert by_id[item] == "cold"
        elif count <= sparse_max:
            assert by_id[item] == "sparse"
        else:
            assert by_id[item] in ("head", "tail")
    # Without a sparse cut, the head is the smallest popularity prefix holding >= 80% of interactions.
    total = sum(counts)
    if total:
        pure = popularity_segments(interactions_for(named), items_frame(list(named)))
        head = pure.filter(pl.col(Columns.segment) == "head")[Columns.item].to_list()
        head_total = sum(named[item] for item in head)
        assert head_total >= 0.8 * total
        assert head_total - min(named[item] for item in head) < 0.8 * total


def test_movielens_summary(ml100k: Dataset) -> None:
    segments = detect_segments(ml100k.interactions, ml100k.items, ml100k.users)
    summary = summarize_segments(segments)
    rows = {row["segment"]: (row["items"], row["users"]) for row in summary.iter_rows(named=True)}
    assert rows["total"] == (1_682, 943)
    assert rows["cold"] == (0, 0)  # every movie and every user has at least one rating
    assert rows["sparse"][1] == 0  # every MovieLens-100K user has at least 20 ratings
    sparse_items = ml100k.interactions.group_by(Columns.item).len().filter(pl.col("len") <= 5).height
    assert rows["sparse"][0] == sparse_items
    assert rows["sparse"][0] + rows["tail"][0] + rows["head"][0] == 1_682
    assert rows["new"] == (0, 0)
