"""Appending to a data set, on hand-made frames: what is added, what is collapsed, what is refused."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl
import pytest

from catalog import Additions, Columns, DataError, Dataset, append, conform_interactions, conform_items
from catalog._loaders import assemble

T = [datetime(2024, 1, day, tzinfo=UTC) for day in range(1, 10)]
NOW = datetime(2025, 1, 1, tzinfo=UTC)


def _held() -> Dataset:
    """u1 took i1 and i2 on days 1-2; i3 is listed with no event yet."""
    events = pl.DataFrame({Columns.user: ["u1", "u1"], Columns.item: ["i1", "i2"], Columns.ts: T[:2]})
    items = pl.DataFrame({Columns.item: ["i1", "i2", "i3"], Columns.title: ["A", "B", "C"]})
    return assemble("test", (events, "held.csv"), (items, "items.csv"), None)


def _events(rows: list[tuple[str, str, datetime]]) -> pl.DataFrame:
    raw = pl.DataFrame(
        rows,
        schema={Columns.user: pl.String, Columns.item: pl.String, Columns.ts: pl.Datetime("us", "UTC")},
        orient="row",
    )
    return conform_interactions(raw, "new.csv")[0]


def _items(ids: list[str], titles: list[str]) -> pl.DataFrame:
    return conform_items(pl.DataFrame({Columns.item: ids, Columns.title: titles}), "new_items.csv")[0]


def test_events_are_added_duplicates_counted_and_first_seen_filled() -> None:
    held = _held()
    added = Additions(_events([("u1", "i1", T[0]), ("u2", "i3", T[4]), ("u1", "i3", T[5])]))
    merged, report = append(held, added, source="new.csv", now=NOW)
    assert merged.interactions.height == 4 and (report.interactions_added, report.interactions_collapsed) == (2, 1)
    # u2 had no row: it joins the users table, first seen at its first event; i3 was listed without events.
    users = dict(merged.users.select(Columns.user, Columns.first_seen).iter_rows())
    assert users == {"u1": T[0], "u2": T[4]} and report.users_added == 1
    items = dict(merged.items.select(Columns.item, Columns.first_seen).iter_rows())
    assert items == {"i1": T[0], "i2": T[1], "i3": T[4]}
    assert held.interactions.height == 2  # the held data set is left as it was


def test_new_items_come_with_their_file_and_repeats_are_counted() -> None:
    held = _held()
    added = Additions(_events([("u3", "i4", T[6])]), items=_items(["i4", "i1", "i5"], ["D", "A", "E"]))
    merged, report = append(held, added, source="new.csv", now=NOW)
    assert (report.items_added, report.items_collapsed) == (2, 1)  # i1 repeated exactly: counted, not added
    first_seen = dict(merged.items.select(Columns.item, Columns.first_seen).iter_rows())
    assert (first_seen["i4"], first_seen["i5"]) == (T[6], NOW)  # its first event; no event: the append's time


def test_a_held_id_with_other_fields_and_an_unknown_item_are_refused() -> None:
    held = _held()
    changed = Additions(_events([]), items=_items(["i1"], ["Another title"]))
    with pytest.raises(DataError, match=r"new.csv: 1 item_id\(s\) already held with other fields, e.g. \['i1'\]"):
        append(held, changed, source="new.csv")
    with pytest.raises(DataError, match="unknown item_id"):
        append(held, Additions(_events([("u1", "i9", T[3])])), source="new.csv")
