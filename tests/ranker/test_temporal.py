"""Time features of a log on hand cases: recent counts, item age, recent user activity; and how pairs see them."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from catalog import Columns
from ranker.features import FEATURE_NAMES, pair_features
from ranker.temporal import time_features
from tests.ranker.test_features import tiny_inputs

NOW = datetime(2024, 3, 1, tzinfo=UTC)
F = {name: j for j, name in enumerate(FEATURE_NAMES)}


def log(rows: list[tuple[str, str, float]]) -> pl.DataFrame:
    """(user, item, days before NOW) rows."""
    return pl.DataFrame(
        {
            Columns.user: [r[0] for r in rows],
            Columns.item: [r[1] for r in rows],
            Columns.ts: [NOW - timedelta(days=r[2]) for r in rows],
        }
    )


def test_recent_counts_age_and_user_activity_as_of_now() -> None:
    history = log([("u0", "a", 40), ("u1", "a", 3), ("u1", "b", 10), ("u0", "b", 1), ("u1", "c", -1)])
    users, items = pl.Series(["u0", "u1", "u2"]), pl.Series(["a", "b", "c", "d"])
    features = time_features(history, users, items, now=NOW)
    # a: events 40 and 3 days ago; b: 10 and 1; c only after NOW (ignored); d never. Shares in thousandths:
    # the last 7 days hold 2 events (a, b), the last 14 and 28 days 3 (a, b, b).
    third = 1000 / 3
    np.testing.assert_allclose(features.recent, [[500, third, third], [500, 2 * third, 2 * third], [0] * 3, [0] * 3])
    np.testing.assert_allclose(features.age_days, [40, 10, 0, 0])
    assert features.user_recent.tolist() == [1, 1, 0]  # u0: b a day ago; u1: a 3 days ago (c is after NOW)


def test_now_defaults_to_just_after_the_latest_event() -> None:
    history = log([("u0", "a", 10), ("u0", "b", 2)])
    features = time_features(history, pl.Series(["u0"]), pl.Series(["a", "b"]))
    assert features.now == NOW - timedelta(days=2) + timedelta(microseconds=1)
    np.testing.assert_allclose(features.age_days, [8, 0], atol=1e-6)


def test_unknown_ids_are_an_error() -> None:
    with pytest.raises(ValueError, match="not in the index"):
        time_features(log([("u9", "a", 1)]), pl.Series(["u0"]), pl.Series(["a"]), now=NOW)


def test_pairs_read_recency_and_cold_views_hide_it() -> None:
    inputs = tiny_inputs()  # users 0, 1; items 0, 1 warm, 2, 3 cold
    history = log([("0", "0", 20), ("1", "0", 2), ("1", "1", 1)])
    timed = dataclasses.replace(
        inputs, time=time_features(history, pl.Series(["0", "1"]), pl.Series(["0", "1", "2", "3"]), now=NOW)
    )
    users, items = np.array([1, 1, 1]), np.array([0, 1, 2])
    out = pair_features(timed, users, items, np.array([False, True, False]))
    # Item 0 shown warm: 1 of 2 events in 7 days, 2 of 3 in 28, 20 days old. Item 1 presented cold, item 2 cold:
    # all hidden.
    np.testing.assert_allclose(out[:, F["recent_7d"]], [np.log1p(500), 0, 0], rtol=1e-6)
    np.testing.assert_allclose(out[:, F["recent_14d"]], [np.log1p(1000 / 2), 0, 0], rtol=1e-6)
    np.testing.assert_allclose(out[:, F["recent_28d"]], [np.log1p(2000 / 3), 0, 0], rtol=1e-6)
    np.testing.assert_allclose(out[:, F["item_age"]], [20, 0, 0])
    np.testing.assert_allclose(out[:, F["user_recent"]], np.log1p(2))
    # Without times the columns are zero.
    plain = pair_features(inputs, users, items, np.zeros(3, dtype=bool))
    assert not plain[:, [F["recent_7d"], F["item_age"], F["user_recent"]]].any()


def test_recent_popularity_is_a_candidate_source_in_the_warm_view() -> None:
    inputs = tiny_inputs()
    history = log([("0", "0", 1), ("1", "0", 2), ("1", "1", 30)])
    timed = dataclasses.replace(
        inputs, time=time_features(history, pl.Series(["0", "1"]), pl.Series(["0", "1", "2", "3"]), now=NOW)
    )
    users, pool = np.array([0, 1]), np.arange(4)
    warm = timed.source_scores(users, pool, as_cold=False)
    np.testing.assert_allclose(warm["recent"], [[1000, 0, 0, 0], [1000, 0, 0, 0]])  # share of the last 28 days
    np.testing.assert_allclose(warm["recent_week"], [[1000, 0, 0, 0], [1000, 0, 0, 0]])  # and of the last 7
    assert "recent" not in timed.source_scores(users, pool, as_cold=True)  # a cold item has no history
    assert "recent" not in inputs.source_scores(users, pool, as_cold=False)


def test_release_age_is_read_for_cold_items_too_and_unknown_is_missing() -> None:
    inputs = tiny_inputs()  # items 0, 1 warm, 2, 3 cold
    history = log([("0", "0", 20), ("1", "1", 2)])
    released = pl.Series([NOW - timedelta(days=400), None, NOW - timedelta(days=30), NOW + timedelta(days=2)])
    time = time_features(history, pl.Series(["0", "1"]), pl.Series(["0", "1", "2", "3"]), now=NOW, released=released)
    np.testing.assert_allclose(time.release_age_days, [400, np.nan, 30, -2])
    out = pair_features(
        dataclasses.replace(inputs, time=time), np.array([0, 0, 0]), np.array([0, 1, 2]), np.ones(3, bool)
    )
    # A release is what a new item has before anyone rates it: the cold view keeps it (LightGBM reads NaN as missing).
    np.testing.assert_allclose(out[:, F["release_age"]], [400, np.nan, 30])
    with pytest.raises(ValueError, match="one per item"):
        time_features(history, pl.Series(["0", "1"]), pl.Series(["0", "1", "2", "3"]), now=NOW, released=released[:2])


def test_items_and_users_added_later_have_no_log_but_their_release() -> None:
    history = log([("u0", "a", 3)])
    time = time_features(history, pl.Series(["u0"]), pl.Series(["a"]), now=NOW)
    grown = time.with_items(pl.Series([NOW - timedelta(days=10), None])).with_users(2)
    assert grown.recent.shape == (3, 3) and not grown.recent[1:].any() and grown.age_days.tolist() == [3, 0, 0]
    np.testing.assert_allclose(grown.release_age_days, [np.nan, 10, np.nan])
    assert grown.user_recent.tolist() == [1, 0, 0] and grown.now == NOW
