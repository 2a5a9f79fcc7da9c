"""Backfill windows and the --every parser."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from catalog import ConfigError
from flows.backfill import parse_every, time_windows

DAY = timedelta(days=1)
FIRST = datetime(1998, 1, 1, tzinfo=UTC)


def test_windows_tile_the_history_and_each_has_a_next_window() -> None:
    windows = time_windows(FIRST, FIRST + 20 * DAY, 7 * DAY)
    assert [(w.start.day, w.end.day) for w in windows] == [(1, 8), (8, 15)]
    assert windows[0].next_end == windows[1].end
    # The last window is evaluated on what remains, up to and including the last event.
    assert windows[-1].next_end == FIRST + 20 * DAY + timedelta(microseconds=1)


def test_a_window_needs_events_after_it() -> None:
    assert len(time_windows(FIRST, FIRST + 14 * DAY, 7 * DAY)) == 2
    with pytest.raises(ConfigError, match="no window"):
        time_windows(FIRST, FIRST + 5 * DAY, 7 * DAY)
    with pytest.raises(ConfigError, match="after start"):
        time_windows(FIRST, FIRST, DAY)


@pytest.mark.parametrize(("text", "expected"), [("7d", 7 * DAY), ("12h", timedelta(hours=12)), ("2w", 14 * DAY)])
def test_every_parses(text: str, expected: timedelta) -> None:
    assert parse_every(text) == expected


@pytest.mark.parametrize("text", ["7", "d", "0d", "-1d", "7m", "seven days"])
def test_bad_every_is_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="--every"):
        parse_every(text)


def test_a_window_sees_first_appearances_as_of_its_end() -> None:
    import polars as pl

    from catalog import TIMESTAMP, segments_as_of

    at = [FIRST + DAY, FIRST + 3 * DAY, FIRST + 10 * DAY]
    interactions = pl.DataFrame(
        {"user_id": ["u1", "u1", "u2"], "item_id": ["old", "fresh", "future"], "ts": at},
        schema={"user_id": pl.String, "item_id": pl.String, "ts": TIMESTAMP},
    )
    # first_seen as the loaders fill it: from the whole log, future included.
    items = pl.DataFrame(
        {"item_id": ["old", "fresh", "future"], "first_seen": at}, schema_overrides={"first_seen": TIMESTAMP}
    )
    users = pl.DataFrame(
        {"user_id": ["u1", "u2"], "first_seen": [at[0], at[2]]}, schema_overrides={"first_seen": TIMESTAMP}
    )
    segments = segments_as_of(
        interactions, items, users, before=FIRST + 7 * DAY, since=FIRST + 2 * DAY, sparse_max=5, head_share=0.8
    )
    new = segments.filter(pl.col("is_new"))["entity_id"].to_list()
    assert new == ["fresh"]  # "future" has not appeared yet: cold, not new; u2 likewise
    assert segments.filter(pl.col("entity_id") == "future")["segment"].item() == "cold"
