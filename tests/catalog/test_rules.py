"""Rules other packages share: the head of a popularity distribution, and whether a log has times."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import polars as pl

from catalog import HEAD_SHARE, Columns, entity_segments, fully_timed, has_times, head_items


def test_head_items_match_the_head_segment() -> None:
    counts = np.array([50, 3, 20, 20, 7, 0, 9, 9, 12, 6])
    ids = [f"i{n}" for n in range(counts.size)]  # sorted as strings in this order (i0..i9)
    log = pl.DataFrame({Columns.item: [i for i, c in zip(ids, counts, strict=True) for _ in range(c)]})
    segments = entity_segments(log, pl.DataFrame({Columns.item: ids}), key=Columns.item, kind="item", sparse_max=0)
    head = set(segments.filter(pl.col(Columns.segment) == "head")["entity_id"])
    assert {ids[i] for i in np.flatnonzero(head_items(counts, HEAD_SHARE))} == head
    # By hand: 136 interactions, 80% is 108.8; before each in order 0, 50, 70, 90, 102 (< 108.8), 111 (stop).
    assert np.flatnonzero(head_items(counts)).tolist() == [0, 2, 3, 6, 8]


def test_head_items_of_an_empty_log_are_none() -> None:
    assert not head_items(np.zeros(4)).any()


def test_has_times_means_a_time_on_some_row_and_fully_timed_on_every_row() -> None:
    when = datetime(2024, 1, 1, tzinfo=UTC)
    some = pl.DataFrame({Columns.ts: [when, None]}, schema={Columns.ts: pl.Datetime("us", "UTC")})
    assert has_times(some) and not fully_timed(some)
    assert has_times(some.head(1)) and fully_timed(some.head(1))
    assert not has_times(some.tail(1)) and not has_times(some.clear()) and not fully_timed(some.clear())
    assert not has_times(pl.DataFrame({Columns.user: ["u"]}))
