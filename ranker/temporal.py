"""What a time-ordered log says about items and users as of a moment: recent popularity, age, recent activity.

A user who arrives in a log's next weeks rates what the population is rating now, not what it rated over the
whole history (MovieLens-100K's popularity baseline beats the all-time counts by following the recent ones). These
arrays are computed from the events before `now` only, so a ranker trained at an earlier cut sees them exactly as
it will at serving time.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import numpy as np
import polars as pl

from catalog import Columns, has_times

# Windows (days before `now`) of the recent-popularity counts.
RECENT_DAYS = (7, 14, 28)


@dataclass(frozen=True, eq=False)
class TimeFeatures:
    """Arrays keyed by item / user index as of `now`.

    `recent[i, w]` is item i's share (in thousandths) of all events of the last RECENT_DAYS[w] days: a share, not
    a count, so that a ranker trained at a quieter or busier moment of the log reads it on the same scale at
    serving time. `age_days[i]` is the days since item i's first event (0 for an item never seen);
    `user_recent[u]` counts user u's events in the last RECENT_DAYS[0] days. `release_age_days[i]` is the days
    since item i came out in the world (its `released` attribute), NaN where unknown: unlike the log's arrays it
    is known for an item nobody has touched yet, so it ranks new items too.
    """

    now: datetime
    recent: np.ndarray
    age_days: np.ndarray
    user_recent: np.ndarray
    release_age_days: np.ndarray

    def with_items(self, released: pl.Series) -> TimeFeatures:
        """These arrays with items appended that nobody has touched yet (no recent share, no age in the log),
        `released` their release times (nulls allowed)."""
        n = released.len()
        return replace(
            self,
            recent=np.vstack([self.recent, np.zeros((n, self.recent.shape[1]), self.recent.dtype)]),
            age_days=np.r_[self.age_days, np.zeros(n, self.age_days.dtype)],
            release_age_days=np.r_[self.release_age_days, _release_age_days(released, self.now, n)],
        )

    def with_users(self, n: int) -> TimeFeatures:
        """These arrays with `n` users appended who have no event yet."""
        return replace(self, user_recent=np.r_[self.user_recent, np.zeros(n, self.user_recent.dtype)])


def _positions(ids: pl.Series, wanted: pl.Series) -> np.ndarray:
    """Index of each of `wanted` in `ids` (every wanted id must be there)."""
    table = pl.DataFrame({"_id": ids}).with_row_index("_idx")
    found = pl.DataFrame({"_id": wanted}).join(table, on="_id", how="left", maintain_order="left")["_idx"]
    if found.null_count():
        raise ValueError(f"{found.null_count()} id(s) of the history are not in the index; use the split's index.")
    return found.cast(pl.Int64).to_numpy()


def time_features(
    history: pl.DataFrame,
    user_ids: pl.Series,
    item_ids: pl.Series,
    *,
    now: datetime | None = None,
    released: pl.Series | None = None,
) -> TimeFeatures:
    """Recent popularity, age and recent user activity from a (user_id, item_id, ts) log, as of `now` (default:
    just after the latest event); events at or after `now` are ignored. `released` (release times in the order of
    `item_ids`, nulls allowed) gives each item's release age."""
    if not has_times(history):
        raise ValueError(f"time_features needs a '{Columns.ts}' column with times.")
    log = history.drop_nulls(Columns.ts)
    latest = log[Columns.ts].max()
    assert isinstance(latest, datetime)
    now = now if now is not None else latest + timedelta(microseconds=1)
    log = log.filter(pl.col(Columns.ts) < now)
    items = _positions(item_ids, log[Columns.item])
    users = _positions(user_ids, log[Columns.user])
    age_seconds = (now - log[Columns.ts]).dt.total_seconds().to_numpy()
    recent = np.zeros((item_ids.len(), len(RECENT_DAYS)), dtype=np.float32)
    for column, days in enumerate(RECENT_DAYS):
        inside = age_seconds < days * 86400
        counts = np.bincount(items[inside], minlength=item_ids.len())
        recent[:, column] = 1000.0 * counts / max(int(inside.sum()), 1)
    oldest = np.zeros(item_ids.len())
    np.maximum.at(oldest, items, age_seconds)
    inside = age_seconds < RECENT_DAYS[0] * 86400
    user_recent = np.bincount(users[inside], minlength=user_ids.len()).astype(np.float32)
    return TimeFeatures(
        now=now,
        recent=recent,
        age_days=(oldest / 86400).astype(np.float32),
        user_recent=user_recent,
        release_age_days=_release_age_days(released, now, item_ids.len()),
    )


def _release_age_days(released: pl.Series | None, now: datetime, n_items: int) -> np.ndarray:
    """Days from each release to `now` (negative for an item announced ahead of its release), NaN where unknown."""
    if released is None:
        return np.full(n_items, np.nan, dtype=np.float32)
    if released.len() != n_items:
        raise ValueError(f"released has {released.len()} values for {n_items} items; give one per item, in order.")
    days = (pl.lit(now, dtype=released.dtype) - released).dt.total_seconds() / 86400
    return pl.select(days).to_series().fill_null(float("nan")).to_numpy().astype(np.float32)


# A user without a request time of their own asks at the log's end (`TimeFeatures.now`): serving's "now".
AT_END = np.iinfo(np.int64).max


def epoch_us(times: pl.Series) -> np.ndarray:
    """Times as int64 microseconds since the epoch (the unit of `RequestTimes`)."""
    return times.dt.epoch("us").to_numpy().astype(np.int64)


@dataclass(frozen=True, eq=False)
class RequestTimes:
    """When each user asks for a list, and the log's events in time order: what the population took in the days
    just before each user's request (events strictly before it only: nothing a user or anyone did later).

    `at[u]` is user u's request time in microseconds since the epoch, AT_END for a user who asks at the log's end
    (their shares are `TimeFeatures.recent`'s); `times` (sorted) and `items` are the events' times and item indices.
    A held-out user of the protocols over users asks when their first held-out event happened (`ProtocolSplit.
    requested_at`); a served user asks now.
    """

    at: np.ndarray
    times: np.ndarray
    items: np.ndarray

    @classmethod
    def of(cls, log: pl.DataFrame, user_ids: pl.Series, item_ids: pl.Series, requested: pl.DataFrame) -> RequestTimes:
        """From a (user_id, item_id, ts) log and (user_id, ts) request times (users not in it ask at the end)."""
        if not has_times(log):
            raise ValueError(f"RequestTimes needs a log with '{Columns.ts}' times.")
        timed = log.drop_nulls(Columns.ts)
        times = epoch_us(timed[Columns.ts])
        order = np.argsort(times, kind="stable")
        at = np.full(user_ids.len(), AT_END, dtype=np.int64)
        at[_positions(user_ids, requested[Columns.user])] = epoch_us(requested[Columns.ts])
        return cls(at=at, times=times[order], items=_positions(item_ids, timed[Columns.item])[order])

    def with_users(self, n: int) -> RequestTimes:
        """These times with `n` users appended who ask at the log's end."""
        return replace(self, at=np.r_[self.at, np.full(n, AT_END, dtype=np.int64)])

    def recent(self, users: np.ndarray, days: int, n_items: int) -> np.ndarray:
        """(users x n_items) each item's share (in thousandths, as `TimeFeatures.recent`) of the events of the
        `days` days before each user's request; rows of users asking at the end are NaN (the caller's to fill)."""
        out = np.full((users.size, n_items), np.nan, dtype=np.float32)
        at = self.at[users]
        for moment in np.unique(at[at != AT_END]):
            # As `time_features` counts: after `days` before the moment, strictly before it.
            start = int(np.searchsorted(self.times, moment - days * 86_400_000_000, side="right"))
            stop = int(np.searchsorted(self.times, moment, side="left"))
            counts = np.bincount(self.items[start:stop], minlength=n_items)
            out[at == moment] = 1000.0 * counts / max(stop - start, 1)
        return out
